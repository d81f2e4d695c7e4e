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

Memory
------
The release builds the full (N, N) similarity matrix under autograd (O(N^2) memory, 6.5 GB on
the CPU for 2x65x65 anchors). Here both losses run through one custom autograd Function that
walks the anchors in row blocks of ``block_size`` and accumulates the analytic gradients (derived
in the comment above ``_Pairs``) block by block, so only O(block_size * N) scratch memory is ever
alive and O(N * D) is kept for backward. The value equals the full-matrix one up to rounding.
``bench/contrastive_memory.py`` measures time and peak memory against a plain implementation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..runtime import generator_device

__all__ = [
    "NORM_EPS",
    "balanced_anchor_indices",
    "multi_resolution_contrastive_loss",
    "pixel_contrastive_loss",
    "resize_for_contrast",
]

NORM_EPS = 1e-6
"""Feature vectors with an L2 norm <= NORM_EPS are treated as zero vectors: their normalised
feature is exactly 0 (similarity 0 with everything) and no gradient flows back into them. This
covers the zero canvas around HRDA's detail window and dead (all-zero after ReLU) pixels, where
``F.normalize`` would return 0 but send back gradients of size 1/eps."""


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
# The blocked loss (one autograd Function for both losses)
# ----------------------------------------------------------------------------------------------
# Notation for one anchor row i. Columns split into positives P(i) (same label, j != i), negatives
# N(i) (other label) and the anchor itself. With lse_i = log sum_{k in N(i)} e^{z_ik} (-inf when
# N(i) is empty) and x_ij = lse_i - z_ij:
#     l_ij = z_ij - log(e^{z_ij} + e^{lse_i}) = -softplus(x_ij) =: -q_ij          (q_ij >= 0)
# lse_i is computed with the negatives' own maximum m_i (every exponent <= 0, the largest term is
# e^0 = 1) and q with softplus, so no exponential of a large number is formed and nothing
# underflows to log(0): stable for any tau (0.07, 0.01, ...). (Subtracting the maximum over all
# columns, the anchor's own 1/tau, and exponentiating both terms of the log, as the release does,
# gives log(0) in float32 once tau <= ~0.02.)
#
# Gradient. A loss L = sum_ij K_ij q_ij with K supported on the positives (K_ij = the pair's
# coefficient) depends on z through two routes. z_ij of a positive appears only in its own q_ij
# (each positive is contrasted with itself and the negatives, never with the other positives):
#     dq_ij/dz_ij = -sigmoid(x_ij) =: -sigma_ij
# z_ik of a negative appears in every q_ij of the row through the shared lse_i:
#     dq_ij/dz_ik = sigma_ij * dlse_i/dz_ik = sigma_ij * p_ik,    p_ik = e^{z_ik - lse_i}
# (p_i is the softmax over the negatives, e^{z_ik - m_i} / S_i from the lse computation).
# With H_ij = K_ij sigma_ij and R_i = sum_j H_ij:
#     dL/dz_ij = -H_ij (positives),   dL/dz_ik = R_i p_ik (negatives),   0 (the anchor itself).
# Both sigma and p lie in [0, 1]. Finally z_ij = a_i . c_j / tau (a = anchor rows of u, c = the
# columns, u or v):  dL/da_i = sum_j dL/dz_ij c_j / tau,  dL/dc_j = sum_i dL/dz_ij a_i / tau.
# Pair weights: s_ij = w_i c_i w_j and rho_i rho_j are rank-one, so their gradients are two
# matrix-vector products per block (row role and column role of each pixel).
#
# Time and memory. Because the loss is a scalar, these gradients are accumulated during the
# forward sweep (three matrix products per block and feature set, as many as plain autograd does)
# and backward only scales them by the incoming gradient; recomputing the similarities in backward
# instead costs a fourth matrix product and a second pass of every elementwise operation. What is
# kept between forward and backward is O(N*D) (the feature gradients); the (b, N) block buffers are
# freed after each block, so peak memory is O(block_size * N) instead of O(N^2).
@dataclass(frozen=True)
class _Pairs:
    """The flattened problem: N pixels (columns), M anchors (rows).

    loss = scale * sum_ij P_ij rho_i rho_j T_ij / max(1, |P(i)|) with T_ij = q_ij(u, u) when ``v`` is
    None and T_ij = s_ij q_ij(u, u) + (1 - s_ij) q_ij(u, v), s_ij = w_i c_i w_j, otherwise.
    """

    u: Tensor  # (N, D) anchor/column features (normalised)
    v: Tensor | None  # (N, D) cross-resolution column features (normalised), or None
    w: Tensor | None  # (N,) learned weight (with v)
    gate: Tensor | None  # (N,) c_i in {0, 1} (with v)
    rho: Tensor | None  # (N,) pixel weights, None = 1
    labels: Tensor  # (N,) int64
    anchors: Tensor  # (M,) int64 indices into the N pixels, each used once
    inv_tau: float
    scale: float | Tensor  # (tau/tau_b) * loss_weight / M; the minus sign of L is in q = -l
    valid: Tensor | None = None  # (N,) bool: False = ignored pixel (no anchor, positive or negative)


