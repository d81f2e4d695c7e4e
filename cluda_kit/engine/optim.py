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
                 norm_decay: bool, no_decay_rule: str = "norm_layers") -> list[dict]:
    """AdamW groups: encoder at ``lr``, everything else (decoder, heads) at ``lr * head_lr_mult``.

    Unless ``norm_decay``, some parameters get no weight decay, by ``no_decay_rule``:
    "norm_layers": the parameters of every norm layer (BatchNorm, LayerNorm, GroupNorm);
    "release": the parameters whose name contains "norm", as the release's ``custom_keys`` match
    them: the MiT LayerNorms, while the BatchNorms (named ``bn``) of the heads and of a ResNet
    encoder decay like every other parameter."""
    if no_decay_rule not in ("norm_layers", "release"):
        raise ValueError(f"optim.no_decay_rule: expected norm_layers or release, got {no_decay_rule!r}")
    norm_types = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)
    no_decay = set()
    if not norm_decay and no_decay_rule == "release":
        no_decay.update(id(p) for name, p in model.named_parameters() if "norm" in name)
    elif not norm_decay:
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
