"""Loading pretrained weights from local files (hubs only on request, with internet).

``load_pretrained(module, path_or_name)`` reads a file, recognises its key layout, renames the
tensors into the kit's names and copies them into ``module`` (a :class:`Segmentor` or an encoder).
Recognised layouts (checked in this order, after unwrapping ``{"state_dict": ...}`` /
``{"model": ...}`` and stripping a DDP ``module.`` prefix):

========================  ============================================  =========================
layout                    recognised by                                 goes to
========================  ============================================  =========================
``kit``                   ``{"student": sd, "teacher": sd, ...}`` or    the same names
                          keys ``encoder.*``
``hf_mit``                ``segformer.encoder.*`` (nvidia/mit-b*)        encoder (table below)
``mmseg_uda``             ``model.backbone.*`` / ``ema_model.*``        student = ``model.``,
                          (DAFormer/HRDA/MIC/CLUDA training ckpts)      teacher = ``ema_model.``
                                                                        then as ``mmseg``
``mmseg``                 ``backbone.*`` / ``decode_head.*``            table below
``segformer_mit``         ``patch_embed1.proj.weight`` (mit_b*.pth)     encoder, ``head.*`` dropped
``torchvision_resnet``    ``conv1.weight`` + ``layer1.0.conv1.weight``  encoder, ``fc.*`` dropped
========================  ============================================  =========================

Hugging Face ``nvidia/mit-b*`` (SegformerForImageClassification / SegformerModel) -> ours
(verified against transformers' ``modeling_segformer.py``):

- ``segformer.encoder.patch_embeddings.{i}.proj`` -> ``patch_embed{i+1}.proj``;
  ``...patch_embeddings.{i}.layer_norm`` -> ``patch_embed{i+1}.norm``
- ``segformer.encoder.block.{i}.{j}.`` -> ``block{i+1}.{j}.`` with ``layer_norm_1`` -> ``norm1``,
  ``attention.self.query`` -> ``attn.q``, ``attention.self.key`` ++ ``attention.self.value``
  (concatenated along the output dim, keys first) -> ``attn.kv``, ``attention.self.sr`` ->
  ``attn.sr``, ``attention.self.layer_norm`` -> ``attn.norm``, ``attention.output.dense`` ->
  ``attn.proj``, ``layer_norm_2`` -> ``norm2``, ``mlp.dense1`` -> ``mlp.fc1``,
  ``mlp.dwconv.dwconv`` -> ``mlp.dwconv.dwconv``, ``mlp.dense2`` -> ``mlp.fc2``
- ``segformer.encoder.layer_norm.{i}`` -> ``norm{i+1}``
- dropped: ``classifier.*`` (ImageNet head), ``decode_head.*`` (HF's SegFormer decoder, which
  concatenates levels 4..1; not mapped).
- checked numerically: transformers 4.57's ``SegformerForImageClassification`` (MiT-B0 config,
  random weights) loaded through this table reproduces its four hidden states to < 1e-5 (HF's
  LayerNorms use eps 1e-5 where SegFormer's blocks use 1e-6; with eps matched, < 6e-6).
- transformers >= 5 renames the modules in memory (``segformer.stages.{i}.blocks.{j}...``);
  state dicts saved from such models are refused with a message (the mapping is unverified).

mmsegmentation checkpoints of DAFormer / HRDA / MIC / CLUDA -> ours (names verified against
DAFormer's ``daformer_head.py``, ``sep_aspp_head.py``, ``aspp_head.py``, ``dlv2_head.py``,
``segformer_head.py``, ``mix_transformer.py`` and CLUDA's ``hrda_head.py``; the ``model.`` /
``ema_model.`` / ``imnet_model.`` prefixes of UDA checkpoints from DAFormer's ``dacs.py`` and the
``revise_keys`` of its ``tools/test.py``; mmcv's ``ConvModule`` = ``conv``/``bn`` and
``DepthwiseSeparableConvModule`` = ``depthwise_conv``/``pointwise_conv``, both as documented by
mmcv 1.x, not read from its source here):

- ``backbone.X`` -> ``encoder.X`` (MiT names are identical; mmseg ResNet V1b names equal
  torchvision's. DAFormer's DeepLabV2 uses ResNetV1c, whose deep stem ``stem.{0,1,3,4,6,7}``
  has no counterpart in torchvision's ResNet: such checkpoints fail with those keys listed.)
- ``decode_head.X`` -> ``decoder.X``; HRDA's ``decode_head.head.X`` -> ``decoder.X``,
  ``decode_head.scale_attention.X`` -> ``scale_attention.X``, CLUDA's
  ``decode_head.feat_weighter.X`` -> ``feat_weighter.X`` (for an HRDA wrapper that names its
  sub-heads so), where inside a head:

  - ``embed_layers.{i}.proj.{weight,bias}`` (nn.Linear (E, C_i)) -> ``embed_layers.{i}.*``
    (1x1 conv (E, C_i, 1, 1); reshaped on load)
  - ``linear_c.{i}.proj.*`` -> ``linear_c.{i}.*`` (same reshape; SegFormer head)
  - ``aspp_modules.{k}.conv.*`` -> ``aspp_modules.{k}.*`` (DeepLabV2 head only; the DAFormer
    ``fuse_layer.aspp_modules.{k}.*`` keep their names)
  - ``fuse_layer.*``, ``conv_seg.*``, ``linear_fuse.*``, ``linear_pred.*``: unchanged
  - unverified: mmseg's SegFormerHead also keeps an unused ``conv_seg``; it is dropped when
    ``linear_pred`` is present.

Layouts not listed (e.g. SegFormer's original ADE/Cityscapes heads ``linear_c4`` ...) fail with a
list of the unmatched keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..fileio import safe_torch_load

__all__ = ["load_pretrained", "read_checkpoint", "to_kit_layout", "LoadReport", "KIT_WEIGHTS",
           "kit_weights_path", "WeightsMismatchError"]

_HUB_PREFIXES = ("hf:", "torchvision:")
KIT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
"""Weights the kit ships (``kit:NAME`` = ``KIT_WEIGHTS / NAME.pt``, each with ``NAME.pt.json``, its
provenance record): the demo's fractal-pretrained encoder, made by ``cluda-kit pretrain``."""