def _log_terms(anchor_rows: Tensor, cols: Tensor, same: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One feature set's share of a row block, z = anchor_rows cols^T (anchor rows already / tau).

    ``same`` (b, N) marks the non-negatives. Returns x = lse - z, q = softplus(x) = -l, and the
    negatives' e^{z_ik - m_i} (0 off the negatives) with its row sums S_i = e^{lse_i - m_i}
    (>= 1 with negatives, 0 without), m_i the negatives' row maximum.
    """
    z = anchor_rows @ cols.T
    e = z.masked_fill(same, float("-inf"))
    m = e.amax(dim=1, keepdim=True).nan_to_num_(neginf=0.0)  # rows without negatives: m = 0, e = 0
    e.sub_(m).exp_()
    s = e.sum(dim=1, keepdim=True)
    x = z.neg_().add_(s.log().add_(m))
    # threshold 40: exact to e^-40 in float64, and exp(40) is still finite in float32
    return x, F.softplus(x, threshold=40.0), e, s


def _class_sizes(labels: Tensor) -> Tensor:
    """(N,) number of pixels that carry each pixel's label (any integer values). Sort and
    ``searchsorted`` keep every shape static: no host synchronisation, unlike ``torch.unique``."""
    ordered = labels.sort().values
    return torch.searchsorted(ordered, labels, right=True) - torch.searchsorted(ordered, labels)


def _logit_grad(x: Tensor, k: Tensor, e: Tensor, s: Tensor) -> Tensor:
    """dL/dz (b, N) for L = sum_ij k_ij q_ij (k zero off the positives); consumes ``x`` and ``e``."""
    h = x.sigmoid_().mul_(k)  # H = K sigma
    # p = e / S is the negatives' softmax; S >= 1 wherever a row has negatives
    return e.mul_(h.sum(dim=1, keepdim=True) / s.clamp_min(1.0)).sub_(h)


def _sweep(p: _Pairs, need: tuple[bool, bool, bool, bool], block_size: int):
    """Loss and the requested gradients (d/du, d/dv, d/dw, d/drho), anchor block by anchor block."""
    u, v, w, gate, rho, labels = p.u, p.v, p.w, p.gate, p.rho, p.labels
    du, dv, dw, drho = (torch.zeros_like(t) if n else None for t, n in zip((u, v, w, rho), need))
    # scale / max(1, |P(i)|) for every pixel: |P(i)| = pixels of i's class minus i itself
    row_all = p.scale / (_class_sizes(labels) - 1).clamp_min(1).to(u.dtype)
    total = u.new_zeros(())

    def backprop(x, k, e, s, cols, d_cols, a, ua):
        if du is None and d_cols is None:
            return
        dz = _logit_grad(x, k, e, s)
        if du is not None:  # the anchors are rows of u
            du.index_add_(0, a, dz @ cols, alpha=p.inv_tau)
        if d_cols is not None:
            d_cols.addmm_(dz.T, ua, alpha=p.inv_tau)

    for start in range(0, p.anchors.numel(), block_size):
        a = p.anchors[start : start + block_size]
        ua = u[a]
        ua_tau = ua * p.inv_tau
        same = labels[a, None] == labels[None, :]
        if p.valid is not None:  # ignored columns are no negatives ...
            same |= ~p.valid[None, :]
        pos = same.clone()
        pos.scatter_(1, a[:, None], False)  # no self-pairs (a scalar fill: no host copy)
        if p.valid is not None:  # ... and no positives, and ignored rows are no anchors
            pos &= p.valid[None, :] & p.valid[a, None]
        row = row_all[a] if rho is None else row_all[a] * rho[a]
        base = pos.to(u.dtype).mul_(row[:, None])  # scale P_ij rho_i rho_j / max(1, |P(i)|)
        if rho is not None:
            base.mul_(rho[None, :])
        x, q_uu, e, s = _log_terms(ua_tau, u, same)
        if v is None:
            total += torch.dot(base.view(-1), q_uu.view(-1))
            term = q_uu
            backprop(x, base, e, s, u, du, a, ua)
        else:
            wc = w[a] * gate[a]
            s_pair = wc[:, None] * w[None, :]  # s_ij = w_i c_i w_j
            k_uu = base * s_pair
            total += torch.dot(k_uu.view(-1), q_uu.view(-1))
            backprop(x, k_uu, e, s, u, du, a, ua)
            x, q_uv, e, s = _log_terms(ua_tau, v, same)
            diff = q_uu.sub_(q_uv)
            term = torch.addcmul(q_uv, diff, s_pair) if drho is not None else None
            if dw is not None:  # dL/ds_ij = base_ij (q_uu - q_uv)
                ds = diff.mul_(base)
                dw.index_add_(0, a, gate[a] * (ds @ w))
                dw.addmv_(ds.T, wc)
            k_uv = base.sub_(k_uu)  # base (1 - s)
            total += torch.dot(k_uv.view(-1), q_uv.view(-1))
            backprop(x, k_uv, e, s, v, dv, a, ua)
        if drho is not None:  # dL/d(rho_i rho_j) = scale P_ij / max(1, |P(i)|) T_ij
            pt = torch.where(pos, term, 0.0)
            drho.index_add_(0, a, row_all[a] * (pt @ rho))
            drho.addmv_(pt.T, row_all[a] * rho[a])
    return total, du, dv, dw, drho


class _BlockedContrastive(torch.autograd.Function):
    """The blocked loss of ``_Pairs`` as an autograd Function.

    Inputs u (N, D), v (N, D) | None, w (N,) | None, rho (N,) | None are differentiable; gate (N,)
    is a 0/1 mask, labels (N,) and anchors (M,) are integer tensors. The gradients are computed in
    the forward sweep when ``grad_enabled`` (see the note above ``_Pairs``); backward scales them.
    """

    @staticmethod
    def forward(ctx, u, v, w, gate, rho, labels, anchors, inv_tau, scale, block_size, grad_enabled, valid):
        need_u, need_v, need_w, _, need_rho = (grad_enabled and n for n in ctx.needs_input_grad[:5])
        p = _Pairs(u, v, w, gate, rho, labels, anchors, inv_tau, scale, valid)
        with torch.autocast(u.device.type, enabled=False):
            total, *grads = _sweep(p, (need_u, need_v, need_w, need_rho), block_size)
        ctx.save_for_backward(*grads)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        du, dv, dw, drho = (None if g is None else g * grad_out for g in ctx.saved_tensors)
        return du, dv, dw, None, drho, None, None, None, None, None, None, None


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


def _check_common(fn: str, features: Tensor, labels: Tensor, weights: Tensor | None, block_size: int) -> None:
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
) -> Tensor:
    """Pick the anchors and run the blocked Function with scale (tau/tau_b) * loss_weight / M.

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
    return _BlockedContrastive.apply(
        u, v, w, gate, rho, labels, anchors, 1.0 / temperature, scale, block_size, torch.is_grad_enabled(),
        valid,
    )


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

    Returns:
        Scalar loss in the dtype of the features (float32 for half inputs). 0 when no pixel is valid.
    """
    fn = "pixel_contrastive_loss"
    _check_common(fn, features, labels, weights, block_size)
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
        valid=valid,
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
        temperature, base_temperature, ignore_index, max_anchors, generator, block_size: as in
            :func:`pixel_contrastive_loss`.
        loss_weight: the 0.5 in front of the loss.
        official_compat: the release's quirks: gate c_i = inside the window AND label != 0 (road
            never gets the LR-LR term), 255 is a class, and the pixel pairing of §5 (labels,
            weights, weight_map and gate are image-major scalars paired with pixel-major features).

    Returns:
        Scalar loss (0 when no pixel is valid).
    """
    fn = "multi_resolution_contrastive_loss"
    _check_common(fn, lr_features, labels, weights, block_size)
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
        valid=valid,
    )
