"""Exporting a trained model: safetensors (weights + config) and ONNX.

    cluda-kit export RUN_DIR_OR_CHECKPOINT --format safetensors --out model.safetensors [--teacher]
    cluda-kit export RUN_DIR_OR_CHECKPOINT --format onnx --out model.onnx [--opset N] [--size H W]
                     [--teacher] [--exporter {auto,torchscript,dynamo}] [--no-check]

(``--format`` may be left out: the ``--out`` suffix tells it.) In Python: ``net, cfg =
model_for_export("runs/x")``, then ``export_safetensors(net, cfg, "x.safetensors")`` or
``export_onnx(net, "x.onnx", (512, 1024), cfg=cfg)``; ``load_exported("x.safetensors")`` gives
``(net, cfg)`` back.

**safetensors** (:func:`export_safetensors`, :func:`load_exported`): the network's state dict, no
pickle, and in the file's string metadata the resolved config as YAML (``model.pretrained``
cleared: the file holds every weight), the class names and colours, the kit version and what
produced the file. ``load_exported`` (and ``cluda_kit.load_model``, ``cluda-kit evaluate`` and
``predict``) rebuild the network from that config alone.

**ONNX** (:func:`export_onnx`): the inference of ``cluda-kit evaluate`` as one graph,

- input ``images``: (B, 3, H, W) float32, RGB, ImageNet-normalised,
  ``(pixel - (123.675, 116.28, 103.53)) / (58.395, 57.12, 57.375)`` on the 0-255 scale;
- output ``logits``: (B, C, H, W) float32 class scores (pre-softmax) at the input resolution;
  the prediction is their argmax over C.

The opset is pinned (:data:`ONNX_OPSET`). The graph of a plain segmentor (MiT/ResNet encoder +
DAFormer/SegFormer/DeepLabV2 head) is made by PyTorch's TorchScript exporter (``dynamo=False``: a
trace, seconds for a SegFormer-sized model) with B, H and W dynamic under whole-image inference.
HRDA computes its context size with Python's ``round`` on the input size, which a trace cannot
record, so it goes through the torch.export-based exporter (``dynamo=True``, needs
``onnxscript``; tens of seconds). HRDA's inference and the sliding-window protocol
(``train.eval_mode=slide``) place their windows by the input size, so their graph holds one input
size (H, W), given explicitly (``--size H W``); B stays dynamic. The config's keep-ratio resize
(``data.val.resize``) is not in the graph: it is recorded in the metadata (``resize``), as are the
config, the class names and colours. ``cluda-kit export`` checks the written graph with
onnxruntime against PyTorch (:func:`check_onnx`) at the example size and, for a dynamic graph, at a
second, odd size.

Nothing here imports torch at module level (``cluda-kit presets`` stays light).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

__all__ = ["ONNX_OPSET", "EXPORT_FORMAT", "model_for_export", "export_safetensors", "read_export_metadata",
           "load_exported", "export_onnx", "fixed_size_reason", "check_onnx", "add_parser", "main"]

ONNX_OPSET = 18
"""The ONNX opset every export targets unless told otherwise (onnxruntime >= 1.14, TensorRT >= 8.6)."""
EXPORT_FORMAT = "cluda_kit.export"
"""The ``format`` metadata entry that marks a file written by this module."""
FORMAT_VERSION = 1
"""Version of the metadata layout; files of a newer layout are refused with a message."""
_EXPORTERS = ("torchscript", "dynamo")


def _input_error(message: str) -> Exception:
    from .inference import InputError

    return InputError(message)


def _need(module: str, what: str):
    """Import ``module`` or raise an InputError saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise _input_error(f"{what} needs the '{module.split('.')[0]}' package "
                           "(pip install 'cluda_kit[export]')") from None