def kit_weights_path(name: str) -> Path:
    """The file of the shipped weights ``name`` (``kit:`` prefix optional); FileNotFoundError
    listing what ships if there is none."""
    name = name[len("kit:"):] if name.startswith("kit:") else name
    path = KIT_WEIGHTS / f"{name}.pt"
    if not path.is_file():
        have = sorted(p.stem for p in KIT_WEIGHTS.glob("*.pt"))
        raise FileNotFoundError(f"no shipped weights 'kit:{name}' ({path}); the kit ships {have}")
    return path


class WeightsMismatchError(ValueError):
    """Weights that do not fit the network (strict :func:`load_pretrained`): the first line of the
    message names the file and counts the tensors; the next lines list the first of them."""


@dataclass
class LoadReport:
    """What ``load_pretrained`` did: the recognised layout, the target (``"segmentor"`` or
    ``"encoder"``), the number of tensors copied, and (strict=False) what was left out."""

    layout: str
    target: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- reading files
def read_checkpoint(path_or_name: str | Path) -> dict:
    """Read a checkpoint file (``.pth``/``.pt``/``.bin`` via ``torch.load``, ``.safetensors``
    via the optional ``safetensors`` package), weights the kit ships (``"kit:mit_nano_fractal"``,
    see :data:`KIT_WEIGHTS`) or, with internet, a hub name:
    ``"hf:nvidia/mit-b5"`` (needs ``huggingface_hub``) or ``"torchvision:resnet101"``.

    Raises FileNotFoundError naming the path if the file does not exist.
    """
    name = str(path_or_name)
    if name.startswith("kit:"):
        name = str(kit_weights_path(name))
    if name.startswith("hf:"):
        return _read_hf_hub(name[3:])
    if name.startswith("torchvision:"):
        return _read_torchvision_hub(name[len("torchvision:"):])
    path = Path(name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights file not found: {path} (give a local file, or a hub name "
            f"'hf:nvidia/mit-b5' / 'torchvision:resnet101' when online)")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError(f"reading {path} needs the 'safetensors' package "
                              f"(pip install safetensors)") from e
        return dict(load_file(str(path), device="cpu"))
    # a third-party file is never unpickled with code execution (UnsafeCheckpointError instead)
    return safe_torch_load(path, what="weights file")


def _read_hf_hub(repo: str) -> dict:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise ImportError(f"downloading 'hf:{repo}' needs the 'huggingface_hub' package") from e
    try:
        return read_checkpoint(hf_hub_download(repo, "model.safetensors"))
    except (ImportError, OSError, ValueError):
        return read_checkpoint(hf_hub_download(repo, "pytorch_model.bin"))


def _read_torchvision_hub(name: str) -> dict:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    return dict(weights.get_state_dict(progress=True))


# ----------------------------------------------------------------------------- layout mapping
def _unwrap(obj: object, key: str, source: str) -> tuple[dict[str, Tensor], bool]:
    """Return the flat state dict inside ``obj`` and whether it came from a kit checkpoint."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state dict (a mapping), got {type(obj).__name__}")
    if "student" in obj or "teacher" in obj:
        if key not in obj:
            raise KeyError(f"{source}: kit checkpoint has no {key!r} entry; it has "
                           f"{sorted(k for k in obj if isinstance(obj[k], Mapping))}")
        return dict(obj[key]), True
    for wrapper in ("state_dict", "model"):
        if isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        raise ValueError(f"{source}: no tensors found; top-level keys: {list(obj)[:10]}")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, False


_HF_BLOCK = [("layer_norm_1.", "norm1."), ("attention.self.query.", "attn.q."),
             ("attention.self.sr.", "attn.sr."), ("attention.self.layer_norm.", "attn.norm."),
             ("attention.output.dense.", "attn.proj."), ("layer_norm_2.", "norm2."),
             ("mlp.dense1.", "mlp.fc1."), ("mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."),
             ("mlp.dense2.", "mlp.fc2.")]


def _from_hf_mit(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    out: dict[str, Tensor] = {}
    rest: list[str] = []
    kv: dict[str, dict[str, Tensor]] = {}
    for k, v in sd.items():
        if k.startswith(("classifier.", "decode_head.")):
            continue
        name = k[len("segformer."):] if k.startswith("segformer.") else k
        if m := re.fullmatch(r"encoder\.patch_embeddings\.(\d)\.(proj|layer_norm)\.(\w+)", name):
            part = "proj" if m[2] == "proj" else "norm"
            out[f"encoder.patch_embed{int(m[1]) + 1}.{part}.{m[3]}"] = v
        elif m := re.fullmatch(r"encoder\.layer_norm\.(\d)\.(\w+)", name):
            out[f"encoder.norm{int(m[1]) + 1}.{m[2]}"] = v
        elif m := re.fullmatch(r"encoder\.block\.(\d)\.(\d+)\.(.+)", name):
            prefix, tail = f"encoder.block{int(m[1]) + 1}.{m[2]}.", m[3]
            if t := re.fullmatch(r"attention\.self\.(key|value)\.(\w+)", tail):
                kv.setdefault(f"{prefix}attn.kv.{t[2]}", {})[t[1]] = v
                continue
            for src, dst in _HF_BLOCK:
                if tail.startswith(src):
                    out[prefix + dst + tail[len(src):]] = v
                    break
            else:
                rest.append(k)
        else:
            rest.append(k)
    for name, parts in kv.items():
        if set(parts) != {"key", "value"}:
            rest.append(f"{name} (only {sorted(parts)} of key/value)")
            continue
        out[name] = torch.cat([parts["key"], parts["value"]], dim=0)
    return out, rest


def _mmseg_head_key(rest: str) -> str:
    rest = re.sub(r"^(embed_layers|linear_c)\.(\d+)\.proj\.", r"\1.\2.", rest)
    return re.sub(r"^aspp_modules\.(\d+)\.conv\.", r"aspp_modules.\1.", rest)


def _from_mmseg(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    out: dict[str, Tensor] = {}
    rest: list[str] = []
    subheads = (("head.", "decoder."), ("scale_attention.", "scale_attention."),
                ("feat_weighter.", "feat_weighter."))
    for k, v in sd.items():
        if k.startswith("backbone."):
            out["encoder." + k[len("backbone."):]] = v
        elif k.startswith("decode_head."):
            tail = k[len("decode_head."):]
            for src, dst in subheads:
                if tail.startswith(src):
                    out[dst + _mmseg_head_key(tail[len(src):])] = v
                    break
            else:
                out["decoder." + _mmseg_head_key(tail)] = v
        else:
            rest.append(k)
    for head in ("decoder.", "scale_attention.", "feat_weighter."):
        if f"{head}linear_pred.weight" in out:  # mmseg SegFormerHead's unused conv_seg
            out.pop(f"{head}conv_seg.weight", None)
            out.pop(f"{head}conv_seg.bias", None)
    return out, rest


def to_kit_layout(checkpoint: Mapping, key: str = "student",
                  source: str = "<state dict>") -> tuple[dict[str, Tensor], str, list[str]]:
    """Rename a checkpoint's tensors into the kit's Segmentor names.

    Returns ``(state, layout, unconverted)``: ``state`` keys are ``encoder.*``, ``decoder.*``,
    (``projection.*`` for kit checkpoints, ``scale_attention.*`` / ``feat_weighter.*`` for HRDA/
    CLUDA heads); ``layout`` is one of the names in the module docstring; ``unconverted`` lists
    source keys that matched no rule. ``key`` picks ``"student"`` or ``"teacher"`` from kit and
    mmseg UDA checkpoints.
    """
    if key not in ("student", "teacher"):
        raise ValueError(f"key={key!r}: expected 'student' or 'teacher'")
    sd, is_kit = _unwrap(checkpoint, key, source)
    if is_kit or (any(k.startswith("encoder.") for k in sd)
                  and not any(k.startswith("encoder.patch_embeddings.") for k in sd)):
        return sd, "kit", []
    if any(k.startswith("segformer.stages.") for k in sd):
        raise ValueError(f"{source}: this is a state dict of an in-memory transformers>=5 Segformer "
                         f"(keys 'segformer.stages.*'), whose renamed layout is not supported; load "
                         f"the hub's own file (model.safetensors / pytorch_model.bin of "
                         f"nvidia/mit-b*), which keeps the 'segformer.encoder.*' layout")
    if any(k.startswith(("segformer.encoder.", "encoder.patch_embeddings.")) for k in sd):
        out, rest = _from_hf_mit(sd)
        return out, "hf_mit", rest
    if any(k.startswith(("model.backbone.", "ema_model.backbone.")) for k in sd):
        prefix = {"student": "model.", "teacher": "ema_model."}[key]
        picked = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not picked:
            raise KeyError(f"{source}: mmseg UDA checkpoint has no {prefix!r} ({key}) tensors")
        out, rest = _from_mmseg(picked)
        return out, "mmseg_uda", rest
    if any(k.startswith(("backbone.", "decode_head.")) for k in sd):
        out, rest = _from_mmseg(sd)
        return out, "mmseg", rest
    if "patch_embed1.proj.weight" in sd:
        return ({f"encoder.{k}": v for k, v in sd.items() if not k.startswith("head.")},
                "segformer_mit", [])
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:
        return ({f"encoder.{k}": v for k, v in sd.items() if not k.startswith("fc.")},
                "torchvision_resnet", [])
    raise ValueError(f"{source}: unrecognised weight layout; first keys: {list(sd)[:8]}. "
                     f"Expected SegFormer mit_b*.pth, HF nvidia/mit-b*, torchvision ResNet, an "
                     f"mmseg DAFormer/HRDA checkpoint or a cluda_kit checkpoint.")


# -------------------------------------------------------------------------------------- loading
def _first(items: list[str], n: int = 10) -> str:
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _encoder_prefix(module: nn.Module) -> str:
    """Where ``module.encoder`` sits in ``module``'s state names: "" or e.g. "segmentor."."""
    for name, sub in module.named_modules():
        if sub is module.encoder and name.endswith("encoder"):
            return name[: -len("encoder")]
    return ""


def load_pretrained(module: nn.Module, path_or_name: str | Path | Mapping, *, strict: bool = True,
                    key: str = "student") -> LoadReport:
    """Copy pretrained weights into ``module`` (a Segmentor, or an encoder).

    Args:
        module: a :class:`Segmentor` (state keys ``encoder.*``/``decoder.*``...) or an encoder.
        path_or_name: a local file, a hub name (``read_checkpoint``), or an in-memory checkpoint.
        strict: every tensor of the target must be provided (BatchNorm ``num_batches_tracked``
            counters may be absent) and every provided tensor must be used, with equal shapes
            (a (O, I) linear fills a (O, I, 1, 1) conv). With ``strict=False`` the intersection
            with equal shapes is copied and the rest reported in the returned :class:`LoadReport`.
        key: "student" or "teacher" for kit / mmseg UDA checkpoints.

    Target: encoder-only files (SegFormer, HF, torchvision, or checkpoints with only
    ``encoder.*`` tensors) go into ``module.encoder`` when ``module`` has one (a Segmentor or a
    wrapper such as HRDA's); files with decoder tensors go into the whole module, with
    ``encoder.*``/``decoder.*`` placed under the prefix where ``module.encoder`` lives (e.g.
    ``segmentor.``) and HRDA's ``scale_attention.*``/``feat_weighter.*`` at the top; for an
    encoder module, the ``encoder.*`` part of any file is used.
    Raises FileNotFoundError for a missing file and :class:`WeightsMismatchError` listing the first 10 missing /
    unexpected keys and shape mismatches otherwise.
    """
    source = "<state dict>" if isinstance(path_or_name, Mapping) else str(path_or_name)
    raw = path_or_name if isinstance(path_or_name, Mapping) else read_checkpoint(path_or_name)
    state, layout, unconverted = to_kit_layout(raw, key=key, source=source)
    encoder_only = all(k.startswith("encoder.") for k in state)
    if hasattr(module, "encoder") and isinstance(module.encoder, nn.Module) and encoder_only:
        target_module, target = module.encoder, "encoder"
    elif hasattr(module, "encoder") and isinstance(module.encoder, nn.Module):
        target_module, target = module, "segmentor"
    else:
        target_module, target = module, "encoder"
    own = target_module.state_dict()
    if target == "encoder":
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    else:  # a wrapper (e.g. HRDA's, holding the Segmentor as ``segmentor``) nests the names
        prefix = _encoder_prefix(module)
        state = {(prefix + k if prefix + k in own else k): v for k, v in state.items()}

    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own] + unconverted
    mismatched, ready = [], {}
    for k, v in state.items():
        if k not in own:
            continue
        want = own[k].shape
        if v.shape == want:
            ready[k] = v
        elif v.dim() == 2 and tuple(want) == (*v.shape, 1, 1):
            ready[k] = v.reshape(want)
        else:
            mismatched.append(f"{k}: file {tuple(v.shape)} vs model {tuple(want)}")
    if strict and (missing or unexpected or mismatched):
        counts = ", ".join(f"{n} {what}" for n, what in ((len(missing), "missing in file"),
                           (len(unexpected), "unexpected in file"), (len(mismatched), "of another shape")) if n)
        # the first line stands alone: the command line prints only it
        lines = [f"{source}: {layout} weights do not fit {type(target_module).__name__} "
                 f"({target}): {counts} tensors (a checkpoint of another model or config?)"]
        if missing:
            lines.append(f"  missing in file ({len(missing)}): {_first(missing)}")
        if unexpected:
            lines.append(f"  unexpected in file ({len(unexpected)}): {_first(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {_first(mismatched)}")
        raise WeightsMismatchError("\n".join(lines))
    target_module.load_state_dict(ready, strict=False)
    return LoadReport(layout, target, len(ready), missing, unexpected, mismatched)
