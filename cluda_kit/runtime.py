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

from .errors import ConfigError


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


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run here, or None when it can: TorchDynamo unsupported on this
    Python/platform, or (for inductor on the CPU) no C++ compiler on the PATH."""
    import shutil

    try:
        import torch._dynamo as dynamo
    except ImportError as err:  # a torch build without dynamo
        return f"torch._dynamo cannot be imported ({err})"
    if not dynamo.is_dynamo_supported():
        return "TorchDynamo does not support this Python version or platform"
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("c++", "g++", "clang++", "cl")):
        return "inductor needs a C++ compiler on the CPU and none (c++, g++, clang++) is on the PATH"
    return None


def resolve_device(name: str = "auto", *, key: str = "train.device") -> torch.device:
    """``"auto"`` -> the local CUDA device if there is one (the DDP rank's under torchrun), else CPU.

    A name torch does not know, or CUDA where there is none, raises
    :class:`~cluda_kit.config.ConfigError` naming ``key`` (the config key or command-line flag)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r}: CUDA is not available on this machine (use cpu or auto)")
    return device


AMP_CHOICES = ("auto", "bf16", "fp16", "none")


@dataclass(frozen=True)
class Precision:
    """The resolved ``train.amp``: the autocast dtype (None = float32, no autocast) and whether
    the losses go through a :class:`torch.amp.GradScaler` (float16 only)."""

    name: str  # bf16 | fp16 | fp32
    dtype: torch.dtype | None
    grad_scaler: bool
    requested: str

    def __str__(self) -> str:
        how = {"bf16": "bfloat16 autocast", "fp16": "float16 autocast + GradScaler",
               "fp32": "float32 (no autocast)"}[self.name]
        return f"{how} (train.amp={self.requested})"


def resolve_precision(amp: str, device_type: str, bf16_supported: bool | None = None) -> Precision:
    """``train.amp`` for a device, a pure function of its arguments.

    "auto": bf16 on a CUDA device that supports it, fp16 with a GradScaler on one that does not,
    float32 elsewhere (CPU, MPS). "bf16", "fp16" (always with a GradScaler) and "none" (float32)
    are taken as given, on any device. ``bf16_supported`` is only read for "auto" on CUDA.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"train.amp: expected one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp == "auto":
        if device_type != "cuda":
            amp = "none"
        else:
            amp = "bf16" if bf16_supported else "fp16"
        requested = "auto"
    else:
        requested = amp
    if amp == "bf16":
        return Precision("bf16", torch.bfloat16, False, requested)
    if amp == "fp16":
        return Precision("fp16", torch.float16, True, requested)
    return Precision("fp32", None, False, requested)


def device_precision(amp: str, device: torch.device) -> Precision:
    """:func:`resolve_precision` for ``device``, asking CUDA for bf16 support only when it matters."""
    device = torch.device(device)
    supported = None
    if amp == "auto" and device.type == "cuda":
        with torch.cuda.device(device):
            supported = torch.cuda.is_bf16_supported()
    return resolve_precision(amp, device.type, supported)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None: float32); see :func:`device_precision`."""
    return device_precision(amp, device).dtype


class LossScaler:
    """A :class:`torch.amp.GradScaler` that counts the steps it skipped (inf/NaN gradients) on
    the device: the scale after ``update`` is below the one before exactly when the step was
    skipped, so counting costs no host-device synchronisation; :attr:`skipped` reads it (one)."""

    def __init__(self, device: torch.device) -> None:
        self.scaler = torch.amp.GradScaler(torch.device(device).type)
        self._skipped = torch.zeros((), dtype=torch.long, device=device)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` unless a gradient is inf/NaN, then the scale's update."""
        self.scaler.step(optimizer)
        before = self.scaler._scale.clone()  # set by scale(): a device tensor, no sync
        self.scaler.update()
        self._skipped += (self.scaler._scale < before).long().reshape(())

    @property
    def skipped_tensor(self) -> torch.Tensor:
        """Steps skipped so far, a 0-dim device tensor (no synchronisation)."""
        return self._skipped

    @property
    def scale_tensor(self) -> torch.Tensor:
        """The current loss scale, a 0-dim device tensor (no synchronisation)."""
        return self.scaler._scale.reshape(())

    @property
    def skipped(self) -> int:
        return int(self._skipped)

    def state_dict(self) -> dict:
        """Numbers only (loads with ``torch.load(weights_only=True)``)."""
        return {**self.scaler.state_dict(), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self._skipped.fill_(int(state.pop("skipped", 0)))
        self.scaler.load_state_dict(state)


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
