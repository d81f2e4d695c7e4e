"""The method API: what a UDA method is, and what the trainer gives it each step.

A method is one class. The trainer calls ``method.step(ctx, source, target)`` once per iteration;
``step`` is a generator that yields one :class:`LossGroup` per backward pass (a self-training
step yields two: the source pass, then the mixed pass, so that the source activations are freed
before the mixed forward; the sum of gradients is the same as one backward of the total). The
trainer does everything else: data, the EMA update, AMP, the finiteness check and backward of each
group, DDP gradient synchronisation, the optimiser, logging and checkpoints.

The step's randomness (mixing, augmentation, HRDA windows, anchor sampling) draws from
``ctx.generator``, which the trainer saves in checkpoints, so a resumed run draws the same numbers.
Everything here imports nothing of the engine: the engine's services reach a method through the
:class:`StepContext`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...data.transforms import normalize

__all__ = ["StepContext", "LossGroup", "Method", "phase", "deferred"]

#: named ranges of the step ("step/<name>"), aggregated by bench/step.py; free without a profiler
def phase(name: str):
    return torch.profiler.record_function(f"step/{name}")


def _identity(t: Any, *_: Any) -> Any:
    return t


def deferred(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
    """``fn(*args, **kwargs)`` computed on the first call of the returned callable (later calls
    return the same result): :attr:`StepContext.background` without a background thread."""
    result: list[Any] = []

    def get() -> Any:
        if not result:
            result.append(fn(*args, **kwargs))
        return result[0]

    return get


@dataclass
class StepContext:
    """What the trainer lends a method for one step.

    Attributes:
        iter: the step index (0-based; the EMA update of this step has been done).
        student: the student network itself (its attributes: HRDA's ``detail_loss_weight``,
            ``context_input``, ...).
        train_net: what training forwards run through: the student, or its DDP wrapper.
        teacher: the EMA teacher network (``EMATeacher``), or None without self-training.
        imnet: the frozen pretrained encoder of the feature distance, or None.
        generator: the step's random generator (CPU).
        device: where the batch lives.
        autocast: a zero-argument callable giving the AMP context of the run.
        channels_last: convert network inputs to channels-last memory format.
        world_size: DDP processes (1 without DDP).
        mean_over_ranks: ``t -> t`` averaged over the ranks in place (identity without DDP).
        all_gather: ``t`` of every rank concatenated along dim 0 in rank order (``t`` without
            DDP), never differentiable: for the updates of a method's buffers, so that every rank
            computes the update of the global batch and the buffers stay equal.
        gather: ``gather(t, differentiable=False)``: ``t`` of every rank concatenated along the
            batch when ``loss.contrastive.gather_negatives`` is on under DDP, else ``t``.
        background: ``background(fn, *args, **kw) -> get``: work that does not depend on the
            student's passes of this step (the teacher's pseudo-labels). With ``train.overlap``
            it starts now on a second CPU thread and ``get()`` waits for it; otherwise it runs
            when ``get()`` is first called. ``fn`` must not draw from ``ctx.generator`` or the
            global random state, nor change anything the main thread reads.
    """

    iter: int
    student: nn.Module
    train_net: nn.Module
    teacher: nn.Module | None
    imnet: nn.Module | None
    generator: torch.Generator
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    channels_last: bool = False
    world_size: int = 1
    mean_over_ranks: Callable[[Tensor], Tensor] = _identity
    all_gather: Callable[[Tensor], Tensor] = _identity
    gather: Callable[..., Tensor | None] = _identity
    background: Callable[..., Callable[[], Any]] = deferred

    def forward(self, model: nn.Module, images: Tensor, *, normalized: bool = False, **kw: Any):
        """``model`` on ``images`` (B, 3, H, W): float [0, 1] images are normalised first (not
        when ``normalized``), made channels-last where configured, run under the run's autocast."""
        x = images if normalized else normalize(images)
        if self.channels_last and not normalized:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return model(x, **kw)