# ------------------------------------------------------------------------------------ sources
def model_for_export(path: str | Path, *, teacher: bool = False) -> tuple[Any, Any]:
    """``(network, cfg)`` of a kit run directory (``checkpoints/last.pt`` with the run's
    ``config.yaml``), a kit checkpoint file (``.pt``) or an earlier export (``.safetensors``).

    The student's weights by default, the EMA teacher's with ``teacher=True``. The network (a
    :class:`~cluda_kit.models.segmentor.Segmentor`, or the HRDA wrapper when
    ``model.hrda.enabled``) is on the CPU in eval mode; ``cfg`` is the run's config with
    ``model.pretrained`` cleared. Reads through :func:`cluda_kit.load_model` (tensors and plain
    data only, ``weights_only=True``); its errors name the file.
    """
    from .inference import load_model

    model = load_model(path, teacher=teacher)
    return model.net, model.cfg


def _network_of(cfg: Any):
    """A freshly built network for ``cfg`` (HRDA-wrapped when enabled), random weights."""
    from .models import build_segmentor
    from .models.hrda import HRDASegmentor

    net = build_segmentor(cfg.model)
    return HRDASegmentor.from_config(net, cfg.model) if cfg.model.hrda.enabled else net


def _class_metadata(cfg: Any) -> dict[str, str]:
    from .data.classes import class_table_of

    table = class_table_of(cfg)
    return {"class_names": json.dumps(list(table.names)),
            "class_colors": json.dumps([list(map(int, c)) for c in table.colors])}


