"""Typed configuration: frozen dataclasses, YAML presets and dotted overrides.

A configuration has six sections, ``data``, ``model``, ``uda``, ``loss``, ``optim`` and ``train``.
Every number of docs/method.md is a field whose default is the paper value; the paper symbol is in the
comment next to it. Presets live in ``cluda_kit/configs/*.yaml``; a preset may name a ``base:``
preset whose values it overrides. Unknown keys and wrongly typed values are errors that name the
file and the key::

    cfg = load_config("miniscapes_cluda", overrides=["train.max_iters=100", "uda.fd.enabled=false"])
    cfg.train.max_iters  # 100
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from .errors import ConfigError


# --------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DatasetConfig:
    name: str = "miniscapes"  # miniscapes | gta | synthia | cityscapes | folder
    domain: str = "game"  # miniscapes domain: game | sim | real
    root: str = ""  # prepared dataset root (real datasets); the images folder of a folder dataset
    labels: str = ""  # folder dataset: its labels folder ("" = unlabelled, every pixel ignore)
    split: str = "train"
    size: tuple[int, int] = (256, 512)  # miniscapes render size (H, W)
    resize: tuple[int, int] | None = None  # keep-ratio resize target (H, W); None = as stored
    resize_label: bool = True  # False: resize the image only, the label stays at full resolution
    # (the papers' evaluation: the prediction is upsampled to the original labels)
    length: int | None = None  # miniscapes number of scenes (None = the split's default)
    seed: int = 0  # miniscapes world seed
    gap: float | None = None  # miniscapes appearance gap of `real` (None = the calibrated default)


@dataclass(frozen=True)
class RCSConfig:
    enabled: bool = False
    temperature: float = 0.01  # T
    min_pixels: int = 3000  # an image must hold > min_pixels of the drawn class
    min_crop_ratio: float = 0.5  # r: a crop must hold > min_pixels * r of the class
    max_tries: int = 10  # re-crops


@dataclass(frozen=True)
class DataConfig:
    source: DatasetConfig = DatasetConfig(name="miniscapes", domain="game")
    target: DatasetConfig = DatasetConfig(name="miniscapes", domain="real")
    val: DatasetConfig = DatasetConfig(name="miniscapes", domain="real", split="val")
    crop_size: tuple[int, int] = (512, 512)  # training crop (H, W)
    cat_max_ratio: float = 0.75  # source crops retried until no class covers more than this
    flip_prob: float = 0.5
    batch_size: int = 2  # per domain: 2 source + 2 target
    num_workers: int = 0
    val_batch_size: int = 1
    val_length: int | None = None  # evaluate on the first N val samples (None = all)
    pseudo_margins: tuple[int, int, int, int] = (15, 120, 0, 0)  # (top, bottom, left, right) px
    # of the training crop (DAFormer); frame_margins: the same of the whole (resized) target frame,
    # zeroed before cropping (HRDA: 30, 240, 30, 30 of the 2048x1024 frame)
    frame_margins: tuple[int, int, int, int] = (0, 0, 0, 0)
    rcs: RCSConfig = RCSConfig()
    classes: str = ""  # class table file (YAML/CSV, cluda_kit.data.classes); "" = the 19 Cityscapes classes


# -------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class HRDAConfig:
    enabled: bool = False
    context_scale: float = 0.5  # context crop is the whole crop at this scale
    detail_crop: tuple[int, int] = (512, 512)  # detail window at full scale (H, W)
    detail_divisible: int = 8  # detail window corners are multiples of this
    detail_loss_weight: float = 0.1  # 0.9 * CE(fused) + 0.1 * CE(detail)
    inference_stride: tuple[int, int] = (256, 256)  # detail windows in inference
    feat_weighter: bool = False  # CLUDA learned-weighted contrastive loss head (needed for the
    # multi-resolution loss; without it HRDA + contrastive uses the single-resolution loss on the
    # context fused feature)
    entropy_window_after: int | None = None  # mixed batch: max-entropy detail window after this
    # (0-based) iteration, as the release's `local_iter > 12000` (CLUDA: 12000); None = always random
    entropy_window_per_image: bool = True  # each image its own max-entropy window (the release);
    # False: one window for the batch (mean entropy over the batch)
    entropy_window_compat: bool = False  # the release's max-entropy search: its entropy map resized
    # nearest and overwritten in place while searching (docs/method.md §9); False: the argmax window
    attention_dim: int | None = 256  # width (per-level embedding and fused channels) of the scale
    # attention and feat_weighter heads: the release's attention_embed_dim; None = the decoder's
    # model.embed_dim and model.fused_dim
    context_fusion: str = "fused_grid"  # where the scale attention weights the context logits:
    # fused_grid = after upsampling (CLUDA's release, docs/method.md §6); context_grid = before
    # upsampling, on the context grid (the HRDA and MIC releases; gta2cs_hrda, gta2cs_hrda_mic)


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "mit_b5"  # mit_b0..mit_b5 | mit_nano | resnet18 | resnet50 | resnet101
    decoder: str = "daformer"  # daformer | deeplabv2 | segformer
    num_classes: int = 19  # C
    embed_dim: int = 256  # decoder per-level embedding (CLUDA release: 512)
    fused_dim: int = 256  # D: channels of the fused feature
    decoder_init: str = "mmcv"  # mmcv: the release's ConvModule init (Kaiming-normal, fan_out) | torch: PyTorch's default
    aspp_dilations: tuple[int, ...] = (1, 6, 12, 18)
    dropout: float = 0.1
    drop_path_rate: float = 0.1
    output_stride: int = 8  # ResNet encoders
    deeplab_dilation_quirk: bool = False
    pretrained: str = ""  # local path to encoder weights ("" = random init)
    channels_last: bool = False
    activation_checkpointing: bool = False
    projection_dim: int = 0  # contrastive projection head width (0 = none, as the release)
    hrda: HRDAConfig = HRDAConfig()


# ---------------------------------------------------------------------------------------- uda
@dataclass(frozen=True)
class FDConfig:
    enabled: bool = False
    weight: float = 0.005  # lambda_FD
    min_ratio: float = 0.75  # a cell counts if its majority class covers >= this share
    thing_classes: tuple[int, ...] = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


@dataclass(frozen=True)
class AugConfig:
    color_jitter_p: float = 0.8
    color_jitter_s: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.15, 1.15)


@dataclass(frozen=True)
class MICConfig:
    enabled: bool = False
    mask_ratio: float = 0.7
    block_size: int = 64
    weight: float = 1.0
    blur_per_image: bool = False  # the release's MIC blurs its masked batch with one sigma


@dataclass(frozen=True)
class UDAConfig:
    mode: str = "self_training"  # source_only | oracle | self_training
    method: str = "auto"  # auto (from the loss switches) | source_only | dacs | daformer | cluda | a registered one
    # the method's own settings (a registered method reads them with Method.args; unknown keys are errors)
    method_args: dict[str, Any] = field(default_factory=dict)
    ema_alpha: float = 0.999  # alpha
    teacher_mode: str = "train"  # train (the release: params only, BN batch stats) | eval
    pseudo_threshold: float = 0.968  # tau_p
    mix_per_image: bool = True  # False = the release: each image draws from the batch's classes, 255 included
    source_augment: bool = False  # strong augmentation on source too (augmented source-only)
    aug: AugConfig = AugConfig()
    fd: FDConfig = FDConfig()
    mic: MICConfig = MICConfig()


# --------------------------------------------------------------------------------------- loss
@dataclass(frozen=True)
class ContrastiveConfig:
    enabled: bool = False
    source_weight: float = 1.0
    mix_weight: float = 1.0
    temperature: float = 1.0  # tau
    base_temperature: float = 1.0  # tau_b
    grid: tuple[int, int] = (65, 65)  # features resized to this grid
    official_compat: bool = False  # the release's ignore-as-class and pixel-order quirks
    max_anchors: int | None = None  # class-balanced anchor sampling cap
    multires_weight: float = 0.5  # HRDA learned-weighted form
    gather_negatives: bool = False  # DDP: contrast against the pixels of every rank (all_gather)


@dataclass(frozen=True)
class LossConfig:
    ce_mean_over_all: bool = False  # the release divides CE by all pixels, ignored included
    contrastive: ContrastiveConfig = ContrastiveConfig()


# -------------------------------------------------------------------------------------- optim
@dataclass(frozen=True)
class OptimConfig:
    lr: float = 6e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    head_lr_mult: float = 10.0  # decoder/head parameters
    norm_decay: bool = False  # weight decay on norm layers
    no_decay_rule: str = "release"  # which get none (without norm_decay): release = names containing
    # "norm" (MiT's LayerNorms; BatchNorms decay, as the release's custom_keys) | norm_layers = all norm layers
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    min_lr: float = 0.0


# -------------------------------------------------------------------------------------- train
@dataclass(frozen=True)
class TrainConfig:
    max_iters: int = 40000
    seed: int = 0
    eval_every: int = 4000
    checkpoint_every: int = 4000
    log_every: int = 50
    figure_every: int = 0  # debug figures every N iterations (0 = off), by the DebugFigures callback cluda-kit train attaches
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA with bf16, else fp16 + GradScaler; fp32 on the CPU) | bf16 | fp16 | none
    eval_mode: str = "whole"  # whole | slide
    eval_window: tuple[int, int] | None = None
    eval_stride: tuple[int, int] | None = None
    deterministic: bool = False
    skip_nonfinite: bool = False  # skip a step with a non-finite loss instead of stopping
    compile: bool = False  # torch.compile the student (see compile_scope); falls back to eager where unavailable
    compile_scope: str = "student"  # student: its whole segmentor (encoder + decoder) | encoder
    compile_mode: str = "default"  # torch.compile mode; reduce-overhead adds CUDA graphs (static crops)
    threads: int | None = None  # torch CPU threads (None = torch default)
    # CPU: the teacher's pass and the source backward on a second thread, beside the student's
    # passes (bit-identical steps; engine/overlap.py); off on a GPU, under DDP or torch.compile
    overlap: bool = False
    # "miou": model selection on the target val set. Every evaluation that improves the val mIoU
    # writes RUN_DIR/checkpoints/best.pt, and summary.json gets best_miou and best_iter beside the
    # final miou (as the CLUDA release's save_best='mIoU', so its published numbers may be the best
    # of several evaluations). "" (default): no selection; the final model is the one reported
    save_best: str = ""
    # resume on another number of processes than the checkpoint's (each rank continues rank 0's
    # random streams, so not bit-identical to an uninterrupted run); refused by default
    allow_world_size_change: bool = False


@dataclass(frozen=True)
class Config:
    name: str = "custom"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    uda: UDAConfig = UDAConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()


# ------------------------------------------------------------------------------ (de)serialising
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check and convert a YAML value to the annotated type ``tp``; ``where`` names it in errors."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is dict:  # a flat mapping of scalars (uda.method_args)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: keys must be strings, got {k!r}")
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise ConfigError(f"{where}.{k}: expected a number, true/false or a string, got {v!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover - schema bug


def _build(cls: type, values: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (expected one of: {', '.join(sorted(names))})"
        )
    default = cls()
    kwargs = {}
    for f in dataclasses.fields(cls):
        sub = f"{where}.{f.name}" if where else f.name
        if f.name not in values:
            continue
        v = values[f.name]
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(v, dict):
            # merge a partial mapping into the default of the nested section
            merged = _merge(to_dict(getattr(default, f.name)), v)
            kwargs[f.name] = _build(hints[f.name], merged, sub)
        else:
            kwargs[f.name] = _convert(v, hints[f.name], sub)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A plain (YAML-safe) dict/list form of a config object."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):  # a copy: overrides must not reach the config it came from
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def from_dict(values: dict, where: str = "") -> Config:
    """Build a :class:`Config` from a (partial) nested dict; missing keys keep their defaults."""
    return _build(Config, values, where)


# ---------------------------------------------------------------------------------- presets
PRESET_DIR = "configs"


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    root = resources.files("cluda_kit") / PRESET_DIR
    return sorted(p.name[:-5] for p in root.iterdir()
                  if p.name.endswith(".yaml") and not p.name.startswith("_"))


def _read_yaml(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> tuple[dict, str]:
    """Read a preset (by name) or a YAML file, resolving ``base:`` chains; returns (dict, origin)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        text, origin = path.read_text(), str(path)
    else:
        res = resources.files("cluda_kit") / PRESET_DIR / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(
                f"unknown preset {str(name_or_path)!r} (presets: {', '.join(preset_names())}; "
                "or give a path to a .yaml file)"
            )
        text, origin = res.read_text(), f"preset {name_or_path}"
    if origin in seen:
        raise ConfigError(f"{origin}: circular 'base:' chain {' -> '.join(seen + (origin,))}")
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin}: invalid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level")
    base = values.pop("base", None)
    if base is not None:
        base_values, _ = _read_yaml(base, seen + (origin,))
        values = _merge(base_values, values)
    return values, origin


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-4"`` -> (["optim", "lr"], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.max_iters=100")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(values: dict, overrides: Sequence[str]) -> dict:
    """Apply dotted ``key=value`` overrides to a nested dict (checked later by :func:`from_dict`)."""
    out = _merge({}, values)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return out