@dataclass
class LossGroup:
    """The loss terms of one backward pass.

    Attributes:
        terms: name -> scalar tensor, each already multiplied by its weight; the backward is of
            their sum, and each is logged under its name.
        outputs: the forward outputs (dataclasses of tensors) these terms come from. Under DDP
            the trainer adds 0 x every output tensor to the last group's loss, so that
            parameters no term of it uses still get (zero) gradients.
        logs: other values to log (0-dim tensors or floats), e.g. the pseudo-label weight q.

    Under DDP only the last group of a step (see :attr:`Method.passes`) all-reduces gradients
    (one all-reduce per step); earlier groups only accumulate. DDP decides this at forward time,
    so the trainer switches it before each group's forward from the declared number of passes.
    """

    terms: dict[str, Tensor]
    outputs: tuple = ()
    logs: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base of every UDA method. Subclasses set ``name`` and implement :meth:`step`.

    ``self_training``: the trainer builds an EMA teacher and a target stream for the method.
    ``passes``: how many :class:`LossGroup` s (backward passes) :meth:`step` yields.
    ``uses_stages``: the source forward must return the encoder's stage maps (feature distance).

    A method with state of its own (a projection head, class prototypes, a memory bank) builds
    it in :meth:`setup` and returns it as one module; :meth:`param_groups` says how its
    parameters train. Everything else about that state is the trainer's: device, train/eval
    mode, optimiser, DDP gradient averaging, checkpoints and exact resume.
    """

    args_reads = 0  # calls of :meth:`args`, counted so that build_method can tell a method that reads none

    name: ClassVar[str] = "method"
    self_training: bool = False
    passes: int = 1
    uses_stages: bool = False

    def step(self, ctx: StepContext, source: dict[str, Tensor],
             target: Callable[[], dict[str, Tensor]]) -> Iterator[LossGroup]:
        """One training step's losses.

        Args:
            ctx: the trainer's services for this step.
            source: ``{"image": (B, 3, H, W) float [0, 1], "label": (B, H, W) int64 trainIds}``.
            target: fetches the target batch ``{"image", "label"}`` on first call (its label is
                the frame-margin mask, or the ground truth the method must not use); fetched
                lazily so that the source pass runs (and frees its activations) first; later
                calls in the same step return the same batch. None without a target stream.

        Yields:
            :class:`LossGroup` s, in backward order.
        """
        raise NotImplementedError

    def setup(self, student: nn.Module) -> nn.Module | None:
        """Build the method's own state once the student exists (so that it can read the feature
        width) and return it as one module, or None for a stateless method (the default).

        - Parameters of the module (a projection head) train with the student, in the groups of
          :meth:`param_groups`; under DDP their gradients are averaged over the ranks.
        - Buffers (class prototypes, a memory bank, running covariances) are the step's to
          update, under ``torch.no_grad()``; update them from ``ctx.all_gather``-ed tensors, so
          that every DDP rank computes the update of the global batch and the buffers stay equal
          (the trainer checks that they are at every checkpoint).
        - The module's ``state_dict`` (parameters, buffers, and ``get_extra_state`` for anything
          else) is saved in checkpoints under ``"method"`` and restored on resume.

        The trainer moves the module to the device and switches it between train and eval mode
        with the student, and under DDP averages its norm layers' statistics after every step as
        it does the student's; keep a reference to it (or to its parts) on ``self`` for the step.
        """
        return None

    def param_groups(self, state: nn.Module, optim: Any) -> list[dict]:
        """AdamW groups of the parameters of :meth:`setup`'s module: by default one group at the
        decoder's learning rate (``lr * optim.head_lr_mult``) with ``optim.weight_decay``, norm
        layers without decay unless ``optim.norm_decay``. Each group needs ``params`` and
        ``lr_mult`` (the schedule sets ``lr = lr_mult * scheduled lr`` every step)."""
        norm_types = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
        no_decay = set()
        if not optim.norm_decay:
            no_decay = {id(p) for m in state.modules() if isinstance(m, norm_types)
                        for p in m.parameters(recurse=False)}
        params = [p for p in state.parameters() if p.requires_grad]
        groups = []
        for skip in (False, True):
            chosen = [p for p in params if (id(p) in no_decay) == skip]
            if chosen:
                groups.append({"params": chosen, "lr_mult": optim.head_lr_mult,
                               "weight_decay": 0.0 if skip else optim.weight_decay})
        return groups

    def describe(self) -> str:
        """One line naming the method and its loss weights (printed at the start of training)."""
        return self.name

    @staticmethod
    def args(cfg: Any, **defaults: Any) -> SimpleNamespace:
        """A method's own settings: ``uda.method_args`` of the config over ``defaults``.

        ``self.args(cfg, weight=0.001).weight`` is 0.001 unless the config sets
        ``uda.method_args.weight`` (``--set uda.method_args.weight=0.01``). A key the method does
        not declare raises :class:`~cluda_kit.config.ConfigError` naming it, so a typo cannot
        silently train with the default. Values take the type of their default (int -> float is
        allowed for a float default). Call it in ``__init__``: :func:`~cluda_kit.uda.methods.build_method`
        refuses ``uda.method_args`` for a method whose construction did not read them.
        """
        from ...config import ConfigError

        Method.args_reads += 1
        given = dict(getattr(cfg.uda, "method_args", {}) or {})
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ConfigError(f"uda.method_args.{unknown[0]}: not a setting of method "
                              f"{cfg.uda.method!r} (its settings: {', '.join(sorted(defaults)) or 'none'})")
        out = dict(defaults)
        for k, v in given.items():
            d = defaults[k]
            if isinstance(d, float) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if d is not None and not isinstance(v, type(d)):
                raise ConfigError(f"uda.method_args.{k}: expected {type(d).__name__}, got {v!r}")
            out[k] = v
        return SimpleNamespace(**out)
