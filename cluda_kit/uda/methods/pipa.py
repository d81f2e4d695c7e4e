"""PiPa's pixel contrast on DAFormer: class-balanced hard/easy anchors at a low temperature
(Chen et al., ACM MM 2023; docs/method.md §11).

DAFormer's step with one more term in the source pass:

    3'. L_PiPa = λ · contrastive(z_s, y_s) on the anchors of a class-balanced hard/easy sampler

- z_s: a projection head (1x1 conv, BN, ReLU, 1x1 conv to 256, L2 norm) on the encoder's four
  stages resized to stride 4 and concatenated (the release's ``ProjectionHead``, ``convmlp``);
  the method owns it and trains it with the student.
- the sampler (:func:`cluda_kit.uda.anchor_sampling.hard_easy_anchor_indices`): classes with
  more than ``max_views`` (100) pixels per image, min(1024 // groups, 100) pixels per (image,
  class), half misclassified ("hard"), half correct ("easy");
- the loss: CLUDA's formula (each positive against itself and every negative) on the sampled
  pixels only, τ = 0.1, τ_b = 0.07, weight 0.1; source batch and ground truth only, from
  iteration 0, no memory.

The release (``chen742/PiPa``, ``PiPa_DAFormer/mmseg/models/decode_heads/decode_head.py``) decides
hard and easy by an auxiliary classifier that no loss trains, and drops no ignore pixel (its
``ignore_label`` is -1, the labels' ignore is 255): here the student's own prediction decides, and
ignore pixels are never anchors. Its patch-wise consistency term trains only an extra head on the
EMA teacher's features (no gradient reaches the student) and is left out.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import ConfigError
from ...data.labels import IGNORE_INDEX
from ...models.heads import StageProjection
from ..anchor_sampling import hard_easy_anchor_indices
from ..contrastive import pixel_contrastive_loss
from .base import StepContext, phase
from .daformer import DAFormer

__all__ = ["PiPa", "pipa_loss"]


def pipa_loss(z: Tensor, labels: Tensor, predictions: Tensor, *, temperature: float = 0.1,
              base_temperature: float = 0.07, max_samples: int = 1024, max_views: int = 100,
              generator: torch.Generator | None = None) -> Tensor:
    """PiPa's pixel contrast of embeddings z (B, P, h, w) with labels and predictions (B, h, w)
    at their resolution: the loss on the pixels of :func:`hard_easy_anchor_indices` (0, with a
    graph, when no class has enough pixels)."""
    idx = hard_easy_anchor_indices(labels, predictions, max_samples=max_samples, max_views=max_views,
                                   ignore_index=IGNORE_INDEX, generator=generator)
    if idx.numel() == 0:
        return z.sum() * 0.0
    feats = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])[idx]
    # the chosen pixels as one row of a (1, P, 1, K) map: every one an anchor and a column
    return pixel_contrastive_loss(feats.T[None, :, None, :], labels.reshape(-1)[idx][None, None, :],
                                  temperature=temperature, base_temperature=base_temperature,
                                  ignore_index=IGNORE_INDEX)


class PiPa(DAFormer):
    """DAFormer + PiPa's pixel contrast on the source pass (``uda.method: pipa``)."""

    name = "pipa"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        if cfg.model.hrda.enabled:
            raise ConfigError("uda.method=pipa: written for the DAFormer network (PiPa_DAFormer); "
                              "set model.hrda.enabled=false")
        self.a = self.args(cfg, weight=0.1, temperature=0.1, base_temperature=0.07,
                           max_samples=1024, max_views=100, proj_dim=256)
        self.uses_stages = True  # the head reads the encoder's stages
        self.head: StageProjection | None = None

    def setup(self, student: nn.Module) -> nn.Module:
        width = sum(student.encoder.out_channels)
        self.head = StageProjection(student.encoder.out_channels, width, self.a.proj_dim,
                                    out_bn_relu=False, align_corners=True)
        return self.head

    def source_terms(self, ctx: StepContext, out, xs: Tensor, ys: Tensor) -> dict[str, Tensor]:
        terms = super().source_terms(ctx, out, xs, ys)
        with phase("contrastive"):
            z = self.head(out.stages)
            size = z.shape[-2:]
            labels = F.interpolate(ys[:, None].float(), size=size, mode="nearest")[:, 0].long()
            pred = F.interpolate(out.logits.detach().float(), size=size, mode="bilinear",
                                 align_corners=False).argmax(1)
            loss = pipa_loss(z, labels, pred, temperature=self.a.temperature,
                             base_temperature=self.a.base_temperature, max_samples=self.a.max_samples,
                             max_views=self.a.max_views, generator=ctx.generator)
            terms["pipa"] = self.a.weight * loss
        return terms

    def describe(self) -> str:
        a = self.a
        return (f"{super().describe()}, PiPa pixel contrast λ={a.weight} τ={a.temperature} "
                f"τ_b={a.base_temperature} anchors ≤{a.max_samples}, ≤{a.max_views} per class")
