"""Convert raw GTA5 / SYNTHIA / Cityscapes downloads in place, and write miniscapes in those raw layouts.

This is the logic behind ``data_scripts/prepare_{gta,synthia,cityscapes}.py ROOT`` and
``data_scripts/make_miniscapes.py OUT --domain game|sim|real``.

**prepare** (:func:`prepare`, CLI :func:`main`) writes next to every raw label a ``*_labelTrainIds.png``
(uint8, the 19 trainIds, 255 = ignore) and ``ROOT/sample_class_stats.json`` (per-label class pixel
counts for rare class sampling; Cityscapes: train split only), the files the readers of
:mod:`cluda_kit.data.datasets` use:

* GTA5 ``ROOT/labels/NNNNN.png``: palette ("P") PNG whose indices are Cityscapes labelIds;
* SYNTHIA ``ROOT/GT/LABELS/NNNNNNN.png``: 16-bit 3-channel PNG, class id in the R channel (read with
  OpenCV when it is installed, else with the pure-Python ``pypng``, which is slower);
* Cityscapes ``ROOT/gtFine/{train,val,test}/{city}/*_gtFine_labelIds.png`` when present (the
  official ids, themselves drawn from the polygons), else ``*_gtFine_polygons.json`` rasterised with
  ``cityscapesscripts.preparation.json2labelImg.createLabelImage`` (``--from-polygons`` forces that).

Properties: idempotent (an output newer than its raw label is kept, and its statistics are reused
from the previous statistics file when that is newer still; ``--overwrite`` redoes everything),
parallel (``ProcessPoolExecutor``), atomic (:mod:`cluda_kit.fileio`: temporary file in the same folder, then ``os.replace``).
Every raw label is checked: readable, same size as its image, which must exist, be readable and
be a photo :func:`~cluda_kit.data.datasets.read_image` takes (no 16-bit single-channel map), and
only ids from the dataset's table (else an error naming the file; ``--allow-unknown-ids`` maps them
to 255 with a warning instead).  Each bad file is reported in one line as it is found
(:mod:`cluda_kit.batch`), the other files are converted, a summary closes ("3 written, 1 skipped
(already done), 1 failed") and the exit code is 1; a missing root or folder is fatal (exit code 2).

**make_miniscapes** (:func:`write_miniscapes`) renders :class:`~cluda_kit.data.miniscapes.Miniscapes`
samples in the raw layouts: ``game`` -> GTA5 (labels as a palette PNG of labelIds with the Cityscapes
colours, as GTA5 ships them), ``sim`` -> SYNTHIA-RAND-CITYSCAPES (16-bit RGB label PNG, SYNTHIA id in R,
0 in G and B, written with ``pypng`` since PIL cannot write 16-bit RGB), ``real`` -> Cityscapes
(``leftImg8bit``, ``_gtFine_labelIds.png`` and ``_gtFine_polygons.json``; the polygons are the
label map's axis-aligned rectangles, which ``createLabelImage`` rasterises back exactly).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cluda_kit.batch import SKIPPED, WRITTEN, BatchReport, ItemError, describe, run_batch, summary
from cluda_kit.data import labels as L
from cluda_kit.data.datasets import STATS_FILE, describe_unreadable, refused_mode  # the readers' rules
from cluda_kit.fileio import atomic_write

__all__ = [
    "DATASETS",
    "STATS_FILE",
    "PrepareError",
    "PrepareReport",
    "prepare",
    "main",
    "write_miniscapes",
    "make_miniscapes_main",
    "read_png16",
    "write_png16",
    "label_to_polygons",
]

DATASETS = ("gta", "synthia", "cityscapes")
SCRIPTS = {d: f"data_scripts/prepare_{d}.py" for d in DATASETS}
TRAIN_IDS_SUFFIX = "_labelTrainIds.png"
CS_IMAGE = "_leftImg8bit.png"
CS_IDS = "_gtFine_labelIds.png"
CS_POLYGONS = "_gtFine_polygons.json"
CS_TRAIN_IDS = "_gtFine_labelTrainIds.png"
CS_SPLITS = ("train", "val", "test")


class PrepareError(Exception):
    """A fatal problem with the input as a whole (missing root or folder, nothing to convert)."""


# ----------------------------------------------------------------------------------------------
# file helpers


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """One converted file, atomically (:func:`cluda_kit.fileio.atomic_write`; bulk mode: no fsync
    and no scan of the large output folder per file)."""
    atomic_write(path, write, durable=False, sweep=False)


def _save_pil(path: Path, img: Image.Image) -> None:
    _atomic_write(path, lambda f: img.save(f, format="PNG"))


def read_png16(path: Path) -> np.ndarray:
    """Read a PNG keeping its bit depth: (H, W) or (H, W, C) uint8/uint16, channels in RGB(A) order.

    Uses OpenCV when installed (fast), else ``pypng`` (pure Python). PIL is not used because it
    reduces 16-bit RGB to 8 bits.
    """
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        cv2 = None
    if cv2 is not None:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise OSError("OpenCV cannot decode it (missing, truncated or not an image)")
        if arr.ndim == 3:  # BGR(A) -> RGB(A)
            arr = arr[..., [2, 1, 0, *range(3, arr.shape[2])]]
        return arr
    import png

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    arr = np.array([np.asarray(row) for row in rows])
    dtype = np.uint16 if info["bitdepth"] > 8 else np.uint8
    arr = arr.astype(dtype).reshape(height, width, info["planes"])
    return arr[..., 0] if info["planes"] == 1 else arr


def write_png16(path: Path, arr: np.ndarray) -> None:
    """Write a uint16 (H, W, 3) RGB array as a 16-bit RGB PNG (atomically), with ``pypng``."""
    import png

    if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"write_png16 expects uint16 (H, W, 3), got {arr.dtype} {arr.shape}")
    height, width = arr.shape[:2]
    writer = png.Writer(width=width, height=height, bitdepth=16, greyscale=False)
    _atomic_write(path, lambda f: writer.write(f, arr.reshape(height, width * 3)))


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image, after checking that the whole file is intact (PIL ``verify``) and is
    a photo the readers take (:func:`~cluda_kit.data.datasets.read_image`'s rules)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            refused = refused_mode(img)
            img.verify()
    except Exception as exc:  # noqa: BLE001 - any decoder error means an unreadable image
        raise ItemError(f"{path}: {describe_unreadable(path, exc)}") from None
    if refused is not None:
        raise ItemError(f"{path}: {refused}")
    return height, width


def _read_index_png(path: Path) -> np.ndarray:
    """A palette or greyscale PNG as its raw indices (uint8 (H, W))."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise ItemError(f"{path}: PIL mode {img.mode!r}; expected a palette (P) or greyscale (L) PNG of label ids")
        return np.array(img)


