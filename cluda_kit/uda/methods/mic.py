"""MIC's masked image consistency (docs/method.md §2), a part any self-training method can hold.

The student sees the strongly augmented target image with random blocks masked out and is trained
against the teacher's pseudo-labels of the unmasked image, with their weights:
L_MIC = λ_MIC · CE(student(mask(aug(x_t))), ŷ_t; q).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from ..masking import block_mask, mask_images
from ..mixing import strong_augment
from ...data.transforms import normalize
from .base import StepContext

__all__ = ["MaskedImageConsistency"]


class MaskedImageConsistency:
    """Args: ``mic``: the ``uda.mic`` config (mask_ratio, block_size, weight)."""

    def __init__(self, mic: Any) -> None:
        self.mask_ratio = mic.mask_ratio
        self.block_size = mic.block_size
        self.weight = mic.weight  # λ_MIC
        self.blur_per_image = mic.blur_per_image  # the release: one blur σ for the batch

    def loss(self, ctx: StepContext, seg, xt: Tensor, pl: Tensor, pw: Tensor,
             aug_kwargs: dict) -> tuple[Tensor, Any]:
        """(λ_MIC · weighted CE, the student's output) for float [0, 1] target images (B, 3, H, W),
        pseudo-labels (B, H, W) and their weights (B, H, W)."""
        xt_aug = strong_augment(xt, **aug_kwargs, blur_per_image=self.blur_per_image)
        keep = block_mask(xt_aug, block_size=self.block_size, ratio=self.mask_ratio,
                          generator=ctx.generator).to(ctx.device)
        out = seg.student(ctx, mask_images(normalize(xt_aug), keep), normalized=True)
        return self.weight * seg.seg_loss(ctx, out, pl, pw), out
