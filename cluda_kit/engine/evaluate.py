"""Segmentation evaluation: confusion matrix, IoU / mIoU, whole-image and sliding-window inference.

Protocol (docs/method.md §8): intersection and union are accumulated per class over the whole
evaluation set in one C×C confusion matrix (rows = ground truth, columns = prediction);
ground-truth pixels equal to the ignore index (255) are skipped; classes whose union is 0 get IoU nan and are
skipped by the mean (nan-mean). Synthia results are the mean over the 16- or 13-class trainId
subsets (`cluda_kit.data.labels.SYNTHIA16` / `SYNTHIA13`), passed as ``classes``.

The same numbers can be cross-checked with the official Cityscapes evaluator:
`save_cityscapes_predictions` writes files it finds and `run_cityscapes_evaluator` runs it.

Symbols: B batch, C classes, H×W image, h×w logit map.
"""

from __future__ import annotations

import contextlib
import glob
import io
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import labels as label_table
from ..models.sliding import window_spans

__all__ = [
    "SUBSET_MIOUS",
    "subset_mious",
    "ConfusionMeter",
    "confusion_matrix",
    "evaluate",
    "format_iou_table",
    "iou_per_class",
    "mean_iou",
    "pixel_accuracy",
    "predict_slide",
    "predict_whole",
    "run_cityscapes_evaluator",
    "save_cityscapes_predictions",
]

ArrayLike = torch.Tensor | np.ndarray


# --------------------------------------------------------------------------------------------
# Confusion matrix and scores
# --------------------------------------------------------------------------------------------


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Confusion matrix of integer class maps.

    Args:
        pred: predicted trainIds, any shape, integer dtype, values in [0, C).
        target: ground-truth trainIds, same shape as ``pred``; pixels equal to ``ignore_index``
            are skipped.
        num_classes: C.
        ignore_index: ground-truth value to skip (255).

    Returns:
        (C, C) int64 tensor on the inputs' device; entry [i, j] counts pixels with ground truth i
        predicted as j (rows = ground truth).

    Raises:
        ValueError: if a prediction at a non-ignored pixel lies outside [0, C), or a ground-truth
            value is neither in [0, C) nor ``ignore_index``. A C×C matrix cannot represent an
            out-of-range prediction (it would have to count as a miss of the true class without
            a false positive anywhere, as mmseg and the Cityscapes evaluator do), so rather than
            dropping such pixels silently they are an error: map them to a class, or set the
            target to ``ignore_index`` there, before calling (e.g. for pseudo-labels with 255).
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"confusion_matrix: pred shape {tuple(pred.shape)} != "
            f"target shape {tuple(target.shape)}"
        )
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError(
            f"confusion_matrix: expected integer class maps, got pred {pred.dtype}, "
            f"target {target.dtype}"
        )
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).to(device=pred.device, dtype=torch.long)
    valid = target != ignore_index
    pred, target = pred[valid], target[valid]
    bad_target = (target < 0) | (target >= num_classes)
    bad_pred = (pred < 0) | (pred >= num_classes)
    if bool(bad_target.any()):
        raise ValueError(
            f"confusion_matrix: target values {torch.unique(target[bad_target]).tolist()[:10]} "
            f"are outside [0, {num_classes}) and != ignore_index {ignore_index}"
        )
    if bool(bad_pred.any()):
        raise ValueError(
            f"confusion_matrix: {int(bad_pred.sum())} predictions at non-ignored pixels have "
            f"values {torch.unique(pred[bad_pred]).tolist()[:10]} outside [0, {num_classes}); "
            "map them to a class or set their target to ignore_index first"
        )
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _cm_numpy(cm: ArrayLike) -> np.ndarray:
    if isinstance(cm, torch.Tensor):
        cm = cm.detach().cpu().numpy()
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"expected a square (C, C) confusion matrix, got shape {cm.shape}")
    return cm.astype(np.float64)