def load_config(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load a preset name or a YAML path, then apply dotted ``key=value`` overrides."""
    values, origin = _read_yaml(name_or_path)
    values.setdefault("name", Path(str(name_or_path)).stem)
    try:
        cfg = from_dict(values)
    except ConfigError as err:
        raise ConfigError(f"{origin}: {err}") from None
    if overrides:
        try:
            cfg = from_dict(apply_overrides(to_dict(cfg), overrides))
        except ConfigError as err:
            raise ConfigError(f"--set: {err}") from None
    validate(cfg)
    return cfg


def replace(cfg: Config, overrides: Sequence[str]) -> Config:
    """A copy of ``cfg`` with dotted overrides applied and validated."""
    out = from_dict(apply_overrides(to_dict(cfg), overrides))
    validate(out)
    return out


_CHOICES = {
    "uda.mode": ("source_only", "oracle", "self_training"),
    "uda.teacher_mode": ("train", "eval"),
    "model.decoder": ("daformer", "deeplabv2", "segformer"),
    "model.decoder_init": ("mmcv", "torch"),
    "train.amp": ("auto", "bf16", "fp16", "none"),
    "optim.no_decay_rule": ("release", "norm_layers"),
    "train.eval_mode": ("whole", "slide"),
    "model.hrda.context_fusion": ("fused_grid", "context_grid"),
    "train.compile_scope": ("student", "encoder"),
    "train.save_best": ("", "miou"),
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "data.source.name": ("miniscapes", "gta", "synthia", "cityscapes", "folder"),
    "data.target.name": ("miniscapes", "gta", "synthia", "cityscapes", "folder"),
    "data.val.name": ("miniscapes", "gta", "synthia", "cityscapes", "folder"),
}


def _get(cfg: Any, dotted: str) -> Any:
    for k in dotted.split("."):
        cfg = getattr(cfg, k)
    return cfg


def validate(cfg: Config) -> None:
    """Check values the types cannot: choices and ranges. Raises :class:`ConfigError`."""
    for key, choices in _CHOICES.items():
        v = _get(cfg, key)
        if v not in choices:
            shown = ", ".join(c if c else '""' for c in choices)  # "" (off) stays visible
            raise ConfigError(f"{key}: expected one of {shown}, got {v!r}")
    checks = [
        ("train.max_iters", cfg.train.max_iters >= 0, "a non-negative integer"),
        ("data.batch_size", cfg.data.batch_size >= 1, "at least 1"),
        ("uda.ema_alpha", 0.0 <= cfg.uda.ema_alpha < 1.0, "in [0, 1)"),
        ("uda.pseudo_threshold", 0.0 <= cfg.uda.pseudo_threshold <= 1.0, "in [0, 1]"),
        ("optim.lr", cfg.optim.lr > 0, "positive"),
        ("loss.contrastive.temperature", cfg.loss.contrastive.temperature > 0, "positive"),
        ("data.cat_max_ratio", 0.0 < cfg.data.cat_max_ratio <= 1.0, "in (0, 1]"),
        # a negative loss weight would train away from its objective
        ("loss.contrastive.source_weight", cfg.loss.contrastive.source_weight >= 0, "non-negative"),
        ("loss.contrastive.mix_weight", cfg.loss.contrastive.mix_weight >= 0, "non-negative"),
        ("loss.contrastive.multires_weight", cfg.loss.contrastive.multires_weight >= 0, "non-negative"),
        ("uda.fd.weight", cfg.uda.fd.weight >= 0, "non-negative"),
        ("uda.mic.weight", cfg.uda.mic.weight >= 0, "non-negative"),
        # schedules: 0 means none
        ("optim.warmup_iters", cfg.optim.warmup_iters >= 0, "non-negative"),
        ("train.eval_every", cfg.train.eval_every >= 0, "non-negative (0: no evaluation)"),
        ("train.checkpoint_every", cfg.train.checkpoint_every >= 0, "non-negative (0: at the end only)"),
        ("train.log_every", cfg.train.log_every >= 1, "at least 1"),
        # HRDA
        ("model.hrda.context_scale", 0.0 < cfg.model.hrda.context_scale <= 1.0, "in (0, 1]"),
        ("model.hrda.detail_loss_weight", 0.0 <= cfg.model.hrda.detail_loss_weight <= 1.0,
         "in [0, 1]"),
        ("model.hrda.detail_divisible", cfg.model.hrda.detail_divisible >= 1, "at least 1"),
        ("model.hrda.detail_crop", min(cfg.model.hrda.detail_crop) >= 1, "positive sizes"),
        ("model.hrda.inference_stride", min(cfg.model.hrda.inference_stride) >= 1,
         "positive strides"),
    ]
    if cfg.uda.fd.enabled:
        checks.append(("uda.fd.thing_classes",
                       all(0 <= c < cfg.model.num_classes for c in cfg.uda.fd.thing_classes),
                       f"class ids below model.num_classes={cfg.model.num_classes} (the thing classes "
                       f"of your class table)"))
    for key, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{key}: expected {expected}, got {_get(cfg, key)!r}")
    crop = tuple(cfg.data.crop_size)
    for name in ("source", "target"):
        data = getattr(cfg.data, name)
        # miniscapes renders data.<name>.size: a larger crop would train mostly on padding
        if data.name == "miniscapes" and data.resize is None and any(c > s for c, s in zip(crop, data.size)):
            raise ConfigError(f"data.crop_size: expected at most the data.{name}.size {tuple(data.size)} "
                              f"of the miniscapes scenes it is cut from, got {crop}")


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text (what a run directory stores as config.yaml)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


__all__ = [
    "AugConfig", "Config", "ConfigError", "ContrastiveConfig", "DataConfig", "DatasetConfig",
    "FDConfig", "HRDAConfig", "LossConfig", "MICConfig", "ModelConfig", "OptimConfig",
    "RCSConfig", "TrainConfig", "UDAConfig", "apply_overrides", "dump_config", "from_dict",
    "load_config", "preset_names", "replace", "to_dict", "validate",
]


def method_of(cfg: Config) -> str:
    """The method a config trains: ``uda.method`` unless ``auto``, else from the loss switches:
    the contrastive loss -> cluda, the feature distance -> daformer, self-training -> dacs, else
    source_only. (Under ``uda.mode=source_only`` or ``oracle`` the first two train their source
    terms without a teacher.)"""
    if cfg.uda.method != "auto":
        return cfg.uda.method
    if cfg.loss.contrastive.enabled:
        return "cluda"
    if cfg.uda.fd.enabled:
        return "daformer"
    return "dacs" if cfg.uda.mode == "self_training" else "source_only"
