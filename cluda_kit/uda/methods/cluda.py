"""CLUDA: DAFormer (or HRDA) + the pixel contrastive loss on the fused feature (docs/method.md §5).

Two terms, one in each pass:

    3. L_CL(source) = λ_src · contrastive(fused feature of x_s, y_s)
    8. L_CL(mixed)  = λ_mix · contrastive(fused feature of x_mix, y_mix, weights w_mix)

Features (B, D, h, w) and labels are resized to ``loss.contrastive.grid`` first. With HRDA's
feat_weighter, the learned-weighted multi-resolution form replaces the single-resolution one: the
context feature u, the detail feature v placed on the full-resolution grid, the detail window as
crop mask and the learned weight map, all on the same grid.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...data.labels import IGNORE_INDEX
from ..contrastive import multi_resolution_contrastive_loss, pixel_contrastive_loss, resize_for_contrast
from .base import StepContext, phase
from .daformer import DAFormer

__all__ = ["CLUDA", "contrastive_term"]


def contrastive_term(ctx: StepContext, c: Any, out, labels: Tensor, weights: Tensor | None) -> Tensor:
    """The contrastive loss of a student output (before the source/mix weight) with the settings
    ``c`` (``loss.contrastive``): multi-resolution for an HRDA output with a weight map, else
    single-resolution on the (context) fused feature (or its projection)."""
    feats = out.embedding if out.embedding is not None else out.fused
    size = tuple(c.grid)
    common = dict(temperature=c.temperature, base_temperature=c.base_temperature,
                  ignore_index=IGNORE_INDEX, max_anchors=c.max_anchors,
                  official_compat=c.official_compat, generator=ctx.generator)
    if getattr(out, "weight_map", None) is None:
        f, lab, w = resize_for_contrast(feats.float(), labels, weights, size=size)
        f, lab, w = ctx.gather(f, True), ctx.gather(lab), ctx.gather(w)
        return pixel_contrastive_loss(f, lab, w, **common)
    detail = out.detail_embedding if out.detail_embedding is not None else out.detail_fused
    lr, lab, w = resize_for_contrast(feats.float(), labels, weights, size=size)
    hr = F.interpolate(out.detail_canvas(detail.float()), size=size, mode="bilinear", align_corners=True)
    wmap = F.interpolate(out.weight_map.float(), size=size, mode="bilinear", align_corners=True)
    crop = F.interpolate(out.window_mask(), size=size, mode="nearest")[:, 0]
    crop = crop.expand(lab.shape[0], -1, -1).to(torch.uint8)
    lr, hr, wmap = ctx.gather(lr, True), ctx.gather(hr, True), ctx.gather(wmap, True)
    lab, w, crop = ctx.gather(lab), ctx.gather(w), ctx.gather(crop)
    return multi_resolution_contrastive_loss(lr, hr, lab, wmap, crop.bool(), w,
                                             loss_weight=c.multires_weight, **common)


class CLUDA(DAFormer):
    """DAFormer + contrastive terms on the source and the mixed pass (``loss.contrastive``)."""

    name = "cluda"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.cl = cfg.loss.contrastive
        self.source_weight = self.cl.source_weight  # λ_src
        self.mix_weight = self.cl.mix_weight        # λ_mix

    def source_terms(self, ctx: StepContext, out, xs: Tensor, ys: Tensor) -> dict[str, Tensor]:
        terms = super().source_terms(ctx, out, xs, ys)
        if self.source_weight > 0:
            with phase("contrastive"):
                terms["cl_src"] = self.source_weight * contrastive_term(ctx, self.cl, out, ys, None)
        return terms

    def mix_terms(self, ctx: StepContext, out, y_mix: Tensor, w_mix: Tensor) -> dict[str, Tensor]:
        terms = super().mix_terms(ctx, out, y_mix, w_mix)
        if self.mix_weight > 0:
            with phase("contrastive"):
                terms["cl_mix"] = self.mix_weight * contrastive_term(ctx, self.cl, out, y_mix, w_mix)
        return terms

    def describe(self) -> str:
        return (f"{super().describe()}, contrastive λ_src={self.source_weight} λ_mix={self.mix_weight} "
                f"τ={self.cl.temperature}")
