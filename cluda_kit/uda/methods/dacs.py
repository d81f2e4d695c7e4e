"""DACS: mean-teacher self-training with ClassMix (docs/method.md §2, steps 1 and 4-7).

One step, batch B source + B target:

    1. student on the source crop: CE(student(x_s), y_s)                      -> backward
    4. EMA teacher on the target crop: pseudo-labels ŷ_t, weight q (share of pixels with p ≥ τ,
       0 in the margins)
    5. ClassMix: half of the classes of each source label pasted onto the target image
    6. strong augmentation (colour jitter, blur) of the mixed image
    7. student on the mixed image: CE weighted by the mixed weight map      -> backward
    (MIC, optional: student on the masked target image against ŷ_t, in the same backward)

The EMA update (step 0) and the optimiser step (9) are the trainer's. Subclasses add terms to the
source pass (:meth:`source_terms`) and the mixed pass (:meth:`mix_terms`). Under
``uda.mode=source_only`` (or ``oracle``) only the source pass runs, with its extra terms: an
ablation of a method's source terms without self-training.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..mixing import class_mix_masks, mix, strong_augment
from ..pseudo_label import margin_mask, pseudo_label
from .base import LossGroup, StepContext, phase
from .mic import MaskedImageConsistency
from .source_only import SourceOnly, augment_kwargs

__all__ = ["DACS"]


class DACS(SourceOnly):
    """Self-training with an EMA teacher, ClassMix and strong augmentation."""

    name = "dacs"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.self_training = cfg.uda.mode == "self_training"
        self.passes = 2 if self.self_training else 1  # source pass, mixed pass
        self.threshold = cfg.uda.pseudo_threshold            # τ
        self.pseudo_margins = tuple(cfg.data.pseudo_margins)  # (top, bottom, left, right) px
        self.frame_margins = any(cfg.data.frame_margins)      # HRDA: margins of the full frame
        self.mix_per_image = cfg.uda.mix_per_image
        self.mic = MaskedImageConsistency(cfg.uda.mic) if cfg.uda.mic.enabled else None

    # ------------------------------------------------------------------ the step
    def step(self, ctx: StepContext, source: dict[str, Tensor],
             target: Callable[[], dict[str, Tensor]]) -> Iterator[LossGroup]:
        ys = source["label"]
        xs = self.source_images(ctx, source)
        # work that needs nothing of this step's student (the frozen encoder's features of the
        # source, 4. the teacher's pseudo-labels): with train.overlap it runs beside the source
        # pass on a second CPU thread, in this order; otherwise when its result is asked for
        self.prefetch_source(ctx, xs)
        if self.self_training:
            tgt = target()
            xt = tgt["image"]
            teacher = ctx.background(self._teacher_pass, ctx, xt,
                                     tgt["label"] if self.frame_margins else None)
        # 1. the source pass (under DDP its gradients are reduced with the mixed pass's)
        out, terms = self.source_forward(ctx, xs, ys)
        terms.update(self.source_terms(ctx, out, xs, ys))
        if not self.self_training:  # source-only training with this method's source terms
            yield LossGroup(terms, outputs=(out,))
            return
        yield LossGroup(terms, outputs=(out,))
        del out

        # 4. pseudo-labels from the teacher
        pl, pw = teacher()
        # 5-6. ClassMix + strong augmentation
        with phase("mix_augment"):
            m = class_mix_masks(ys, per_image=self.mix_per_image, generator=ctx.generator).to(ctx.device)
            x_mix = strong_augment(mix(xs, xt, m), **augment_kwargs(self.aug, ctx.generator))
            y_mix = mix(ys, pl, m)
            w_mix = mix(torch.ones_like(pw), pw, m)
        # 7. the student on the mixed image
        with phase("student_mix"):
            out_m = self.seg.student(ctx, x_mix, window=self.seg.mix_window(ctx.iter))
            mix_terms = {"ce_mix": self.seg.seg_loss(ctx, out_m, y_mix, w_mix)}
        mix_terms.update(self.mix_terms(ctx, out_m, y_mix, w_mix))
        outputs = (out_m,)
        if self.mic is not None:
            mix_terms["mic"], out_t = self.mic.loss(ctx, self.seg, xt, pl, pw,
                                                    augment_kwargs(self.aug, ctx.generator))
            outputs = (out_m, out_t)
        yield LossGroup(mix_terms, outputs=outputs, logs={"q": pw.amax()})

    # ------------------------------------------------------------------ parts
    def prefetch_source(self, ctx: StepContext, xs: Tensor) -> None:
        """Start work on the source images that :meth:`source_terms` will need and that does not
        depend on the student, through ``ctx.background`` (none in DACS)."""

    def source_terms(self, ctx: StepContext, out, xs: Tensor, ys: Tensor) -> dict[str, Tensor]:
        """Loss terms of the source pass besides CE (none in DACS)."""
        return {}

    def mix_terms(self, ctx: StepContext, out, y_mix: Tensor, w_mix: Tensor) -> dict[str, Tensor]:
        """Loss terms of the mixed pass besides CE (none in DACS)."""
        return {}

    def _teacher_pass(self, ctx: StepContext, xt: Tensor, frame_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        with torch.no_grad(), phase("teacher"):
            return self.pseudo_labels(ctx, xt, frame_mask=frame_mask)

    @torch.no_grad()
    def pseudo_labels(self, ctx: StepContext, xt: Tensor,
                      frame_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher pseudo-labels ŷ_t (B, H, W) int64 and weights (B, H, W) of float [0, 1] target
        images (B, 3, H, W): q on every pixel, 0 in ``data.pseudo_margins``; under DDP q is the
        mean over the ranks (q of the global batch); ``frame_mask`` (B, H, W), 1 inside the
        frame, multiplies the weights (HRDA's full-frame margins)."""
        logits = self.seg.teacher_logits(ctx, xt)
        logits = F.interpolate(logits, size=xt.shape[-2:], mode="bilinear", align_corners=False)
        top, bottom, left, right = self.pseudo_margins
        pl, pw = pseudo_label(logits, self.threshold, ignore_top=top, ignore_bottom=bottom,
                              ignore_left=left, ignore_right=right)
        if ctx.world_size > 1:  # equal pixel counts per rank: the mean of q is the global q
            q = ctx.mean_over_ranks(pw.amax().clone())
            pw = margin_mask(pw.shape[-2:], top, bottom, left, right, device=pw.device,
                             dtype=pw.dtype).expand_as(pw) * q
        if frame_mask is not None:
            pw = pw * (frame_mask.to(pw.device) == 1)
        return pl, pw

    def describe(self) -> str:
        parts = [f"{self.name}: τ={self.threshold}", "ClassMix " + ("per image" if self.mix_per_image else "from the batch's classes (release)")]
        if self.mic is not None:
            parts.append(f"MIC λ={self.mic.weight}")
        return ", ".join(parts)
