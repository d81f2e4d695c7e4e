"""CLUDA pixel contrastive loss on fused features (docs/method.md §5 and §6).

Public functions
----------------
- :func:`resize_for_contrast` puts features (bilinear), labels (nearest) and pixel weights (bilinear)
  on the contrastive grid (the release: 65x65, ``align_corners=True``).
- :func:`pixel_contrastive_loss` is the single-resolution loss of docs/method.md §5.
- :func:`multi_resolution_contrastive_loss` is the learned-weighted LR/HR form of §6.
- :func:`balanced_anchor_indices` is the class-balanced anchor sampler behind ``max_anchors``.

With N pixels, u_i = F_i/||F_i||, z_ij = u_i.u_j/tau, positives P_ij = [y_i = y_j, i != j] and
negatives N_ij = [y_i != y_j]::

    l_ij = z_ij - log(exp(z_ij) + sum_k N_ik exp(z_ik))
    L    = -(tau/tau_b) (1/M) sum_i [sum_j P_ij w_ij l_ij] / max(1, sum_j P_ij)

with pair weights w_ij = rho_i rho_j and M the number of anchors (rows i), counting anchors
without positives. Each positive is contrasted with itself and all negatives of its anchor; the
other positives are not in the denominator (unlike SupCon).

Two layers
----------
:func:`plain_loss`, first below, is the formula as written: (M, N) similarity matrices under
ordinary autograd, a few dozen lines, O(M*N) memory. The release builds such matrices too (about
2.6 GB on the CPU for 2x65x65 anchors, bench/results/release_contrastive_memory.md). The default, ``impl="blocked"``
(:mod:`cluda_kit.uda.contrastive_blocked`), walks the anchors in row blocks and accumulates
analytic gradients block by block: O(block_size * N) scratch memory, the same value and gradients
up to rounding (tests/test_contrastive.py checks both against each other and against a loop over
pixels). ``impl="plain"`` selects the formula. Both share the input preparation here (flattening,
ignore pixels, the release's pixel order, anchor sampling). ``bench/contrastive_memory.py``
measures time and peak memory of the two.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..runtime import generator_device
from .contrastive_blocked import blocked_loss

__all__ = [
    "IMPLS",
    "NORM_EPS",
    "balanced_anchor_indices",
    "multi_resolution_contrastive_loss",
    "pixel_contrastive_loss",
    "plain_loss",
    "resize_for_contrast",
]

NORM_EPS = 1e-6
IMPLS = ("blocked", "plain")
"""Feature vectors with an L2 norm <= NORM_EPS are treated as zero vectors: their normalised
feature is exactly 0 (similarity 0 with everything) and no gradient flows back into them. This
covers the zero canvas around HRDA's detail window and dead (all-zero after ReLU) pixels, where
``F.normalize`` would return 0 but send back gradients of size 1/eps."""


# ----------------------------------------------------------------------------------------------
# The formula, plainly (impl="plain"): the reference the blocked kernel is tested against
# ----------------------------------------------------------------------------------------------
def plain_loss(u: Tensor, v: Tensor | None, w: Tensor | None, gate: Tensor | None, rho: Tensor | None,
               labels: Tensor, anchors: Tensor, *, inv_tau: float, scale: float | Tensor,
               valid: Tensor | None = None) -> Tensor:
    """The loss of docs/method.md §5 (``v`` None) or §6, with the (M, N) matrices under autograd.

    Args:
        u: (N, D) normalised features of all N pixels (the columns; the anchors are rows of it).
        v: (N, D) normalised cross-resolution (detail) features, or None for the single form.
        w, gate: (N,) learned weight w and window gate c (with ``v``).
        rho: (N,) pixel weights, or None (= 1).
        labels: (N,) int64; anchors: (M,) indices of the anchor pixels.
        inv_tau: 1 / tau; scale: (tau / tau_b) * loss_weight / M.
        valid: (N,) bool, False = ignored pixel (no anchor, positive or negative), or None.
    """
    rows = torch.arange(anchors.numel(), device=anchors.device)
    same = labels[anchors, None] == labels[None, :]  # (M, N): not a negative of anchor i
    if valid is not None:
        same = same | ~valid[None, :]
    pos = same.clone()
    pos[rows, anchors] = False  # P_ij: same label, j != i
    if valid is not None:
        pos &= valid[None, :] & valid[anchors, None]

    def log_prob(cols: Tensor) -> Tensor:  # l_ij = z_ij - log(e^z_ij + sum_k N_ik e^z_ik)
        z = (u[anchors] @ cols.T) * inv_tau
        negatives = torch.logsumexp(z.masked_fill(same, float("-inf")), dim=1, keepdim=True)
        return z - torch.logaddexp(z, negatives)

    with torch.autocast(u.device.type, enabled=False):
        lp = log_prob(u)
        if v is not None:  # s_ij = w_i c_i w_j mixes the LR-LR and LR-HR terms
            s = (w[anchors] * gate[anchors])[:, None] * w[None, :]
            lp = s * lp + (1 - s) * log_prob(v)
        pair = pos.to(u.dtype)
        if rho is not None:  # w_ij = rho_i rho_j
            pair = pair * rho[anchors, None] * rho[None, :]
        per_anchor = (pair * lp).sum(dim=1) / pos.sum(dim=1).clamp_min(1)
        return -scale * per_anchor.sum()


# ----------------------------------------------------------------------------------------------
# Inputs on the contrastive grid
# ----------------------------------------------------------------------------------------------
def resize_for_contrast(
    features: Tensor,
    labels: Tensor,
    weights: Tensor | None = None,
    size: tuple[int, int] = (65, 65),
    align_corners: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Resize fused features, labels and pixel weights to the contrastive grid h x w = ``size``.

    Args:
        features: (B, D, H', W') float fused features (any resolution).
        labels: (B, H, W) integer trainIds, 255 = ignore (any resolution).
        weights: (B, H, W) float pixel weights rho, or None.
        size: the grid (h, w); the release uses (65, 65).
        align_corners: for the bilinear resizes (the release: True).

    Returns:
        (features (B, D, h, w) bilinear, labels (B, h, w) int64 nearest, weights (B, h, w) bilinear
        or None).
    """
    if features.dim() != 4:
        raise ValueError(f"resize_for_contrast: features must be (B, D, H, W), got {tuple(features.shape)}")
    if labels.dim() != 3 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"resize_for_contrast: labels must be (B, H, W) with B={features.shape[0]}, got {tuple(labels.shape)}"
        )
    size = (int(size[0]), int(size[1]))
    feats = F.interpolate(features, size=size, mode="bilinear", align_corners=align_corners)
    labs = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    if weights is None:
        return feats, labs, None
    if weights.shape != labels.shape:
        raise ValueError(
            f"resize_for_contrast: weights must have the labels' shape {tuple(labels.shape)}, "
            f"got {tuple(weights.shape)}"
        )
    wts = F.interpolate(weights[:, None].to(feats.dtype), size=size, mode="bilinear", align_corners=align_corners)
    return feats, labs, wts[:, 0]


