"""DAFormer: DACS + rare class sampling + the ImageNet feature distance (docs/method.md §3-4).

Rare class sampling is on the data side (``data.rcs``: the source stream draws images of rare
classes more often); the method adds one term to the source pass:

    2. L_FD = λ_FD · mean over thing-class cells of ‖f_student − f_frozen‖₂ on the last encoder
       stage, against a frozen copy of the pretrained encoder (ImageNet in the paper).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..feature_distance import feature_distance_loss
from .base import StepContext, phase
from .dacs import DACS

__all__ = ["DAFormer"]


class DAFormer(DACS):
    """DACS + feature distance (``uda.fd``; off: no term, as in DACS + RCS)."""

    name = "daformer"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        fd = cfg.uda.fd
        self.fd = fd if fd.enabled else None
        self.uses_stages = self.fd is not None
        self._frozen = None  # the frozen features of the current step, see prefetch_source

    def prefetch_source(self, ctx: StepContext, xs: Tensor) -> None:
        """The frozen encoder's last-stage features of the source images, started through
        ``ctx.background`` (with ``train.overlap``: beside the student's source pass)."""
        super().prefetch_source(ctx, xs)
        self._frozen = (ctx.background(self._frozen_features, ctx, xs)
                        if self.fd is not None and ctx.imnet is not None else None)

    def _frozen_features(self, ctx: StepContext, xs: Tensor) -> Tensor:
        with torch.no_grad(), phase("fd"), ctx.autocast():
            return ctx.imnet(self.seg.fd_input(ctx, xs))[-1]

    def source_terms(self, ctx: StepContext, out, xs: Tensor, ys: Tensor) -> dict[str, Tensor]:
        terms = super().source_terms(ctx, out, xs, ys)
        if self.fd is not None and ctx.imnet is not None:
            pending, self._frozen = self._frozen, None
            frozen = pending() if pending is not None else self._frozen_features(ctx, xs)
            with phase("fd"):
                terms["fd"] = feature_distance_loss(
                    out.stages[-1].float(), frozen.float(), ys, thing_classes=self.fd.thing_classes,
                    lambda_fd=self.fd.weight, min_ratio=self.fd.min_ratio)
        return terms

    def describe(self) -> str:
        fd = f"FD λ={self.fd.weight}" if self.fd is not None else "no FD"
        return f"{super().describe()}, {fd}"
