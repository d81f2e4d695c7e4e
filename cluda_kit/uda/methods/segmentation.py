"""How a method runs the segmentation network and scores it: the plain single-resolution network,
or HRDA's context + detail multi-resolution one (docs/method.md §6). Every difference between the
two lives here, so that a method's step reads the same for both.

- ``student(ctx, images)``: the training forward (HRDA: context crop + a detail window, random or
  max-entropy);
- ``seg_loss(ctx, out, labels, weights)``: pixel CE (HRDA: 0.9 CE(fused) + 0.1 CE(detail));
- ``teacher_logits(ctx, images)``: the teacher's prediction (HRDA: its sliding-window inference);
- ``fd_input(images)``: the frozen encoder's input (HRDA: the context image).
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ...data.labels import IGNORE_INDEX
from ...data.transforms import normalize
from ...models.hrda import crop_to_box
from .base import StepContext

__all__ = ["cross_entropy", "PlainSegmentation", "HRDASegmentation", "segmentation_for"]


def cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor | None = None,
                  ignore_index: int = IGNORE_INDEX, mean_over_all: bool = False) -> Tensor:
    """Pixel CE with optional per-pixel weights.

    logits (B, C, h, w) are upsampled bilinearly to the label size (B, H, W). The mean divides by
    the number of labelled pixels, or by all B*H*W pixels with ``mean_over_all`` (the release).
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    if weights is not None:
        loss = loss * weights
    denom = labels.numel() if mean_over_all else (labels != ignore_index).sum().clamp_min(1)
    return loss.sum() / denom


class PlainSegmentation:
    """A single-resolution segmentor (encoder + decoder)."""

    def __init__(self, ce_mean_over_all: bool = False) -> None:
        self.ce_mean_over_all = ce_mean_over_all

    def student(self, ctx: StepContext, images: Tensor, *, window: str = "random", **kw: Any):
        """Student training forward on float [0, 1] images (B, 3, H, W) -> SegOutput."""
        return ctx.forward(ctx.train_net, images, **kw)

    def seg_loss(self, ctx: StepContext, out, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """Pixel CE of a student output against (B, H, W) labels, optional (B, H, W) weights."""
        return cross_entropy(out.logits, labels, weights, mean_over_all=self.ce_mean_over_all)

    def teacher_logits(self, ctx: StepContext, images: Tensor) -> Tensor:
        """Teacher logits (B, C, h, w), float32."""
        return ctx.forward(ctx.teacher, images).logits.float()

    def fd_input(self, ctx: StepContext, images: Tensor) -> Tensor:
        """The frozen encoder's input: the normalised image."""
        return normalize(images)

    def mix_window(self, it: int) -> str:
        return "random"


class HRDASegmentation(PlainSegmentation):
    """HRDA: the student is an :class:`~cluda_kit.models.hrda.HRDASegmentor`.

    Args:
        ce_mean_over_all: see :func:`cross_entropy`.
        entropy_window_after: the mixed batch's detail window is the max-entropy one after this
            step on (None: always random).
    """

    def __init__(self, ce_mean_over_all: bool = False, entropy_window_after: int | None = None) -> None:
        super().__init__(ce_mean_over_all)
        self.entropy_window_after = entropy_window_after

    def student(self, ctx: StepContext, images: Tensor, *, window: str = "random", **kw: Any):
        """Context + detail training forward; the detail window drawn from ``ctx.generator``
        (``window="random"``) or chosen by the context prediction's entropy (``"entropy"``)."""
        return ctx.forward(ctx.train_net, images, window=window, generator=ctx.generator, **kw)

    def seg_loss(self, ctx: StepContext, out, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """(1 - λ_d) CE(fused) + λ_d CE(detail logits, labels cropped to the detail window)."""
        lam = ctx.student.detail_loss_weight
        loss = (1.0 - lam) * super().seg_loss(ctx, out, labels, weights)
        if lam > 0:
            crop_w = crop_to_box(weights, out.box) if weights is not None else None
            loss = loss + lam * cross_entropy(out.detail_logits, crop_to_box(labels, out.box), crop_w,
                                              mean_over_all=self.ce_mean_over_all)
        return loss

    def teacher_logits(self, ctx: StepContext, images: Tensor) -> Tensor:
        """HRDA inference (whole context + sliding detail windows), whatever the teacher's mode."""
        return ctx.forward(ctx.teacher, images, inference=True).logits.float()

    def fd_input(self, ctx: StepContext, images: Tensor) -> Tensor:
        """The context image (the frozen encoder sees what the student's context branch sees)."""
        return ctx.student.context_input(normalize(images))

    def mix_window(self, it: int) -> str:
        after = self.entropy_window_after  # the release: `if local_iter > 12000` (after, not from)
        return "entropy" if after is not None and it > after else "random"


def segmentation_for(cfg: Any) -> PlainSegmentation:
    """The segmentation part of a config: HRDA when ``model.hrda.enabled``."""
    if cfg.model.hrda.enabled:
        return HRDASegmentation(cfg.loss.ce_mean_over_all, cfg.model.hrda.entropy_window_after)
    return PlainSegmentation(cfg.loss.ce_mean_over_all)