# ----------------------------------------------------------------------------------------------
# Anchor sampling
# ----------------------------------------------------------------------------------------------
def _class_quota(counts: list[int], budget: int, generator: torch.Generator | None) -> list[int]:
    """Max-min fair split of ``budget`` anchors over classes holding ``counts`` pixels.

    Water filling: classes smaller than the current fair share are taken whole; the others get the
    level t = floor(rest / classes left), and the remainder (< classes left) adds one anchor to
    that many of them, chosen at random.
    """
    order = sorted(range(len(counts)), key=lambda c: counts[c])
    quota = [0] * len(counts)
    rest = budget
    for pos, c in enumerate(order):
        left = len(order) - pos
        if counts[c] * left <= rest:
            quota[c] = counts[c]
            rest -= counts[c]
            continue
        level, extra = divmod(rest, left)
        tail = order[pos:]
        lucky = torch.randperm(left, generator=generator, device=generator_device(generator))[:extra].tolist()
        for cls in tail:
            quota[cls] = level
        for k in lucky:
            quota[tail[k]] += 1
        break
    return quota


def balanced_anchor_indices(
    labels: Tensor, max_anchors: int, generator: torch.Generator | None = None
) -> Tensor:
    """Pick at most ``max_anchors`` anchor pixels, spread as evenly as possible over the classes.

    Args:
        labels: (N,) integer class of each candidate pixel (every value, 255 included, is a class).
        max_anchors: the cap K >= 1.
        generator: drives the draws (which pixels inside a class, which classes get the remainder).

    Returns:
        (min(K, N),) int64 indices into ``labels``, ascending. Every class present gets
        min(count, t) or t + 1 anchors for one water level t (max-min fair); all N pixels are kept
        when N <= K (no random numbers are drawn then).
    """
    if max_anchors < 1:
        raise ValueError(f"max_anchors must be >= 1, got {max_anchors}")
    n = labels.numel()
    if n <= max_anchors:
        return torch.arange(n, device=labels.device)
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    quota = torch.tensor(_class_quota(counts.tolist(), max_anchors, generator), device=labels.device)
    shuffled = torch.randperm(n, generator=generator, device=generator_device(generator)).to(labels.device)
    # Group the shuffled pixels by class (stable, so the order inside a class stays random) and keep
    # the first quota[c] of each class.
    grouped = shuffled[torch.argsort(inverse[shuffled], stable=True)]
    cls = inverse[grouped]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=labels.device) - starts[cls]
    return grouped[rank < quota[cls]].sort().values


