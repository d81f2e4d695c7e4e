"""Runtime choices: seeding, device and autocast, deterministic mode and opt-in DDP.

Nothing here runs at import time; the trainer and the command line call these explicitly.
DDP is switched on only when the torchrun environment variables are present.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def generator_device(generator: torch.Generator | None) -> torch.device:
    """The device a random draw from ``generator`` is made on (the CPU's default generator for None)."""
    return generator.device if generator is not None else torch.device("cpu")


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """U[0, 1) float32 numbers of ``shape`` drawn on the generator's device and moved to ``device``
    without blocking the host (a blocking copy would be a host-device synchronisation in the step)."""
    return torch.rand(shape, generator=generator, device=generator_device(generator)).to(device, non_blocking=True)


def host_tensor(data, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``data`` (numbers, nested lists, arrays) as a tensor on ``device``, built on the host and
    copied without blocking it. ``torch.tensor(data, device="cuda")`` makes a blocking copy, a
    host-device synchronisation inside the step (bench/README.md, "GPU path"); this does not."""
    return torch.as_tensor(data, dtype=dtype).to(device, non_blocking=True)


def set_deterministic(enabled: bool, device: torch.device | str | None = None) -> None:
    """Deterministic algorithms and no cuDNN autotuning (``train.deterministic``).

    On the CPU every op of the kit has a deterministic kernel, so ops without one raise
    (``warn_only=False``): two CPU runs with the same seed are bit-identical. On CUDA the
    backward of bilinear ``F.interpolate`` (logits -> label size) and ``NLLLoss`` (inside
    ``F.cross_entropy``) have no deterministic kernel and would raise in the very first step, so
    there they only warn (``warn_only=True``): CUDA runs are reproducible up to those ops.
    ``CUBLAS_WORKSPACE_CONFIG`` is set here if unset; it must be in place before the first cuBLAS
    call of the process (export it yourself if CUDA was used earlier).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    torch.use_deterministic_algorithms(enabled, warn_only=device.type != "cpu")
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> the local CUDA device if there is one (the DDP rank's under torchrun), else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r}: CUDA is not available on this machine")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``: ``auto`` is bf16 on CUDA and off on the CPU."""
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp in ("auto", "bf16"):
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    raise ValueError(f"train.amp: expected auto, bf16, fp16 or none, got {amp!r}")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``dtype`` on ``device`` (a no-op context when dtype is None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Initialise torch.distributed from torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK).

    Without them (a plain ``python`` run) this does nothing and returns a single-process info.
    The backend is NCCL on CUDA and gloo on the CPU.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo()
    import torch.distributed as dist

    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
    if not dist.is_initialized():
        use_cuda = device_name.startswith("cuda") or (
            device_name == "auto" and torch.cuda.is_available()
        )
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info


# ---------------------------------------------------------------------------- collectives
def dist_enabled() -> bool:
    """True inside an initialised torch.distributed job with more than one process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean_(t: torch.Tensor) -> torch.Tensor:
    """In-place mean of ``t`` over all ranks (a no-op without torch.distributed); returns ``t``."""
    if dist_enabled():
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


def _gather_cat(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


class _GatherCat(torch.autograd.Function):
    """all_gather + cat whose backward hands each rank the sum over ranks of the gradients that
    reach its chunk (an all-reduce of the full gradient, then this rank's slice)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.rows = dist.get_rank(), t.shape[0]
        return _gather_cat(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def all_gather_cat(t: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
    """Concatenate ``t`` (same shape on every rank) of all ranks along dim 0, in rank order.

    ``differentiable``: gradients flow back to every rank's ``t``; each rank's chunk receives the
    sum over ranks of the gradients that reach it (so a loss computed identically on every rank
    and then averaged by DDP gets the gradient of that loss). Without torch.distributed this
    returns ``t``.
    """
    if not dist_enabled():
        return t
    if differentiable and t.requires_grad:
        return _GatherCat.apply(t)
    return _gather_cat(t)


def all_gather_objects(obj: object) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` without DDP."""
    if not dist_enabled():
        return [obj]
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
