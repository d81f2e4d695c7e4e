"""DAFormer + target entropy minimisation: a UDA method in one file (the example of docs/extending.md).

ADVENT's MinEnt (Vu et al., CVPR 2019) makes the network confident on the target domain by
minimising the entropy of its prediction there. Here it is one more pass after DAFormer's two:

    10. the student on the target crop (no mixing, no augmentation):
        L_ent = λ_ent · mean over pixels of  -Σ_c p_c log p_c / log C     (0 = one-hot, 1 = uniform)

λ_ent = 0.001 is ADVENT's value for the same normalised entropy. Train it with the preset
``miniscapes_entropy`` (``uda.method: cluda_kit.uda.methods.entropy:TargetEntropy``), or set
``--set uda.method_args.weight=...``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import LossGroup, phase
from .daformer import DAFormer


def entropy_map(logits: Tensor) -> Tensor:
    """Normalised entropy (B, h, w) in [0, 1] of class logits (B, C, h, w)."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(dim=1) / math.log(logits.shape[1])


class TargetEntropy(DAFormer):
    """DAFormer's step, then L_ent on the student's target prediction (a third backward pass)."""

    name = "daformer_entropy"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.weight = self.args(cfg, weight=0.001).weight  # λ_ent, in one place
        if self.self_training:
            self.passes += 1  # source pass, mixed pass, target pass

    def step(self, ctx, source, target):
        yield from super().step(ctx, source, target)  # 1-9: DAFormer (CE, FD, pseudo-labels, mix)
        if not self.self_training:
            return
        xt = target()["image"]  # the batch the mixed pass used
        with phase("student_target"):
            out = self.seg.student(ctx, xt)
            ent = entropy_map(out.logits).mean()
        yield LossGroup({"ent": self.weight * ent}, outputs=(out,))

    def describe(self) -> str:
        return f"{super().describe()}, target entropy λ={self.weight}"
