"""Pixels contrasted against class statistics instead of other pixels: SePiCo's ProtoCL and
DistCL (Xie et al., TPAMI 2023; docs/method.md §11).

- :class:`ClassStatistics` keeps, per class c, the running mean μ_c and the diagonal variance σ²_c
  of (L2-normalised) features and the number of pixels N_c seen, updated from each batch by the
  count-weighted running formulas (exact over everything seen, not a fixed momentum).
- :func:`proto_contrastive_loss` (ProtoCL): L = mean_i CE([z_i·μ_c / τ]_c, y_i).
- :func:`dist_contrastive_loss` (DistCL): the same CE over logits z_i·μ_c/τ + z_i²·σ²_c/(2τ²)
  plus z_i²·σ²_{y_i}/(2τ²), an upper bound of the expected loss over features drawn from
  N(μ_c, diag σ²_c).
- :func:`proto_regularizer`: (1/(C ln C)) Σ_c log softmax_c(z̄·μ/τ), z̄ the batch's mean feature,
  added to both as the release adds it.

τ = 100 in the release (``contrast_temp``): the similarities are divided by it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClassStatistics", "proto_contrastive_loss", "dist_contrastive_loss", "proto_regularizer",
           "valid_pixels"]


def valid_pixels(features: Tensor, labels: Tensor, ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """(B, D, h, w) features and (B, h, w) labels -> (N, D) features and (N,) labels of the pixels
    whose label is not ``ignore_index``."""
    if features.shape[0] != labels.shape[0] or features.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"valid_pixels: features {tuple(features.shape)} and labels "
                         f"{tuple(labels.shape)} must share B, h, w")
    f = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    y = labels.reshape(-1)
    keep = y != ignore_index
    return f[keep], y[keep]


class ClassStatistics(nn.Module):
    """Per-class feature mean (C, D), diagonal variance (C, D) and pixel count (C,), as buffers.

    All start at 0. For a batch holding n_c pixels of class c with mean m_c and (biased)
    per-dimension variance v_c, and w_c = n_c / (n_c + N_c)::

        σ²_c ← (1 − w_c) σ²_c + w_c v_c + w_c (1 − w_c) (μ_c − m_c)²
        μ_c  ← (1 − w_c) μ_c + w_c m_c,        N_c ← N_c + n_c

    i.e. the mean and variance of every feature seen so far; absent classes are unchanged.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_classes, dim))
        self.register_buffer("var", torch.zeros(num_classes, dim))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.float64))

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Fold in (N, D) features with (N,) class labels in [0, C)."""
        c = self.mean.shape[0]
        f = features.detach().to(self.mean.dtype)
        onehot = F.one_hot(labels, c).to(f.dtype)             # (N, C)
        n = onehot.sum(0)                                     # (C,)
        present = n > 0
        m = (onehot.T @ f) / n.clamp_min(1)[:, None]          # batch means
        v = (onehot.T @ f.pow(2)) / n.clamp_min(1)[:, None] - m.pow(2)
        w = (n.double() / (n.double() + self.count).clamp_min(1)).to(f.dtype)[:, None]
        w = torch.where(present[:, None], w, torch.zeros_like(w))
        self.var.copy_((1 - w) * self.var + w * v.clamp_min(0) + w * (1 - w) * (self.mean - m).pow(2))
        self.mean.copy_((1 - w) * self.mean + w * m)
        self.count.add_(n.double())


def proto_regularizer(z: Tensor, mean: Tensor, temperature: float) -> Tensor:
    """(1/(C ln C)) Σ_c log softmax_c(z̄·μ_c/τ) of (N, D) features z, z̄ their mean; 0 for N = 0."""
    if z.shape[0] == 0:
        return z.sum() * 0.0
    c = mean.shape[0]
    sim = z.mean(0, keepdim=True) @ mean.T / temperature
    return torch.log_softmax(sim, dim=1).sum() / (c * math.log(c))


def proto_contrastive_loss(z: Tensor, labels: Tensor, mean: Tensor, temperature: float = 100.0) -> Tensor:
    """ProtoCL: mean over the N pixels of CE(z_i·μ/τ, y_i); z (N, D), labels (N,), mean (C, D)
    (no gradient). 0 (with a graph) for N = 0."""
    if z.shape[0] == 0:
        return z.sum() * 0.0
    return F.cross_entropy(z @ mean.T / temperature, labels)


def dist_contrastive_loss(z: Tensor, labels: Tensor, mean: Tensor, var: Tensor,
                          temperature: float = 100.0) -> Tensor:
    """DistCL: mean over pixels of CE(z·μ/τ + z²·σ²/(2τ²), y) + z_i²·σ²_{y_i}/(2τ²); shapes as
    :func:`proto_contrastive_loss`, var (C, D)."""
    if z.shape[0] == 0:
        return z.sum() * 0.0
    spread = z.pow(2) @ var.T / (2 * temperature ** 2)        # (N, C)
    logits = z @ mean.T / temperature + spread
    return (F.cross_entropy(logits, labels, reduction="none") + spread.gather(1, labels[:, None])[:, 0]).mean()