# ----------------------------------------------------------------------------------------------
# one label


@dataclass(frozen=True)
class _Job:
    key: str  # the trainIds output relative to the root: the "file" of the statistics
    source: Path  # raw label (png) or polygons (json)
    image: Path
    out: Path
    fmt: str  # "gta" | "synthia" | "cs-ids" | "cs-json"
    counted: bool  # listed in sample_class_stats.json
    cached: tuple[tuple[int, int], ...] | None  # counts from a previous statistics file newer than out


def _counts(train_ids: np.ndarray) -> dict[int, int]:
    hist = np.bincount(train_ids.ravel(), minlength=256)[: L.NUM_CLASSES]
    return {int(c): int(n) for c, n in enumerate(hist) if n > 0}


_KNOWN_IDS = {
    "gta": np.array(sorted(L.CITYSCAPES_ID_TO_TRAIN_ID)),
    "cs-ids": np.array(sorted(L.CITYSCAPES_ID_TO_TRAIN_ID)),
    "synthia": np.array(sorted(L.SYNTHIA_ID_TO_TRAIN_ID)),
}
_TABLE_NAME = {"gta": "Cityscapes labelIds", "cs-ids": "Cityscapes labelIds", "synthia": "SYNTHIA ids 0..22"}


def _raw_train_ids(job: _Job, warnings: list[str], allow_unknown: bool) -> np.ndarray:
    """The trainIds of the job's raw label; :class:`ItemError` naming the file when it is wrong."""
    if job.fmt == "cs-json":
        from cityscapesscripts.helpers.annotation import Annotation
        from cityscapesscripts.helpers.labels import name2label
        from cityscapesscripts.preparation.json2labelImg import createLabelImage

        annotation = Annotation()
        try:
            annotation.fromJsonFile(str(job.source))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ItemError(f"{job.source}: not a readable polygons file ({describe(exc)})") from None
        unknown = sorted(
            {
                o.label
                for o in annotation.objects
                if not o.deleted and o.label not in name2label and o.label.removesuffix("group") not in name2label
            }
        )
        if unknown:
            raise ItemError(f"{job.source}: polygon labels {unknown} are not Cityscapes label names")
        return np.array(createLabelImage(annotation, "trainIds"), dtype=np.uint8)
    try:
        raw = read_png16(job.source) if job.fmt == "synthia" else _read_index_png(job.source)
    except ItemError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error means an unreadable label
        raise ItemError(f"{job.source}: {describe_unreadable(job.source, exc, 'label')}") from None
    if job.fmt == "synthia":
        if raw.ndim != 3 or raw.shape[2] < 3:
            raise ItemError(f"{job.source}: shape {raw.shape}; expected a 3-channel SYNTHIA label PNG with the class id in R")
        ids = raw[..., 0]
    else:
        ids = raw
    unknown = np.setdiff1d(np.unique(ids), _KNOWN_IDS[job.fmt])
    if unknown.size:
        message = f"{job.source}: label ids {unknown.tolist()[:10]} are outside the {_TABLE_NAME[job.fmt]} table"
        if not allow_unknown:
            raise ItemError(message + " (--allow-unknown-ids maps them to 255)")
        warnings.append(message + "; mapped to 255")
    to_train = L.synthia_to_train_ids if job.fmt == "synthia" else L.cityscapes_to_train_ids
    return to_train(ids)


