"""The trainer: the loop around a UDA method's step (docs/method.md §2).

The method (:mod:`cluda_kit.uda.methods`: source-only, DACS, DAFormer, CLUDA, with HRDA and MIC
as parts) owns the losses of one step. The trainer owns everything else, in this order each
iteration:

    learning rate (warm-up + poly) -> EMA teacher update (step 0 copies the student) -> the
    source batch -> for each loss group the method yields: finiteness check, backward (DDP
    synchronises the last one; fp16 scales every pass by one GradScaler) -> AdamW step (fp16:
    through the GradScaler, which skips and counts a step with inf/NaN gradients) -> BatchNorm
    statistics averaged over DDP ranks

With ``train.overlap`` (CPU) the teacher's pass and every backward but the last run on a second
thread beside the next forward (:mod:`cluda_kit.engine.overlap`; the same numbers, bit for bit).
And around the loop: evaluation and checkpoints on schedule, logging (metrics.jsonl,
TensorBoard, callbacks), resume. Precision: ``train.amp`` resolved for the device by
:func:`cluda_kit.runtime.resolve_precision` (``Trainer.precision``, also in meta.json and
summary.json). TensorBoard tags: :meth:`Trainer._tensorboard_record`. Checkpoint files:
:mod:`cluda_kit.engine.checkpoint`; DDP: :mod:`cluda_kit.engine.distributed`; the non-finite
loss guard: :mod:`cluda_kit.engine.guard`; the learning-rate schedule and parameter groups: :mod:`cluda_kit.engine.optim`; debug figures are a callback
(:class:`cluda_kit.analysis.callbacks.DebugFigures`) the CLI attaches.

Images stay float in [0, 1] through mixing and augmentation and are normalised right before a
network (:meth:`cluda_kit.uda.methods.StepContext.forward`).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..config import Config, ConfigError, dump_config, load_config, replace, to_dict
from ..data.classes import class_table_of
from ..models import build_segmentor
from ..models.hrda import HRDASegmentor
from ..runtime import (
    DistInfo,
    LossScaler,
    all_gather_objects,
    autocast,
    compile_unavailable,
    device_precision,
    init_distributed,
    resolve_device,
    seed_everything,
    set_deterministic,
)
from ..uda.ema import EMATeacher
from ..uda.methods import Method, StepContext, build_method, cross_entropy
from ..uda.mixing import class_mix_masks, mix
from . import data as engine_data
from .checkpoint import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_text,
    check_resumable,
    check_world_size,
    first_readable,
    git_hash,
    load_checkpoint,
    state_digest,
    truncate_metrics,
)
from .distributed import Distributed
from .evaluate import evaluate as run_evaluation
from .evaluate import SUBSET_MIOUS, format_iou_table, subset_mious
from .guard import NonFiniteGuard, NonFiniteLossError
from .overlap import Overlap, backward_beside, overlap_unavailable
from .optim import lr_at, param_groups

__all__ = ["Trainer", "StepResult", "NonFiniteLossError", "CheckpointError", "load_checkpoint",
           "lr_at", "param_groups", "cross_entropy", "print_summary"]

_phase = torch.profiler.record_function  # named ranges of the step, aggregated by bench/step.py
_digest = state_digest  # the name tests and earlier code use
_NORMS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)


@dataclass
class StepResult:
    """What one step logs. ``tensors``: scalar losses and statistics as 0-dim tensors on the
    device (or floats), returned without a host-device synchronisation; ``values``: the same as
    floats, converted on first access (one synchronisation for all, cached)."""

    iter: int
    tensors: dict[str, Any] = field(default_factory=dict)
    _floats: dict[str, float] | None = field(default=None, repr=False, compare=False)

    @property
    def values(self) -> dict[str, float]:
        if self._floats is None:
            items = list(self.tensors.items())
            dev = [v for _, v in items if isinstance(v, torch.Tensor)]
            host = torch.stack([v.detach().float().reshape(()) for v in dev]).tolist() if dev else []
            it = iter(host)
            self._floats = {k: next(it) if isinstance(v, torch.Tensor) else float(v) for k, v in items}
        return self._floats


Callback = Callable[["Trainer", dict], None]


def _call(callbacks: list, hook: str, *args: Any) -> None:
    """Call ``hook`` of every callback that has it; a plain callable is an ``on_log`` hook."""
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is None and hook == "on_log" and callable(cb):
            fn = cb
        if fn is not None:
            fn(*args)


def _backward(loss: torch.Tensor) -> None:
    with _phase("step/backward"):
        loss.backward()


# ------------------------------------------------------------------------------------ trainer
class Trainer:
    """Build everything from a :class:`Config` and train.

    ``Trainer(cfg, out_dir=None)``: with ``out_dir`` the run directory receives config.yaml,
    metrics.jsonl, TensorBoard events, checkpoints and summary.json. ``method``: the UDA method
    (default: :func:`cluda_kit.uda.methods.build_method` of the config). ``callbacks``: plain
    callables ``cb(trainer, record)`` are called for every logged record (training and
    evaluation), e.g. a notebook's live plot; objects may instead define ``on_log(trainer,
    record)`` and/or ``on_step_end(trainer)`` (e.g. :class:`cluda_kit.analysis.callbacks.DebugFigures`).
    """

    def __init__(self, cfg: Config, out_dir: str | Path | None = None, *,
                 method: Method | None = None, callbacks: Iterable[Any] = (), progress: bool = True,
                 overwrite: bool = False, _resuming: bool = False):
        self.cfg = cfg
        self.dist: DistInfo = init_distributed(cfg.train.device)
        self.device = resolve_device(cfg.train.device)
        try:  # train.amp for this device (bf16 / fp16 + GradScaler / fp32: runtime.resolve_precision)
            self.precision = device_precision(cfg.train.amp, self.device)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.amp_dtype = self.precision.dtype
        self.scaler = LossScaler(self.device) if self.precision.grad_scaler else None
        self.callbacks = list(callbacks)
        self.progress = progress
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        set_deterministic(cfg.train.deterministic, self.device)
        self.class_table = class_table_of(cfg)  # names the classes; a table that does not fit fails here
        self.method = method if method is not None else build_method(cfg)
        self.self_training = self.method.self_training
        # the same seed on every rank for the networks (identical initial student, teacher and
        # ImageNet copy; DDP also broadcasts rank 0's student), a per-rank seed after them
        seed_everything(cfg.train.seed)

        # networks
        self.hrda = cfg.model.hrda.enabled
        student = build_segmentor(cfg.model)
        if self.hrda:
            student = HRDASegmentor.from_config(student, cfg.model)
        self.student = student.to(self.device)
        if cfg.model.channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
        self.teacher = (EMATeacher(self.student, alpha=cfg.uda.ema_alpha, mode=cfg.uda.teacher_mode)
                        if self.self_training else None)
        self.imnet = None
        if cfg.uda.fd.enabled:
            self.imnet = copy.deepcopy(self.student.encoder).eval().requires_grad_(False)
        # the method's own state (a projection head, class prototypes; Method.setup), trained,
        # checkpointed and kept in sync with the student
        self.method_state = self.method.setup(self.student)
        if self.method_state is not None:
            self.method_state.to(self.device)
        self.compiled = False
        if cfg.train.compile:
            self.compiled = self._compile_student(cfg.train.compile_scope, cfg.train.compile_mode)
        # fused AdamW (one kernel for all parameters) on CUDA; the CPU keeps the foreach
        # implementation, whose steps the golden-step tests pin
        groups = param_groups(self.student, cfg.optim.lr, cfg.optim.weight_decay,
                              cfg.optim.head_lr_mult, cfg.optim.norm_decay, cfg.optim.no_decay_rule)
        if self.method_state is not None:
            for group in self.method.param_groups(self.method_state, cfg.optim):
                groups.append({**group, "lr": cfg.optim.lr * group["lr_mult"]})
        self.optimizer = torch.optim.AdamW(
            groups, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay,
            fused=True if self.device.type == "cuda" else None,
        )
        # DDP: the student's wrapper (train_net: what training forwards run through) and helpers
        self.ddp = Distributed(self.student, self.dist, self.device, cfg.loss.contrastive.gather_negatives)
        self._ddp = self.ddp.ddp
        self._train_net: torch.nn.Module = self.ddp.train_net
        if self.ddp.enabled:
            seed_everything(cfg.train.seed + self.dist.rank)
        # randomness of the UDA step (mixing, augmentation, anchor sampling): one generator,
        # saved in checkpoints, so that a resumed run draws the same numbers
        self.generator = torch.Generator().manual_seed(cfg.train.seed * 1000003 + self.dist.rank)
        # train.overlap: the teacher's pass and a pass's backward on a second CPU thread
        why_not = overlap_unavailable(self.device.type, self.ddp.enabled, self.compiled)
        if cfg.train.overlap and why_not and self.dist.is_main:
            print(f"train.overlap is off: {why_not}", flush=True)
        self.overlap = Overlap(enabled=bool(cfg.train.overlap) and why_not is None)
        # the leaves a training pass can reach: the trainable parameters of the student and of the
        # method's state (the teacher and the frozen encoder require no gradient; the optimiser
        # holds exactly these)
        self._method_params = ([p for p in self.method_state.parameters() if p.requires_grad]
                               if self.method_state is not None else [])
        self._grad_leaves = [p for p in self.student.parameters() if p.requires_grad] + self._method_params

        # data
        self.source = engine_data.train_stream(cfg, domain="source", rank=self.dist.rank,
                                               world_size=self.dist.world_size)
        self.target = (engine_data.train_stream(cfg, domain="target", rank=self.dist.rank,
                                                world_size=self.dist.world_size)
                       if self.self_training else None)
        self.iter = 0
        self.guard = NonFiniteGuard(cfg.train.skip_nonfinite, self.ddp.mean_over_ranks, self.ddp.enabled)
        # train.save_best: the best target-val mIoU so far and its iteration (checkpointed)
        self.best_miou: float | None = None
        self.best_iter: int | None = None
        self.history: list[dict] = []
        self._tb = None
        self._loss_terms: set[str] = set()  # names of the loss terms logged (TensorBoard's loss/)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.out_dir is not None and self.dist.is_main:
            self._init_run_dir(overwrite, _resuming)

    # ------------------------------------------------------------------ run directory
    def _init_run_dir(self, overwrite: bool, resuming: bool) -> None:
        """Create the run directory. A new run refuses a directory that holds another config;
        ``overwrite`` starts afresh; a resume keeps metrics (dropping records past the
        checkpoint is done in :meth:`load_state_dict`)."""
        assert self.out_dir is not None
        cfg_path = self.out_dir / "config.yaml"
        text = dump_config(self.cfg)
        if cfg_path.exists() and not (overwrite or resuming):
            if cfg_path.read_text() != text or (self.out_dir / "checkpoints" / "last.pt").exists():
                raise ConfigError(
                    f"{self.out_dir}: holds another run; resume it with "
                    f"`cluda-kit train --resume {self.out_dir}`, or choose another --out "
                    "(or pass --overwrite)"
                )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in ("metrics.jsonl", "summary.json", "checkpoints/last.pt",
                         "checkpoints/prev.pt", "checkpoints/best.pt"):
                (self.out_dir / name).unlink(missing_ok=True)
        atomic_write_text(cfg_path, text)
        meta = {"version": __version__, "git": git_hash(), "preset": self.cfg.name,
                "method": self.method.name, "device": str(self.device), "precision": self.precision.name,
                "amp": self.precision.requested, "torch": torch.__version__,
                "world_size": self.dist.world_size}
        atomic_write_text(self.out_dir / "meta.json", json.dumps(meta, indent=2))

    @property
    def tensorboard(self):
        if self._tb is None and self.out_dir is not None and self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tb"))
        return self._tb

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.dist.is_main and self.out_dir is not None:
            with open(self.out_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            self._tensorboard_record(record)
        _call(self.callbacks, "on_log", self, record)

    #: metrics.jsonl name -> TensorBoard tag (loss terms go under loss/, other step values under train/)
    TB_TAGS = {"loss": "loss/total", "lr": "lr/base", "q": "pseudo_label/q", "miou": "val/mIoU",
               "miou16": "val/mIoU16", "miou13": "val/mIoU13", "amp_skipped": "amp/skipped_steps",
               "amp_scale": "amp/loss_scale"}

    def _tensorboard_record(self, record: dict) -> None:
        """A logged record as TensorBoard scalars: evaluation -> ``val/mIoU`` and
        ``val_iou/<class>``; training -> ``loss/<term>``, ``lr/<parameter group>``,
        ``pseudo_label/q``, ``amp/skipped_steps`` (see :attr:`TB_TAGS`)."""
        tb, step = self.tensorboard, record["iter"]
        for k, v in record.items():
            if k == "iou" and isinstance(v, dict):
                for name, iou in v.items():
                    if iou is not None:
                        tb.add_scalar(f"val_iou/{name}", iou, step)
            elif k != "iter" and isinstance(v, (int, float)) and not isinstance(v, bool):
                tag = self.TB_TAGS.get(k) or (f"loss/{k}" if k in self._loss_terms else f"train/{k}")
                tb.add_scalar(tag, v, step)
        if "loss" in record:  # a training record: the learning rate of each parameter group
            for name, group in zip(self.lr_group_names, self.optimizer.param_groups):
                tb.add_scalar(f"lr/{name}", group["lr"], step)

    @cached_property
    def lr_group_names(self) -> list[str]:
        """The optimiser's parameter groups (:func:`cluda_kit.engine.optim.param_groups`) by
        name: encoder / head, + _no_decay for a group exempt from weight decay."""
        encoder = {id(p) for p in self.student.encoder.parameters()}
        method = {id(p) for p in self._method_params}
        names: list[str] = []
        for i, group in enumerate(self.optimizer.param_groups):
            first = id(group["params"][0]) if group["params"] else None
            name = "encoder" if first in encoder else "method" if first in method else "head"
            if group["weight_decay"] == 0 and self.cfg.optim.weight_decay != 0:
                name += "_no_decay"
            names.append(f"{name}_{i}" if name in names else name)
        return names

    def replica_digests(self) -> dict[str, list[str]]:
        """SHA-256 of the student and teacher state on every rank (``[rank 0, rank 1, ...]``);
        a collective under DDP. All entries are equal while the replicas are in sync."""
        states = {"student": self.student.state_dict()}
        if self.teacher is not None:
            states["teacher"] = self.teacher.state_dict()
        if self.method_state is not None:
            states["method"] = self.method_state.state_dict()
        return self.ddp.replica_digests(states)

    # ------------------------------------------------------------------ one step
    def context(self) -> StepContext:
        """What the method gets for the current step (see :class:`StepContext`)."""
        return StepContext(
            iter=self.iter, student=self.student, train_net=self._train_net, teacher=self.teacher,
            imnet=self.imnet, generator=self.generator, device=self.device,
            autocast=partial(autocast, self.device, self.amp_dtype),
            channels_last=self.cfg.model.channels_last, world_size=self.dist.world_size,
            mean_over_ranks=self.ddp.mean_over_ranks, all_gather=self.ddp.all_gather,
            gather=self.ddp.gather,
            background=self.overlap.submit,
        )

    def _batch(self, stream) -> dict[str, torch.Tensor]:
        """The next batch of a stream on the device: images float in [0, 1], labels int64."""
        b = next(stream)
        return {"image": b["image"].to(self.device, non_blocking=True).float().div_(255),
                "label": b["label"].to(self.device, non_blocking=True)}

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> bool:
        """True when the step may go on (:mod:`cluda_kit.engine.guard`: deferred, or with
        ``train.skip_nonfinite`` immediate, logging the skipped step)."""
        skipped = self.guard.check(terms, self.iter)
        if skipped is not None:
            self._log({"iter": self.iter, "skipped": skipped})
        return skipped is None

    def raise_if_nonfinite(self) -> None:
        """Raise :class:`NonFiniteLossError` if a loss term was non-finite at any step since the
        start; one host synchronisation (``fit`` calls it on log, evaluation and checkpoint steps)."""
        self.guard.raise_if_any()

    def step(self) -> StepResult:
        """Run one training iteration and return its logged values (device tensors; see
        :class:`StepResult`). The phases are ``torch.profiler.record_function`` ranges named
        ``step/<phase>`` (data, ema, student_source, fd, contrastive, backward, teacher,
        mix_augment, student_mix, optimizer); they cost nothing measurable without a profiler."""
        cfg = self.cfg
        self.student.train()
        if self.method_state is not None:
            self.method_state.train()
        if cfg.train.skip_nonfinite:  # a skipped step must leave no statistics behind (BatchNorm, the method's)
            self._buffers_before = [b.clone() for b in self._step_buffers()]
        lr = lr_at(self.iter, cfg.optim.lr, cfg.train.max_iters, cfg.optim.warmup_iters,
                   cfg.optim.warmup_ratio, cfg.optim.poly_power, cfg.optim.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        if self.teacher is not None:
            with _phase("step/ema"):
                self.teacher.update(self.student, self.iter)  # 0. EMA (step 0 copies)
        with _phase("step/data"):
            source = self._batch(self.source)

        fetched: list[dict[str, torch.Tensor]] = []

        def target() -> dict[str, torch.Tensor]:  # one target batch per step, fetched on demand
            if not fetched:
                with _phase("step/data"):
                    fetched.append(self._batch(self.target))
            return fetched[0]

        self.optimizer.zero_grad(set_to_none=True)
        terms: dict[str, torch.Tensor] = {}
        stats: dict[str, Any] = {"lr": lr}
        passes = self.method.passes
        self.ddp.set_grad_sync(passes == 1)  # DDP reduces in the last pass only (set before its forward)
        groups = self.method.step(self.context(), source, target if self.target is not None else None)
        backward_done: Callable[[], Any] | None = None  # train.overlap: a pass's backward in flight
        try:
            for k, group in enumerate(groups):
                if k >= passes:
                    raise RuntimeError(f"{type(self.method).__name__}.step yielded more loss groups "
                                       f"than its passes={passes}")
                last = k == passes - 1
                stats.update(group.logs)
                if backward_done is not None and not last:  # gradients accumulate in the sequential order
                    backward_done()
                    backward_done = None
                if not self._check_finite(group.terms):
                    groups.close()
                    self.overlap.drain()
                    self.optimizer.zero_grad(set_to_none=True)
                    return StepResult(self._finish_step(skipped=True), stats)
                touch = self.ddp.touch(*group.outputs) if last else 0.0
                loss = sum(group.terms.values()) + touch
                # fp16: every pass scaled by the one GradScaler, unscaled once in its step
                loss = loss if self.scaler is None else self.scaler.scale(loss)
                if self.overlap.enabled and not last:  # runs beside the next pass's forward
                    backward_done = self.overlap.submit(_backward, loss)
                elif backward_done is not None:  # beside the previous pass's backward, added after it
                    backward_beside(loss, self._grad_leaves, backward_done)
                    backward_done = None
                else:
                    _backward(loss)
                terms.update(group.terms)
                del group, loss
                self.ddp.set_grad_sync(k + 1 == passes - 1)
        finally:  # nothing of this step may still run when the optimiser or the next EMA update does
            self.overlap.drain()

        self.ddp.average_grads(self._method_params)  # DDP reduces only the student's
        with _phase("step/optimizer"):
            if self.scaler is None:
                self.optimizer.step()
            else:  # skipped (and counted) when a gradient is inf/NaN; the scale adapts
                self.scaler.step(self.optimizer)
        self._loss_terms.update(terms)
        values = {k: v.detach() for k, v in terms.items()}
        values["loss"] = sum(values.values())
        values.update({k: v for k, v in stats.items() if isinstance(v, torch.Tensor)})
        if self.scaler is not None:  # cumulative count and current scale, device tensors
            values["amp_skipped"] = self.scaler.skipped_tensor.clone()
            values["amp_scale"] = self.scaler.scale_tensor.clone()
        if self.ddp.enabled:  # log the mean over ranks
            values = dict(zip(values, self.ddp.mean_over_ranks(torch.stack([v.float() for v in values.values()]))))
        values.update({k: float(v) for k, v in stats.items() if not isinstance(v, torch.Tensor)})  # lr, ...
        # device tensors: converted to floats only when a log step reads StepResult.values
        return StepResult(self._finish_step(), values)

    def _finish_step(self, skipped: bool = False) -> int:
        if skipped:
            torch._foreach_copy_(self._step_buffers(), self._buffers_before)
        self.iter += 1
        nets = [self.student] + ([self.teacher.model] if self.teacher is not None else [])
        if self.method_state is not None:  # its norm layers; its other buffers are equal by construction
            nets += [m for m in self.method_state.modules() if isinstance(m, _NORMS)]
        self.ddp.sync_buffers(nets)
        _call(self.callbacks, "on_step_end", self)
        return self.iter

    def _step_buffers(self) -> list[torch.Tensor]:
        """The buffers a step changes: the student's (BatchNorm) and the method's own."""
        bufs = list(self.student.buffers())
        if self.method_state is not None:
            bufs += list(self.method_state.buffers())
        return bufs

    def _compile_student(self, scope: str, mode: str = "default") -> bool:
        """torch.compile the student's segmentor (encoder + decoder; HRDA's crops and attention
        stay eager around it) or only its encoder, in place (nn.Module.compile: parameter names
        and checkpoints unchanged), after the teacher and ImageNet copies were taken; static
        shapes (the training crop is fixed; HRDA's two encoder layouts get one graph each).
        ``mode`` "reduce-overhead" also captures CUDA graphs (on CUDA; the CPU ignores them).
        Where compilation is unavailable, warns once and trains eagerly; returns whether it
        compiled."""
        reason = compile_unavailable(self.device)
        if reason is not None:
            warnings.warn(f"train.compile=true: {reason}; training eagerly", RuntimeWarning, stacklevel=3)
            return False
        segmentor = getattr(self.student, "segmentor", self.student)  # HRDA wraps the Segmentor
        (segmentor if scope == "student" else segmentor.encoder).compile(dynamic=False, mode=mode)
        return True

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None = None, progress: bool | None = None,
                 callback: Callable | None = None) -> dict:
        """Evaluate (the student by default) on the target val split; returns miou, iou, cm as
        fractions. ``callback(batch, pred)`` sees every batch and its (B, H, W) prediction."""
        cfg = self.cfg
        model = model if model is not None else self.student
        was_training = model.training
        model.eval()
        loader = engine_data.val_loader(cfg, rank=self.dist.rank, world_size=self.dist.world_size)

        def forward(x: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.amp_dtype):
                return model(x).logits.float()

        result = run_evaluation(
            forward, loader, cfg.model.num_classes, mode=cfg.train.eval_mode,
            window=cfg.train.eval_window, stride=cfg.train.eval_stride, device=self.device,
            progress=self.progress if progress is None else progress, callback=callback,
        )
        model.train(was_training)
        return result

    def _eval_record(self) -> dict:
        res = self.evaluate(progress=False)
        iou = [None if math.isnan(v) else 100.0 * float(v)
               for v in np.asarray(res["iou"], dtype=float)]
        record = {"iter": self.iter, "miou": 100.0 * float(res["miou"])}
        # Synthia->Cityscapes: mIoU16 and mIoU13 beside mIoU19 (logged, in summary.json, TensorBoard)
        record.update({k: 100.0 * v for k, v in subset_mious(res["cm"], self.cfg.data.source.name).items()})
        record["iou"] = dict(zip(self.class_table.names, iou))
        self._log(record)
        return record

    # ------------------------------------------------------------------ fit
    def fit(self, max_iters: int | None = None) -> dict:
        """Train until ``max_iters`` (default ``train.max_iters``), evaluating and checkpointing
        on schedule; returns the summary (final mIoU, per-class IoU, wall time, it/s)."""
        cfg = self.cfg.train
        max_iters = cfg.max_iters if max_iters is None else max_iters
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iters, initial=self.iter, desc=self.cfg.name, dynamic_ncols=True,
                   disable=not (self.progress and self.dist.is_main))
        if self.progress and self.dist.is_main and self.iter < max_iters:
            bar.write(f"precision: {self.precision} on {self.device}")
        t0, it0 = time.perf_counter(), self.iter
        first_step_s = None  # with train.compile: the first step, which compiles, timed apart
        last_eval = None
        while self.iter < max_iters:
            res = self.step()
            if first_step_s is None and self.compiled:
                self.raise_if_nonfinite()  # waits for the step, so its time is the compile's
                first_step_s = time.perf_counter() - t0
            bar.update(1)
            log_now = self.iter % cfg.log_every == 0 or self.iter == max_iters
            # host-device synchronisation only here: the deferred finiteness check, the floats
            if log_now or (cfg.eval_every and self.iter % cfg.eval_every == 0) or \
                    (cfg.checkpoint_every and self.iter % cfg.checkpoint_every == 0):
                self.raise_if_nonfinite()
            if res.tensors and log_now:
                record = {"iter": self.iter, **res.values}
                self._log(record)
                bar.set_postfix(loss=f"{res.values.get('loss', float('nan')):.3f}")
            if cfg.eval_every and self.iter % cfg.eval_every == 0:
                last_eval = self._eval_record()
                self._select_best(last_eval)
                bar.set_postfix(miou=f"{last_eval['miou']:.2f}")
            if self.out_dir is not None and cfg.checkpoint_every and \
                    self.iter % cfg.checkpoint_every == 0:
                self.save()
        bar.close()
        wall = time.perf_counter() - t0
        if last_eval is None or last_eval["iter"] != self.iter:
            last_eval = self._eval_record()
            self._select_best(last_eval)
        if self.out_dir is not None:
            self.save()
        summary = {"iter": self.iter, "miou": last_eval["miou"],
                   **{k: v for k, v in last_eval.items() if k.startswith("miou") and k != "miou"},
                   "iou": last_eval["iou"],
                   "wall_time_s": wall,
                   # it/s excludes the first (compiling) step of a compiled run; first_step_s has it
                   "iters_per_s": ((self.iter - it0 - 1) / max(wall - first_step_s, 1e-9)
                                   if first_step_s is not None and self.iter - it0 > 1
                                   else (self.iter - it0) / max(wall, 1e-9)),
                   "compiled": self.compiled, "first_step_s": first_step_s,
                   "preset": self.cfg.name, "precision": self.precision.name,
                   "world_size": self.dist.world_size,
                   "amp_skipped_steps": self.scaler.skipped if self.scaler is not None else 0}
        if cfg.save_best:  # selected on the target val set: reported beside, never instead of, the final
            summary.update(best_miou=self.best_miou, best_iter=self.best_iter)
        if self.out_dir is not None and self.dist.is_main:
            atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2))
        if self._tb is not None:
            self._tb.flush()
        return summary

    def _select_best(self, record: dict) -> None:
        """``train.save_best="miou"``: an evaluation that improves the best target-val mIoU so far
        writes RUN_DIR/checkpoints/best.pt (atomically; under DDP a collective, as every save)."""
        miou = record["miou"]
        if self.cfg.train.save_best != "miou" or math.isnan(miou) or \
                (self.best_miou is not None and miou <= self.best_miou):
            return
        self.best_miou, self.best_iter = record["miou"], record["iter"]
        if self.out_dir is not None:
            self.save(self.out_dir / "checkpoints" / "best.pt")

    # ------------------------------------------------------------------ inspection
    @torch.no_grad()
    def predict(self, images: torch.Tensor, teacher: bool = False) -> torch.Tensor:
        """Class logits (B, C, H, W) at the input size for float images in [0, 1] (B, 3, H, W),
        from the student (eval mode) or the EMA teacher (``teacher=True``, in its own mode, with
        HRDA inference where enabled)."""
        images = images.to(self.device)
        ctx = self.context()
        if teacher:
            if self.teacher is None:
                raise ValueError("predict(teacher=True): this run has no teacher "
                                 f"(uda.mode={self.cfg.uda.mode})")
            logits = self.method.seg.teacher_logits(ctx, images)
        else:
            was_training = self.student.training
            self.student.eval()
            logits = ctx.forward(self.student, images).logits.float()
            self.student.train(was_training)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def debug_batch(self) -> dict:
        """The intermediate tensors of one step on a fresh batch (first image of each), for
        figures and notebooks. Draws from a copy of the generators: training is not disturbed.
        Pseudo-labels come from the method's own function (the student's prediction stands in
        for the teacher's in a run without one)."""
        cfg, dev = self.cfg, self.device
        ctx = dataclasses.replace(self.context(), generator=torch.Generator().set_state(self.generator.get_state()))
        src = engine_data.peek(self.source, self.iter)
        xs = src["image"][:1].to(dev).float() / 255
        ys = src["label"][:1].to(dev)
        tgt = engine_data.peek(self.target, self.iter) if self.target is not None else src
        xt = tgt["image"][:1].to(dev).float() / 255
        self.student.eval()
        if self.teacher is not None and hasattr(self.method, "pseudo_labels"):
            pl, pw = self.method.pseudo_labels(ctx, xt)
        else:
            from ..uda.pseudo_label import pseudo_label

            logits = F.interpolate(ctx.forward(self.student, xt).logits.float(), size=xt.shape[-2:],
                                   mode="bilinear", align_corners=False)
            top, bottom, left, right = cfg.data.pseudo_margins
            pl, pw = pseudo_label(logits, cfg.uda.pseudo_threshold, ignore_top=top,
                                  ignore_bottom=bottom, ignore_left=left, ignore_right=right)
        m = class_mix_masks(ys, per_image=cfg.uda.mix_per_image, generator=ctx.generator).to(dev)
        x_mix = mix(xs, xt, m)
        y_mix = mix(ys, pl, m)
        pred = ctx.forward(self.student, xt).logits.float()
        pred = F.interpolate(pred, size=xt.shape[-2:], mode="bilinear", align_corners=False)
        self.student.train()
        # batches of one: (1, 3, H, W) images, (1, H, W) labels and weights
        return dict(source=xs.cpu(), source_label=ys.cpu(), target=xt.cpu(),
                    pseudo_label=pl.cpu(), pseudo_weight=pw.cpu(), mixed=x_mix.cpu(),
                    mixed_label=y_mix.cpu(), prediction=pred.argmax(1).cpu())

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        state = {
            "iter": self.iter,
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "imnet": self.imnet.state_dict() if self.imnet is not None else None,
            "method": self.method_state.state_dict() if self.method_state is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "config": to_dict(self.cfg),
            "version": __version__,
            "rng": {
                "python": random.getstate(),
                "numpy": numpy_rng_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "uda": self.generator.get_state(),
            },
            "data": {"source": self.source.state_dict(),
                     "target": self.target.state_dict() if self.target is not None else None},
            "best": {"miou": self.best_miou, "iter": self.best_iter},
            "world_size": self.dist.world_size,
        }
        if self.ddp.enabled:  # collectives: every rank must call state_dict()
            state["rng_per_rank"] = all_gather_objects(state["rng"])
            state["replicas"] = self.replica_digests()
        return state

    def load_state_dict(self, state: dict, where: str = "checkpoint") -> None:
        try:
            self.student.load_state_dict(state["student"])
            if self.teacher is not None:
                self.teacher.load_state_dict(state["teacher"])
            if self.imnet is not None:
                self.imnet.load_state_dict(state["imnet"])
        except (RuntimeError, KeyError, TypeError) as err:
            first = str(err).splitlines()[0:3]
            raise ConfigError(
                f"{where}: does not match this model ({self.cfg.model.encoder} + "
                f"{self.cfg.model.decoder}): {' '.join(first)}"
            ) from None
        try:
            if self.method_state is not None:
                if state.get("method") is None:
                    raise KeyError("the checkpoint holds no method state")
                self.method_state.load_state_dict(state["method"])
        except (RuntimeError, KeyError, TypeError) as err:
            first = str(err).strip("'\"").splitlines()[0:3]
            raise ConfigError(f"{where}: does not match the state of method {self.method.name!r}: "
                              f"{' '.join(first)}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler") is not None:  # fp16: the loss scale
            self.scaler.load_state_dict(state["scaler"])
        self.iter = int(state["iter"])
        best = state.get("best") or {}
        self.best_miou, self.best_iter = best.get("miou"), best.get("iter")
        rng = state["rng"]
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == self.dist.world_size:
            rng = per_rank[self.dist.rank]
        elif self.dist.world_size != state.get("world_size", 1) and self.out_dir is not None:
            # only with train.allow_world_size_change (Trainer.resume refuses otherwise)
            warnings.warn(
                f"{where}: saved by {state.get('world_size', 1)} process(es), resumed by "
                f"{self.dist.world_size}: every rank continues rank 0's random streams, so the run "
                "is not bit-identical to an uninterrupted one", RuntimeWarning, stacklevel=2)
        random.setstate(rng["python"])
        set_numpy_rng_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.generator.set_state(rng["uda"])
        self.source.load_state_dict(state["data"]["source"])
        if self.target is not None:
            self.target.load_state_dict(state["data"]["target"])
        self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        """After a resume: keep the metrics logged up to the checkpoint's iteration (a crashed
        run may have logged past it) and reload them into ``history``."""
        if self.out_dir is None:
            return
        self.history = truncate_metrics(self.out_dir / "metrics.jsonl", self.iter, write=self.dist.is_main)

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint atomically (default: RUN_DIR/checkpoints/last.pt, the one before it
        kept as prev.pt). Under DDP every rank must call it (it gathers the per-rank random states
        and checks that the replicas are identical); rank 0 writes."""
        previous = None
        if path is None:
            if self.out_dir is None:
                raise ValueError("save(): no path given and the trainer has no run directory")
            path = self.out_dir / "checkpoints" / "last.pt"
            previous = path.with_name("prev.pt")
        path = Path(path)
        state = self.state_dict()
        for name, digests in state.get("replicas", {}).items():
            if len(set(digests)) > 1:
                raise RuntimeError(f"DDP replicas diverged by iteration {self.iter}: the {name} "
                                   f"differs between ranks (SHA-256 per rank: {digests})")
        if self.dist.is_main:
            atomic_torch_save(state, path, previous)
        return path

    @classmethod
    def resume(cls, run_dir: str | Path, overrides: Iterable[str] = (), *, read_only: bool = False,
               **kwargs) -> "Trainer":
        """Rebuild a trainer from RUN_DIR/config.yaml (+ overrides such as train.max_iters=N)
        and load RUN_DIR/checkpoints/last.pt (or a checkpoint file given directly).

        An unreadable last.pt (cut short by a full disk, ...) falls back to prev.pt with a warning.
        The checkpoint is checked against the config before anything in the run directory is
        written: only ``train.*`` and ``data.val`` may change, and training goes on with the number
        of processes that saved it unless ``train.allow_world_size_change``. ``read_only`` leaves
        the run directory untouched (evaluation, on any number of processes).
        """
        run_dir = Path(run_dir)
        if run_dir.is_file():
            candidates = [run_dir]
            run_dir = run_dir.parent.parent
        else:
            candidates = [run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "prev.pt"]
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise ConfigError(f"{run_dir}: not a run directory (no config.yaml)")
        state, ckpt = first_readable(candidates, run_dir)
        cfg = load_config(cfg_path)
        overrides = list(overrides)
        if overrides:
            cfg = replace(cfg, overrides)
        check_resumable(state, cfg, ckpt, cfg_path)
        if not read_only:
            world_size = init_distributed(cfg.train.device).world_size
            check_world_size(state, world_size, ckpt, cfg.train.allow_world_size_change)
        trainer = cls(cfg, None if read_only else run_dir, _resuming=True, **kwargs)
        trainer.load_state_dict(state, where=str(ckpt))
        return trainer


def numpy_rng_state() -> dict:
    """numpy's global RNG state as tensors and numbers, so that a checkpoint loads with
    ``torch.load(weights_only=True)`` (no pickled numpy arrays)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def set_numpy_rng_state(state: Any) -> None:
    """Restore :func:`numpy_rng_state` (or numpy's own tuple, from checkpoints written before)."""
    if isinstance(state, dict):
        state = (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                 state["cached_gaussian"])
    np.random.set_state(state)


def print_summary(summary: dict, classes: Iterable[str] | None = None) -> str:
    """The per-class IoU table of a summary (IoU in percent, as metrics and summary.json hold
    them), as `cluda-kit train/evaluate` print it; ``classes`` default: the summary's, in order."""
    classes = list(summary["iou"]) if classes is None else list(classes)
    iou = [summary["iou"].get(c) for c in classes]
    iou = [float("nan") if v is None else v / 100.0 for v in iou]
    subsets = {f"mIoU{key[4:]}": ids for named in SUBSET_MIOUS.values() for key, ids in named.items()
               if key in summary}  # Synthia->Cityscapes: mIoU16, mIoU13
    return format_iou_table(np.asarray(iou, dtype=float), list(classes), subsets=subsets or None)
