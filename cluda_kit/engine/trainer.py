"""The UDA trainer: METHOD.md's numbered self-training step, the fit loop, checkpoints and resume.

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
import json
import math
import os
import random
import subprocess
import time
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
from ..uda.pseudo_label import pseudo_label
from . import data as engine_data
from .evaluate import evaluate as run_evaluation
from .evaluate import format_iou_table


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the message names the term and the iteration."""


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


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
    """What one step logs: scalar losses and statistics (floats)."""

    iter: int
    values: dict[str, float] = field(default_factory=dict)


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
        set_deterministic(cfg.train.deterministic)
        seed_everything(cfg.train.seed + self.dist.rank)
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
        self.optimizer = torch.optim.AdamW(
            param_groups(self.student, cfg.optim.lr, cfg.optim.weight_decay,
                         cfg.optim.head_lr_mult, cfg.optim.norm_decay),
            lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay,
        )
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
            for name in ("metrics.jsonl", "summary.json", "checkpoints/last.pt"):
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
        return pixel_contrastive_loss(
            feats, lab, w, temperature=c.temperature, base_temperature=c.base_temperature,
            ignore_index=label_table.IGNORE_INDEX, max_anchors=c.max_anchors,
            official_compat=c.official_compat, generator=self.generator,
        )

    # ---- the plain / HRDA differences
    def _student(self, images: torch.Tensor, *, window: str = "random", **kw):
        """Student training forward; HRDA draws its detail window (``window``: random from the UDA
        generator, or max-entropy)."""
        if self.hrda:
            kw.update(window=window, generator=self.generator)
        return self._forward(self.student, images, **kw)

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
        crop = F.interpolate(out.window_mask(), size=size, mode="nearest")[:, 0].bool()
        return multi_resolution_contrastive_loss(
            lr, hr, lab, wmap, crop.expand(lab.shape[0], -1, -1), w,
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
        """True when every term is finite; raise or report per ``train.skip_nonfinite``."""
        bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
        if not bad:
            return True
        msg = (f"non-finite loss {', '.join(bad)} at iteration {self.iter} "
               f"({', '.join(f'{k}={float(terms[k]):g}' for k in bad)})")
        if self.cfg.train.skip_nonfinite:
            self._log({"iter": self.iter, "skipped": msg})
            return False
        raise NonFiniteLossError(msg + "; set train.skip_nonfinite=true to skip such steps")

    def step(self) -> StepResult:
        """Run one training iteration and return its logged values."""
        cfg, dev = self.cfg, self.device
        self.student.train()
        lr = lr_at(self.iter, cfg.optim.lr, cfg.train.max_iters, cfg.optim.warmup_iters,
                   cfg.optim.warmup_ratio, cfg.optim.poly_power, cfg.optim.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        if self.teacher is not None:
            self.teacher.update(self.student, self.iter)  # 0. EMA (step 0 copies)

        src = next(self.source)
        xs = src["image"].to(dev, non_blocking=True).float().div_(255)
        ys = src["label"].to(dev, non_blocking=True)
        if cfg.uda.source_augment:
            xs = strong_augment(xs, **self._aug_kwargs())
        self.optimizer.zero_grad(set_to_none=True)
        terms: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {"lr": lr}

        # 1-3: source
        out = self._student(xs, return_stages=self.imnet is not None)
        terms["ce_src"] = self._seg_loss(out, ys)
        if self.imnet is not None:
            with torch.no_grad(), autocast(dev, self.amp_dtype):
                imnet_feat = self.imnet(self._fd_input(xs))[-1]
            fd = cfg.uda.fd
            terms["fd"] = feature_distance_loss(
                out.stages[-1].float(), imnet_feat.float(), ys, thing_classes=fd.thing_classes,
                lambda_fd=fd.weight, min_ratio=fd.min_ratio,
            )
        cl = cfg.loss.contrastive
        if cl.enabled and cl.source_weight > 0:
            terms["cl_src"] = cl.source_weight * self._cl_loss(out, ys, None)
        src_loss = sum(terms.values())
        if not self._check_finite(terms):
            return StepResult(self._finish_step(skipped=True), stats)
        src_loss.backward()
        del out, src_loss

        if self.self_training:
            tgt = next(self.target)
            xt = tgt["image"].to(dev, non_blocking=True).float().div_(255)
            # 4. pseudo-labels from the teacher
            with torch.no_grad():
                t_logits = self._teacher_logits(xt)
                t_logits = F.interpolate(t_logits, size=xt.shape[-2:], mode="bilinear",
                                         align_corners=False)
                top, bottom, left, right = cfg.data.pseudo_margins
                pl, pw = pseudo_label(t_logits, cfg.uda.pseudo_threshold, ignore_top=top,
                                      ignore_bottom=bottom, ignore_left=left, ignore_right=right)
            stats["q"] = pw.amax()  # the scalar weight q (margins are 0)
            # 5-6. ClassMix + strong augmentation
            m = class_mix_masks(ys, per_image=cfg.uda.mix_per_image, generator=self.generator)
            m = m.to(dev)
            x_mix = strong_augment(mix(xs, xt, m), **self._aug_kwargs())
            y_mix = mix(ys, pl, m)
            w_mix = mix(torch.ones_like(pw), pw, m)
            # 7-8. student on the mix
            mix_terms: dict[str, torch.Tensor] = {}
            out_m = self._student(x_mix, window=self._mix_window())
            mix_terms["ce_mix"] = self._seg_loss(out_m, y_mix, w_mix)
            if cl.enabled and cl.mix_weight > 0:
                mix_terms["cl_mix"] = cl.mix_weight * self._cl_loss(out_m, y_mix, w_mix)
            if cfg.uda.mic.enabled:
                mic = cfg.uda.mic
                xt_aug = strong_augment(xt, **self._aug_kwargs())
                keep = block_mask(xt_aug, block_size=mic.block_size, ratio=mic.mask_ratio,
                                  generator=self.generator).to(dev)
                hrda_kw = dict(generator=self.generator) if self.hrda else {}
                with autocast(dev, self.amp_dtype):
                    out_t = self.student(mask_images(normalize(xt_aug), keep), **hrda_kw)
                mix_terms["mic"] = mic.weight * self._seg_loss(out_t, pl, pw)
            if not self._check_finite(mix_terms):
                self.optimizer.zero_grad(set_to_none=True)
                return StepResult(self._finish_step(skipped=True), stats)
            sum(mix_terms.values()).backward()
            terms.update(mix_terms)

        self.optimizer.step()
        values = {k: v.detach() for k, v in terms.items()}
        values["loss"] = sum(values.values())
        values.update({k: v for k, v in stats.items() if isinstance(v, torch.Tensor)})
        floats = {k: float(v) for k, v in values.items()}  # one host sync for all
        floats["lr"] = lr
        return StepResult(self._finish_step(), floats)

    def _aug_kwargs(self) -> dict:
        a = self.cfg.uda.aug
        return dict(color_jitter_p=a.color_jitter_p, color_jitter_s=a.color_jitter_s,
                    blur_p=a.blur_p, blur_sigma=a.blur_sigma, generator=self.generator)

    def _finish_step(self, skipped: bool = False) -> int:
        self.iter += 1
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
            if res.values and (self.iter % cfg.log_every == 0 or self.iter == max_iters):
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
    def debug_batch(self) -> dict:
        """The intermediate tensors of one step on a fresh batch (first image of each), for
        figures and notebooks. Draws from a copy of the generators: training is not disturbed."""
        cfg, dev = self.cfg, self.device
        gen = torch.Generator().set_state(self.generator.get_state())
        src = engine_data.peek(self.source)
        xs = src["image"][:1].to(dev).float() / 255
        ys = src["label"][:1].to(dev)
        tgt = engine_data.peek(self.target) if self.target is not None else src
        xt = tgt["image"][:1].to(dev).float() / 255
        model = self.teacher if self.teacher is not None else self.student
        self.student.eval()
        t_logits = (self._teacher_logits(xt) if self.teacher is not None
                    else self._forward(model, xt).logits.float())
        t_logits = F.interpolate(t_logits, size=xt.shape[-2:], mode="bilinear", align_corners=False)
        pl, pw = pseudo_label(t_logits, cfg.uda.pseudo_threshold)
        m = class_mix_masks(ys, per_image=True, generator=gen).to(dev)
        x_mix = mix(xs, xt, m)
        y_mix = mix(ys, pl, m)
        pred = self._forward(self.student, xt).logits.float()
        pred = F.interpolate(pred, size=xt.shape[-2:], mode="bilinear", align_corners=False)
        self.student.train()
        return dict(source=xs[0].cpu(), source_label=ys[0].cpu(), target=xt[0].cpu(),
                    pseudo_label=pl[0].cpu(), pseudo_weight=pw[0].cpu(), mixed=x_mix[0].cpu(),
                    mixed_label=y_mix[0].cpu(), prediction=pred[0].argmax(0).cpu())

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
        """Write a checkpoint atomically (default: RUN_DIR/checkpoints/last.pt)."""
        if path is None:
            if self.out_dir is None:
                raise ValueError("save(): no path given and the trainer has no run directory")
            path = self.out_dir / "checkpoints" / "last.pt"
        path = Path(path)
        if self.dist.is_main:
            _atomic_torch_save(self.state_dict(), path)
        return path

    @classmethod
    def resume(cls, run_dir: str | Path, overrides: Iterable[str] = (), **kwargs) -> "Trainer":
        """Rebuild a trainer from RUN_DIR/config.yaml (+ overrides such as train.max_iters=N)
        and load RUN_DIR/checkpoints/last.pt (or a checkpoint file given directly)."""
        run_dir = Path(run_dir)
        ckpt = run_dir if run_dir.is_file() else run_dir / "checkpoints" / "last.pt"
        if run_dir.is_file():
            run_dir = run_dir.parent.parent
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise ConfigError(f"{run_dir}: not a run directory (no config.yaml)")
        if not ckpt.is_file():
            raise ConfigError(f"{run_dir}: no checkpoint to resume from ({ckpt} is missing)")
        cfg = load_config(cfg_path)
        overrides = list(overrides)
        if overrides:
            cfg = replace(cfg, overrides)
        trainer = cls(cfg, run_dir, _resuming=True, **kwargs)
        state = torch.load(ckpt, map_location=trainer.device, weights_only=False)
        saved = from_dict(state["config"])
        allowed = {"train"}
        for section in ("data", "model", "uda", "loss", "optim"):
            if section not in allowed and getattr(saved, section) != getattr(cfg, section):
                raise ConfigError(
                    f"{ckpt}: was trained with a different '{section}' section than "
                    f"{cfg_path}; only train.* may change on resume"
                )
        trainer.load_state_dict(state, where=str(ckpt))
        return trainer


def print_summary(summary: dict, classes: Iterable[str] = label_table.CLASSES) -> str:
    """The per-class IoU table of a summary (IoU in percent, as metrics and summary.json hold
    them), as `cluda-kit train/evaluate` print it."""
    iou = [summary["iou"].get(c) for c in classes]
    iou = [float("nan") if v is None else v / 100.0 for v in iou]
    return format_iou_table(np.asarray(iou, dtype=float), list(classes))
