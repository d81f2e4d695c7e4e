"""The optimiser's two pure pieces: the learning-rate schedule and the AdamW parameter groups
(docs/method.md §7)."""
from __future__ import annotations

import torch

__all__ = ["lr_at", "param_groups"]


def lr_at(it: int, base_lr: float, max_iters: int, warmup_iters: int, warmup_ratio: float,
          power: float, min_lr: float = 0.0) -> float:
    """Linear warm-up then polynomial decay (mmcv's semantics, which DAFormer uses).

    poly: lr = (base - min) * (1 - it / max_iters) ** power + min; during the first
    ``warmup_iters`` iterations it is multiplied by ``1 - (1 - it / warmup) * (1 - ratio)``.
    """
    progress = min(it, max_iters) / max(max_iters, 1)
    lr = (base_lr - min_lr) * (1.0 - progress) ** power + min_lr
    if it < warmup_iters:
        lr *= 1.0 - (1.0 - it / warmup_iters) * (1.0 - warmup_ratio)
    return lr


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float, head_lr_mult: float,
                 norm_decay: bool) -> list[dict]:
    """AdamW groups: encoder at ``lr``, everything else (decoder, heads) at ``lr * head_lr_mult``;
    no weight decay on norm layers and biases of norm layers unless ``norm_decay``."""
    norm_types = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)
    no_decay = set()
    if not norm_decay:
        for module in model.modules():
            if isinstance(module, norm_types):
                no_decay.update(id(p) for p in module.parameters(recurse=False))
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in encoder_ids, id(p) in no_decay), []).append(p)
    out = []
    for (is_encoder, is_no_decay), params in sorted(groups.items()):
        mult = 1.0 if is_encoder else head_lr_mult
        out.append({"params": params, "lr_mult": mult, "lr": lr * mult,
                    "weight_decay": 0.0 if is_no_decay else weight_decay})
    return out
