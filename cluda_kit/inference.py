"""Using a trained model: load it from a run or checkpoint, segment images, folders and videos.

    model = load_model("runs/demo")                   # a run directory, a kit checkpoint (.pt)
    masks = predict(model, ["a.png", "b.jpg"])        # [(H, W) int64 trainIds, ...]

:func:`load_model` returns a :class:`SegmentationModel`: the trained network together with the
inference protocol of its config — the keep-ratio resize of ``data.val.resize`` and whole-image or
sliding-window inference (``train.eval_mode``, ``eval_window``, ``eval_stride``) — so that
:func:`predict` segments an image the way ``cluda-kit evaluate`` scored it. Predictions come back
at each input image's own resolution. ``cluda-kit predict`` (:func:`predict_files`) adds folders,
videos (through PyAV) and the files it writes: colourised masks, overlays and labelId PNGs.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch import SKIPPED, WRITTEN, BatchReport
from .fileio import atomic_write

__all__ = ["InputError", "SegmentationModel", "load_model", "predict", "evaluate_model", "save_val_predictions", "predict_files", "collect_inputs",
           "save_outputs", "overlay", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "IMAGE_OUTPUTS", "ImageLike"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
ImageLike = Union[str, Path, Tensor, np.ndarray, "PIL.Image.Image"]  # noqa: F821


class InputError(ValueError):
    """An input of :func:`load_model`, :func:`predict` or ``cluda-kit predict`` is wrong; names it."""


class SegmentationModel(nn.Module):
    """A trained segmentation network with the inference protocol of its config.

    ``forward(x)`` takes ImageNet-normalised images (B, 3, H, W) float and returns class logits
    (B, C, H, W) at the input size: whole-image inference, or the config's sliding window.
    :func:`predict` adds the uint8 conversion, the keep-ratio resize of ``resize`` and the upsampling
    back to each image's size.

    Attributes:
        net: the segmentor (a :class:`~cluda_kit.models.segmentor.Segmentor` or HRDA wrapper).
        cfg: the run's :class:`~cluda_kit.config.Config` (None for a bare network).
        mode: "whole" or "slide"; window, stride: (h, w) of the sliding window.
        resize: keep-ratio (H, W) the input is resized to first (None = as given).
        class_names: the C class names, in trainId order.
    """

    def __init__(self, net: nn.Module, cfg: Any = None, *, mode: str = "whole",
                 window: tuple[int, int] | None = None, stride: tuple[int, int] | None = None,
                 resize: tuple[int, int] | None = None, class_names: Sequence[str] | None = None,
                 source: str = "") -> None:
        super().__init__()
        if mode not in ("whole", "slide"):
            raise ValueError(f"SegmentationModel: mode={mode!r}, expected 'whole' or 'slide'")
        if mode == "slide" and (window is None or stride is None):
            raise ValueError("SegmentationModel: mode='slide' needs window=(h, w) and stride=(sh, sw)")
        self.net, self.cfg, self.mode = net, cfg, mode
        self.window = tuple(window) if window else None
        self.stride = tuple(stride) if stride else None
        self.resize = tuple(resize) if resize else None
        from .data.classes import cityscapes_table, class_table_of

        self.num_classes = int(cfg.model.num_classes) if cfg is not None else None
        self.table = class_table_of(cfg) if cfg is not None else cityscapes_table()
        self.class_names = tuple(class_names) if class_names is not None else self.table.names
        self.source = source  # where it was loaded from, for messages

    @classmethod
    def from_config(cls, net: nn.Module, cfg: Any, source: str = "") -> "SegmentationModel":
        """Wrap ``net`` with the inference settings of ``cfg`` (train.eval_*, data.val.resize)."""
        return cls(net, cfg, mode=cfg.train.eval_mode, window=cfg.train.eval_window,
                   stride=cfg.train.eval_stride, resize=cfg.data.val.resize, source=source)

    @property
    def device(self) -> torch.device:
        return _device_of(self.net)

    def forward(self, x: Tensor) -> Tensor:
        from .engine.evaluate import predict_slide, predict_whole

        def logits_of(t: Tensor) -> Tensor:
            out = self.net(t)
            return (out.logits if hasattr(out, "logits") else out).float()

        c = self.num_classes
        if c is None:
            c = logits_of(x[:1]).shape[1]
        if self.mode == "slide":
            return predict_slide(logits_of, x, c, self.window, self.stride)
        return predict_whole(logits_of, x, c)

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, window={self.window}, stride={self.stride}, resize={self.resize}, "
                f"classes={len(self.class_names)}")


# ---------------------------------------------------------------------------------- loading
def _checkpoint_of(path: Path) -> Path:
    """The checkpoint file of a run directory (checkpoints/last.pt) or the file itself."""
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"{path}: not a trained run directory (no checkpoints/last.pt)")
        return ckpt
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def _kit_state(path: Path) -> tuple[dict, Any, Path]:
    """(trainer checkpoint, its config, the file) for a run directory or a kit checkpoint file.

    A run directory gives its ``config.yaml`` and ``checkpoints/last.pt`` (``prev.pt`` when last.pt
    is unreadable), checked against each other as a resume checks them; a checkpoint file inside
    a run's ``checkpoints/`` folder is checked against that run's config; a lone file brings the
    config it was saved with."""
    from .config import from_dict, load_config
    from .engine.checkpoint import check_resumable, first_readable, load_checkpoint

    if path.is_dir():
        _checkpoint_of(path)  # a clear error for a folder that is no run
        state, ckpt = first_readable([path / "checkpoints" / "last.pt", path / "checkpoints" / "prev.pt"], path)
        cfg_path = path / "config.yaml"
    else:
        state, ckpt = load_checkpoint(_checkpoint_of(path)), path
        cfg_path = path.parent.parent / "config.yaml" if path.parent.name == "checkpoints" else None
    if cfg_path is not None and cfg_path.is_file():
        cfg = load_config(cfg_path)
        check_resumable(state, cfg, ckpt, cfg_path)
    else:
        cfg = from_dict(state["config"], where=str(ckpt))
    return state, cfg, ckpt


def load_model(path: str | Path, *, teacher: bool = False, device: str | torch.device = "cpu",
               config: str | Path | None = None, overrides: Sequence[str] = ()) -> SegmentationModel:
    """Load a trained model for inference, in eval mode on ``device``.

    Args:
        path: a kit run directory (its ``checkpoints/last.pt``), a kit checkpoint file (``.pt``),
            a model exported by ``cluda-kit export`` (``.safetensors``), or — with ``config`` — a
            checkpoint released with the DAFormer / HRDA / MIC / CLUDA code (mmsegmentation keys).
        teacher: take the EMA teacher's weights instead of the student's (UDA checkpoints).
        device: where the model goes.
        config: a preset name or YAML file that builds the network for a released checkpoint
            (e.g. ``gta2cs_hrda_cluda``); for a kit file it replaces the config the file carries.
        overrides: ``key=value`` changes to that config, e.g. ``data.val.resize=[512,1024]`` or
            ``train.eval_mode=slide`` (the inference protocol; the network must stay the same).

    Returns:
        A :class:`SegmentationModel` with its config in ``.cfg`` (the network is built from its
        ``model`` section; no pretrained file is read: the checkpoint holds every weight).
    """
    from .config import load_config, replace
    from .models import build_segmentor
    from .models.hrda import HRDASegmentor
    from .models.weights import load_pretrained

    path = Path(path)
    overrides = [*overrides, "model.pretrained="]
    which = "teacher" if teacher else "student"
    if path.suffix == ".safetensors" and config is None:
        if teacher:
            raise InputError(f"{path}: an exported model holds one set of weights; drop --teacher")
        from .export import load_exported

        net, cfg = load_exported(path)
        return SegmentationModel.from_config(net, replace(cfg, overrides), source=str(path)).to(device).eval()
    if config is None:
        state, cfg, ckpt = _kit_state(path)
        weights = state.get(which)
        if weights is None:
            raise InputError(f"{ckpt}: no {which} weights in this checkpoint (a source-only run has no teacher)")
        cfg = replace(cfg, overrides)
    else:
        ckpt = _checkpoint_of(path)
        cfg = load_config(config, overrides)
    net = build_segmentor(cfg.model)
    if cfg.model.hrda.enabled:
        net = HRDASegmentor.from_config(net, cfg.model)
    if config is None:
        net.load_state_dict(weights)
    else:  # any layout the kit maps (kit, mmseg release, export), every tensor used exactly
        try:
            load_pretrained(net, ckpt, key=which)
        except (ValueError, FileNotFoundError):
            raise
        except Exception as err:  # an unreadable file: torch.load raises many kinds of error
            first = (str(err).strip().splitlines() or [""])[0]
            raise InputError(f"{ckpt}: unreadable as a checkpoint ({type(err).__name__}: {first})") from None
    return SegmentationModel.from_config(net, cfg, source=str(ckpt)).to(device).eval()


# ---------------------------------------------------------------------------------- predict
def _as_uint8_chw(image: ImageLike) -> Tensor:
    """One image as a uint8 (3, H, W) CPU tensor. Accepts a file path, a PIL image, an (H, W, 3)
    uint8 array, or a (3, H, W) tensor (uint8, or float in [0, 1])."""
    from .data.datasets import read_image

    if isinstance(image, (str, Path)):
        return read_image(Path(image), fast=False)
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputError(f"predict: expected an image tensor (3, H, W), got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.cpu()
        if not image.is_floating_point():
            raise InputError(f"predict: an image tensor must be uint8 or float in [0, 1], got {image.dtype}")
        return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"predict: expected an (H, W, 3) uint8 RGB array, got shape {image.shape} "
                             f"dtype {image.dtype}")
        return torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous()
    raise InputError(f"predict: cannot read an image from {type(image).__name__}")


@torch.no_grad()
def _segment(model: nn.Module, images: list[Tensor], device: torch.device,
             resize: tuple[int, int] | None) -> tuple[list[Tensor], list[Tensor]]:
    """Predictions and confidences (each (H, W), at the image's size) of same-size uint8 images."""
    from .data.transforms import normalize, resize_image

    h, w = images[0].shape[1:]
    batch = torch.stack([resize_image(im, resize) if resize else im for im in images])
    x = normalize(batch.to(device).float() / 255.0)
    logits = model(x)
    logits = logits.logits if hasattr(logits, "logits") else logits
    if logits.shape[-2:] != (h, w):
        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
    pred = logits.argmax(dim=1)  # on the logits: softmax can merge two nearly tied classes
    conf = logits.float().softmax(dim=1).gather(1, pred[:, None])[:, 0]
    return list(pred.cpu()), list(conf.cpu())


def _batches(items: list[Tensor], batch_size: int) -> Iterator[list[int]]:
    """Indices of consecutive runs of same-size images, at most ``batch_size`` each."""
    run: list[int] = []
    for i, im in enumerate(items):
        if run and (len(run) == batch_size or items[run[0]].shape != im.shape):
            yield run
            run = []
        run.append(i)
    if run:
        yield run


def predict(model: nn.Module, images: ImageLike | Sequence[ImageLike], *, batch_size: int = 1,
            device: str | torch.device | None = None, return_confidence: bool = False):
    """Segment images with a trained model.

    Args:
        model: a :class:`SegmentationModel` (from :func:`load_model`), or any module mapping
            normalised (B, 3, H, W) images to logits (B, C, h, w) or an object with ``.logits``.
        images: one image or a list: file paths, PIL images, (H, W, 3) uint8 arrays, (3, H, W)
            uint8 or [0, 1] float tensors; a (B, 3, H, W) tensor is B images. Sizes may differ.
        batch_size: images forwarded together (consecutive images of equal size).
        device: where to run (default: the model's device).
        return_confidence: also return the softmax probability of the predicted class.

    Returns:
        For one image an (H, W) int64 tensor of trainIds at that image's size; for a list or a
        batch tensor, a list of them. With ``return_confidence``, ``(preds, confidences)`` with
        float32 (H, W) maps in the same structure.
    """
    single = not isinstance(images, (list, tuple)) and not (
        isinstance(images, Tensor) and images.ndim == 4)
    items = [images] if single else list(images)
    tensors = [_as_uint8_chw(im) for im in items]
    device = torch.device(device) if device is not None else _device_of(model)
    resize = getattr(model, "resize", None)
    was_training = model.training
    model.eval()
    preds: list[Tensor | None] = [None] * len(tensors)
    confs: list[Tensor | None] = [None] * len(tensors)
    try:
        for idx in _batches(tensors, max(1, batch_size)):
            p, c = _segment(model, [tensors[i] for i in idx], device, resize)
            for i, pi, ci in zip(idx, p, c):
                preds[i], confs[i] = pi, ci
    finally:
        model.train(was_training)
    if single:
        return (preds[0], confs[0]) if return_confidence else preds[0]
    return (preds, confs) if return_confidence else preds


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------- evaluate
def evaluate_model(model: SegmentationModel, *, progress: bool = True, callback=None) -> dict:
    """Score ``model`` on the validation set of its config (``model.cfg.data.val``; only that
    data is read, no training data). Returns ``evaluate``'s dict: miou, iou (C,), pixel_accuracy,
    cm (C, C), fractions in [0, 1]. ``callback(batch, pred)`` sees each batch's (B, H, W) trainIds."""
    from .engine.data import val_loader
    from .engine.evaluate import evaluate

    cfg = model.cfg
    return evaluate(model, val_loader(cfg), cfg.model.num_classes, mode="whole", device=model.device,
                    progress=progress, callback=callback)


def save_val_predictions(preds: Tensor, names: Sequence[str], out_dir: str | Path,
                         table: Any = None) -> list[Path]:
    """Write validation predictions (B, H, W) trainIds: Cityscapes-named samples as the labelId
    PNGs the official evaluator reads (``<city>_<seq>_<frame>_pred_labelIds.png``); any other
    name (miniscapes, a folder dataset) as ``<name>_labelIds.png`` and ``<name>_color.png``
    under ``out_dir``, the name's folders kept."""
    from .engine.evaluate import _CS_STEM, save_cityscapes_predictions

    names = [str(n) for n in names]
    if (table is None or table.source == "cityscapes") and all(_CS_STEM.match(Path(n).name) for n in names):
        return save_cityscapes_predictions(preds, names, out_dir)
    out_dir = Path(out_dir)
    written: list[Path] = []
    for pred, name in zip(preds, names):
        rel = Path(*[part for part in Path(name).parts if part not in ("", "/", "..")])
        written += save_outputs(pred.cpu(), None, out_dir, rel, kinds=("labelIds", "color"), table=table)
    return written


# ---------------------------------------------------------------------------------- files
@dataclass
class Inputs:
    """What ``cluda-kit predict`` will read: images (path, name relative to its argument) and videos."""

    images: list[tuple[Path, Path]] = field(default_factory=list)
    videos: list[tuple[Path, Path]] = field(default_factory=list)


def collect_inputs(paths: Sequence[str | Path]) -> Inputs:
    """Expand files and folders (recursively, sorted) into images and videos.

    Each output name is the file's path relative to the folder it was found in (a file given
    directly: its own name), without the suffix, so that outputs mirror the input tree.
    Raises FileNotFoundError for a missing path and ValueError for a file of an unknown kind or a
    folder without images or videos, naming it.
    """
    out = Inputs()
    for given in paths:
        p = Path(given)
        if not p.exists():
            raise FileNotFoundError(f"predict: input {p} does not exist")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file()
                           and f.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
            if not found:
                raise InputError(f"predict: folder {p} holds no image ({', '.join(IMAGE_SUFFIXES)}) "
                                 f"or video ({', '.join(VIDEO_SUFFIXES)}) file")
            pairs = [(f, f.relative_to(p).with_suffix("")) for f in found]
        elif p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
            pairs = [(p, Path(p.stem))]
        else:
            raise InputError(f"predict: {p} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a "
                             f"video ({', '.join(VIDEO_SUFFIXES)})")
        for f, name in pairs:
            (out.videos if f.suffix.lower() in VIDEO_SUFFIXES else out.images).append((f, name))
    return out


def overlay(image: Tensor | np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an RGB image (3, H, W) tensor or (H, W, 3) array with colourised labels (H, W, 3)."""
    img = image.permute(1, 2, 0).numpy() if isinstance(image, Tensor) else np.asarray(image)
    return (img.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round().astype(np.uint8)


def save_outputs(pred: Tensor, image: Tensor | None, out_dir: Path, name: Path,
                 kinds: Sequence[str] = ("color", "overlay", "labelIds"), table: Any = None) -> list[Path]:
    """Write ``out_dir/name_{color,overlay,labelIds}.png`` for a (H, W) trainId prediction of a
    uint8 (3, H, W) image: the class table's colours, the colours blended on the image, and the
    label-file values of the table (Cityscapes' default table: the labelIds the official
    evaluator reads; trainIds 0..18 map to their labelIds)."""
    from PIL import Image

    from .data.classes import cityscapes_table

    table = table if table is not None else cityscapes_table()
    arr = pred.numpy().astype(np.uint8)
    colours = table.colorize(arr)
    images = {"color": colours, "overlay": lambda: overlay(image, colours),
              "labelIds": lambda: table.to_values(arr)}
    written = []
    for kind, path in zip(kinds, _output_paths(out_dir, name, kinds)):
        data = images[kind]
        data = Image.fromarray(data() if callable(data) else data)
        # atomic, so that a file that exists is complete and a rerun may skip it (bulk mode: no
        # fsync, no scan of a large output folder per file)
        written.append(atomic_write(path, lambda fh: data.save(fh, format="PNG"), durable=False, sweep=False))
    return written


def _output_paths(out_dir: Path, name: Path, kinds: Sequence[str]) -> list[Path]:
    base = Path(out_dir) / name
    return [base.parent / f"{base.name}_{kind}.png" for kind in kinds]


def _open_video(path: Path):
    try:
        import av
    except ImportError:
        raise InputError(f"{path}: reading a video needs PyAV: pip install 'cluda_kit[video]'") from None
    try:
        return av.open(str(path))
    except Exception as err:  # av raises its own error classes per container problem
        raise InputError(f"{path}: not a readable video ({_av_reason(err)})") from None


def _av_reason(err: BaseException) -> str:
    from .batch import describe

    reason = getattr(err, "strerror", None) or describe(err)
    return reason[:1].lower() + reason[1:]


def _video_frames(container, every: int) -> Iterator[tuple[int, Tensor]]:
    for i, frame in enumerate(container.decode(video=0)):
        if i % every == 0:
            yield i, torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous()


IMAGE_OUTPUTS = ("color", "overlay", "labelIds")


def predict_files(model: SegmentationModel, inputs: Inputs, out_dir: str | Path, *, batch_size: int = 1,
                  every: int = 1, overwrite: bool = False, progress: bool = True) -> BatchReport:
    """Segment every image and video of ``inputs`` into ``out_dir`` with a progress bar.

    An image ``name`` gives ``name_color.png``, ``name_overlay.png`` and ``name_labelIds.png``.
    A video gives ``name_overlay.mp4`` (H.264, the input's frame rate divided by ``every``) and
    ``name/frame_NNNNNN_labelIds.png`` for each ``every``-th frame. Every file is written
    atomically, so an item whose outputs exist (for a video its ``.mp4``, written last) was done
    completely and is skipped; ``overwrite`` redoes it. A bad item (unreadable, refused by
    :func:`~cluda_kit.data.datasets.read_image`'s rules, a video without a decodable frame) is
    reported in one line and the rest go on.

    Returns:
        The :class:`~cluda_kit.batch.BatchReport` over images and videos; its ``values`` hold
        ``(kind, path, frames)`` of each item written ("image" or "video"; frames 0 for an image).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BatchReport(len(inputs.images) + len(inputs.videos), "predict", progress)
    todo = []
    for path, name in inputs.images:
        if not overwrite and all(p.is_file() for p in _output_paths(out_dir, name, IMAGE_OUTPUTS)):
            report.add(SKIPPED)
        else:
            todo.append((path, name))
    step = max(1, batch_size)
    try:
        for start in range(0, len(todo), step):
            loaded = []
            for path, name in todo[start:start + step]:
                with report.guard(path):
                    loaded.append((path, name, _as_uint8_chw(path)))
            # a failing forward pass is a problem of the model or device, not of an item: it stops
            preds = predict(model, [image for _, _, image in loaded], batch_size=batch_size) if loaded else []
            for (path, name, image), pred in zip(loaded, preds):
                with report.guard(path):
                    save_outputs(pred, image, out_dir, name, IMAGE_OUTPUTS, table=model.table)
                    report.add(WRITTEN, ("image", path, 0))
        for path, name in inputs.videos:
            if not overwrite and (out_dir / f"{name}_overlay.mp4").is_file():
                report.add(SKIPPED)
                continue
            with report.guard(path):
                frames = _predict_video(model, path, out_dir, name, every=every, batch_size=batch_size,
                                        progress=progress)
                report.add(WRITTEN, ("video", path, frames))
    finally:
        report.close()
    return report


def _predict_video(model: SegmentationModel, path: Path, out_dir: Path, name: Path, *, every: int,
                   batch_size: int, progress: bool) -> int:
    import av
    from tqdm.auto import tqdm

    src = _open_video(path)
    bar = None
    n = 0
    try:
        if not src.streams.video:
            raise InputError(f"{path}: no video stream")
        stream = src.streams.video[0]
        rate = stream.average_rate or 25
        total = (stream.frames // every + (stream.frames % every > 0)) if stream.frames else None
        frames_dir = out_dir / name
        bar = tqdm(total=total, desc=f"predict {path.name}", unit="frame", disable=not progress, leave=False)

        def encode(fh) -> None:
            nonlocal n
            dst = av.open(fh, "w", format="mp4")
            enc = None
            pending: list[tuple[int, Tensor]] = []

            def flush() -> None:
                nonlocal enc, n
                preds = predict(model, [im for _, im in pending], batch_size=batch_size)
                for (i, image), pred in zip(pending, preds):
                    save_outputs(pred, image, frames_dir, Path(f"frame_{i:06d}"), kinds=("labelIds",),
                                 table=model.table)
                    blended = overlay(image, model.table.colorize(pred.numpy().astype(np.uint8)))
                    if enc is None:
                        enc = dst.add_stream("libx264", rate=rate / every if every > 1 else rate)
                        enc.height, enc.width = blended.shape[0] // 2 * 2, blended.shape[1] // 2 * 2
                        enc.pix_fmt = "yuv420p"
                    frame = av.VideoFrame.from_ndarray(blended[: enc.height, : enc.width], format="rgb24")
                    for packet in enc.encode(frame):
                        dst.mux(packet)
                    n += 1
                bar.update(len(pending))
                pending.clear()

            try:
                try:
                    for i, image in _video_frames(src, every):
                        pending.append((i, image))
                        if len(pending) == max(1, batch_size):
                            flush()
                except av.FFmpegError as err:  # the frames before the damage are kept
                    raise InputError(f"{path}: not a readable video after frame {n} ({_av_reason(err)})") from None
                if pending:
                    flush()
                if enc is None:
                    raise InputError(f"{path}: no decodable frame (corrupt or truncated video)")
                for packet in enc.encode():
                    dst.mux(packet)
            finally:
                dst.close()

        # written last and atomically: a video whose .mp4 exists is done
        atomic_write(out_dir / f"{name}_overlay.mp4", encode, durable=False, sweep=False)
    finally:
        if bar is not None:
            bar.close()
        src.close()
    return n
