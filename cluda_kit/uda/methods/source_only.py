"""Source-only training (and the target-supervised oracle, which is the same method trained on
labelled target data: the preset's ``data.source`` decides, not the method).

One step: the student on a source crop, pixel cross-entropy against its labels (optionally after
the same strong augmentation the mixed images get, ``uda.source_augment``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor

from ..mixing import strong_augment
from .base import LossGroup, Method, StepContext, phase
from .segmentation import segmentation_for

__all__ = ["SourceOnly", "augment_kwargs"]


def augment_kwargs(aug: Any, generator) -> dict:
    """Keyword arguments of :func:`~cluda_kit.uda.mixing.strong_augment` from ``uda.aug``."""
    return dict(color_jitter_p=aug.color_jitter_p, color_jitter_s=aug.color_jitter_s,
                blur_p=aug.blur_p, blur_sigma=aug.blur_sigma, generator=generator)


class SourceOnly(Method):
    """L = CE(student(x_s), y_s)."""

    name = "source_only"

    def __init__(self, cfg: Any) -> None:
        self.seg = segmentation_for(cfg)
        self.aug = cfg.uda.aug
        self.source_augment = cfg.uda.source_augment

    def source_pass(self, ctx: StepContext, source: dict[str, Tensor]) -> tuple[Any, dict[str, Tensor], Tensor]:
        """1. The student on the source crop (strongly augmented first with ``uda.source_augment``):
        (its output, ``{"ce_src": CE}``, the images it saw)."""
        xs = self.source_images(ctx, source)
        out, terms = self.source_forward(ctx, xs, source["label"])
        return out, terms, xs

    def source_images(self, ctx: StepContext, source: dict[str, Tensor]) -> Tensor:
        """The source images (B, 3, H, W) the student sees: strongly augmented with
        ``uda.source_augment``, else as loaded."""
        xs = source["image"]
        if self.source_augment:
            with phase("mix_augment"):
                xs = strong_augment(xs, **augment_kwargs(self.aug, ctx.generator))
        return xs

    def source_forward(self, ctx: StepContext, xs: Tensor, ys: Tensor) -> tuple[Any, dict[str, Tensor]]:
        """The student's training forward on ``xs`` and its CE against ``ys`` (B, H, W)."""
        with phase("student_source"):
            out = self.seg.student(ctx, xs, return_stages=self.uses_stages)
            terms = {"ce_src": self.seg.seg_loss(ctx, out, ys)}
        return out, terms

    def step(self, ctx: StepContext, source: dict[str, Tensor],
             target: Callable[[], dict[str, Tensor]]) -> Iterator[LossGroup]:
        out, terms, _ = self.source_pass(ctx, source)
        yield LossGroup(terms, outputs=(out,))