def iou_per_class(cm: ArrayLike) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN) from a (C, C) confusion matrix (rows = ground truth).

    Returns:
        (C,) float64 numpy array, fractions in [0, 1]; nan where the union is 0 (the class is
        neither in the ground truth nor predicted).
    """
    cm = _cm_numpy(cm)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = np.full_like(tp, np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    return iou


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def mean_iou(cm: ArrayLike, classes: Sequence[int] | None = None) -> float:
    """Mean IoU (fraction) over ``classes`` (trainIds; None = all C), skipping nan classes.

    E.g. ``mean_iou(cm, SYNTHIA16)`` for the 16-class Synthia protocol. nan if every selected
    class has an empty union.
    """
    iou = iou_per_class(cm)
    if classes is not None:
        iou = iou[list(classes)]
    return _nanmean(iou)


#: mIoUs over class subsets that a benchmark reports beside the 19-class mIoU, by source domain:
#: Synthia->Cityscapes is reported on 16 classes (no terrain, truck, train) and 13 (also no wall,
#: fence, pole).
SUBSET_MIOUS: dict[str, dict[str, tuple[int, ...]]] = {
    "synthia": {"miou16": label_table.SYNTHIA16, "miou13": label_table.SYNTHIA13},
}


def subset_mious(cm: ArrayLike, source: str) -> dict[str, float]:
    """``{"miou16": ..., "miou13": ...}`` (fractions) for a ``source`` domain whose benchmark
    reports them (``SUBSET_MIOUS``), else ``{}``."""
    return {name: mean_iou(cm, classes) for name, classes in SUBSET_MIOUS.get(source, {}).items()}


def pixel_accuracy(cm: ArrayLike) -> float:
    """Fraction of non-ignored pixels predicted correctly (trace / sum); nan for an empty matrix."""
    cm = _cm_numpy(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else math.nan


class ConfusionMeter:
    """Accumulates a (C, C) confusion matrix over batches (and DDP ranks).

    The matrix lives on the device of the first ``update``. ``sync()`` all-reduces (sums) what was
    accumulated since the previous sync across ranks when torch.distributed is initialised; it is a
    collective, so every rank must call it the same number of times. Calling it twice does not
    double-count. Without torch.distributed it only folds the pending counts into the total.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._total: torch.Tensor | None = None
        self._pending: torch.Tensor | None = None

    def reset(self) -> None:
        self._total = None
        self._pending = None

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred``, ``target`` integer trainId maps of equal shape, e.g. (B, H, W)."""
        cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        if self._pending is None:
            self._pending = cm
            self._total = torch.zeros_like(cm)
        else:
            self._pending += cm.to(self._pending.device)

    def sync(self) -> None:
        """Sum the counts accumulated since the last sync over all ranks (no-op across ranks if
        torch.distributed is not initialised)."""
        if self._pending is None:
            raise RuntimeError("ConfusionMeter.sync: nothing accumulated yet (call update first)")
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self._pending, op=dist.ReduceOp.SUM)
        self._total += self._pending
        self._pending.zero_()

    @property
    def cm(self) -> torch.Tensor:
        """(C, C) int64 counts so far (this rank's pending counts plus the synced totals)."""
        if self._pending is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        return self._total + self._pending

    def iou(self) -> np.ndarray:
        return iou_per_class(self.cm)

    def miou(self, classes: Sequence[int] | None = None) -> float:
        return mean_iou(self.cm, classes)

    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.cm)


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def _logits_of(out: Any) -> torch.Tensor:
    logits = out.logits if hasattr(out, "logits") else out
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(
            f"forward(x) must return logits (B, C, h, w) or an object with .logits, got {got}"
        )
    return logits


