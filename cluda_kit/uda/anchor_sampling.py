"""Which pixels a pixel-contrastive loss contrasts: class-balanced hard/easy anchor sampling
(ContrastiveSeg, Wang et al. ICCV 2021, as PiPa uses it; docs/method.md §11).

A sampler ("miner") is kept apart from the loss formula: it returns indices into the flattened
pixels, and the loss (:func:`cluda_kit.uda.contrastive.pixel_contrastive_loss`) is then computed
on the chosen pixels only, each of them both an anchor and a contrast sample.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..runtime import generator_device

__all__ = ["hard_easy_anchor_indices"]


def hard_easy_anchor_indices(labels: Tensor, predictions: Tensor, *, max_samples: int = 1024,
                             max_views: int = 100, ignore_index: int = 255,
                             generator: torch.Generator | None = None) -> Tensor:
    """PiPa's / ContrastiveSeg's ``_hard_anchor_sampling``, as indices into the flattened pixels.

    For every image b and class c (not ``ignore_index``) with more than ``max_views`` pixels in
    that image, one group; K groups in all. Each group draws V = min(max_samples // K, max_views)
    of its pixels without replacement: ⌊V/2⌋ "hard" ones (predicted as another class) and the rest
    "easy" (predicted as c); when one kind has fewer than V/2, all of it is taken and the other
    fills the rest.

    Args:
        labels: (B, h, w) int64 class of each pixel (ground truth at the feature resolution).
        predictions: (B, h, w) int64 predicted class of each pixel.
        max_samples: the total budget (1024).
        max_views: the per-group cap, and the minimum group size (100).
        ignore_index: never a group.
        generator: drives the draws.

    Returns:
        (K * V,) int64 indices into ``labels.flatten()``, grouped by (image, class) in ascending
        order; empty when no class qualifies.
    """
    if labels.shape != predictions.shape or labels.dim() != 3:
        raise ValueError(f"hard_easy_anchor_indices: labels and predictions must be (B, h, w) of "
                         f"one shape, got {tuple(labels.shape)} and {tuple(predictions.shape)}")
    b, h, w = labels.shape
    flat_y, flat_p = labels.reshape(b, -1), predictions.reshape(b, -1)
    groups = []
    for i in range(b):
        classes, counts = torch.unique(flat_y[i], return_counts=True)
        groups += [(i, int(c)) for c, n in zip(classes.tolist(), counts.tolist())
                   if c != ignore_index and n > max_views]
    if not groups:
        return torch.zeros(0, dtype=torch.long, device=labels.device)
    views = min(max_samples // len(groups), max_views)
    dev = generator_device(generator)
    picked = []
    for i, c in groups:
        in_class = flat_y[i] == c
        hard = torch.nonzero(in_class & (flat_p[i] != c)).flatten()
        easy = torch.nonzero(in_class & (flat_p[i] == c)).flatten()
        half = views / 2
        if hard.numel() >= half and easy.numel() >= half:
            n_hard = views // 2
            n_easy = views - n_hard
        elif hard.numel() >= half:  # too few easy ones: all of them, hard ones fill up
            n_easy = easy.numel()
            n_hard = views - n_easy
        else:                       # too few hard ones: all of them, easy ones fill up
            n_hard = hard.numel()
            n_easy = views - n_hard
        hard = hard[torch.randperm(hard.numel(), generator=generator, device=dev)[:n_hard].to(hard.device)]
        easy = easy[torch.randperm(easy.numel(), generator=generator, device=dev)[:n_easy].to(easy.device)]
        picked.append(torch.cat([hard, easy]) + i * h * w)
    return torch.cat(picked)
