"""SePiCo on DAFormer: pixels contrasted against class statistics of the EMA teacher's source
features (Xie et al., TPAMI 2023; docs/method.md §11).

DAFormer's step, plus (``variant``: ``dist``, SePiCo's best, or ``proto``):

    every step   the EMA teacher's embedding of the source batch updates the per-class running
                 mean μ_c and variance σ²_c (ground-truth labels, :class:`ClassStatistics`)
    3'. (t ≥ start)  L_src = λ · (L_CL(z_s, y_s) + λ_reg · L_reg)                   source pass
    7'. (t ≥ start)  L_tgt = λ · (L_CL(z_t, ŷ_t) + λ_reg · L_reg)                    mixed pass

- z: a projection head (1x1 conv-BN-ReLU to a quarter of the width, 1x1 conv-BN-ReLU to 512, L2
  norm) on the encoder's stages resized to stride 4 and concatenated (the release's ``ProjHead``,
  ``resize_concat``); the method owns it and an EMA copy of it for the teacher's embedding.
- labels at the embedding's resolution by patch majority (a class covering ≥ 75 % of the patch,
  else ignore); ignore pixels are dropped.
- the target term runs on the strongly augmented, unmixed target crop, against the teacher's
  argmax (no confidence threshold, no pixel weight; the pseudo-label margins ignored).
- L_CL: ProtoCL (CE over z·μ/τ) or DistCL (:mod:`cluda_kit.uda.prototypes`), τ = 100, λ = 1,
  λ_reg = 1; the statistics start at 0 and are updated from iteration 0, the losses from
  ``start_iter`` (3000 of 40 000).

From the release ``BIT-DA/SePiCo``: ``mmseg/models/uda/sepico.py`` (the step),
``mmseg/models/losses/contrastive_loss.py`` (the losses, ``contrast_temp=100``),
``mmseg/models/utils/proto_estimator.py`` (the statistics), ``experiments.py`` (ids 4-6, the
GTA→Cityscapes DAFormer runs). Not reproduced: the release also augments the source image and
crops the target by class balance; the kit's DAFormer does neither, so the variant differs from
DAFormer by its terms only.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...config import ConfigError
from ...data.labels import IGNORE_INDEX
from ...data.transforms import normalize
from ...models.heads import StageProjection
from ..ema import EMATeacher
from ..feature_distance import downscale_label_ratio
from ..mixing import strong_augment
from ..pseudo_label import margin_mask
from ..prototypes import (ClassStatistics, dist_contrastive_loss, proto_contrastive_loss,
                          proto_regularizer, valid_pixels)
from .base import StepContext, phase
from .daformer import DAFormer
from .source_only import augment_kwargs

__all__ = ["SePiCo"]


class SePiCo(DAFormer):
    """DAFormer + SePiCo's ProtoCL / DistCL on source and target (``uda.method: sepico``)."""

    name = "sepico"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        if cfg.model.hrda.enabled:
            raise ConfigError("uda.method=sepico: written for the DAFormer network; set "
                              "model.hrda.enabled=false")
        self.a = self.args(cfg, variant="dist", weight=1.0, reg_weight=1.0, temperature=100.0,
                           start_iter=3000, proj_dim=512, min_ratio=0.75)
        if self.a.variant not in ("dist", "proto"):
            raise ConfigError(f"uda.method_args.variant: expected dist or proto, got {self.a.variant!r}")
        self.num_classes = cfg.model.num_classes
        self.ema_alpha, self.teacher_mode = cfg.uda.ema_alpha, cfg.uda.teacher_mode
        self.uses_stages = True
        self._teacher_source = None  # the teacher's embedding of this step's source, see prefetch_source
        self._target = None          # this step's target images and pseudo-labels, see _teacher_pass

    def setup(self, student: nn.Module) -> nn.Module:
        channels = student.encoder.out_channels
        self.head = StageProjection(channels, sum(channels) // 4, self.a.proj_dim, out_bn_relu=True)
        self.teacher_head = EMATeacher(self.head, self.ema_alpha, self.teacher_mode)
        self.stats = ClassStatistics(self.num_classes, self.a.proj_dim)
        return nn.ModuleDict({"head": self.head, "teacher_head": self.teacher_head.model,
                              "stats": self.stats})

    # ------------------------------------------------------------------ the statistics
    def prefetch_source(self, ctx: StepContext, xs: Tensor) -> None:
        super().prefetch_source(ctx, xs)
        self.teacher_head.update(self.head, ctx.iter)  # the head's EMA, as the trainer's for the network
        self._teacher_source = (ctx.background(self._teacher_embedding, ctx, xs)
                                if ctx.teacher is not None else None)

    def _teacher_embedding(self, ctx: StepContext, xs: Tensor) -> Tensor:
        with torch.no_grad(), phase("teacher"), ctx.autocast():
            return self.teacher_head(ctx.teacher(normalize(xs), return_stages=True).stages)

    def labels_at(self, labels: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, H, W) labels at the embedding's (h, w) by patch majority (≥ min_ratio, else ignore)."""
        return downscale_label_ratio(labels, labels.shape[-1] // size[-1], self.a.min_ratio,
                                     self.num_classes, IGNORE_INDEX)

    @torch.no_grad()
    def update_statistics(self, ctx: StepContext, z: Tensor, labels: Tensor) -> None:
        """Fold the (B, P, h, w) embedding with (B, h, w) labels of every rank into the class
        statistics (every rank sees the global batch, so the buffers stay equal)."""
        z = ctx.all_gather(z.detach().float().contiguous())
        labels = ctx.all_gather(labels.contiguous())
        f, y = valid_pixels(z, labels)
        self.stats.update(f, y)

    # ------------------------------------------------------------------ the loss
    def contrast(self, z: Tensor, labels: Tensor) -> Tensor:
        """λ (L_CL + λ_reg L_reg) of a (B, P, h, w) embedding against (B, h, w) labels."""
        f, y = valid_pixels(z, labels)
        mean = self.stats.mean
        if self.a.variant == "dist":
            loss = dist_contrastive_loss(f, y, mean, self.stats.var, self.a.temperature)
        else:
            loss = proto_contrastive_loss(f, y, mean, self.a.temperature)
        return self.a.weight * (loss + self.a.reg_weight * proto_regularizer(f, mean, self.a.temperature))

    def source_terms(self, ctx: StepContext, out, xs: Tensor, ys: Tensor) -> dict[str, Tensor]:
        terms = super().source_terms(ctx, out, xs, ys)
        if self._teacher_source is None:  # no teacher: source-only training has no statistics
            return terms
        pending, self._teacher_source = self._teacher_source, None
        z_teacher = pending()
        labels = self.labels_at(ys, z_teacher.shape[-2:])
        self.update_statistics(ctx, z_teacher, labels)
        if ctx.iter >= self.a.start_iter:
            with phase("contrastive"):
                terms["sepico_src"] = self.contrast(self.head(out.stages), labels)
        return terms

    def _teacher_pass(self, ctx: StepContext, xt: Tensor, frame_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        pl, pw = super()._teacher_pass(ctx, xt, frame_mask)
        self._target = (xt, pl)
        return pl, pw

    def mix_terms(self, ctx: StepContext, out, y_mix: Tensor, w_mix: Tensor) -> dict[str, Tensor]:
        terms = super().mix_terms(ctx, out, y_mix, w_mix)
        (xt, pl), self._target = self._target, None
        if ctx.iter < self.a.start_iter:
            return terms
        with phase("contrastive"):
            # the release ignores the pseudo-label margins only (no threshold, no pixel weight)
            inside = margin_mask(pl.shape[-2:], *self.pseudo_margins, device=pl.device) > 0
            pl = torch.where(inside, pl, torch.full_like(pl, IGNORE_INDEX))
            x_aug = strong_augment(xt, **augment_kwargs(self.aug, ctx.generator))
            out_t = self.seg.student(ctx, x_aug, return_stages=True)
            z = self.head(out_t.stages)
            terms["sepico_tgt"] = self.contrast(z, self.labels_at(pl, z.shape[-2:]))
        return terms

    def describe(self) -> str:
        a = self.a
        return (f"{super().describe()}, SePiCo {'DistCL' if a.variant == 'dist' else 'ProtoCL'} "
                f"λ={a.weight} τ={a.temperature} from iteration {a.start_iter}")
