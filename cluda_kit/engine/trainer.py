"""The UDA trainer: the numbered self-training step (docs/method.md §2), the fit loop, checkpoints
and resume.

One iteration of :meth:`Trainer.step` (batch B source + B target):

    0. EMA teacher update (step 0 copies the student)      uda/ema.py
    1. student on the source crop: CE (HRDA: 0.9 CE(fused) + 0.1 CE(detail))
    2. ImageNet feature distance on thing classes (FD)     uda/feature_distance.py
    3. CLUDA contrastive loss on the source batch          uda/contrastive.py
    4. teacher pseudo-labels and their weight q            uda/pseudo_label.py
    5. ClassMix of source onto target                      uda/mixing.py
    6. strong augmentation of the mixed image
    7. student on the mixed image: weighted CE
    8. CLUDA contrastive loss on the mixed batch
    (MIC: student on the masked target, optional)           uda/masking.py
    9. one AdamW step over the accumulated gradients

HRDA (``model.hrda.enabled``): the student is an :class:`~cluda_kit.models.hrda.HRDASegmentor`;
the source, mixed and MIC passes use its context + detail training forward and loss (random detail
windows; the mixed batch's window is the max-entropy one from ``model.hrda.entropy_window_after``
on), FD compares the context features, the teacher labels the target with HRDA inference, and with
the ``feat_weighter`` CLUDA's learned-weighted multi-resolution contrastive loss
(``loss.contrastive.multires_weight``) replaces the single-resolution one. The helpers
``_student``, ``_seg_loss``, ``_cl_loss``, ``_teacher_logits``, ``_mix_window`` and ``_fd_input``
hold every difference between the two paths.

Each group of losses calls ``backward`` on its own (the sum of gradients is the same) so the
activations of the source pass are freed before the mixed pass. Images stay float in [0, 1]
through mixing and augmentation and are normalised right before a network.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import math
import os
import random
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..config import Config, ConfigError, dump_config, from_dict, load_config, replace, to_dict
from ..data import labels as label_table
from ..data.transforms import normalize
from ..models import build_segmentor
from ..models.hrda import HRDASegmentor, crop_to_box
from ..runtime import (
    DistInfo,
    all_gather_cat,
    all_gather_objects,
    all_reduce_mean_,
    autocast,
    autocast_dtype,
    init_distributed,
    resolve_device,
    seed_everything,
    set_deterministic,
)
from ..uda.contrastive import multi_resolution_contrastive_loss, pixel_contrastive_loss, resize_for_contrast
from ..uda.ema import EMATeacher
from ..uda.feature_distance import feature_distance_loss
from ..uda.masking import block_mask, mask_images
from ..uda.mixing import class_mix_masks, mix, strong_augment
from ..uda.pseudo_label import margin_mask, pseudo_label
from . import data as engine_data
from .evaluate import evaluate as run_evaluation
from .evaluate import format_iou_table


_phase = torch.profiler.record_function  # named ranges of the step, aggregated by bench/step.py


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the message names the term and the iteration."""


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, truncated or not a cluda-kit checkpoint; names the file."""


# ------------------------------------------------------------------------------ pure helpers
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


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                  ignore_index: int = 255, mean_over_all: bool = False) -> torch.Tensor:
    """Pixel CE with optional per-pixel weights.

    logits (B, C, h, w) are upsampled bilinearly to the label size (B, H, W). The mean divides by
    the number of labelled pixels, or by all B*H*W pixels with ``mean_over_all`` (the release).
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    if weights is not None:
        loss = loss * weights
    denom = labels.numel() if mean_over_all else (labels != ignore_index).sum().clamp_min(1)
    return loss.sum() / denom


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _remove_stale_temps(path: Path) -> None:
    """Delete the temp files of ``path`` that a writer killed mid-write left behind."""
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        stale.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable (POSIX; silently skipped where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_torch_save(obj: Any, path: Path, previous: Path | None = None) -> None:
    """Write ``obj`` to ``path`` so that a crash at any moment leaves a complete file there.

    The data goes to a temp file next to ``path`` (fsynced) that then replaces ``path``
    (``os.replace`` is atomic). With ``previous``, the old ``path`` is first hard-linked (or, where
    links are unsupported, copied) to ``previous``, atomically as well: at every moment both names
    hold complete checkpoints. Temp files of killed writers are removed first; nothing but ``path``
    and ``previous`` is ever read back.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = _temp_path(path)
    temps = [tmp]
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if previous is not None and path.exists():
            _remove_stale_temps(previous)
            prev_tmp = _temp_path(previous)
            temps.append(prev_tmp)
            try:
                os.link(path, prev_tmp)
            except OSError:
                shutil.copyfile(path, prev_tmp)
            os.replace(prev_tmp, previous)
        os.replace(tmp, path)
    except BaseException:
        for t in temps:
            t.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


_CHECKPOINT_KEYS = ("iter", "student", "optimizer", "config")


def load_checkpoint(path: str | Path) -> dict:
    """Load a trainer checkpoint onto the CPU. A truncated, corrupt or foreign file raises
    :class:`CheckpointError` naming it."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch.load raises RuntimeError, EOFError, UnpicklingError, ...
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {first}); it may have been "
            "cut short (full disk, interrupted copy)"
        ) from None
    if not isinstance(state, dict) or not all(k in state for k in _CHECKPOINT_KEYS):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a cluda-kit trainer checkpoint (expected the keys "
            f"{', '.join(_CHECKPOINT_KEYS)}; found {keys})"
        )
    return state