def _convert(job: _Job, force: bool, allow_unknown: bool) -> tuple[str, tuple]:
    """Convert one raw label: (WRITTEN or SKIPPED, (key, class counts or None, warnings));
    :class:`ItemError` naming the file when it cannot be converted."""
    warnings: list[str] = []
    if not force and job.out.is_file() and job.out.stat().st_mtime >= job.source.stat().st_mtime:
        counts = None
        if job.counted and job.cached is not None:
            counts = dict(job.cached)
        elif job.counted:
            try:
                counts = _counts(_read_index_png(job.out))
            except Exception as exc:  # noqa: BLE001 - a damaged output: report it, --overwrite rewrites it
                raise ItemError(f"{job.out}: {describe_unreadable(job.out, exc, 'output')}; rerun with --overwrite") from None
        return SKIPPED, (job.key, counts, warnings)
    if not job.image.is_file():
        raise ItemError(f"{job.source}: its image {job.image} does not exist")
    image_size = _image_size(job.image)
    train_ids = _raw_train_ids(job, warnings, allow_unknown)
    if train_ids.shape != image_size:
        raise ItemError(
            f"{job.source}: label is {train_ids.shape[1]}x{train_ids.shape[0]} (WxH) but its image "
            f"{job.image} is {image_size[1]}x{image_size[0]}"
        )
    _save_pil(job.out, Image.fromarray(np.ascontiguousarray(train_ids, dtype=np.uint8)))
    return WRITTEN, (job.key, _counts(train_ids) if job.counted else None, warnings)


# ----------------------------------------------------------------------------------------------
# finding the work


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise PrepareError(f"folder {path} not found: expected {what}")


def _flat_jobs(root: Path, image_dir: Path, label_dir: Path, fmt: str, problems: list[str]) -> list[tuple]:
    """Job fields (key, source, image, out, fmt, counted) for raw ``label_dir/STEM.png`` with image
    ``image_dir/STEM.png``; images without a label are recorded in ``problems``."""
    sources = sorted(p for p in label_dir.glob("*.png") if not p.name.endswith(TRAIN_IDS_SUFFIX))
    if not sources:
        raise PrepareError(f"no raw label PNGs found in {label_dir}")
    stems = {p.stem for p in sources}
    for image in sorted(image_dir.glob("*.png")):
        if image.stem not in stems:
            problems.append(f"{image}: no label {label_dir / image.name}")
    out = []
    for src in sources:
        target = label_dir / f"{src.stem}{TRAIN_IDS_SUFFIX}"
        out.append((target.relative_to(root).as_posix(), src, image_dir / src.name, target, fmt, True))
    return out


