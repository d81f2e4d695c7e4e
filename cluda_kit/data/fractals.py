"""Formula-driven pretraining data: FractalDB-style fractal categories rendered on the fly.

No ImageNet weights can be downloaded here, so the demo encoder is pretrained on a task that
shares no labels with any miniscapes domain (Kataoka et al., "Pre-training without Natural
Images", 2020): each *category* is an iterated function system (IFS), a set of K affine maps
``x -> A_k x + b_k`` of the plane drawn at random; an *instance* is that system with its
parameters jittered, rendered by the chaos game at a random rotation, scale, position and
colour over a random textured background. The classifier must recognise the shape whatever its
colours, which asks the encoder for edges, curvature and layout rather than palettes.

Pure tensor functions, device following the inputs:

- :func:`ifs_categories` draws C systems (C, K, 6) and their map probabilities (C, K),
  deterministic for a seed;
- :func:`render_fractals` renders a batch of instances of given categories (B, 3, S, S) in [0, 1].
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ifs_categories", "chaos_game", "render_fractals", "fill_ratio"]


def chaos_game(params: Tensor, probs: Tensor, *, chains: int = 64, steps: int = 40, burn_in: int = 8,
               generator: torch.Generator | None = None) -> Tensor:
    """Points of the attractors of B systems by the chaos game.

    Args:
        params: (B, K, 6) affine maps ``[a, b, c, d, e, f]``: ``x' = a x + b y + e``,
            ``y' = c x + d y + f``.
        probs: (B, K) probability of each map (rows sum to 1; 0 for unused maps).
        chains: independent chains per system (run side by side).
        steps: iterations per chain; the first ``burn_in`` are dropped.

    Returns:
        (B, chains * (steps - burn_in), 2) points (x, y), float32.
    """
    b, k, _ = params.shape
    device = params.device
    pts = torch.rand(b, chains, 2, generator=generator, device=device) * 2 - 1
    picks = torch.multinomial(probs.repeat_interleave(chains, 0), steps, replacement=True,
                              generator=generator).view(b, chains, steps)
    out = []
    for t in range(steps):
        m = params.gather(1, picks[:, :, t, None].expand(b, chains, 6))  # (B, chains, 6)
        x, y = pts.unbind(-1)
        pts = torch.stack((m[..., 0] * x + m[..., 1] * y + m[..., 4],
                           m[..., 2] * x + m[..., 3] * y + m[..., 5]), -1)
        if t >= burn_in:
            out.append(pts)
    return torch.cat(out, 1)


def _rasterise(points: Tensor, size: int, angle: Tensor, scale: Tensor, centre: Tensor) -> Tensor:
    """Points (B, N, 2) -> hit counts (B, size, size): rotated by ``angle`` (B,), fitted into a box
    of ``scale`` (B,) x size pixels centred at ``centre`` (B, 2) in pixels."""
    b = points.shape[0]
    cos, sin = angle.cos()[:, None], angle.sin()[:, None]
    x, y = points.unbind(-1)
    x, y = cos * x - sin * y, sin * x + cos * y
    lo_x, hi_x = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    lo_y, hi_y = y.amin(1, keepdim=True), y.amax(1, keepdim=True)
    extent = torch.maximum(hi_x - lo_x, hi_y - lo_y).clamp_min(1e-6)
    px = (x - (lo_x + hi_x) / 2) / extent * scale[:, None] * size + centre[:, :1]
    py = (y - (lo_y + hi_y) / 2) / extent * scale[:, None] * size + centre[:, 1:]
    px = px.round().long().clamp(0, size - 1)
    py = py.round().long().clamp(0, size - 1)
    flat = (torch.arange(b, device=points.device)[:, None] * size * size + py * size + px).reshape(-1)
    counts = torch.zeros(b * size * size, device=points.device)
    counts.index_add_(0, flat, torch.ones_like(flat, dtype=counts.dtype))
    return counts.view(b, size, size)


def fill_ratio(params: Tensor, probs: Tensor, *, grid: int = 32,
               generator: torch.Generator | None = None) -> Tensor:
    """Share of a grid x grid raster that each system's attractor covers (B,): FractalDB keeps
    only systems that fill enough of the image (degenerate ones collapse to a line or a point)."""
    pts = chaos_game(params, probs, chains=32, steps=60, burn_in=10, generator=generator)
    zeros = torch.zeros(len(params), device=params.device)
    hits = _rasterise(pts, grid, zeros, torch.ones_like(zeros), torch.full((len(params), 2), grid / 2,
                                                                             device=params.device))
    return (hits > 0).float().mean((1, 2))


def ifs_categories(num_classes: int, seed: int = 0, *, maps: tuple[int, int] = (2, 4),
                   min_fill: float = 0.12, device: torch.device | str | None = None
                   ) -> tuple[Tensor, Tensor]:
    """Draw ``num_classes`` contractive IFS categories, deterministic for ``seed``.

    Each system has K in ``maps`` (inclusive) affine maps with entries uniform in [-1, 1],
    redrawn until every linear part is contractive (largest singular value < 1) and the
    attractor fills at least ``min_fill`` of a 32 x 32 raster (FractalDB's filling-rate test).
    Map probabilities are proportional to |det A_k| (floored), as in FractalDB.

    Returns:
        params (C, K_max, 6) and probs (C, K_max) (0 for the unused maps of smaller systems).
    """
    g = torch.Generator().manual_seed(seed)
    k_max = maps[1]
    params = torch.zeros(num_classes, k_max, 6)
    probs = torch.zeros(num_classes, k_max)
    filled = 0
    while filled < num_classes:
        n = 64  # candidates drawn and tested at a time
        k = torch.randint(maps[0], maps[1] + 1, (n,), generator=g)
        cand = torch.rand(n, k_max, 6, generator=g) * 2 - 1
        used = torch.arange(k_max)[None] < k[:, None]
        lin = cand[..., :4].reshape(n, k_max, 2, 2)
        contractive = (torch.linalg.matrix_norm(lin, ord=2) < 1) | ~used
        det = torch.linalg.det(lin).abs().clamp_min(0.02) * used
        p = det / det.sum(1, keepdim=True)
        ok = contractive.all(1) & (fill_ratio(cand, p, generator=g) >= min_fill)
        take = cand[ok][: num_classes - filled]
        params[filled:filled + len(take)] = take * used[ok][: len(take), :, None]
        probs[filled:filled + len(take)] = p[ok][: len(take)]
        filled += len(take)
    return params.to(device), probs.to(device)


def render_fractals(params: Tensor, probs: Tensor, labels: Tensor, size: int = 64, *,
                    jitter: float = 0.1, points: int = 2048, rotation: float = 0.3,
                    generator: torch.Generator | None = None) -> Tensor:
    """Render one random instance of category ``labels[i]`` per image.

    An instance jitters each map parameter by a factor 1 + U(-jitter, jitter), rotates the
    attractor by a small random angle (up to ``rotation`` radians) and mirrors it half of the time,
    fits it into 60-90 % of the image at a random position, and draws it light on a dark ground
    or dark on a light one, both tinted at random, with a linear gradient and per-pixel noise.

    Args:
        params, probs: from :func:`ifs_categories`, on the device to render on.
        labels: (B,) int64 category of each image.
        size: S, the side of the square image.
        jitter: relative per-instance perturbation of the map parameters.
        points: chaos-game points per image (rounded to a multiple of 32 chains).
        generator: a generator on ``params``' device.

    Returns:
        images (B, 3, S, S) float32 RGB in [0, 1].
    """
    device = params.device
    b = labels.shape[0]

    def u(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    p = params[labels] * (1 + jitter * (2 * u(b, params.shape[1], 6) - 1))
    flip = (u(b) < 0.5).to(p.dtype) * 2 - 1  # mirror x: (a, b, c, d, e, f) -> (a, -b, -c, d, -e, f)
    p = p * torch.stack([torch.ones_like(flip), flip, flip, torch.ones_like(flip), flip,
                         torch.ones_like(flip)], -1)[:, None]
    steps = 8 + max(1, math.ceil(points / 32))
    pts = chaos_game(p, probs[labels], chains=32, steps=steps, burn_in=8, generator=generator)
    scale = 0.6 + 0.3 * u(b)
    centre = (0.5 + (1 - scale[:, None]) * (u(b, 2) - 0.5)) * size
    hits = _rasterise(pts, size, (2 * u(b) - 1) * rotation, scale, centre)
    alpha = (1 - torch.exp(-hits * (0.5 + u(b, 1, 1)))).unsqueeze(1)  # (B, 1, S, S)
    # a light shape on a dark ground or the reverse, each tinted at random: the category is in the
    # shape, never in the colours, and the contrast keeps the shape visible
    light = 0.65 + 0.35 * u(b, 1, 1, 1) - 0.25 * u(b, 3, 1, 1)
    dark = 0.35 * u(b, 1, 1, 1) + 0.15 * u(b, 3, 1, 1)
    invert = u(b, 1, 1, 1) < 0.5
    fg, bg = torch.where(invert, dark, light), torch.where(invert, light, dark)
    ramp = torch.linspace(-1, 1, size, device=device)
    theta = u(b) * 2 * math.pi
    gradient = (theta.cos()[:, None, None] * ramp[None, None, :]
                + theta.sin()[:, None, None] * ramp[None, :, None])  # (B, S, S)
    background = bg + 0.15 * u(b, 1, 1, 1) * gradient[:, None] + 0.05 * (2 * u(b, 3, size, size) - 1)
    image = background * (1 - alpha) + fg * alpha
    return image.clamp(0, 1)
