"""Figures and images for notebooks and training debug output.

Every function returns a numpy image or a ``matplotlib.figure.Figure`` built without pyplot, so
nothing touches global matplotlib state (figures are not registered with pyplot; a notebook shows
a returned Figure as PNG, and ``fig.savefig(path)`` renders it with Agg).

Inputs may be torch tensors (any device) or numpy arrays. Images are RGB, either (3, H, W) or
(H, W, 3), float in [0, 1] or uint8; label maps are (H, W) integer trainIds with 255 = ignore.
Symbols: B batch, C classes, D feature channels, H×W image, h×w feature map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

from cluda_kit.data.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES, PALETTE, colorize

__all__ = [
    "POINT_PALETTE",
    "gradient_share_bars",
    "class_delta_scatter",
    "class_legend",
    "compact_png",
    "confidence_map",
    "debug_figure",
    "figure_png",
    "image_grid",
    "mix_grid",
    "overlay",
    "pca_rgb",
    "plot_confusion_matrix",
    "plot_curves",
    "present_classes",
    "projection_grid",
    "to_rgb_uint8",
    "uda_step_diagram",
    "value_colorbar",
]


def _point_palette() -> np.ndarray:
    """(NUM_CLASSES, 3) uint8: the ten ``tab10`` colours, then, one at a time, the colour of
    matplotlib's qualitative maps farthest from all chosen so far (leaving out those too pale to
    see on white), so that no two classes look alike: the Cityscapes palette gives car, truck, bus,
    train and motorcycle five similar blues."""
    def rgb(name: str) -> np.ndarray:
        cmap = matplotlib.colormaps[name]
        return np.array([cmap(k)[:3] for k in range(cmap.N)]) * 255

    pool = np.unique(np.round(np.concatenate([rgb(n) for n in ("Dark2", "Set1", "tab20b", "tab20c", "tab20")])),
                     axis=0)
    pool = pool[pool @ np.array([0.299, 0.587, 0.114]) < 215]  # not too pale on a white background
    chosen = list(np.round(rgb("tab10")))
    while len(chosen) < NUM_CLASSES:
        nearest = np.linalg.norm(pool[:, None, :] - np.array(chosen)[None], axis=2).min(axis=1)
        chosen.append(pool[nearest.argmax()])
    return np.array(chosen[:NUM_CLASSES]).astype(np.uint8)


POINT_PALETTE = _point_palette()
"""The colours of classes in scatter plots (projections, explorers), indexed by trainId; label maps
keep the Cityscapes ``PALETTE``."""


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu() if x.is_floating_point() else x.detach().cpu()
        return x.numpy()
    return np.asarray(x)


def to_rgb_uint8(image: Any) -> np.ndarray:
    """RGB image (3, H, W) or (H, W, 3), float in [0, 1] (clipped) or uint8 -> (H, W, 3) uint8."""
    arr = _numpy(image)
    if arr.ndim != 3 or 3 not in (arr.shape[0], arr.shape[-1]):
        raise ValueError(f"expected an RGB image (3, H, W) or (H, W, 3), got shape {arr.shape}")
    if arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"expected a float [0, 1] or uint8 image, got dtype {arr.dtype}")
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def overlay(image: Any, label: Any, alpha: float = 0.5) -> np.ndarray:
    """Blend the Cityscapes palette colour of each labelled pixel over the image.

    Args:
        image: (3, H, W) or (H, W, 3) RGB, float [0, 1] or uint8.
        label: (H, W) integer trainIds; pixels that are 255 (ignore) or otherwise outside 0..C-1
            stay uncoloured (the image shows through unchanged).
        alpha: weight of the palette colour (1 = pure palette colour at labelled pixels).

    Returns:
        (H, W, 3) uint8.
    """
    rgb = to_rgb_uint8(image)
    lab = _numpy(label)
    if lab.shape != rgb.shape[:2]:
        raise ValueError(f"overlay: label shape {lab.shape} != image size {rgb.shape[:2]}")
    labelled = (lab >= 0) & (lab < NUM_CLASSES)
    out = rgb.astype(np.float64)
    colours = PALETTE[lab[labelled].astype(np.int64)].astype(np.float64)
    out[labelled] = (1.0 - alpha) * out[labelled] + alpha * colours
    return (out + 0.5).astype(np.uint8)


def _cell_image(cell: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Convert a grid cell to (array, imshow kwargs): RGB images as uint8, 2-D bool masks in
    black/white, 2-D integer label maps through the palette, 2-D float maps as viridis on [0, 1]."""
    arr = _numpy(cell)
    if arr.ndim == 3:
        return to_rgb_uint8(arr), {}
    if arr.ndim == 2 and arr.dtype == np.bool_:
        return arr.astype(np.float32), {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    if arr.ndim == 2 and np.issubdtype(arr.dtype, np.integer):
        return colorize(arr), {}
    if arr.ndim == 2:
        return arr, {"cmap": "viridis", "vmin": 0.0, "vmax": 1.0}
    raise ValueError(f"image_grid: cannot show an array of shape {arr.shape}")


def image_grid(
    rows: Sequence[Sequence[Any]],
    titles: Sequence[Sequence[str]] | None = None,
    *,
    cell_size: float = 2.5,
    suptitle: str | None = None,
) -> Figure:
    """A grid of images without axes.

    Each cell is an RGB image ((3, H, W) or (H, W, 3), float [0, 1] or uint8), an (H, W) integer
    label map (palette colours, 255 black), an (H, W) bool mask (black/white), an (H, W) float map
    shown with viridis on [0, 1], or None (empty). ``titles`` mirrors ``rows``.
    """
    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ValueError("image_grid: rows is empty")
    first = next(_cell_image(c)[0] for r in rows for c in r if c is not None)
    aspect = first.shape[1] / first.shape[0]
    height = cell_size * n_rows + (0.4 if suptitle else 0.0)
    fig = Figure(figsize=(cell_size * aspect * n_cols, height))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, ax_row in enumerate(axes):
        for j, ax in enumerate(ax_row):
            ax.set_axis_off()
            cell = rows[i][j] if j < len(rows[i]) else None
            if cell is None:
                continue
            arr, kwargs = _cell_image(cell)
            ax.imshow(arr, interpolation="nearest", **kwargs)
            if titles is not None and j < len(titles[i]) and titles[i][j]:
                ax.set_title(titles[i][j], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def _batch_items(x: Any, n: int) -> list[Any]:
    return [x[i] for i in range(min(n, len(x)))]


def mix_grid(
    source: Any,
    target: Any,
    mask: Any,
    mixed: Any,
    mixed_label: Any,
    *,
    max_images: int = 4,
    cell_size: float = 2.5,
) -> Figure:
    """ClassMix at a glance: one row per image: source | target | mask | mixed | mixed label.

    Args:
        source, target, mixed: (B, 3, H, W) float [0, 1] (or uint8) images.
        mask: (B, 1, H, W) or (B, H, W) mixing mask M (1 = source pixel).
        mixed_label: (B, H, W) integer trainIds (255 = ignore, black).
        max_images: at most this many rows.
    """
    masks = _numpy(mask)
    if masks.ndim == 4:
        masks = masks[:, 0]
    n = min(max_images, len(source))
    rows = [
        [s, t, m.astype(np.float32), x, y]
        for s, t, m, x, y in zip(
            _batch_items(source, n), _batch_items(target, n), _batch_items(masks, n),
            _batch_items(mixed, n), _batch_items(mixed_label, n),
        )
    ]
    titles = [["source", "target", "mask M", "mixed", "mixed label"]] * n
    return image_grid(rows, titles, cell_size=cell_size)


def debug_figure(
    source: Any,
    source_label: Any,
    target: Any,
    pseudo_label: Any,
    pseudo_weight: Any,
    mixed: Any,
    mixed_label: Any,
    prediction: Any,
    *,
    max_images: int = 1,
    cell_size: float = 2.5,
    suptitle: str | None = None,
) -> Figure:
    """The trainer's periodic debug figure: two rows of four panels per image.

    Row 1: source image | source label | target image | pseudo-label.
    Row 2: pseudo-label weight (viridis, [0, 1]) | mixed image | mixed label | student prediction.

    Args:
        source, target, mixed: (B, 3, H, W) images, float [0, 1] or uint8.
        source_label, pseudo_label, mixed_label: (B, H, W) integer trainIds (255 = ignore, black).
        pseudo_weight: (B, H, W) float pixel weights.
        prediction: (B, H, W) trainIds, or (B, C, H, W) logits/probabilities (argmaxed).
        max_images: number of images of the batch to show.
    """
    pred = _numpy(prediction)
    if pred.ndim == 4:
        pred = pred.argmax(1)
    weight = _numpy(pseudo_weight).astype(np.float32)
    n = min(max_images, len(source))
    rows: list[list[Any]] = []
    titles: list[list[str]] = []
    for i in range(n):
        rows += [
            [source[i], source_label[i], target[i], pseudo_label[i]],
            [weight[i], mixed[i], mixed_label[i], pred[i]],
        ]
        titles += [
            ["source", "source label", "target", "pseudo-label"],
            [f"weight (mean {float(weight[i].mean()):.2f})", "mixed", "mixed label", "prediction"],
        ]
    return image_grid(rows, titles, cell_size=cell_size, suptitle=suptitle)


def plot_confusion_matrix(
    cm: Any, class_names: Sequence[str], normalize: bool = True, *, annotate: bool = True
) -> Figure:
    """Confusion matrix heat map (rows = ground truth, columns = prediction).

    With ``normalize`` each row is divided by its sum (recall per class; rows of absent classes
    stay blank). ``annotate`` writes the cell values (percent if normalised).
    """
    mat = _numpy(cm).astype(np.float64)
    c = len(class_names)
    if mat.shape != (c, c):
        raise ValueError(f"plot_confusion_matrix: cm shape {mat.shape} != ({c}, {c}) class names")
    if normalize:
        sums = mat.sum(1, keepdims=True)
        mat = np.divide(mat, sums, out=np.full_like(mat, np.nan), where=sums > 0)
    size = max(4.0, 0.42 * c + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.subplots()
    vmax = 1.0 if normalize else (np.nanmax(mat) if np.isfinite(mat).any() else 1.0)
    im = ax.imshow(mat, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(c), class_names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if annotate:
        for i in range(c):
            for j in range(c):
                v = mat[i, j]
                if np.isfinite(v) and v > 0:
                    text = f"{100 * v:.0f}" if normalize else f"{v:.0f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=6,
                            color="white" if v > 0.6 * vmax else "black")
    fig.tight_layout()
    return fig


def _matching_keys(records: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    """Record keys equal to ``key`` or starting with ``key`` + one of "_", "/", "." whose values
    are numbers, in first-seen order."""
    found: dict[str, None] = {}
    for rec in records:
        for k, v in rec.items():
            if (k == key or k.startswith((f"{key}_", f"{key}/", f"{key}."))) and isinstance(
                v, (int, float)
            ) and not isinstance(v, bool):
                found[k] = None
    return list(found)


def plot_curves(
    records: Sequence[Mapping[str, Any]],
    keys: Sequence[str] = ("loss", "miou"),
    *,
    x: str = "iter",
    panel_size: tuple[float, float] = (4.5, 3.0),
) -> Figure:
    """Training curves from metrics.jsonl records, one panel per key, x = ``record["iter"]``.

    A key selects every numeric field equal to it or prefixed by it ("loss" also draws "loss_src",
    "loss/mix", ...), each as one line over the records that have it; records without the x field
    are skipped. Panels with no data say so.
    """
    records = [r for r in records if x in r]
    fig = Figure(figsize=(panel_size[0] * len(keys), panel_size[1]))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        names = _matching_keys(records, key)
        for name in names:
            pts = [(r[x], r[name]) for r in records if name in r and r[name] is not None]
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(pts) < 20 else None, markersize=3, label=name)
        ax.set_title(key)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize=7)
        if not names:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def confidence_map(probs: Any, *, as_rgb: bool = False, cmap: str = "viridis") -> np.ndarray:
    """Per-pixel confidence = max class probability.

    Args:
        probs: (C, H, W) or (B, C, H, W) softmax probabilities (not logits).
        as_rgb: return the map coloured with ``cmap`` on [0, 1] as uint8 RGB instead.

    Returns:
        (H, W) / (B, H, W) float32 in [0, 1], or (..., H, W, 3) uint8 if ``as_rgb``.
    """
    p = _numpy(probs).astype(np.float32)
    if p.ndim not in (3, 4):
        raise ValueError(f"confidence_map: expected (C, H, W) or (B, C, H, W), got {p.shape}")
    conf = p.max(axis=-3)
    if not as_rgb:
        return conf
    rgba = matplotlib.colormaps[cmap](np.clip(conf, 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def pca_rgb(features: Any) -> np.ndarray:
    """Project per-pixel features on their top 3 principal components and map them to RGB.

    Args:
        features: (D, h, w) feature map (e.g. the fused decoder feature).

    Returns:
        (h, w, 3) float64 in [0, 1]: channel k is principal component k min-max scaled over the
        pixels; a component with (numerically) zero variance, or missing because D < 3, is 0.
        Each component's sign is fixed so that its loading with the largest magnitude is positive
        (deterministic output).
    """
    f = torch.as_tensor(_numpy(features), dtype=torch.float64)
    if f.ndim != 3:
        raise ValueError(f"pca_rgb: expected features (D, h, w), got shape {tuple(f.shape)}")
    d, h, w = f.shape
    x = f.reshape(d, h * w).T
    x = x - x.mean(0, keepdim=True)
    evals, evecs = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues of the D×D scatter matrix
    k = min(3, d)
    evals, evecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]
    signs = torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))
    proj = x @ (evecs * signs)
    out = np.zeros((h * w, 3))
    scale = max(float(evals[0]), 0.0)
    for c in range(k):
        lo, hi = proj[:, c].min(), proj[:, c].max()
        if float(evals[c]) > 1e-10 * scale and hi - lo > 0:
            out[:, c] = ((proj[:, c] - lo) / (hi - lo)).numpy()
    return out.reshape(h, w, 3)


def present_classes(*labels: Any, ignore_index: int = IGNORE_INDEX, keep_ignore: bool = True,
                    num_classes: int = NUM_CLASSES) -> list[int]:
    """The sorted trainIds that occur in any of the label maps (tensors or arrays of any shape).

    Values outside 0..C-1 (C = ``num_classes``, e.g. a class table's ``num_classes``) other than
    ``ignore_index`` are dropped; ``ignore_index`` is kept (last) when it occurs and
    ``keep_ignore`` is set, so that a legend can name the black pixels.
    """
    found: set[int] = set()
    for lab in labels:
        found.update(int(v) for v in np.unique(_numpy(lab)))
    classes = sorted(c for c in found if 0 <= c < num_classes)
    return classes + ([ignore_index] if keep_ignore and ignore_index in found else [])


def _grow(fig: Figure, *, bottom: float = 0.0, right: float = 0.0) -> None:
    """Enlarge ``fig`` by ``bottom`` inches below and ``right`` inches to the right, keeping every
    axes at its size and place in inches (figure legends anchored at the bottom stay there)."""
    w, h = fig.get_size_inches()
    fig.set_size_inches(w + right, h + bottom)
    for ax in fig.axes:
        x0, y0, aw, ah = ax.get_position(original=True).bounds
        ax.set_position([x0 * w / (w + right), (y0 * h + bottom) / (h + bottom),
                         aw * w / (w + right), ah * h / (h + bottom)])


def class_legend(
    target: Any,
    classes: Sequence[int],
    *,
    ncol: int | None = None,
    fontsize: float = 8,
    title: str | None = None,
    table: Any = None,
    **legend_kwargs: Any,
) -> list[matplotlib.patches.Patch]:
    """A legend of class names in their palette colours.

    Args:
        target: a ``Figure`` (the legend goes into a strip added below the existing axes, which
            keep their size; e.g. an :func:`image_grid` figure) or an ``Axes`` (``ax.legend``).
        classes: trainIds to name, in this order (e.g. :func:`present_classes` of the label maps
            shown); 255 (ignore) is named "ignore (255)" in black.
        ncol: legend columns (default: as many as fit the figure width, for a figure; 1 for axes).
        fontsize, title: of the legend.
        table: a :class:`~cluda_kit.data.classes.ClassTable` naming and colouring the classes
            (default: the 19 Cityscapes classes).
        **legend_kwargs: passed to ``legend`` (e.g. ``loc``, ``bbox_to_anchor`` for an Axes).

    Returns:
        The legend handles (one ``Patch`` per class, its label the class name).
    """
    names, palette = (CLASSES, PALETTE) if table is None else (table.names, table.palette)
    ignore = IGNORE_INDEX if table is None else table.ignore_index
    handles = []
    for c in classes:
        c = int(c)
        if c == ignore:
            handles.append(matplotlib.patches.Patch(facecolor="black", edgecolor="0.3", label=f"ignore ({ignore})"))
        elif 0 <= c < len(names):
            handles.append(matplotlib.patches.Patch(facecolor=palette[c] / 255.0, edgecolor="0.3",
                                                    linewidth=0.5, label=names[c]))
        else:
            raise ValueError(f"class_legend: class {c} is not a trainId 0..{len(names) - 1} or {ignore}")
    if not handles:
        return handles
    options = {"fontsize": fontsize, "title": title, "title_fontsize": fontsize, **legend_kwargs}
    if not isinstance(target, Figure):
        target.legend(handles=handles, ncol=ncol or 1, **options)
        return handles
    if ncol is None:
        widest = max(len(h.get_label()) for h in handles)
        column = (0.6 * widest * fontsize + 2.6 * fontsize) / 72.0  # inches: label + patch + gap
        ncol = max(1, min(len(handles), int(target.get_size_inches()[0] // column)))
    options = {"loc": "lower center", "bbox_to_anchor": (0.5, 0.0), "frameon": False, **options}
    legend = target.legend(handles=handles, ncol=ncol, **options)
    target.draw_without_rendering()
    _grow(target, bottom=legend.get_window_extent().height / target.dpi + 0.05)
    return handles


def value_colorbar(
    fig: Figure,
    label: str,
    *,
    axes: Sequence[Any] | None = None,
    cmap: str = "viridis",
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> matplotlib.colorbar.Colorbar:
    """A vertical colourbar in a strip added to the right of ``fig`` (the axes keep their size).

    For figures whose panels show values with a fixed colour map, such as the float maps of
    :func:`image_grid` (viridis on [0, 1]: confidences, pixel weights).

    Args:
        fig: the figure.
        label: what the colours mean (e.g. "confidence p").
        axes: the bar spans the height of these axes (default: all axes of the figure).
        cmap, vmin, vmax: the colour map and its range, as the panels use them.
    """
    boxes = [ax.get_position(original=True) for ax in (axes if axes is not None else fig.axes)]
    if not boxes:
        raise ValueError("value_colorbar: the figure has no axes")
    w, h = fig.get_size_inches()
    y0, y1 = min(b.y0 for b in boxes) * h, max(b.y1 for b in boxes) * h  # inches
    _grow(fig, right=0.9)
    cax = fig.add_axes([(w + 0.1) / (w + 0.9), y0 / h, 0.12 / (w + 0.9), (y1 - y0) / h])
    mappable = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(vmin, vmax), cmap)
    bar = fig.colorbar(mappable, cax=cax)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar


# what each kind of box of the training-step diagram is: face colour, edge style, legend label
_STEP_KINDS = {
    "data": ("#e5e5e5", "solid", "data (a batch)"),
    "net": ("#9ecae1", "solid", "trained network (gradients)"),
    "frozen": ("#eef5fb", "dashed", "network without gradients"),
    "op": ("#c7e9c0", "solid", "operation (no parameters)"),
    "loss": ("#fdd0a2", "solid", "loss term"),
}
# name: (x, y, width, text, kind), in the diagram's data coordinates (0..12.8 × 0.5..7.8)
_STEP_BOXES = {
    "src": (1.0, 5.9, 1.9, "source batch\nx_s, labels y_s", "data"),
    "tgt": (1.0, 1.3, 1.9, "target batch\nx_t (no labels)", "data"),
    "imnet": (3.9, 7.2, 2.1, "frozen pretrained\nencoder", "frozen"),
    "student": (3.9, 5.9, 2.1, "student g_θ", "net"),
    "teacher": (3.9, 1.3, 2.1, "EMA teacher g_φ", "frozen"),
    "pseudo": (6.9, 1.3, 2.5, "pseudo-labels ŷ_t and\nweight q = share of p ≥ τ", "op"),
    "mix": (6.9, 3.6, 2.5, "ClassMix: M·x_s + (1−M)·x_t\n+ strong augmentation", "op"),
    "student_mix": (9.4, 3.6, 1.7, "student g_θ\n(same weights)", "net"),
    "fd": (11.6, 7.2, 2.1, "feature distance\nthing cells, λ = 0.005", "loss"),
    "ce_src": (11.6, 6.2, 2.1, "CE(source)", "loss"),
    "cl_src": (11.6, 5.3, 2.1, "contrastive(source)\nfused feature, y_s", "loss"),
    "ce_mix": (11.6, 4.1, 2.1, "CE(mixed)\ny_mix weighted by w_mix", "loss"),
    "cl_mix": (11.6, 3.0, 2.1, "contrastive(mixed)\ny_mix, w_mix", "loss"),
}
# (from, to, label, where the label sits as a fraction of the way between the box centres)
_STEP_ARROWS = [
    ("src", "student", "x_s", 0.5), ("src", "imnet", "x_s", 0.5), ("student", "ce_src", "", 0.5),
    ("student", "cl_src", "", 0.5), ("student", "fd", "stage-4 features", 0.55),
    ("imnet", "fd", "stage-4 features", 0.5), ("tgt", "teacher", "x_t", 0.5), ("teacher", "pseudo", "softmax p", 0.45),
    ("pseudo", "mix", "ŷ_t, q", 0.5), ("src", "mix", "x_s, y_s", 0.62), ("tgt", "mix", "x_t", 0.62),
    ("mix", "student_mix", "", 0.5), ("student_mix", "ce_mix", "", 0.5), ("student_mix", "cl_mix", "", 0.5),
]


def uda_step_diagram(*, figsize: tuple[float, float] = (11.0, 6.2)) -> Figure:
    """One CLUDA training step as boxes and arrows: which batch flows through which network
    into which loss (DAFormer's step plus CLUDA's two contrastive terms).

    Source batch → student → cross-entropy, source contrastive loss and (with the frozen
    pretrained encoder) the feature distance; target batch → EMA teacher → pseudo-labels and their
    weight q; ClassMix of source and target + strong augmentation → student → mixed cross-entropy
    and mixed contrastive loss; the sum of the losses makes one optimiser step on θ, then the
    teacher follows by EMA. A legend names the kinds of boxes.
    """
    fig = Figure(figsize=figsize)
    ax = fig.add_axes([0, 0.07, 1, 0.93])
    ax.set(xlim=(-0.1, 12.8), ylim=(0.5, 7.8))
    ax.set_axis_off()
    patches = {}
    for key, (x, y, w, text, kind) in _STEP_BOXES.items():
        face, style, _ = _STEP_KINDS[kind]
        h = 0.42 + 0.3 * text.count("\n")
        patches[key] = ax.add_patch(matplotlib.patches.FancyBboxPatch(
            (x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.12", facecolor=face,
            edgecolor="0.25", linestyle=style, zorder=3))
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5, zorder=4)

    def arrow(start, end, **style):
        (x0, y0), (x1, y1) = _STEP_BOXES[start][:2], _STEP_BOXES[end][:2]
        ax.add_patch(matplotlib.patches.FancyArrowPatch(
            (x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=11, lw=1.0, zorder=2, shrinkA=1, shrinkB=1,
            patchA=patches[start], patchB=patches[end], **{"color": "0.2", **style}))
        return x0, y0, x1, y1

    for start, end, label, t in _STEP_ARROWS:
        x0, y0, x1, y1 = arrow(start, end)
        if label:
            ax.text(x0 + t * (x1 - x0), y0 + t * (y1 - y0), label, ha="center", va="center", fontsize=7,
                    style="italic", color="0.25", zorder=5,
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"})
    x_ema = arrow("student", "teacher", color="#08519c", linestyle="--")[0]
    ax.text(x_ema - 0.15, 3.0, "EMA update after the step:\nφ ← α_t φ + (1 − α_t) θ", ha="right", va="center",
            fontsize=7.5, color="#08519c")
    ax.text(11.6, 1.6, "the sum of the five terms\n→ one AdamW step on θ", ha="center", va="center", fontsize=8,
            style="italic")
    handles = [matplotlib.patches.Patch(facecolor=f, edgecolor="0.25", linestyle=s, label=lab)
               for f, s, lab in _STEP_KINDS.values()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    return fig


def figure_png(fig: Figure, dpi: float = 100) -> bytes:
    """Render a matplotlib Figure to PNG bytes (no pyplot, no global state)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def compact_png(fig: Figure, colors: int = 256, dpi: float = 100):
    """``fig`` as an ``IPython.display.Image`` holding a palette PNG of at most ``colors`` colours.

    A scatter of thousands of semi-transparent points blends into many distinct colours, and
    matplotlib's RGBA PNG of it does not compress well; quantised to 256 colours (median cut, no
    dithering) the same picture stores about three times smaller with no visible change, which
    keeps notebooks that store such figures small. Displaying the returned object shows the PNG.
    """
    import io

    from IPython.display import Image
    from PIL import Image as PILImage

    rgb = PILImage.open(io.BytesIO(figure_png(fig, dpi=dpi))).convert("RGB")
    pal = rgb.quantize(colors=colors, method=PILImage.Quantize.MEDIANCUT, dither=PILImage.Dither.NONE)
    buf = io.BytesIO()
    pal.save(buf, format="png", optimize=True)
    return Image(data=buf.getvalue(), format="png")


def projection_grid(
    projections: Mapping[str, tuple[Any, Any]],
    *,
    titles: Mapping[str, str] | None = None,
    domain_labels: Mapping[str, str] | None = None,
    panel_size: float = 3.4,
    point_size: float = 9.0,
) -> Figure:
    """2-D projections of feature sets, one column per model: the top row coloured by class, the
    bottom row the same points coloured by domain (so that both can be read).

    Args:
        projections: per model, ``(points, xy)``: a :class:`~cluda_kit.analysis.FeatureSet` (its
            ``labels`` and ``domain_index``) and its (N, 2) projection.
        titles: per model, the column title (default the key).
        domain_labels: per domain name, its legend label (default the name).
        panel_size: inches per panel; point_size: marker area.

    Classes get the distinct colours of :data:`POINT_PALETTE` (the Cityscapes palette has many
    similar blues), named in a legend below; domains get blue (first) and orange (second).
    """
    names = list(projections)
    if not names:
        raise ValueError("projection_grid: no projections")
    classes = sorted({int(c) for pts, _ in projections.values() for c in np.unique(pts.labels)})
    colour = {c: tuple(POINT_PALETTE[c % len(POINT_PALETTE)] / 255.0) for c in classes}
    domain_colours = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    fig = Figure(figsize=(panel_size * len(names), 2 * panel_size + 0.3))
    axes = fig.subplots(2, len(names), squeeze=False)
    domains: tuple[str, ...] = ()
    for col, name in enumerate(names):
        pts, xy = projections[name]
        xy = _numpy(xy)
        domains = domains or tuple(pts.domain_names)
        order = np.random.default_rng(0).permutation(len(xy))  # no domain or class drawn on top of the rest
        title = (titles or {}).get(name, name)
        top, bottom = axes[0, col], axes[1, col]
        top.scatter(xy[order, 0], xy[order, 1], c=[colour[int(c)] for c in pts.labels[order]], s=point_size,
                    linewidths=0, alpha=0.8)
        bottom.scatter(xy[order, 0], xy[order, 1], s=point_size, linewidths=0, alpha=0.6,
                       c=[domain_colours[int(d) % 4] for d in pts.domain_index[order]])
        top.set_title(f"{title} · by class", fontsize=9)
        bottom.set_title(f"{title} · by domain", fontsize=9)
        for ax in (top, bottom):
            ax.set_xticks([]), ax.set_yticks([])
    class_handles = [matplotlib.lines.Line2D([], [], ls="", marker="o", ms=6, color=colour[c], label=CLASSES[c])
                     for c in classes]
    domain_handles = [matplotlib.lines.Line2D([], [], ls="", marker="o", ms=6, color=domain_colours[k % 4],
                                              label=(domain_labels or {}).get(d, d)) for k, d in enumerate(domains)]
    fig.tight_layout(rect=(0, 0, 1, 1))
    fig.draw_without_rendering()
    legend = fig.legend(handles=class_handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), frameon=False,
                        fontsize=8, ncol=max(1, min(len(class_handles), int(fig.get_size_inches()[0] // 1.3))),
                        title="class (top row)", title_fontsize=8)
    fig.draw_without_rendering()
    _grow(fig, bottom=legend.get_window_extent().height / fig.dpi + 0.05)
    legend2 = fig.legend(handles=domain_handles, loc="upper center", frameon=False, fontsize=8, ncol=len(domains),
                         title="domain (bottom row)", title_fontsize=8,
                         bbox_to_anchor=(0.5, axes[1, 0].get_position().y0 - 0.005))
    fig.draw_without_rendering()
    _grow(fig, bottom=legend2.get_window_extent().height / fig.dpi + 0.05)
    # the class legend stays at the bottom; the domain legend moves with the axes it sits under
    legend2.set_bbox_to_anchor((0.5, axes[1, 0].get_position().y0 - 0.005), transform=fig.transFigure)
    return fig


def class_delta_scatter(
    deltas: Mapping[str, Mapping[str, float]],
    share: Mapping[str, float],
    *,
    title: str = "",
    xlabel: str = "change of the target silhouette",
    ylabel: str = "change of the target IoU (points)",
) -> Figure:
    """Per class, the change of one measure against the change of another (e.g. CLUDA − DAFormer:
    silhouette on x, IoU on y), each point named, its area by the class's pixel share (``share``,
    fraction of labelled pixels) and its colour by whether the class is frequent (share ≥ 2 %).

    Args:
        deltas: per class name, ``{"silhouette": dx, "iou": dy}`` (e.g. :func:`~cluda_kit.analysis.
            studies.class_deltas`).
        share: per class name, its fraction of the labelled pixels.
    """
    fig = Figure(figsize=(7.5, 5.0))
    ax = fig.subplots()
    ax.axhline(0, c="0.7", lw=0.8), ax.axvline(0, c="0.7", lw=0.8)
    for name, d in deltas.items():
        s = share.get(name, 0.0)
        frequent = s >= 0.02
        ax.scatter(d["silhouette"], d["iou"], s=30 + 1500 * s, alpha=0.7, linewidths=0.5, edgecolors="0.2",
                   color="tab:green" if frequent else "tab:purple")
        ax.annotate(name, (d["silhouette"], d["iou"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    handles = [matplotlib.lines.Line2D([], [], ls="", marker="o", ms=8, color="tab:green", alpha=0.7,
                                       label="frequent class (≥ 2 % of the pixels)"),
               matplotlib.lines.Line2D([], [], ls="", marker="o", ms=5, color="tab:purple", alpha=0.7,
                                       label="rare or thin class (< 2 %)")]
    ax.legend(handles=handles, fontsize=8, loc="best", title="point area ∝ pixel share", title_fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def gradient_share_bars(classes: Sequence[str], pixel_share: Sequence[float],
                        gradient_share: Mapping[str, Sequence[float]], *, title: str = "",
                        ax: Any = None) -> Figure:
    """Per class, its share of the pixels (grey) beside each loss's share of the gradient (one bar
    per entry of ``gradient_share``, label → per-class fractions), classes ordered by pixel share,
    percent. Classes with no pixels are left out. Drawn into ``ax`` when given (its figure is
    returned, not laid out), else into a new figure."""
    order = [k for k in sorted(range(len(classes)), key=lambda k: -pixel_share[k]) if pixel_share[k] > 0]
    own = ax is None
    fig = Figure(figsize=(10, 3.6)) if own else ax.figure
    ax = fig.subplots() if own else ax
    width = 0.8 / (len(gradient_share) + 1)
    xs = np.arange(len(order))
    ax.bar(xs - 0.4 + width / 2, [100 * pixel_share[k] for k in order], width, color="lightgray",
           label="share of the pixels")
    for j, (label, share) in enumerate(gradient_share.items()):
        ax.bar(xs - 0.4 + width * (j + 1.5), [100 * share[k] for k in order], width,
               label=f"{label}: share of the gradient")
    ax.set_xticks(xs, [classes[k] for k in order], rotation=60, ha="right", fontsize=8)
    ax.set(ylabel="%")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    if own:
        fig.tight_layout()
    return fig

