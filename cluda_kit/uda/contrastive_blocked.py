"""The blocked, memory-saving kernel of the CLUDA contrastive losses (``impl="blocked"``, the
default of :mod:`cluda_kit.uda.contrastive`, which prepares its inputs and holds the plain
formula it is tested against).

The plain formula builds (M, N) similarity matrices under autograd: O(N^2) memory, about 2.6 GB on
the CPU for the release's 2x65x65 anchors (bench/results/release_contrastive_memory.md). Here one custom autograd Function walks the anchors in
row blocks of ``block_size`` and accumulates the analytic gradients (derived below) block by
block, so only O(block_size * N) scratch memory is ever alive and O(N * D) is kept for backward.
The value equals the plain one up to rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["blocked_loss"]


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



def blocked_loss(u: Tensor, v: Tensor | None, w: Tensor | None, gate: Tensor | None, rho: Tensor | None,
                 labels: Tensor, anchors: Tensor, *, inv_tau: float, scale: float | Tensor,
                 block_size: int, valid: Tensor | None = None) -> Tensor:
    """The loss of :class:`_Pairs` (arguments as its fields), gradients computed blockwise."""
    return _BlockedContrastive.apply(u, v, w, gate, rho, labels, anchors, inv_tau, scale, block_size,
                                     torch.is_grad_enabled(), valid)