# ----------------------------------------------------------------------------------------------
# Flattening, the release's pixel order, validation
# ----------------------------------------------------------------------------------------------
def _normalize_rows(x: Tensor, eps: float = NORM_EPS) -> Tensor:
    """x / ||x|| per row; rows with ||x|| <= eps become exactly 0 and pass no gradient back."""
    norm = x.norm(dim=1, keepdim=True)
    # where() after clamp: the discarded branch is finite, so its zero gradient stays zero (no NaN).
    return torch.where(norm > eps, x / norm.clamp_min(eps), 0.0)


def _feature_rows(features: Tensor) -> Tensor:
    """(B, D, h, w) -> (B*h*w, D) in image-major order: row b*h*w + n is pixel n of image b.
    Half-precision inputs are computed in float32 (sums of up to N exponentials)."""
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def _release_order(batch: int, pixels: int, device: torch.device) -> Tensor:
    """Index r(b, n) = n*B + b, listed at position b*h*w + n (official_compat pixel pairing).

    The release flattens features pixel-major (row n*B + b holds feature (b, n)) but labels,
    weights and gates image-major (row b*h*w + n holds pixel (b, n)), and then pairs rows by
    position. So the feature of pixel (b, n) is paired with the image-major scalar at flat index
    n*B + b. Keeping the features image-major, the scalars are gathered as ``flat[r]``.
    """
    n = torch.arange(pixels, device=device)
    b = torch.arange(batch, device=device)
    return (n[None, :] * batch + b[:, None]).reshape(-1)