def _forward_logits(
    forward: Callable[[torch.Tensor], Any], x: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """forward(x) -> logits bilinearly resized to x's spatial size, (B, C, H, W)."""
    logits = _logits_of(forward(x))
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"forward returned {logits.shape[1]} logit channels, expected num_classes={num_classes}"
        )
    if logits.shape[-2:] != x.shape[-2:]:
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def predict_whole(
    forward: Callable[[torch.Tensor], Any], images: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Whole-image inference.

    Args:
        forward: ``forward(x)`` returns logits (B, C, h, w) at any stride, or an object with a
            ``.logits`` attribute (e.g. SegOutput).
        images: (B, 3, H, W) network input (already normalised).
        num_classes: C.

    Returns:
        (B, C, H, W) logits (pre-softmax), bilinearly upsampled (align_corners=False).
    """
    return _forward_logits(forward, images, num_classes)


def predict_slide(
    forward: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    num_classes: int,
    window: tuple[int, int],
    stride: tuple[int, int],
    *,
    batch_windows: int = 1,
) -> torch.Tensor:
    """Sliding-window inference with overlapping windows (mmseg ``slide_inference`` semantics).

    Windows of size ``window`` = (h, w) start every ``stride`` = (sh, sw) pixels; the last window
    of each axis is shifted back to end at the image border, and a window larger than the image is
    clipped to it. Each window's logits are upsampled to the window size; overlapping logits are
    summed and divided by the number of windows covering each pixel.

    Args:
        forward: see `predict_whole`.
        images: (B, 3, H, W) network input (already normalised).
        num_classes: C.
        window: (h, w) window size in pixels.
        stride: (sh, sw) step between window starts.
        batch_windows: number of windows forwarded together (each with all B images).

    Returns:
        (B, C, H, W) averaged logits, float32 or wider.
    """
    (wh, ww), (sh, sw) = window, stride
    if min(wh, ww, sh, sw) <= 0 or batch_windows <= 0:
        raise ValueError(
            f"predict_slide: window {window}, stride {stride} and batch_windows {batch_windows} "
            "must be positive"
        )
    b, _, height, width = images.shape
    boxes = [
        (y0, y1, x0, x1)
        for y0, y1 in window_spans(height, wh, sh)
        for x0, x1 in window_spans(width, ww, sw)
    ]
    summed: torch.Tensor | None = None
    count = torch.zeros(1, 1, height, width, device=images.device)
    for start in range(0, len(boxes), batch_windows):
        chunk = boxes[start : start + batch_windows]
        crops = torch.cat([images[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in chunk])
        logits = _forward_logits(forward, crops, num_classes)
        if summed is None:
            dtype = torch.promote_types(logits.dtype, torch.float32)
            summed = images.new_zeros((b, num_classes, height, width), dtype=dtype)
        for k, (y0, y1, x0, x1) in enumerate(chunk):
            summed[:, :, y0:y1, x0:x1] += logits[k * b : (k + 1) * b]
            count[:, :, y0:y1, x0:x1] += 1
    return summed / count


# --------------------------------------------------------------------------------------------
# Evaluation loop and reporting
# --------------------------------------------------------------------------------------------


def _default_device(model_forward: Callable) -> torch.device:
    if isinstance(model_forward, nn.Module):
        param = next(model_forward.parameters(), None)
        if param is not None:
            return param.device
    return torch.device("cpu")


def evaluate(
    model_forward: Callable[[torch.Tensor], Any],
    loader: Iterable[Mapping[str, Any]],
    num_classes: int,
    *,
    mode: str = "whole",
    window: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    device: torch.device | str | None = None,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ignore_index: int = 255,
    classes: Sequence[int] | None = None,
    batch_windows: int = 1,
    callback: Callable[[Mapping[str, Any], torch.Tensor], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a segmentation model over a loader of common sample dicts.

    Each batch has ``"image"`` uint8 (B, 3, H, W) RGB and ``"label"`` int (B, H', W') trainIds
    (255 = ignore). Images are converted to float [0, 1] on ``device`` and passed through
    ``normalize`` (default `cluda_kit.data.transforms.normalize`, ImageNet mean/std). Logits from
    `predict_whole` (``mode="whole"``) or `predict_slide` (``mode="slide"`` with ``window`` and
    ``stride``) are bilinearly resized to the label size if it differs, then argmaxed. If
    ``model_forward`` is an ``nn.Module`` it is put in eval mode for the loop and restored after;
    its parameters' device is the default ``device`` (else CPU). Confusion counts are summed over
    DDP ranks at the end (each rank should see its own shard).

    Args:
        classes: trainIds for ``"miou"`` (None = all C; e.g. SYNTHIA16).
        callback: called as ``callback(batch, pred)`` with pred (B, H', W') int64 trainIds, e.g. to
            save predictions with `save_cityscapes_predictions`.

    Returns:
        ``{"miou": float, "iou": list[float] (C, nan for empty classes), "pixel_accuracy": float,
        "cm": (C, C) int64 CPU tensor}``; scores are fractions in [0, 1].
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"evaluate: mode={mode!r}, expected 'whole' or 'slide'")
    if mode == "slide" and (window is None or stride is None):
        raise ValueError("evaluate: mode='slide' needs window=(h, w) and stride=(sh, sw)")
    if normalize is None:
        from cluda_kit.data.transforms import normalize
    device = torch.device(device) if device is not None else _default_device(model_forward)
    module = model_forward if isinstance(model_forward, nn.Module) else None
    was_training = module.training if module is not None else False
    meter = ConfusionMeter(num_classes, ignore_index)
    rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc="evaluate", disable=not (progress and rank0)):
                images = normalize(batch["image"].to(device).float() / 255.0)
                labels = batch["label"].to(device)
                if mode == "whole":
                    logits = predict_whole(model_forward, images, num_classes)
                else:
                    logits = predict_slide(
                        model_forward, images, num_classes, window, stride,
                        batch_windows=batch_windows,
                    )
                if logits.shape[-2:] != labels.shape[-2:]:
                    logits = F.interpolate(
                        logits, size=labels.shape[-2:], mode="bilinear", align_corners=False
                    )
                pred = logits.argmax(1)
                meter.update(pred, labels)
                if callback is not None:
                    callback(batch, pred)
    finally:
        if module is not None:
            module.train(was_training)
    if meter._pending is None:
        # an empty shard (fewer val images than DDP ranks) still joins the all-reduce
        empty = torch.zeros(0, dtype=torch.long, device=device)
        meter.update(empty, empty)
    meter.sync()
    return {
        "miou": meter.miou(classes),
        "iou": meter.iou().tolist(),
        "pixel_accuracy": meter.pixel_accuracy(),
        "cm": meter.cm.cpu(),
    }


def format_iou_table(
    iou: Sequence[float] | np.ndarray,
    class_names: Sequence[str],
    classes: Sequence[int] | None = None,
    *,
    subsets: Mapping[str, Sequence[int]] | None = None,
) -> str:
    """Per-class IoU table in percent with an mIoU row.

    Args:
        iou: (C,) IoU fractions (nan = class absent; shown as "-").
        class_names: C names in trainId order.
        classes: trainIds to list and average in the "mIoU" row (None = all).
        subsets: extra mean rows, e.g. ``{"mIoU16": SYNTHIA16, "mIoU13": SYNTHIA13}``.
    """
    iou = np.asarray(iou, dtype=np.float64)
    if iou.shape != (len(class_names),):
        raise ValueError(
            f"format_iou_table: {iou.shape} IoU values for {len(class_names)} class names"
        )
    shown = list(range(len(iou))) if classes is None else list(classes)
    rows = [(class_names[c], iou[c]) for c in shown]
    means = [("mIoU", _nanmean(iou[shown]))]
    means += [(name, _nanmean(iou[list(ids)])) for name, ids in (subsets or {}).items()]
    width = max(len(name) for name, _ in rows + means) + 2

    def line(name: str, value: float) -> str:
        text = "-" if math.isnan(value) else f"{100 * value:.2f}"
        return f"{name:<{width}}{text:>7}"

    rule = "-" * (width + 7)
    body = [f"{'class':<{width}}{'IoU':>7}", rule]
    body += [line(n, v) for n, v in rows] + [rule] + [line(n, v) for n, v in means]
    return "\n".join(body)


# --------------------------------------------------------------------------------------------
# Official Cityscapes evaluator
# --------------------------------------------------------------------------------------------

_CS_STEM = re.compile(r"^(.+?)_(\d{6})_(\d{6})(?=_|$)")


def save_cityscapes_predictions(
    preds: ArrayLike | Iterable[ArrayLike],
    names: Iterable[str],
    out_dir: str | os.PathLike,
) -> list[Path]:
    """Write trainId predictions as Cityscapes labelId PNGs the official evaluator finds.

    The evaluator (``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling``) searches its
    results folder recursively for ``<city>_<seq>_<frame>*.png`` per ground-truth file
    ``<city>_<seq>_<frame>_gtFine_labelIds.png`` and reads labelIds (not trainIds). Each prediction
    is written as ``out_dir/<city>_<seq>_<frame>_pred_labelIds.png`` (uint8, single channel);
    trainIds 0..18 map to their labelIds via `cluda_kit.data.labels.train_ids_to_cityscapes`, any
    other value (e.g. 255) to labelId 0 "unlabeled", which the evaluator counts as a miss.

    Args:
        preds: (N, H, W) trainIds (tensor or array), or an iterable of (H, W) maps.
        names: N names containing ``<city>_<seq>_<frame>`` (a sample's "name", a file name or path,
            e.g. "frankfurt/frankfurt_000000_000294_leftImg8bit").
        out_dir: created if missing.

    Returns:
        The written paths.
    """
    from PIL import Image

    from cluda_kit.data.labels import train_ids_to_cityscapes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(names)
    written: list[Path] = []
    for i, pred in enumerate(preds):
        if i >= len(names):
            raise ValueError(
                f"save_cityscapes_predictions: more predictions than the {len(names)} names"
            )
        stem = Path(names[i]).name
        match = _CS_STEM.match(stem)
        if match is None:
            raise ValueError(
                f"save_cityscapes_predictions: name {names[i]!r} does not contain "
                "<city>_<6-digit seq>_<6-digit frame>"
            )
        if isinstance(pred, torch.Tensor):
            pred = pred.detach().cpu().numpy()
        pred = np.asarray(pred)
        if pred.ndim != 2 or not np.issubdtype(pred.dtype, np.integer):
            raise ValueError(
                f"save_cityscapes_predictions: prediction for {names[i]!r} must be an (H, W) "
                f"integer map, got shape {pred.shape} dtype {pred.dtype}"
            )
        path = out_dir / f"{match.group(0)}_pred_labelIds.png"
        Image.fromarray(train_ids_to_cityscapes(pred)).save(path)
        written.append(path)
    if len(written) != len(names):
        raise ValueError(
            f"save_cityscapes_predictions: {len(written)} predictions for {len(names)} names"
        )
    return written


def run_cityscapes_evaluator(
    gt_root: str | os.PathLike, pred_dir: str | os.PathLike, *, split: str = "val"
) -> dict[str, Any]:
    """Run the official Cityscapes pixel-level evaluator in-process.

    Ground truth: ``gt_root/gtFine/<split>/<city>/*_gtFine_labelIds.png`` (a Cityscapes root).
    Predictions: labelId PNGs under ``pred_dir`` as written by `save_cityscapes_predictions`.
    Only class IoU is computed (the instance-level nIoU needs ``*_instanceIds.png`` and relies on
    ``np.in1d``, which numpy 2.4 removed). The evaluator's class IoU uses the same confusion
    matrix as the kit: GT pixels of ignored labelIds are skipped, predictions of ignored labelIds
    count as misses only, classes with an empty union are nan and skipped by the average.

    Returns:
        ``{"miou": float, "iou": list[float]}`` (19 classes in trainId order, fractions) and
        ``"num_images"``.

    Raises:
        FileNotFoundError: no ground truth or no prediction folder.
        RuntimeError: the evaluator reported an error (its message is included).
    """
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
    from cityscapesscripts.helpers.labels import trainId2label

    pattern = os.path.join(os.fspath(gt_root), "gtFine", split, "*", "*_gtFine_labelIds.png")
    gts = sorted(glob.glob(pattern))
    if not gts:
        raise FileNotFoundError(f"run_cityscapes_evaluator: no ground truth matches {pattern}")
    if not Path(pred_dir).is_dir():
        raise FileNotFoundError(f"run_cityscapes_evaluator: prediction folder {pred_dir} not found")
    args = cs_eval.CArgs()
    vars(args).update(vars(cs_eval.args))
    vars(args).update(
        cityscapesPath=os.fspath(gt_root),
        predictionPath=os.fspath(pred_dir),
        predictionWalk=None,
        evalInstLevelScore=False,
        evalPixelAccuracy=False,
        JSONOutput=False,
        quiet=True,
        colorized=False,
        bold="",
        nocol="",
    )
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            preds = [cs_eval.getPrediction(args, gt) for gt in gts]
            result = cs_eval.evaluateImgLists(preds, gts, args)
    except SystemExit as exc:
        raise RuntimeError(
            f"run_cityscapes_evaluator: the official evaluator failed: {log.getvalue().strip()}"
        ) from exc
    iou = [float(result["classScores"][trainId2label[t].name]) for t in range(19)]
    return {"miou": float(result["averageScoreClasses"]), "iou": iou, "num_images": len(gts)}