def _first_readable(candidates: list[Path], run_dir: Path) -> tuple[dict, Path]:
    """The first loadable checkpoint of ``candidates`` (last.pt, then prev.pt), with a warning
    when an earlier one had to be passed over."""
    problems = []
    for path in candidates:
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems:
            warnings.warn(f"{problems[0]}; resuming from {path} (iteration {state['iter']}) instead",
                          RuntimeWarning, stacklevel=3)
        return state, path
    if any(p.is_file() for p in candidates):
        raise CheckpointError("; ".join(problems))
    raise ConfigError(f"{run_dir}: no checkpoint to resume from ({candidates[0]} is missing)")


def _config_differences(a: Any, b: Any, prefix: str) -> list[str]:
    """Dotted keys whose values differ between two config sections, ``key (A vs B)``."""
    da, db = to_dict(a), to_dict(b)
    out = []
    for key in da:
        if isinstance(da[key], dict):
            out += _config_differences(getattr(a, key), getattr(b, key), f"{prefix}.{key}")
        elif da[key] != db[key]:
            out.append(f"{prefix}.{key} ({da[key]!r} vs {db[key]!r})")
    return out


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and raw bytes (bit-identical tensors <=> equal digests)."""
    h = hashlib.sha256()
    for name, t in tensors.items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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


# ------------------------------------------------------------------------------------ trainer
class Trainer:
    """Build everything from a :class:`Config` and train.

    ``Trainer(cfg, out_dir=None)``: with ``out_dir`` the run directory receives config.yaml,
    metrics.jsonl, TensorBoard events, figures, checkpoints and summary.json. ``callbacks`` are
    called as ``cb(trainer, record)`` for every logged record (training and evaluation), e.g. a
    notebook's live plot.
    """

    def __init__(self, cfg: Config, out_dir: str | Path | None = None, *,
                 callbacks: Iterable[Callback] = (), progress: bool = True,
                 overwrite: bool = False, _resuming: bool = False):
        self.cfg = cfg
        self.dist: DistInfo = init_distributed(cfg.train.device)
        self.device = resolve_device(cfg.train.device)
        self.amp_dtype = autocast_dtype(cfg.train.amp, self.device)
        self.callbacks = list(callbacks)
        self.progress = progress
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        set_deterministic(cfg.train.deterministic, self.device)
        # the same seed on every rank for the networks (identical initial student, teacher and
        # ImageNet copy; DDP also broadcasts rank 0's student), a per-rank seed after them
        seed_everything(cfg.train.seed)
        self.self_training = cfg.uda.mode == "self_training"

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
        if cfg.train.compile:
            # in place (nn.Module.compile): parameter names and checkpoints are unchanged; after
            # the teacher / ImageNet copies were taken, so only the student's encoder is compiled
            self.student.encoder.compile(dynamic=False)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.student, cfg.optim.lr, cfg.optim.weight_decay,
                         cfg.optim.head_lr_mult, cfg.optim.norm_decay),
            lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay,
        )
        # the network the training forwards run through: the student, or its DDP wrapper
        self._ddp: torch.nn.parallel.DistributedDataParallel | None = None
        if self.dist.enabled:
            ddp = torch.nn.parallel.DistributedDataParallel
            # buffers are averaged after every step (_sync_buffers), not broadcast every forward
            no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                              inspect.signature(ddp.__init__).parameters
                              else {"broadcast_buffers": False})
            self._ddp = ddp(
                self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True,  # no find_unused_parameters: see _ddp_touch
                **no_buffer_sync,
            )
            seed_everything(cfg.train.seed + self.dist.rank)
        self._train_net: torch.nn.Module = self._ddp if self._ddp is not None else self.student
        # randomness of the UDA step (mixing, augmentation, anchor sampling): one generator,
        # saved in checkpoints, so that a resumed run draws the same numbers
        self.generator = torch.Generator().manual_seed(cfg.train.seed * 1000003 + self.dist.rank)

        # data
        self.source = engine_data.train_stream(cfg, domain="source", rank=self.dist.rank,
                                               world_size=self.dist.world_size)
        self.target = (engine_data.train_stream(cfg, domain="target", rank=self.dist.rank,
                                                world_size=self.dist.world_size)
                       if self.self_training else None)
        self.iter = 0
        self._nonfinite: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.best_miou: float | None = None
        self.history: list[dict] = []
        self._tb = None
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
                         "checkpoints/prev.pt"):
                (self.out_dir / name).unlink(missing_ok=True)
        _atomic_write_text(cfg_path, text)
        meta = {"version": __version__, "git": _git_hash(), "preset": self.cfg.name,
                "device": str(self.device), "torch": torch.__version__}
        _atomic_write_text(self.out_dir / "meta.json", json.dumps(meta, indent=2))

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
            tb = self.tensorboard
            for k, v in record.items():
                if k != "iter" and isinstance(v, (int, float)):
                    tb.add_scalar(k, v, record["iter"])
        for cb in self.callbacks:
            cb(self, record)

    # ------------------------------------------------------------------ DDP
    def _ddp_touch(self, *outs: Any) -> torch.Tensor | float:
        """0 x every output tensor of the synchronised forward(s), added to that backward's loss.

        Heads whose output no loss of the synchronised pass uses (the projection head and HRDA's
        feat_weighter feed only the contrastive loss, which may be off or only on the source pass)
        then get zero gradients instead of none, so DDP's reduction completes without
        ``find_unused_parameters`` (a graph search every step, and an error whenever a forward
        output does not reach the loss). Zero is added to gradients accumulated in the source pass,
        so they are unchanged. 0 without DDP."""
        if self._ddp is None:
            return 0.0
        total = torch.zeros((), device=self.device)
        for out in outs:
            for f in dataclasses.fields(out):
                value = getattr(out, f.name)
                for t in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(t, torch.Tensor) and t.requires_grad:
                        total = total + t.float().sum().mul(0.0).nan_to_num(0.0, 0.0, 0.0)
        return total

    def _set_grad_sync(self, enabled: bool) -> None:
        """DDP ``no_sync`` as a switch: the source backward of a self-training step only
        accumulates; the mixed backward all-reduces the sum of both (one all-reduce per step)."""
        if self._ddp is not None:
            self._ddp.require_backward_grad_sync = enabled

    def _sync_buffers(self) -> None:
        """Average the floating buffers (BatchNorm running statistics) of the student and the
        teacher over the ranks, so that every rank holds the same networks after each step."""
        nets = [self.student] + ([self.teacher.model] if self.teacher is not None else [])
        bufs = [b for net in nets for b in net.buffers() if b.is_floating_point()]
        if not bufs:
            return
        flat = all_reduce_mean_(torch.cat([b.reshape(-1).float() for b in bufs]))
        torch._foreach_copy_(bufs, [v.view_as(b) for v, b in zip(flat.split([b.numel() for b in bufs]), bufs)])

    def _global_pseudo_weight(self, pw: torch.Tensor) -> torch.Tensor:
        """The pseudo-label weight map with q averaged over the ranks (equal pixel counts per
        rank, so the mean is q of the global target batch); margins stay 0."""
        q = all_reduce_mean_(pw.amax().clone())
        keep = margin_mask(pw.shape[-2:], *self.cfg.data.pseudo_margins, device=pw.device,
                           dtype=pw.dtype)
        return keep.expand_as(pw) * q

    def replica_digests(self) -> dict[str, list[str]]:
        """SHA-256 of the student and teacher state on every rank (``[rank 0, rank 1, ...]``);
        a collective under DDP. All entries are equal while the replicas are in sync."""
        mine = {"student": _digest(self.student.state_dict())}
        if self.teacher is not None:
            mine["teacher"] = _digest(self.teacher.state_dict())
        ranks = all_gather_objects(mine)
        return {k: [r[k] for r in ranks] for k in mine}

    # ------------------------------------------------------------------ one step
    def _forward(self, model: torch.nn.Module, images: torch.Tensor, **kw):
        x = normalize(images)
        if self.cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            return model(x, **kw)

    def _contrastive(self, fused: torch.Tensor, labels: torch.Tensor,
                     weights: torch.Tensor | None) -> torch.Tensor:
        c = self.cfg.loss.contrastive
        feats, lab, w = resize_for_contrast(fused.float(), labels, weights, size=c.grid)
        feats, lab, w = self._gather(feats, True), self._gather(lab), self._gather(w)
        return pixel_contrastive_loss(
            feats, lab, w, temperature=c.temperature, base_temperature=c.base_temperature,
            ignore_index=label_table.IGNORE_INDEX, max_anchors=c.max_anchors,
            official_compat=c.official_compat, generator=self.generator,
        )

    def _gather(self, t: torch.Tensor | None, differentiable: bool = False) -> torch.Tensor | None:
        """``loss.contrastive.gather_negatives`` under DDP: ``t`` of every rank concatenated along
        the batch (rank order), gradients flowing back to each rank's features; else ``t``.

        Every rank then computes the loss of the global batch (all pixels are anchors and
        columns): the same value on every rank, and after DDP's gradient averaging the gradient of
        the global-batch loss, exactly as one process with the whole batch would compute it (each
        rank's features receive the sum over ranks of their gradients from the all_gather
        backward, DDP divides by the world size). The price is W times the single-rank work of the
        contrastive loss on each rank (W = world size).
        """
        if t is None or self._ddp is None or not self.cfg.loss.contrastive.gather_negatives:
            return t
        return all_gather_cat(t, differentiable)

    # ---- the plain / HRDA differences
    def _student(self, images: torch.Tensor, *, window: str = "random", **kw):
        """Student training forward; HRDA draws its detail window (``window``: random from the UDA
        generator, or max-entropy)."""
        if self.hrda:
            kw.update(window=window, generator=self.generator)
        return self._forward(self._train_net, images, **kw)

    def _seg_loss(self, out, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel CE of a student output; HRDA: (1 - l_d) CE(fused) + l_d CE(detail, cropped label)."""
        ce_kw = dict(ignore_index=label_table.IGNORE_INDEX, mean_over_all=self.cfg.loss.ce_mean_over_all)
        if not self.hrda:
            return cross_entropy(out.logits, labels, weights, **ce_kw)
        lam = self.student.detail_loss_weight
        loss = (1.0 - lam) * cross_entropy(out.logits, labels, weights, **ce_kw)
        if lam > 0:
            crop_w = crop_to_box(weights, out.box) if weights is not None else None
            loss = loss + lam * cross_entropy(out.detail_logits, crop_to_box(labels, out.box), crop_w,
                                              **ce_kw)
        return loss

    def _cl_loss(self, out, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """CLUDA contrastive loss of a student output (before the source/mix weight). HRDA with the
        feat_weighter: the multi-resolution loss (context u, detail v on the full-resolution grid, the
        window as crop mask, the weight map), all resized to ``loss.contrastive.grid``; otherwise the
        single-resolution loss on the (context) fused feature."""
        feats = out.embedding if out.embedding is not None else out.fused
        if not (self.hrda and out.weight_map is not None):
            return self._contrastive(feats, labels, weights)
        c = self.cfg.loss.contrastive
        size = tuple(c.grid)
        detail = out.detail_embedding if out.detail_embedding is not None else out.detail_fused
        lr, lab, w = resize_for_contrast(feats.float(), labels, weights, size=size)
        hr = F.interpolate(out.detail_canvas(detail.float()), size=size, mode="bilinear",
                           align_corners=True)
        wmap = F.interpolate(out.weight_map.float(), size=size, mode="bilinear", align_corners=True)
        crop = F.interpolate(out.window_mask(), size=size, mode="nearest")[:, 0]
        crop = crop.expand(lab.shape[0], -1, -1).to(torch.uint8)
        lr, hr, wmap = self._gather(lr, True), self._gather(hr, True), self._gather(wmap, True)
        lab, w, crop = self._gather(lab), self._gather(w), self._gather(crop)
        return multi_resolution_contrastive_loss(
            lr, hr, lab, wmap, crop.bool(), w,
            temperature=c.temperature, base_temperature=c.base_temperature,
            loss_weight=c.multires_weight, ignore_index=label_table.IGNORE_INDEX,
            official_compat=c.official_compat, max_anchors=c.max_anchors, generator=self.generator,
        )

    def _teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher logits (float32); HRDA: its inference (whole context + sliding detail windows)
        whatever the teacher's module mode."""
        kw = {"inference": True} if self.hrda else {}
        return self._forward(self.teacher, images, **kw).logits.float()

    def _mix_window(self) -> str:
        """HRDA detail window of the mixed batch: max-entropy from entropy_window_after on."""
        after = self.cfg.model.hrda.entropy_window_after
        return "entropy" if after is not None and self.iter >= after else "random"

    def _fd_input(self, images: torch.Tensor) -> torch.Tensor:
        """The ImageNet encoder's input: the normalised image (HRDA: its context version)."""
        x = normalize(images)
        return self.student.context_input(x) if self.hrda else x

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> bool:
        """True when every term is finite; raise or report per ``train.skip_nonfinite``. Under
        DDP the verdict is global (a term non-finite on any rank), so all ranks skip or stop.

        Without ``skip_nonfinite`` the check is deferred and costs no host-device synchronisation:
        the first non-finite iteration of every term is kept on the device and
        :meth:`raise_if_nonfinite` (which :meth:`fit` calls on every log, evaluation and checkpoint
        step, and at the end) raises :class:`NonFiniteLossError` naming it. With
        ``skip_nonfinite`` the verdict is needed before the update, so that mode synchronises once
        per check."""
        if not self.cfg.train.skip_nonfinite:
            self._record_nonfinite(terms)
            return True
        flags = torch.stack([~torch.isfinite(v).all() for v in terms.values()]).float()
        if self._ddp is not None:
            all_reduce_mean_(flags)
        bad = [k for k, f in zip(terms, flags.tolist()) if f > 0]
        if not bad:
            return True
        msg = (f"non-finite loss {', '.join(bad)} at iteration {self.iter} "
               f"({', '.join(f'{k}={float(terms[k].detach()):g}' for k in bad)})")
        if self.cfg.train.skip_nonfinite:
            self._log({"iter": self.iter, "skipped": msg})
            return False
        raise NonFiniteLossError(msg + "; set train.skip_nonfinite=true to skip such steps")

    def _record_nonfinite(self, terms: dict[str, torch.Tensor]) -> None:
        """Device-side record of the first iteration (and value) at which each term was non-finite
        (iteration -1: never); no host synchronisation."""
        for k, v in terms.items():
            v = v.detach().float()
            bad = ~torch.isfinite(v)
            if k not in self._nonfinite:
                self._nonfinite[k] = (torch.full((), -1, dtype=torch.long, device=v.device),
                                      torch.zeros((), device=v.device))
            first, value = self._nonfinite[k]
            new = bad & (first < 0)
            self._nonfinite[k] = (torch.where(new, torch.full_like(first, self.iter), first),
                                  torch.where(new, v, value))

    def raise_if_nonfinite(self) -> None:
        """Raise :class:`NonFiniteLossError` if a loss term was non-finite at any step since the
        start (the deferred check of :meth:`_check_finite`); one host synchronisation."""
        if not self._nonfinite:
            return
        names = list(self._nonfinite)
        first = torch.stack([self._nonfinite[k][0] for k in names])
        if self._ddp is not None:  # the verdict is global: every rank raises or none
            flag = (first >= 0).any().float().reshape(1)
            all_reduce_mean_(flag)
            if float(flag) == 0:
                return
        first_l = first.tolist()
        values = torch.stack([self._nonfinite[k][1] for k in names]).tolist()
        bad = [(k, i, v) for k, i, v in zip(names, first_l, values) if i >= 0]
        if not bad and self._ddp is None:
            return
        msg = ", ".join(f"{k}={v:g} at iteration {i}" for k, i, v in bad) or "on another rank"
        raise NonFiniteLossError(f"non-finite loss {msg}; set train.skip_nonfinite=true to skip such steps")

    def step(self) -> StepResult:
        """Run one training iteration and return its logged values (device tensors; see
        :class:`StepResult`). The phases are ``torch.profiler.record_function`` ranges named
        ``step/<phase>`` (data, ema, student_source, fd, contrastive, backward, teacher,
        mix_augment, student_mix, optimizer); they cost nothing measurable without a profiler."""
        cfg, dev = self.cfg, self.device
        self.student.train()
        if cfg.train.skip_nonfinite:  # a skipped step must leave no BatchNorm statistics behind
            self._buffers_before = [b.clone() for b in self.student.buffers()]
        lr = lr_at(self.iter, cfg.optim.lr, cfg.train.max_iters, cfg.optim.warmup_iters,
                   cfg.optim.warmup_ratio, cfg.optim.poly_power, cfg.optim.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        if self.teacher is not None:
            with _phase("step/ema"):
                self.teacher.update(self.student, self.iter)  # 0. EMA (step 0 copies)

        with _phase("step/data"):
            src = next(self.source)
            xs = src["image"].to(dev, non_blocking=True).float().div_(255)
            ys = src["label"].to(dev, non_blocking=True)
        if cfg.uda.source_augment:
            with _phase("step/mix_augment"):
                xs = strong_augment(xs, **self._aug_kwargs())
        self.optimizer.zero_grad(set_to_none=True)
        terms: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {"lr": lr}

        # 1-3: source (DDP: gradients of a self-training step are synchronised in the mixed pass)
        self._set_grad_sync(not self.self_training)
        with _phase("step/student_source"):
            out = self._student(xs, return_stages=self.imnet is not None)
            terms["ce_src"] = self._seg_loss(out, ys)
        if self.imnet is not None:
            with _phase("step/fd"):
                with torch.no_grad(), autocast(dev, self.amp_dtype):
                    imnet_feat = self.imnet(self._fd_input(xs))[-1]
                fd = cfg.uda.fd
                terms["fd"] = feature_distance_loss(
                    out.stages[-1].float(), imnet_feat.float(), ys, thing_classes=fd.thing_classes,
                    lambda_fd=fd.weight, min_ratio=fd.min_ratio,
                )
        cl = cfg.loss.contrastive
        if cl.enabled and cl.source_weight > 0:
            with _phase("step/contrastive"):
                terms["cl_src"] = cl.source_weight * self._cl_loss(out, ys, None)
        src_loss = sum(terms.values())
        if not self._check_finite(terms):
            return StepResult(self._finish_step(skipped=True), stats)
        with _phase("step/backward"):
            (src_loss + (0.0 if self.self_training else self._ddp_touch(out))).backward()
        del out, src_loss

        if self.self_training:
            with _phase("step/data"):
                tgt = next(self.target)
                xt = tgt["image"].to(dev, non_blocking=True).float().div_(255)
            # 4. pseudo-labels from the teacher
            with torch.no_grad(), _phase("step/teacher"):
                t_logits = self._teacher_logits(xt)
                t_logits = F.interpolate(t_logits, size=xt.shape[-2:], mode="bilinear",
                                         align_corners=False)
                top, bottom, left, right = cfg.data.pseudo_margins
                pl, pw = pseudo_label(t_logits, cfg.uda.pseudo_threshold, ignore_top=top,
                                      ignore_bottom=bottom, ignore_left=left, ignore_right=right)
                if self._ddp is not None:
                    pw = self._global_pseudo_weight(pw)
                if any(cfg.data.frame_margins):  # the target "label" is the frame-margin mask
                    pw = pw * (tgt["label"].to(dev) == 1)
            stats["q"] = pw.amax()  # the scalar weight q (margins are 0)
            # 5-6. ClassMix + strong augmentation
            with _phase("step/mix_augment"):
                m = class_mix_masks(ys, per_image=cfg.uda.mix_per_image, generator=self.generator)
                m = m.to(dev)
                x_mix = strong_augment(mix(xs, xt, m), **self._aug_kwargs())
                y_mix = mix(ys, pl, m)
                w_mix = mix(torch.ones_like(pw), pw, m)
            # 7-8. student on the mix
            mix_terms: dict[str, torch.Tensor] = {}
            self._set_grad_sync(True)
            with _phase("step/student_mix"):
                out_m = self._student(x_mix, window=self._mix_window())
                mix_terms["ce_mix"] = self._seg_loss(out_m, y_mix, w_mix)
            if cl.enabled and cl.mix_weight > 0:
                with _phase("step/contrastive"):
                    mix_terms["cl_mix"] = cl.mix_weight * self._cl_loss(out_m, y_mix, w_mix)
            if cfg.uda.mic.enabled:
                mic = cfg.uda.mic
                xt_aug = strong_augment(xt, **self._aug_kwargs())
                keep = block_mask(xt_aug, block_size=mic.block_size, ratio=mic.mask_ratio,
                                  generator=self.generator).to(dev)
                hrda_kw = dict(generator=self.generator) if self.hrda else {}
                with autocast(dev, self.amp_dtype):
                    out_t = self._train_net(mask_images(normalize(xt_aug), keep), **hrda_kw)
                mix_terms["mic"] = mic.weight * self._seg_loss(out_t, pl, pw)
            if not self._check_finite(mix_terms):
                self.optimizer.zero_grad(set_to_none=True)
                return StepResult(self._finish_step(skipped=True), stats)
            with _phase("step/backward"):
                synced = [out_m, out_t] if cfg.uda.mic.enabled else [out_m]
                (sum(mix_terms.values()) + self._ddp_touch(*synced)).backward()
            terms.update(mix_terms)

        with _phase("step/optimizer"):
            self.optimizer.step()
        values = {k: v.detach() for k, v in terms.items()}
        values["loss"] = sum(values.values())
        values.update({k: v for k, v in stats.items() if isinstance(v, torch.Tensor)})
        if self._ddp is not None:  # log the mean over ranks
            values = dict(zip(values, all_reduce_mean_(torch.stack([v.float() for v in values.values()]))))
        values["lr"] = lr
        # device tensors: converted to floats only when a log step reads StepResult.values
        return StepResult(self._finish_step(), values)

    def _aug_kwargs(self) -> dict:
        a = self.cfg.uda.aug
        return dict(color_jitter_p=a.color_jitter_p, color_jitter_s=a.color_jitter_s,
                    blur_p=a.blur_p, blur_sigma=a.blur_sigma, generator=self.generator)

    def _finish_step(self, skipped: bool = False) -> int:
        if skipped:
            torch._foreach_copy_(list(self.student.buffers()), self._buffers_before)
        self.iter += 1
        if self._ddp is not None:
            self._sync_buffers()
        return self.iter

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
        record = {"iter": self.iter, "miou": 100.0 * float(res["miou"]),
                  "iou": dict(zip(label_table.CLASSES, iou))}
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
        t0, it0 = time.perf_counter(), self.iter
        last_eval = None
        while self.iter < max_iters:
            res = self.step()
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
            if cfg.figure_every and self.iter % cfg.figure_every == 0:
                self.save_debug_figure()
            if cfg.eval_every and self.iter % cfg.eval_every == 0:
                last_eval = self._eval_record()
                bar.set_postfix(miou=f"{last_eval['miou']:.2f}")
            if self.out_dir is not None and cfg.checkpoint_every and \
                    self.iter % cfg.checkpoint_every == 0:
                self.save()
        bar.close()
        wall = time.perf_counter() - t0
        if last_eval is None or last_eval["iter"] != self.iter:
            last_eval = self._eval_record()
        if self.out_dir is not None:
            self.save()
        summary = {"iter": self.iter, "miou": last_eval["miou"], "iou": last_eval["iou"],
                   "wall_time_s": wall, "iters_per_s": (self.iter - it0) / max(wall, 1e-9),
                   "preset": self.cfg.name}
        if self.out_dir is not None and self.dist.is_main:
            _atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2))
        if self._tb is not None:
            self._tb.flush()
        return summary

    # ------------------------------------------------------------------ figures
    @torch.no_grad()
    def save_debug_figure(self) -> Path | None:
        """One figure of the current batch pipeline (source, target, pseudo-label, mix,
        prediction), written to figures/iter_XXXXXX.png."""
        if self.out_dir is None or not self.dist.is_main:
            return None
        from ..analysis.plots import debug_figure

        fig = debug_figure(**self.debug_batch())
        path = self.out_dir / "figures" / f"iter_{self.iter:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80)
        return path

    @torch.no_grad()
    def predict(self, images: torch.Tensor, teacher: bool = False) -> torch.Tensor:
        """Class logits (B, C, H, W) at the input size for float images in [0, 1] (B, 3, H, W),
        from the student (eval mode) or the EMA teacher (``teacher=True``, in its own mode, with
        HRDA inference where enabled)."""
        images = images.to(self.device)
        if teacher:
            if self.teacher is None:
                raise ValueError("predict(teacher=True): this run has no teacher "
                                 f"(uda.mode={self.cfg.uda.mode})")
            logits = self._teacher_logits(images)
        else:
            was_training = self.student.training
            self.student.eval()
            logits = self._forward(self.student, images).logits.float()
            self.student.train(was_training)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def debug_batch(self) -> dict:
        """The intermediate tensors of one step on a fresh batch (first image of each), for
        figures and notebooks. Draws from a copy of the generators: training is not disturbed."""
        cfg, dev = self.cfg, self.device
        gen = torch.Generator().set_state(self.generator.get_state())
        src = engine_data.peek(self.source, self.iter)
        xs = src["image"][:1].to(dev).float() / 255
        ys = src["label"][:1].to(dev)
        tgt = engine_data.peek(self.target, self.iter) if self.target is not None else src
        xt = tgt["image"][:1].to(dev).float() / 255
        model = self.teacher if self.teacher is not None else self.student
        self.student.eval()
        t_logits = (self._teacher_logits(xt) if self.teacher is not None
                    else self._forward(model, xt).logits.float())
        t_logits = F.interpolate(t_logits, size=xt.shape[-2:], mode="bilinear", align_corners=False)
        top, bottom, left, right = cfg.data.pseudo_margins
        pl, pw = pseudo_label(t_logits, cfg.uda.pseudo_threshold, ignore_top=top,
                              ignore_bottom=bottom, ignore_left=left, ignore_right=right)
        m = class_mix_masks(ys, per_image=cfg.uda.mix_per_image, generator=gen).to(dev)
        x_mix = mix(xs, xt, m)
        y_mix = mix(ys, pl, m)
        pred = self._forward(self.student, xt).logits.float()
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
            "optimizer": self.optimizer.state_dict(),
            "config": to_dict(self.cfg),
            "version": __version__,
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "uda": self.generator.get_state(),
            },
            "data": {"source": self.source.state_dict(),
                     "target": self.target.state_dict() if self.target is not None else None},
        }
        if self._ddp is not None:  # collectives: every rank must call state_dict()
            state["world_size"] = self.dist.world_size
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
        self.optimizer.load_state_dict(state["optimizer"])
        self.iter = int(state["iter"])
        rng = state["rng"]
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == self.dist.world_size:
            rng = per_rank[self.dist.rank]
        elif self.dist.world_size != state.get("world_size", 1) and self.out_dir is not None:
            warnings.warn(
                f"{where}: saved by {state.get('world_size', 1)} process(es), resumed by "
                f"{self.dist.world_size}: every rank continues rank 0's random streams, so the run "
                "is not bit-identical to an uninterrupted one", RuntimeWarning, stacklevel=2)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
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
        path = self.out_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
            if rec.get("iter", 0) <= self.iter:
                kept.append(rec)
        self.history = kept
        if self.dist.is_main:
            _atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

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
            _atomic_torch_save(state, path, previous)
        return path

    @classmethod
    def resume(cls, run_dir: str | Path, overrides: Iterable[str] = (), *, read_only: bool = False,
               **kwargs) -> "Trainer":
        """Rebuild a trainer from RUN_DIR/config.yaml (+ overrides such as train.max_iters=N)
        and load RUN_DIR/checkpoints/last.pt (or a checkpoint file given directly).

        An unreadable last.pt (cut short by a full disk, ...) falls back to prev.pt with a warning.
        The checkpoint is checked against the config before anything in the run directory is
        written: only ``train.*`` and ``data.val`` may change. ``read_only`` leaves the run
        directory untouched (evaluation).
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
        state, ckpt = _first_readable(candidates, run_dir)
        cfg = load_config(cfg_path)
        overrides = list(overrides)
        if overrides:
            cfg = replace(cfg, overrides)
        try:
            saved = from_dict(state["config"])
        except ConfigError as err:
            raise CheckpointError(f"{ckpt}: its config does not fit this version: {err}") from None
        for section in ("data", "model", "uda", "loss", "optim"):
            a, b = getattr(saved, section), getattr(cfg, section)
            if section == "data":  # the validation set may change (cluda-kit evaluate --split)
                a = dataclasses.replace(a, val=b.val)
            if a != b:
                diff = _config_differences(a, b, section)
                raise ConfigError(
                    f"{ckpt}: was trained with a different '{section}' section than {cfg_path} "
                    f"({', '.join(diff[:3])}: checkpoint vs config); only train.* may change on "
                    "resume"
                )
        trainer = cls(cfg, None if read_only else run_dir, _resuming=True, **kwargs)
        trainer.load_state_dict(state, where=str(ckpt))
        return trainer


def print_summary(summary: dict, classes: Iterable[str] = label_table.CLASSES) -> str:
    """The per-class IoU table of a summary (IoU in percent, as metrics and summary.json hold
    them), as `cluda-kit train/evaluate` print it."""
    iou = [summary["iou"].get(c) for c in classes]
    iou = [float("nan") if v is None else v / 100.0 for v in iou]
    return format_iou_table(np.asarray(iou, dtype=float), list(classes))