def _check_map(name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape (B, h, w) = {shape} like the features, got {tuple(t.shape)}")


def _check_common(fn: str, features: Tensor, labels: Tensor, weights: Tensor | None, block_size: int,
                  impl: str = "blocked") -> None:
    if impl not in IMPLS:
        raise ValueError(f"{fn}: impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    if features.dim() != 4:
        raise ValueError(f"{fn}: features must be (B, D, h, w), got shape {tuple(features.shape)}")
    b, _, h, w = features.shape
    _check_map(f"{fn}: labels", labels, (b, h, w))
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{fn}: labels must be an integer tensor (trainIds, 255 = ignore), got {labels.dtype}")
    if weights is not None:
        _check_map(f"{fn}: weights", weights, (b, h, w))
    if block_size < 1:
        raise ValueError(f"{fn}: block_size must be >= 1, got {block_size}")


def _pixel_scalars(
    labels: Tensor,
    maps: list[Tensor | None],
    ignore_index: int,
    official_compat: bool,
) -> tuple[Tensor, list[Tensor | None], Tensor | None]:
    """Flatten labels and per-pixel maps (each (B, h, w)) to feature row order.

    Returns (labels (N,), maps (N,) each, valid) over all B*h*w feature rows, where valid is the
    bool mask of non-ignored pixels, or None when every row counts (official_compat: the release
    pairs scalar row n*B + b with feature (b, n) and treats 255 as one more class). Ignored pixels
    are masked, not removed: removing them (boolean indexing) would synchronise an accelerator.
    """
    y = labels.reshape(-1).long()
    flat = [None if t is None else t.reshape(-1) for t in maps]
    if official_compat:
        order = _release_order(labels.shape[0], labels[0].numel(), labels.device)
        return y[order], [None if t is None else t[order] for t in flat], None
    return y, flat, y != ignore_index


def _compact(valid: Tensor | None, *rows: Tensor | None) -> tuple[Tensor | None, ...]:
    """The rows of the valid pixels only (for anchor sampling, which needs them explicitly)."""
    return tuple(t if t is None or valid is None else t[valid] for t in rows)


def _run(
    u: Tensor,
    v: Tensor | None,
    w: Tensor | None,
    gate: Tensor | None,
    rho: Tensor | None,
    labels: Tensor,
    *,
    temperature: float,
    base_temperature: float,
    loss_weight: float,
    max_anchors: int | None,
    generator: torch.Generator | None,
    block_size: int,
    inputs: tuple[Tensor, ...],
    valid: Tensor | None = None,
    impl: str = "blocked",
) -> Tensor:
    """Pick the anchors and run the plain formula or the blocked kernel with scale
    (tau/tau_b) * loss_weight / M.

    ``valid`` (N,) bool masks ignored pixels out (M = its count, kept on the device); with
    ``max_anchors`` the caller passes the valid pixels only."""
    if temperature <= 0 or base_temperature <= 0:
        raise ValueError(f"temperature and base_temperature must be > 0, got {temperature}, {base_temperature}")
    if max_anchors is None:
        anchors = torch.arange(labels.numel(), device=labels.device)
    else:
        anchors = balanced_anchor_indices(labels, max_anchors, generator)
    if anchors.numel() == 0:  # every pixel ignored: a zero that still backpropagates
        return sum(t.sum() for t in inputs) * 0.0
    if valid is None:
        scale = (temperature / base_temperature) * loss_weight / anchors.numel()
    else:  # M = the valid pixels, counted on the device (every row weight is 0 when none is valid)
        scale = (temperature / base_temperature) * loss_weight / valid.sum().clamp_min(1).to(u.dtype)
    if impl == "plain":
        return plain_loss(u, v, w, gate, rho, labels, anchors, inv_tau=1.0 / temperature, scale=scale, valid=valid)
    return blocked_loss(u, v, w, gate, rho, labels, anchors, inv_tau=1.0 / temperature, scale=scale,
                        block_size=block_size, valid=valid)


# ----------------------------------------------------------------------------------------------
# Public losses
# ----------------------------------------------------------------------------------------------
def pixel_contrastive_loss(
    features: Tensor,
    labels: Tensor,
    weights: Tensor | None = None,
    *,
    temperature: float = 1.0,
    base_temperature: float = 1.0,
    ignore_index: int = 255,
    max_anchors: int | None = None,
    official_compat: bool = False,
    generator: torch.Generator | None = None,
    block_size: int = 1024,
    impl: str = "blocked",
) -> Tensor:
    """CLUDA pixel contrastive loss on fused features (docs/method.md §5).

    With the B*h*w pixels flattened, u_i = F_i/||F_i||, z_ij = u_i.u_j/tau,
    P_ij = [y_i = y_j, i != j], N_ij = [y_i != y_j], w_ij = rho_i rho_j::

        l_ij = z_ij - log(exp(z_ij) + sum_k N_ik exp(z_ik))
        L = -(tau/tau_b) (1/M) sum_i [sum_j P_ij w_ij l_ij] / max(1, sum_j P_ij)

    M counts every anchor, including those without positives (they add 0).

    Args:
        features: (B, D, h, w) fused features already on the contrastive grid (see
            :func:`resize_for_contrast`); not detached. Rows with norm <= NORM_EPS count as zero
            vectors (similarity 0, no gradient).
        labels: (B, h, w) int64 trainIds, ``ignore_index`` = ignore.
        weights: (B, h, w) pixel weights rho (the mixed pixel weight; 1 on source); None = all 1.
        temperature: tau (the release: 1, raw cosines).
        base_temperature: tau_b (the release: 1).
        ignore_index: label of ignored pixels (255).
        max_anchors: keep at most this many anchors (rows), spread evenly over the classes present
            (:func:`balanced_anchor_indices`); every valid pixel stays a positive/negative column.
            None = every valid pixel is an anchor.
        official_compat: reproduce the release exactly. (1) ``ignore_index`` is not excluded: it
            is one more class (anchor, positive and negative). (2) With B > 1 features and labels
            refer to different pixels: the release flattens features pixel-major and labels /
            weights image-major, so the label (and weight) used for feature (b, n) is the
            image-major flat entry n*B + b. Example, B = 2 images of h*w = 3 pixels with labels
            [[a0, a1, a2], [c0, c1, c2]], image-major flat [a0, a1, a2, c0, c1, c2]: features
            (0,0), (1,0), (0,1), (1,1), (0,2), (1,2) take a0, a1, a2, c0, c1, c2, i.e. image 0's
            pixels get labels a0, a2, c1 and image 1's get a1, c0, c2. With B = 1 the pairing is
            consistent and, without ignore pixels, compat equals the default.
        generator: random source for ``max_anchors``.
        block_size: anchor rows per block; peak memory is O(block_size * B*h*w), the value does
            not depend on it.
        impl: "blocked" (the memory-saving kernel, :mod:`cluda_kit.uda.contrastive_blocked`) or
            "plain" (:func:`plain_loss`: the formula with (M, N) matrices under autograd, O(M*N)
            memory); equal up to rounding.

    Returns:
        Scalar loss in the dtype of the features (float32 for half inputs). 0 when no pixel is valid.
    """
    fn = "pixel_contrastive_loss"
    _check_common(fn, features, labels, weights, block_size, impl)
    y, (rho,), valid = _pixel_scalars(labels, [weights], ignore_index, official_compat)
    rows = _feature_rows(features)
    if max_anchors is not None:
        rows, y, rho = _compact(valid, rows, y, rho)
        valid = None
    u = _normalize_rows(rows)
    if rho is not None:
        rho = rho.to(u.dtype)
    return _run(
        u, None, None, None, rho, y,
        temperature=temperature, base_temperature=base_temperature, loss_weight=1.0,
        max_anchors=max_anchors, generator=generator, block_size=block_size, inputs=(features,),
        valid=valid, impl=impl,
    )


def multi_resolution_contrastive_loss(
    lr_features: Tensor,
    hr_features: Tensor,
    labels: Tensor,
    weight_map: Tensor,
    crop_mask: Tensor,
    weights: Tensor | None = None,
    *,
    temperature: float = 1.0,
    base_temperature: float = 1.0,
    loss_weight: float = 0.5,
    ignore_index: int = 255,
    official_compat: bool = False,
    max_anchors: int | None = None,
    generator: torch.Generator | None = None,
    block_size: int = 1024,
    impl: str = "blocked",
) -> Tensor:
    """CLUDA's learned-weighted multi-resolution contrastive loss (docs/method.md §6).

    u_i: normalised context (LR) feature, v_j: normalised detail (HR) feature on the same grid
    (zero outside the detail window). For a pair of feature sets (a, b)::

        z_ij(a, b) = a_i.b_j / tau
        l_ij(a, b) = z_ij(a, b) - log(exp(z_ij(a, b)) + sum_k N_ik exp(z_ik(a, b)))

    i.e. the LR anchor u_i is contrasted with the positive b_j and with the negatives b_k of the
    same feature set (for b = v: the HR features of the negatives). Outside the detail window
    v_j = 0, so z_ij(u, v) = 0 there (the release's behaviour). With s_ij = w_i w_j c_i::

        term_ij = s_ij l_ij(u, u) + (1 - s_ij) l_ij(u, v)
        L = loss_weight (tau/tau_b) (1/M) sum_i -[sum_j P_ij w_ij term_ij] / max(1, sum_j P_ij)

    P, N, rho, w_ij = rho_i rho_j and M as in :func:`pixel_contrastive_loss`. The (tau/tau_b)
    factor is the one of §5 (1 in the release, which has no temperature here); with it,
    w c = 1 everywhere gives exactly ``loss_weight * pixel_contrastive_loss(lr_features, ...)``.
    Gradients flow to both feature maps and to ``weight_map`` (the weight head learns only here).

    Args:
        lr_features: (B, D, h, w) context fused features u (before normalisation).
        hr_features: (B, D, h, w) detail fused features v placed on the same grid, 0 outside the
            detail window (zero rows are handled: similarity 0, no gradient, no NaN).
        labels: (B, h, w) int64 trainIds, ``ignore_index`` = ignore.
        weight_map: (B, 1, h, w) or (B, h, w) learned weight w in (0, 1) (sigmoid output).
        crop_mask: (B, h, w) bool c_i: pixel inside the detail window.
        weights: (B, h, w) pixel weights rho or None (= 1).
        temperature, base_temperature, ignore_index, max_anchors, generator, block_size, impl: as
            in :func:`pixel_contrastive_loss`.
        loss_weight: the 0.5 in front of the loss.
        official_compat: the release's quirks: gate c_i = inside the window AND label != 0 (road
            never gets the LR-LR term), 255 is a class, and the pixel pairing of §5 (labels,
            weights, weight_map and gate are image-major scalars paired with pixel-major features).

    Returns:
        Scalar loss (0 when no pixel is valid).
    """
    fn = "multi_resolution_contrastive_loss"
    _check_common(fn, lr_features, labels, weights, block_size, impl)
    if hr_features.shape != lr_features.shape:
        raise ValueError(
            f"{fn}: hr_features must have lr_features' shape {tuple(lr_features.shape)}, got {tuple(hr_features.shape)}"
        )
    shape = tuple(labels.shape)
    if weight_map.dim() == 4:
        if weight_map.shape[1] != 1:
            raise ValueError(f"{fn}: weight_map must be (B, 1, h, w) or (B, h, w), got {tuple(weight_map.shape)}")
        weight_map = weight_map[:, 0]
    _check_map(f"{fn}: weight_map", weight_map, shape)
    _check_map(f"{fn}: crop_mask", crop_mask, shape)
    gate = crop_mask.bool()
    if official_compat:
        gate = gate & (labels != 0)
    y, (rho, w, c), valid = _pixel_scalars(labels, [weights, weight_map, gate], ignore_index, official_compat)
    u_rows, v_rows = _feature_rows(lr_features), _feature_rows(hr_features)
    if max_anchors is not None:
        u_rows, v_rows, y, rho, w, c = _compact(valid, u_rows, v_rows, y, rho, w, c)
        valid = None
    u, v = _normalize_rows(u_rows), _normalize_rows(v_rows.to(u_rows.dtype))
    return _run(
        u, v, w.to(u.dtype), c.to(u.dtype), None if rho is None else rho.to(u.dtype), y,
        temperature=temperature, base_temperature=base_temperature, loss_weight=loss_weight,
        max_anchors=max_anchors, generator=generator, block_size=block_size,
        inputs=(lr_features, hr_features, weight_map),
        valid=valid, impl=impl,
    )