def _common_metadata(cfg: Any, source: str, weights: str) -> dict[str, str]:
    """The string metadata both formats carry."""
    import torch

    from . import __version__
    from .config import dump_config
    from .engine.checkpoint import git_hash

    meta = {"format": EXPORT_FORMAT, "format_version": str(FORMAT_VERSION),
            "kit_version": __version__, "kit_git": git_hash() or "", "torch_version": torch.__version__,
            "producer": f"cluda-kit {__version__} export" + (f" of {source}" if source else ""),
            "source": source, "weights": weights, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if cfg is not None:
        meta["config"] = dump_config(cfg)
        meta["resize"] = json.dumps(list(cfg.data.val.resize) if cfg.data.val.resize else None)
        meta.update(_class_metadata(cfg))
    return meta


# -------------------------------------------------------------------------------- safetensors
def export_safetensors(model: Any, cfg: Any, path: str | Path, *, source: str = "",
                       weights: str = "student") -> Path:
    """Write ``model``'s weights to ``path`` (.safetensors) with ``cfg`` in the metadata.

    Args:
        model: the network (a Segmentor or HRDA wrapper) or a :class:`~cluda_kit.SegmentationModel`.
        cfg: its :class:`~cluda_kit.config.Config` (None: a SegmentationModel's own).
        path: the file to write (atomically; its folder is created).
        source, weights: recorded in the metadata (where the weights came from; student/teacher).

    Metadata (all strings): ``format`` = :data:`EXPORT_FORMAT`, ``format_version``, ``config``
    (YAML of the resolved config, ``model.pretrained`` cleared), ``class_names`` and
    ``class_colors`` (JSON), ``resize`` (JSON: data.val.resize), ``kit_version``, ``kit_git``,
    ``torch_version``, ``producer``, ``source``, ``weights``, ``created``.

    The weights are checked to load into a network built from ``cfg`` alone (InputError if not),
    so that :func:`load_exported` can read every file this writes.
    """
    from .config import replace
    from .fileio import atomic_write_bytes

    st = _need("safetensors.torch", "safetensors export")
    seg, cfg = _inference_model(model, cfg)
    net = seg.net
    if cfg is None:
        raise _input_error(f"export_safetensors({path}): the model's config is needed (pass cfg)")
    cfg = replace(cfg, ["model.pretrained="])
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    try:
        _network_of(cfg).load_state_dict(tensors)
    except RuntimeError as err:
        raise _input_error(f"export_safetensors({path}): the model does not match its config "
                           f"({' '.join(str(err).split())[:300]})") from None
    meta = _common_metadata(cfg, source, weights)
    return atomic_write_bytes(path, st.save(tensors, metadata=meta))


def read_export_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of an exported ``.safetensors`` or ``.onnx`` file (no weights read).

    FileNotFoundError for a missing file; InputError naming the file for one that is not in that
    format or carries no cluda-kit export metadata, or whose layout is newer than this kit's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".onnx":
        onnx = _need("onnx", f"reading {path}")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # DecodeError and friends
            raise _input_error(f"{path}: not an ONNX model ({type(err).__name__})") from None
        meta = {p.key: p.value for p in proto.metadata_props}
    else:
        safetensors = _need("safetensors", f"reading {path}")
        try:
            with safetensors.safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
        except Exception as err:  # SafetensorError: a header that does not parse
            first = (str(err).strip().splitlines() or [""])[0]
            raise _input_error(f"{path}: not a safetensors file ({first})") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise _input_error(f"{path}: not a cluda-kit export (no cluda-kit metadata: a plain weights "
                           "file); load it with a config: load_model(path, config=PRESET) / --config PRESET")
    version = meta.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise _input_error(f"{path}: written by a newer cluda-kit ({meta.get('kit_version')}, "
                           f"export format {version!r}); update the kit to read it")
    return meta


def load_exported(path: str | Path) -> tuple[Any, Any]:
    """``(network, cfg)`` of a file written by :func:`export_safetensors`.

    The network is built from the config in the metadata alone (no pretrained file is read),
    its weights loaded strictly; on the CPU, in eval mode. Errors name the file: missing
    (FileNotFoundError), not a kit export, a config this kit cannot read, or weights that do not
    fit the config (InputError).
    """
    import yaml

    from .config import ConfigError, from_dict, validate

    path = Path(path)
    meta = read_export_metadata(path)
    if path.suffix == ".onnx" or "config" not in meta:
        raise _input_error(f"{path}: not a cluda-kit safetensors export with a config; "
                           "load_exported reads the .safetensors files of export_safetensors")
    st = _need("safetensors.torch", f"reading {path}")
    try:
        values = yaml.safe_load(meta["config"])
        if not isinstance(values, dict):
            raise ConfigError(f"expected a mapping, got {type(values).__name__}")
        cfg = from_dict(values, where=str(path))
        validate(cfg)
        net = _network_of(cfg)
    except (ValueError, yaml.YAMLError) as err:  # ConfigError, an encoder this kit does not know
        first = " ".join(str(err).split())
        raise _input_error(f"{path}: its config does not fit this version of the kit ({first})") from None
    try:
        net.load_state_dict(st.load_file(str(path), device="cpu"))
    except RuntimeError as err:
        raise _input_error(f"{path}: its weights do not fit its config "
                           f"({' '.join(str(err).split())[:300]})") from None
    return net.eval(), cfg


# ---------------------------------------------------------------------------------------- ONNX
def _inference_model(model: Any, cfg: Any) -> tuple[Any, Any]:
    """(SegmentationModel, cfg) for a SegmentationModel (used as it is; ``cfg`` defaults to its
    own) or a network (``cfg``'s inference protocol, or whole-image inference without)."""
    from .inference import SegmentationModel

    if isinstance(model, SegmentationModel):
        return model, cfg if cfg is not None else model.cfg
    seg = SegmentationModel.from_config(model, cfg) if cfg is not None else SegmentationModel(model)
    return seg, cfg


@contextlib.contextmanager
def _evaluating(module: Any):
    """``module`` in eval mode (dropout off, BatchNorm on running statistics), its mode restored after."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)


def fixed_size_reason(model: Any) -> str | None:
    """Why ``model``'s inference cannot be one graph for every input size, or None when it can.

    ``model``: a SegmentationModel or a network (whole-image inference)."""
    from .models.hrda import HRDASegmentor

    net = getattr(model, "net", model)
    if isinstance(net, HRDASegmentor):
        return "HRDA inference places its detail windows by the input size"
    if getattr(model, "mode", "whole") == "slide":
        return "sliding-window inference (train.eval_mode=slide) places its windows by the input size"
    return None


def export_onnx(model: Any, path: str | Path, example_hw: Sequence[int], opset: int = ONNX_OPSET, *,
                cfg: Any = None, dynamic: bool | None = None, exporter: str = "auto",
                source: str = "", weights: str = "student") -> Path:
    """Export ``model``'s inference to an ONNX file.

    Args:
        model: a :class:`~cluda_kit.SegmentationModel` (its whole or sliding-window protocol), or
            a network (Segmentor / HRDA wrapper): with ``cfg``, that config's protocol; without,
            whole-image inference.
        path: the ``.onnx`` file to write (atomically; weights inside the file, so < 2 GB).
        example_hw: (H, W) of the example input the graph is recorded with; the graph's only input
            size when it is not dynamic.
        opset: the ONNX opset (default :data:`ONNX_OPSET`).
        cfg: the config (default: a SegmentationModel's); recorded in the metadata.
        dynamic: dynamic H and W. None: when the inference allows it (:func:`fixed_size_reason`);
            True with HRDA or sliding-window inference raises InputError. B is always dynamic.
            The graph is recorded in eval mode (the model's mode is restored after).
        exporter: "torchscript" (``torch.onnx.export(dynamo=False)``: a trace, seconds), "dynamo"
            (torch.export; needs ``onnxscript``, far slower) or "auto": dynamo for HRDA (its
            context size is Python arithmetic on the input size, which a trace cannot record),
            torchscript otherwise.
        source, weights: recorded in the metadata.

    Returns:
        ``path``. The graph maps ``images`` (B, 3, H, W) float32, ImageNet-normalised, to
        ``logits`` (B, C, H, W) float32 at the input resolution (C = model.num_classes). Its
        metadata_props hold the entries of :func:`export_safetensors` (no weights) and
        ``input_size`` ("dynamic" or "HxW"), ``input``, ``output`` (these shapes in words),
        ``inference`` (whole, slide, hrda+whole, hrda+slide), ``opset`` and ``exporter``.
    """
    from .fileio import atomic_write_bytes
    from .models.hrda import HRDASegmentor

    onnx = _need("onnx", "ONNX export")
    if exporter not in ("auto", *_EXPORTERS):
        raise _input_error(f"export_onnx: exporter={exporter!r}, expected auto, {', '.join(_EXPORTERS)}")
    h, w = (int(v) for v in example_hw)
    if h < 1 or w < 1 or int(opset) < 1:
        raise _input_error(f"export_onnx: example size {h}x{w} and opset {opset} must be positive")
    seg, cfg = _inference_model(model, cfg)
    hrda = isinstance(seg.net, HRDASegmentor)
    if exporter == "auto":
        exporter = "dynamo" if hrda else "torchscript"
    elif exporter == "torchscript" and hrda:
        raise _input_error(f"{path}: the TorchScript exporter cannot trace HRDA (its context size is "
                           "Python arithmetic on the input size); use the dynamo exporter")
    reason = fixed_size_reason(seg)
    if dynamic and reason:
        raise _input_error(f"{path}: cannot export with a dynamic height and width: {reason}; "
                           "export at one input size (--size H W, dynamic=False)")
    dynamic = reason is None if dynamic is None else bool(dynamic)
    with _evaluating(seg):
        proto = _record_graph(seg, (h, w), int(opset), exporter, dynamic, path)
    meta = _common_metadata(cfg, source, weights)
    meta.update({
        "input": "images (B, 3, H, W) float32 RGB, (pixel - (123.675, 116.28, 103.53)) / "
                 "(58.395, 57.12, 57.375) on the 0-255 scale",
        "output": "logits (B, C, H, W) float32 class scores at the input resolution; argmax over C",
        "input_size": "dynamic" if dynamic else f"{h}x{w}", "inference": ("hrda+" if hrda else "") + seg.mode,
        "opset": str(int(opset)), "exporter": exporter,
    })
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name, proto.producer_version = "cluda_kit", meta["kit_version"]
    onnx.checker.check_model(proto)
    return atomic_write_bytes(path, proto.SerializeToString())


def _record_graph(seg: Any, hw: tuple[int, int], opset: int, exporter: str, dynamic: bool, path: Any):
    """The ONNX ModelProto of ``seg``'s forward (input ``images``, output ``logits``; B dynamic,
    H and W too when ``dynamic``), recorded at an example input of size ``hw``."""
    import io

    import torch

    onnx = _need("onnx", "ONNX export")
    if exporter == "dynamo":
        _need("onnxscript", "the dynamo ONNX exporter")
    batch = 2 if exporter == "dynamo" else 1  # torch.export would specialise a batch of 1
    x = torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(0)).to(seg.device)
    if seg.num_classes is None:  # a bare network: its class count, outside the recorded graph
        with torch.no_grad():
            seg.num_classes = int(seg.net(x[:1]).logits.shape[1])
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated since torch 2.9 and warns about the heads'
        # shape-dependent Python branches: check_onnx compares the graph with PyTorch instead
        warnings.simplefilter("ignore")
        try:
            if exporter == "torchscript":
                buf = io.BytesIO()
                torch.onnx.export(seg, (x,), buf, input_names=["images"], output_names=["logits"],
                                  opset_version=opset, dynamo=False, do_constant_folding=True,
                                  dynamic_axes={"images": axes, "logits": axes})
                return onnx.load_from_string(buf.getvalue())
            program = torch.onnx.export(seg, (x,), input_names=["images"], output_names=["logits"],
                                        opset_version=opset, dynamo=True, external_data=False, verbose=False,
                                        dynamic_shapes={"x": {i: torch.export.Dim.DYNAMIC for i in axes}})
            return program.model_proto
        except Exception as err:  # an operator without an ONNX form at this opset, ...
            first = " ".join(str(err).split())[:300]
            raise _input_error(f"{path}: ONNX export failed at opset {opset} with the {exporter} "
                               f"exporter ({type(err).__name__}: {first})") from None


def check_onnx(path: str | Path, model: Any, sizes: Sequence[Sequence[int]], *, batch: int = 1,
               cfg: Any = None, seed: int = 0) -> dict[tuple[int, int], float]:
    """Run the ONNX file with onnxruntime (CPU) and ``model`` with PyTorch on the same random
    normalised images (``batch`` of them) at each (H, W) of ``sizes``.

    Returns, per size, the largest absolute logit difference divided by max(1, largest |logit|)
    of PyTorch. ``model``/``cfg`` as for :func:`export_onnx`. InputError when onnxruntime is
    missing or cannot run the graph at a size (a fixed-size export run at another size)."""
    import numpy as np
    import torch

    ort = _need("onnxruntime", "checking an ONNX export")
    seg, cfg = _inference_model(model, cfg)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    out: dict[tuple[int, int], float] = {}
    for h, w in sizes:
        x = torch.randn(batch, 3, int(h), int(w), generator=gen)
        with torch.no_grad(), _evaluating(seg):
            ref = seg(x.to(seg.device)).cpu().numpy()
        try:
            got = session.run(["logits"], {"images": x.numpy()})[0]
        except Exception as err:  # onnxruntime's InvalidArgument / Fail
            first = " ".join(str(err).split())[:300]
            raise _input_error(f"{path}: onnxruntime cannot run it at {h}x{w} ({first})") from None
        if got.shape != ref.shape:
            raise _input_error(f"{path}: onnxruntime gave logits {got.shape} at {h}x{w}, PyTorch {ref.shape}")
        out[(int(h), int(w))] = float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())))
    return out


# ----------------------------------------------------------------------------------------- CLI
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to ``cluda-kit``'s subparsers (``set_defaults(func=main)``)."""
    p = subparsers.add_parser("export", help="write a trained model as .safetensors (weights + config) "
                                             "or .onnx (inference graph)")
    p.add_argument("model", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="run directory, kit checkpoint (.pt) or exported .safetensors")
    p.add_argument("--format", choices=["safetensors", "onnx"], default=None,
                   help="what to write (default: from the --out suffix)")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (.safetensors or .onnx)")
    p.add_argument("--teacher", action="store_true", help="export the EMA teacher's weights")
    p.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="ONNX: example input size; the only input size of HRDA or sliding-window "
                        "models (required for them; default for others: data.crop_size)")
    p.add_argument("--exporter", choices=["auto", *_EXPORTERS], default="auto",
                   help="ONNX: PyTorch's TorchScript exporter (fast), the torch.export-based one "
                        "(needs onnxscript), or auto: dynamo for HRDA, else torchscript")
    p.add_argument("--no-check", action="store_true",
                   help="ONNX: skip the onnxruntime-vs-PyTorch comparison of the written graph")
    p.set_defaults(func=main)
    return p


_SUFFIX = {"safetensors": ".safetensors", "onnx": ".onnx"}
CHECK_TOLERANCE = 1e-3
"""Largest logit difference between onnxruntime and PyTorch, relative to max(1, max |logit|),
that ``cluda-kit export`` accepts (float32 kernels differ by ~1e-6 of that)."""


def _second_size(h: int, w: int) -> tuple[int, int]:
    """A second, different and odd-shaped input size to check a dynamic graph at."""
    return max(32, h // 2 + 12), max(32, w // 2 + 20)


def main(args: argparse.Namespace) -> int:
    """``cluda-kit export``: write the file, print what was written (and the ONNX check)."""
    out = Path(args.out)
    fmt = args.format or next((f for f, s in _SUFFIX.items() if out.suffix == s), None)
    if fmt is None:
        raise _input_error(f"export: --out {out}: give --format or a .safetensors / .onnx file name")
    if out.suffix != _SUFFIX[fmt]:
        raise _input_error(f"export: --out {out}: a {fmt} file must end in {_SUFFIX[fmt]}")
    if args.size is not None and min(args.size) < 1:
        raise _input_error(f"export: --size {args.size[0]} {args.size[1]}: expected two positive integers")
    if fmt == "safetensors" and args.size is not None:
        raise _input_error("export: --size is for ONNX; a safetensors export holds no input size")
    model = Path(args.model)
    if out.resolve() == model.resolve():
        raise _input_error(f"export: --out {out} would overwrite the model it reads")
    weights = "teacher" if args.teacher else "student"
    net, cfg = model_for_export(model, teacher=args.teacher)
    if fmt == "safetensors":
        export_safetensors(net, cfg, out, source=str(model), weights=weights)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): {weights} weights of {model} with "
              f"its config ({cfg.model.encoder} + {cfg.model.decoder}"
              f"{', HRDA' if cfg.model.hrda.enabled else ''}, {cfg.model.num_classes} classes)")
        return 0
    seg, cfg = _inference_model(net, cfg)
    reason = fixed_size_reason(seg)
    if reason and args.size is None:
        resize = cfg.data.val.resize
        hint = f" (data.val.resize is {list(resize)})" if resize else ""
        raise _input_error(f"export: {model}: {reason}, so its ONNX graph holds one input size: "
                           f"give --size H W{hint}")
    h, w = args.size if args.size is not None else cfg.data.crop_size
    export_onnx(seg, out, (h, w), args.opset, exporter=args.exporter, source=str(model), weights=weights)
    meta = read_export_metadata(out)
    shape = f"{h}x{w} only" if reason else "dynamic height and width"
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {meta['exporter']} exporter): opset "
          f"{args.opset}, images (B, 3, H, W) -> logits (B, {cfg.model.num_classes}, H, W), {shape}")
    if args.no_check:
        return 0
    try:
        _need("onnxruntime", "checking an ONNX export")
    except ValueError:
        print("not checked against PyTorch: onnxruntime is not installed (pip install 'cluda_kit[export]')")
        return 0
    diffs = check_onnx(out, seg, [(h, w)] if reason else [(h, w), _second_size(h, w)])
    text = ", ".join(f"{a}x{b}: {d:.1e}" for (a, b), d in diffs.items())
    if max(diffs.values()) > CHECK_TOLERANCE:
        print(f"cluda-kit: warning: onnxruntime differs from PyTorch on {out} (largest relative logit "
              f"difference {text}); do not use this file")
        return 1
    print(f"checked with onnxruntime against PyTorch: largest relative logit difference {text}")
    return 0