def _cityscapes_jobs(root: Path, from_polygons: bool, problems: list[str]) -> list[tuple]:
    _require_dir(root / "leftImg8bit", "the Cityscapes leftImg8bit/{train,val,test}/<city>/ folders")
    _require_dir(root / "gtFine", "the Cityscapes gtFine/{train,val,test}/<city>/ folders")
    out = []
    for split in CS_SPLITS:
        label_dir, image_dir = root / "gtFine" / split, root / "leftImg8bit" / split
        if not label_dir.is_dir():
            continue
        bases: dict[str, tuple[Path, str]] = {}
        for polygons in label_dir.glob(f"*/*{CS_POLYGONS}"):
            bases[str(polygons)[: -len(CS_POLYGONS)]] = (polygons, "cs-json")
        if not from_polygons:
            for ids in label_dir.glob(f"*/*{CS_IDS}"):
                bases[str(ids)[: -len(CS_IDS)]] = (ids, "cs-ids")
        for base, (src, fmt) in sorted(bases.items()):
            rel = Path(base).relative_to(label_dir)
            target = Path(base + CS_TRAIN_IDS)
            image = image_dir / f"{rel}{CS_IMAGE}"
            out.append((target.relative_to(root).as_posix(), src, image, target, fmt, split == "train"))
        if split != "test":
            labelled = {Path(b).relative_to(label_dir).as_posix() for b in bases}
            for image in sorted(image_dir.glob(f"*/*{CS_IMAGE}")):
                rel = image.relative_to(image_dir).as_posix()[: -len(CS_IMAGE)]
                if rel not in labelled:
                    problems.append(f"{image}: no label {label_dir / (rel + CS_IDS)} or {CS_POLYGONS}")
    if not out:
        raise PrepareError(
            f"no *{CS_IDS} or *{CS_POLYGONS} found under {root / 'gtFine'}/{{train,val,test}}/<city>/"
        )
    return out


