"""Mean teacher: an exponential moving average of the student (docs/method.md §2, step 0).

φ ← α_t·φ + (1 − α_t)·θ with α_t = min(1 − 1/(t+1), α), α = 0.999; at t = 0 the teacher is a copy.

Two behaviours are offered:

``mode="train"`` (default, the DACS/DAFormer/HRDA/CLUDA release): only parameters are averaged;
    buffers (BatchNorm running statistics, ``num_batches_tracked``) are not. The teacher runs in
    train mode with dropout and stochastic depth switched off, so its BatchNorm layers normalise with
    the statistics of the target batch it sees (and update their own running statistics, which are
    never used). It is the default because the published numbers were obtained with it: normalising
    with target-batch statistics is an implicit AdaBN-style adaptation of the teacher.
``mode="eval"``: parameters AND floating-point buffers are averaged (integer buffers such as
    ``num_batches_tracked`` are copied from the student) and the teacher runs in ``eval()`` — the
    textbook mean teacher, whose output does not depend on the batch composition.

For MiT encoders (LayerNorm only) the two modes differ only in dropout/drop-path handling, which is
off in both.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd
from torchvision.ops import StochasticDepth

__all__ = ["ema_alpha", "EMATeacher"]

_STOCHASTIC = (_DropoutNd, StochasticDepth)


def ema_alpha(step: int, alpha: float = 0.999) -> float:
    """α_t = min(1 − 1/(t+1), α): 0 at t = 0 (copy), 0.5 at t = 1, capped at α (0.999) from t = 999."""
    if step < 0:
        raise ValueError(f"ema.py: step must be >= 0; got {step}")
    return min(1.0 - 1.0 / (step + 1), alpha)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


class EMATeacher:
    """EMA teacher of a student network.

    Args:
        student: the student nn.Module (DDP/DataParallel wrappers are unwrapped). It is deep-copied
            at construction, on the student's device; the copy's parameters do not require grad.
        alpha: α, the EMA decay cap (0.999).
        mode: "train" (the release's behaviour, default) or "eval"; see the module docstring.

    The teacher network is ``.model``. ``teacher(x)`` puts it in its mode and runs it without grad.
    ``state_dict()`` / ``load_state_dict()`` are those of ``.model``.
    """

    def __init__(self, student: nn.Module, alpha: float = 0.999, mode: str = "train") -> None:
        if mode not in ("train", "eval"):
            raise ValueError(f"ema.py: EMATeacher mode must be 'train' or 'eval'; got {mode!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"ema.py: EMATeacher alpha must be in [0, 1]; got {alpha}")
        self.alpha = float(alpha)
        self.mode = mode
        self.model = copy.deepcopy(_unwrap(student))
        for p in self.model.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.teacher_mode()

    def teacher_mode(self) -> nn.Module:
        """Set the teacher's train/eval state for its mode and return ``.model``.

        "train": ``train()`` with every Dropout/Dropout2d/… and ``torchvision.ops.StochasticDepth``
        switched to eval (BatchNorm keeps using batch statistics). "eval": ``eval()``.
        """
        if self.mode == "eval":
            self.model.eval()
        else:
            self.model.train()
            for m in self.model.modules():
                if isinstance(m, _STOCHASTIC):
                    m.eval()
        return self.model

    def __call__(self, *args, **kwargs):
        """Run the teacher (in its mode, without grad) on the inputs; returns what ``.model`` returns."""
        self.teacher_mode()
        with torch.no_grad():
            return self.model(*args, **kwargs)

    def _pairs(self, student: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list, list]:
        t_params = list(self.model.parameters())
        s_params = [p.detach() for p in student.parameters()]
        t_buffers = list(self.model.buffers())
        s_buffers = list(student.buffers())
        if len(t_params) != len(s_params) or len(t_buffers) != len(s_buffers):
            raise ValueError(
                f"ema.py: student does not match the teacher: {len(s_params)} parameters / "
                f"{len(s_buffers)} buffers vs {len(t_params)} / {len(t_buffers)}"
            )
        for t, s in zip(t_params + t_buffers, s_params + s_buffers):
            if t.shape != s.shape:
                raise ValueError(f"ema.py: student tensor of shape {tuple(s.shape)} vs teacher {tuple(t.shape)}")
        return t_params, s_params, t_buffers, s_buffers

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        """One EMA step after the student's update of iteration ``step`` (t).

        t = 0 copies the student's parameters (and, in "eval" mode, its buffers). For t > 0:
        φ ← α_t·φ + (1 − α_t)·θ over all parameters (and floating buffers in "eval" mode; integer
        buffers are copied), with α_t = ``ema_alpha(t, alpha)``.
        """
        t_params, s_params, t_buffers, s_buffers = self._pairs(_unwrap(student))
        float_buffers = [(t, s) for t, s in zip(t_buffers, s_buffers) if t.is_floating_point()]
        other_buffers = [(t, s) for t, s in zip(t_buffers, s_buffers) if not t.is_floating_point()]
        if step == 0:
            copy_pairs = list(zip(t_params, s_params))
            if self.mode == "eval":
                copy_pairs += float_buffers + other_buffers
            if copy_pairs:
                torch._foreach_copy_([t for t, _ in copy_pairs], [s for _, s in copy_pairs])
            return
        a = ema_alpha(step, self.alpha)
        avg_t, avg_s = list(t_params), list(s_params)
        if self.mode == "eval":
            avg_t += [t for t, _ in float_buffers]
            avg_s += [s for _, s in float_buffers]
            if other_buffers:
                torch._foreach_copy_([t for t, _ in other_buffers], [s for _, s in other_buffers])
        if avg_t:
            torch._foreach_mul_(avg_t, a)
            torch._foreach_add_(avg_t, avg_s, alpha=1.0 - a)

    def to(self, *args, **kwargs) -> EMATeacher:
        """Move the teacher network like ``nn.Module.to``; returns self."""
        self.model.to(*args, **kwargs)
        return self

    def state_dict(self) -> dict:
        """The teacher network's state dict (parameters and buffers)."""
        return self.model.state_dict()

    def load_state_dict(self, state_dict: dict, strict: bool = True):
        """Load a state dict saved by ``state_dict()`` into the teacher network."""
        return self.model.load_state_dict(state_dict, strict=strict)
