"""DDP for the trainer: the student's wrapper and the few collectives a UDA step needs.

Launch with ``torchrun --nproc_per_node N -m cluda_kit train ...`` (:func:`cluda_kit.runtime.init_distributed`
reads torchrun's environment). Every rank builds the same networks from the same seed; DDP
averages the gradients; this module keeps the rest identical across ranks: BatchNorm statistics
are averaged after every step, the pseudo-label weight q is the global batch's, and with
``loss.contrastive.gather_negatives`` the contrastive loss sees the pixels of every rank.
Without DDP every helper is the identity (or a no-op).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch
from torch import nn

from ..runtime import DistInfo, all_gather_cat, all_gather_objects, all_reduce_mean_
from .checkpoint import state_digest

__all__ = ["Distributed"]


class Distributed:
    """DDP around ``student`` when ``dist.enabled``, else a pass-through.

    Args:
        student: the network trained.
        dist: the process group's facts (rank, world size).
        device: this rank's device.
        gather_negatives: :meth:`gather` concatenates the ranks' tensors (contrastive negatives).
    """

    def __init__(self, student: nn.Module, dist: DistInfo, device: torch.device,
                 gather_negatives: bool = False) -> None:
        self.dist = dist
        self.gather_negatives = gather_negatives
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if dist.enabled:
            ddp = nn.parallel.DistributedDataParallel
            # buffers are averaged after every step (sync_buffers), not broadcast every forward
            no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                              inspect.signature(ddp.__init__).parameters
                              else {"broadcast_buffers": False})
            self.ddp = ddp(student, device_ids=[device.index] if device.type == "cuda" else None,
                           gradient_as_bucket_view=True,  # no find_unused_parameters: see touch()
                           **no_buffer_sync)
        self.train_net: nn.Module = self.ddp if self.ddp is not None else student

    @property
    def enabled(self) -> bool:
        return self.ddp is not None

    def touch(self, *outs: Any) -> torch.Tensor | float:
        """0 x every output tensor of the synchronised forward(s), added to that backward's loss.

        Heads whose output no loss of the synchronised pass uses (the projection head and HRDA's
        feat_weighter feed only the contrastive loss, which may be off or only on the source pass)
        then get zero gradients instead of none, so DDP's reduction completes without
        ``find_unused_parameters`` (a graph search every step, and an error whenever a forward
        output does not reach the loss). Zero is added to gradients accumulated in earlier
        passes, so they are unchanged. 0 without DDP."""
        if self.ddp is None:
            return 0.0
        total = None
        for out in outs:
            for f in dataclasses.fields(out):
                value = getattr(out, f.name)
                for t in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(t, torch.Tensor) and t.requires_grad:
                        term = t.float().sum().mul(0.0).nan_to_num(0.0, 0.0, 0.0)
                        total = term if total is None else total + term
        return 0.0 if total is None else total

    def set_grad_sync(self, enabled: bool) -> None:
        """DDP ``no_sync`` as a switch: a pass that only accumulates (the source pass of a
        self-training step) does not all-reduce; the last pass reduces the sum (one per step)."""
        if self.ddp is not None:
            self.ddp.require_backward_grad_sync = enabled

    def sync_buffers(self, nets: list[nn.Module]) -> None:
        """Average the floating buffers (BatchNorm running statistics) of ``nets`` over the ranks."""
        if self.ddp is None:
            return
        bufs = [b for net in nets for b in net.buffers() if b.is_floating_point()]
        if not bufs:
            return
        flat = all_reduce_mean_(torch.cat([b.reshape(-1).float() for b in bufs]))
        torch._foreach_copy_(bufs, [v.view_as(b) for v, b in zip(flat.split([b.numel() for b in bufs]), bufs)])

    def mean_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` averaged over the ranks (in place); ``t`` itself without DDP."""
        return all_reduce_mean_(t) if self.ddp is not None else t

    def gather(self, t: torch.Tensor | None, differentiable: bool = False) -> torch.Tensor | None:
        """With ``gather_negatives`` under DDP: ``t`` of every rank concatenated along the batch
        (rank order), gradients flowing back to each rank's features; else ``t``.

        Every rank then computes the loss of the global batch (all pixels are anchors and
        columns): the same value on every rank, and after DDP's gradient averaging the gradient of
        the global-batch loss, exactly as one process with the whole batch would compute it (each
        rank's features receive the sum over ranks of their gradients from the all_gather
        backward, DDP divides by the world size). The price is W times the single-rank work of the
        contrastive loss on each rank (W = world size)."""
        if t is None or self.ddp is None or not self.gather_negatives:
            return t
        return all_gather_cat(t, differentiable)

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (same shape on every rank) of every rank concatenated along dim 0 in rank order,
        without gradients (a method's buffer updates); ``t`` without DDP."""
        return all_gather_cat(t.detach()) if self.ddp is not None else t

    def average_grads(self, params: list[nn.Parameter]) -> None:
        """Average the gradients of parameters outside the DDP wrapper (a method's own modules)
        over the ranks, in one flat all-reduce; a missing gradient counts as zero. No-op without
        DDP."""
        if self.ddp is None or not params:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = all_reduce_mean_(torch.cat([g.reshape(-1) for g in grads]))
        torch._foreach_copy_(grads, [v.view_as(g) for v, g in zip(flat.split([g.numel() for g in grads]), grads)])

    def replica_digests(self, states: dict[str, dict]) -> dict[str, list[str]]:
        """SHA-256 of each named state dict on every rank (``[rank 0, rank 1, ...]``); a
        collective under DDP. All entries are equal while the replicas are in sync."""
        mine = {name: state_digest(state) for name, state in states.items()}
        ranks = all_gather_objects(mine)
        return {k: [r[k] for r in ranks] for k in mine}