def _load_previous_stats(path: Path, warnings: list[str]) -> tuple[dict[str, tuple[tuple[int, int], ...]], float]:
    if not path.is_file():
        return {}, 0.0
    try:
        entries = json.loads(path.read_text())
        table = {
            e["file"]: tuple(sorted((int(k), int(v)) for k, v in e.items() if k != "file")) for e in entries
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        warnings.append(f"{path}: ignoring unreadable previous statistics ({exc}); recounting")
        return {}, 0.0
    return table, path.stat().st_mtime


# ----------------------------------------------------------------------------------------------
# driver


def _parallel_map(
    fn: Callable[[Any], Any], items: Sequence[Any], workers: int, desc: str, progress: bool = True
) -> Iterator[Any]:
    """``map(fn, items)`` in ``workers`` processes (in this process for workers <= 1), with a progress bar."""
    if workers <= 1 or len(items) <= 1:
        yield from tqdm(map(fn, items), total=len(items), desc=desc, disable=not progress)
        return
    chunksize = max(1, min(32, len(items) // (4 * workers)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from tqdm(pool.map(fn, items, chunksize=chunksize), total=len(items), desc=desc, disable=not progress)


@dataclass
class PrepareReport:
    """What :func:`prepare` did. ``errors``: one line per file not converted (naming it, and what is
    wrong); ``warnings``: the rest."""

    dataset: str
    root: Path
    converted: int = 0
    up_to_date: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats_path: Path | None = None
    stats_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        return summary(self.converted, self.up_to_date, len(self.errors))


def prepare(
    dataset: str,
    root: str | Path,
    *,
    workers: int = 1,
    force: bool = False,
    allow_unknown_ids: bool = False,
    from_polygons: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Convert a raw ``dataset`` ("gta", "synthia" or "cityscapes") under ``root`` in place.

    See the module docstring for the layouts and rules.  A bad file is reported on stderr in one
    line (``failed: FILE: what is wrong``) as it is found, and listed in the report's ``errors``;
    the rest are converted.  A missing root or folder raises :class:`PrepareError`.

    Args:
        workers: processes (<= 1: in this process).
        force: reconvert outputs that look up to date (``--overwrite``).
        allow_unknown_ids: map ids outside the dataset's table to 255 (a warning) instead of failing the file.
        from_polygons: Cityscapes only: rasterise ``_gtFine_polygons.json`` even where ``_gtFine_labelIds.png`` exists.
        progress: show a progress bar.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    root = Path(root)
    if not root.is_dir():
        raise PrepareError(f"dataset root {root} does not exist or is not a folder")
    report = PrepareReport(dataset, root)
    problems: list[str] = []
    if dataset == "gta":
        _require_dir(root / "images", "the GTA5 images/ folder (NNNNN.png)")
        _require_dir(root / "labels", "the GTA5 labels/ folder (NNNNN.png)")
        specs = _flat_jobs(root, root / "images", root / "labels", "gta", problems)
    elif dataset == "synthia":
        _require_dir(root / "RGB", "the SYNTHIA-RAND-CITYSCAPES RGB/ folder")
        _require_dir(root / "GT" / "LABELS", "the SYNTHIA-RAND-CITYSCAPES GT/LABELS/ folder")
        specs = _flat_jobs(root, root / "RGB", root / "GT" / "LABELS", "synthia", problems)
    else:
        specs = _cityscapes_jobs(root, from_polygons, problems)

    stats_path = root / STATS_FILE
    previous, stats_mtime = _load_previous_stats(stats_path, report.warnings)
    jobs = []
    for key, src, image, out, fmt, counted in specs:
        cached = previous.get(key) if counted and out.is_file() and out.stat().st_mtime <= stats_mtime else None
        jobs.append(_Job(key, src, image, out, fmt, counted, cached))

    batch = BatchReport(len(jobs) + len(problems), f"prepare {dataset}", progress)
    for line in problems:  # images without a label: found before the work starts
        batch.fail(None, line)
    convert = functools.partial(_convert, force=force, allow_unknown=allow_unknown_ids)
    run_batch(convert, jobs, name=lambda job: job.source, workers=workers, report=batch)
    counts: dict[str, dict[int, int]] = {}
    for key, job_counts, warnings in batch.values:
        report.warnings.extend(warnings)
        if job_counts is not None:
            counts[key] = job_counts
    report.converted, report.up_to_date, report.errors = batch.written, batch.skipped, batch.failed
    entries = [{"file": key, **{str(c): n for c, n in sorted(counts[key].items())}} for key in sorted(counts)]
    _atomic_write(stats_path, lambda f: f.write(json.dumps(entries, indent=1).encode()))
    report.stats_path, report.stats_files = stats_path, len(entries)
    return report


def _print_list(title: str, items: list[str], limit: int = 20) -> None:
    print(f"{title} ({len(items)}):", file=sys.stderr)
    for item in items[:limit]:
        print(f"  - {item}", file=sys.stderr)
    if len(items) > limit:
        print(f"  ... and {len(items) - limit} more", file=sys.stderr)


def main(dataset: str, argv: Sequence[str] | None = None) -> int:
    """Command line of ``data_scripts/prepare_{dataset}.py``; returns the exit code (0 ok, 1 file errors, 2 fatal)."""
    names = {"gta": "GTA5", "synthia": "SYNTHIA-RAND-CITYSCAPES", "cityscapes": "Cityscapes"}
    parser = argparse.ArgumentParser(
        prog=SCRIPTS[dataset],
        description=f"Convert a raw {names[dataset]} download in place: write *_labelTrainIds.png next to "
        f"the raw labels and {STATS_FILE} (class pixel counts for rare class sampling). A bad file is "
        "reported in one line and the rest converted (exit status 1); a rerun skips what is done.",
    )
    parser.add_argument("root", type=Path, help="the dataset root")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--overwrite", "--force", dest="force", action="store_true",
                        help="reconvert files that look up to date")
    parser.add_argument(
        "--allow-unknown-ids", action="store_true", help="map label ids outside the table to 255 instead of failing the file"
    )
    if dataset == "cityscapes":
        parser.add_argument(
            "--from-polygons", action="store_true", help="rasterise *_gtFine_polygons.json even where *_gtFine_labelIds.png exists"
        )
    args = parser.parse_args(argv)
    try:
        report = prepare(
            dataset,
            args.root,
            workers=args.workers,
            force=args.force,
            allow_unknown_ids=args.allow_unknown_ids,
            from_polygons=getattr(args, "from_polygons", False),
        )
    except PrepareError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    if report.warnings:
        _print_list("WARNING", report.warnings)
    print(f"{names[dataset]} at {report.root}: {report.summary()}; wrote {report.stats_path} "
          f"({report.stats_files} files)" + ("; --overwrite redoes what was done" if report.up_to_date else ""))
    return 0 if report.ok else 1


# ----------------------------------------------------------------------------------------------
# miniscapes -> raw layouts


def label_to_polygons(label_ids: np.ndarray, background: int = 0) -> list[tuple[int, list[list[int]]]]:
    """Cover a labelId map with disjoint axis-aligned rectangles, as Cityscapes polygons.

    Each row is split into runs of equal value; runs with the same columns and value in consecutive
    rows are merged. Returns ``(labelId, [[x0, y0], [x1, y0], [x1, y1], [x0, y1]])`` with inclusive
    pixel corners (PIL's polygon fill, as ``createLabelImage`` uses it, covers them exactly);
    ``background`` pixels (0, "unlabeled": the canvas of ``createLabelImage``) are left out.
    """
    height, width = label_ids.shape
    done: list[tuple[int, int, int, int, int]] = []  # value, x0, x1, y0, y1
    open_rects: dict[tuple[int, int, int], int] = {}  # (x0, x1, value) -> y0
    for y in range(height):
        row = label_ids[y]
        starts = np.concatenate(([0], np.flatnonzero(row[1:] != row[:-1]) + 1))
        ends = np.concatenate((starts[1:], [width])) - 1
        runs = {(int(x0), int(x1), int(row[x0])) for x0, x1 in zip(starts, ends) if row[x0] != background}
        for key in list(open_rects):
            if key not in runs:
                done.append((key[2], key[0], key[1], open_rects.pop(key), y - 1))
        for key in runs:
            open_rects.setdefault(key, y)
    done.extend((k[2], k[0], k[1], y0, height - 1) for k, y0 in open_rects.items())
    done.sort(key=lambda r: (r[3], r[1]))
    return [(v, [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) for v, x0, x1, y0, y1 in done]


def _cityscapes_id_palette() -> list[int]:
    from cityscapesscripts.helpers.labels import labels as cs_labels

    palette = [0] * 768
    for lab in cs_labels:
        if 0 <= lab.id < 256:
            palette[3 * lab.id : 3 * lab.id + 3] = list(lab.color)
    return palette


_TRAIN_TO_SYNTHIA = np.zeros(256, dtype=np.uint16)  # 255 and classes SYNTHIA lacks -> 0 (void)
for _sid, _tid in L.SYNTHIA_ID_TO_TRAIN_ID.items():
    if _tid != L.IGNORE_INDEX:
        _TRAIN_TO_SYNTHIA[_tid] = _sid


_MINISCAPES_CACHE: dict[tuple, Any] = {}


def _write_sample(index: int, out: Path, domain: str, split: str, size: tuple[int, int] | None, seed: int, polygons: bool) -> None:
    from cluda_kit.data.miniscapes import Miniscapes

    key = (domain, split, size, seed)
    if key not in _MINISCAPES_CACHE:
        _MINISCAPES_CACHE[key] = Miniscapes(domain, split, seed=seed, **({"size": size} if size else {}))
    image, train_ids = _MINISCAPES_CACHE[key].render(index)
    rgb = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if domain == "game":
        name = f"{index + 1:05d}.png"
        _save_pil(out / "images" / name, rgb)
        label_ids = L.train_ids_to_cityscapes(train_ids)
        label = Image.frombytes("P", (label_ids.shape[1], label_ids.shape[0]), label_ids.tobytes())
        label.putpalette(_cityscapes_id_palette())
        _save_pil(out / "labels" / name, label)
    elif domain == "sim":
        name = f"{index:07d}.png"
        _save_pil(out / "RGB" / name, rgb)
        missing = sorted(set(np.unique(train_ids).tolist()) & set(L.SYNTHIA_MISSING))
        if missing:
            raise ValueError(f"miniscapes sim sample {index} has trainIds {missing}, which SYNTHIA has no id for")
        raw = np.zeros(train_ids.shape + (3,), dtype=np.uint16)
        raw[..., 0] = _TRAIN_TO_SYNTHIA[train_ids]
        write_png16(out / "GT" / "LABELS" / name, raw)
    else:
        city = "miniscapes"
        base = f"{city}_{index:06d}_000019"
        _save_pil(out / "leftImg8bit" / split / city / f"{base}{CS_IMAGE}", rgb)
        label_ids = L.train_ids_to_cityscapes(train_ids)
        gt = out / "gtFine" / split / city
        _save_pil(gt / f"{base}{CS_IDS}", Image.fromarray(label_ids))
        if polygons:
            from cityscapesscripts.helpers.labels import id2label

            doc = {
                "imgHeight": int(label_ids.shape[0]),
                "imgWidth": int(label_ids.shape[1]),
                "objects": [{"label": id2label[v].name, "polygon": poly} for v, poly in label_to_polygons(label_ids)],
            }
            _atomic_write(gt / f"{base}{CS_POLYGONS}", lambda f: f.write(json.dumps(doc).encode()))


def write_miniscapes(
    out: str | Path,
    domain: str,
    *,
    split: str = "train",
    num: int | None = None,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    polygons: bool = True,
    workers: int = 1,
    progress: bool = True,
) -> int:
    """Render miniscapes samples 0..num-1 of (domain, split, seed) into ``out`` in the raw layout of
    GTA5 (``game``), SYNTHIA (``sim``) or Cityscapes (``real``); returns the number written.

    ``num`` None writes the whole split (Miniscapes' default length); ``size`` (H, W) None keeps
    Miniscapes' default.  ``polygons`` (real only) also writes ``_gtFine_polygons.json``.
    Run the matching ``prepare_*`` afterwards, as for a real download.
    """
    from cluda_kit.data.miniscapes import Miniscapes

    if domain not in ("game", "sim", "real"):
        raise ValueError(f"domain must be one of 'game', 'sim', 'real', got {domain!r}")
    out = Path(out)
    size = tuple(int(s) for s in size) if size is not None else None  # type: ignore[assignment]
    dataset = Miniscapes(domain, split, seed=seed, length=num, **({"size": size} if size else {}))
    folders = {
        "game": ["images", "labels"],
        "sim": ["RGB", "GT/LABELS"],
        "real": [f"leftImg8bit/{split}/miniscapes", f"gtFine/{split}/miniscapes"],
    }[domain]
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
    write = functools.partial(_write_sample, out=out, domain=domain, split=split, size=size, seed=seed, polygons=polygons)
    indices = list(range(len(dataset)))
    return sum(1 for _ in _parallel_map(write, indices, workers, f"miniscapes {domain}", progress))


def make_miniscapes_main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``data_scripts/make_miniscapes.py``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="data_scripts/make_miniscapes.py",
        description="Write miniscapes samples in the raw GTA5 (game), SYNTHIA (sim) or Cityscapes (real) "
        "layout; then run the matching data_scripts/prepare_*.py on OUT.",
    )
    parser.add_argument("out", type=Path, help="output root (created)")
    parser.add_argument("--domain", required=True, choices=("game", "sim", "real"))
    parser.add_argument("--split", default="train", help="miniscapes split (the Cityscapes split folder for real)")
    parser.add_argument("--num", type=int, default=None, help="number of samples (default: the whole split)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None, help="image size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-polygons", action="store_true", help="real: do not write *_gtFine_polygons.json")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        n = write_miniscapes(
            args.out,
            args.domain,
            split=args.split,
            num=args.num,
            size=args.size,
            seed=args.seed,
            polygons=not args.no_polygons,
            workers=args.workers,
        )
    except (ValueError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    script = {"game": "prepare_gta", "sim": "prepare_synthia", "real": "prepare_cityscapes"}[args.domain]
    print(f"wrote {n} {args.domain} samples to {args.out}; next: python data_scripts/{script}.py {args.out}")
    return 0
