"""GTA5, SYNTHIA and Cityscapes readers over prepared folders, and ``build_dataset``.

The readers expect a raw download that ``data_scripts/prepare_{gta,synthia,cityscapes}.py ROOT``
has converted in place (it adds ``*_labelTrainIds.png`` next to the raw labels and writes
``ROOT/sample_class_stats.json``):

* GTA5: ``ROOT/images/NNNNN.png`` and ``ROOT/labels/NNNNN_labelTrainIds.png``
  (raw ``ROOT/labels/NNNNN.png``: palette PNG of Cityscapes labelIds). Every image is a training image.
* SYNTHIA-RAND-CITYSCAPES: ``ROOT/RGB/NNNNNNN.png`` and ``ROOT/GT/LABELS/NNNNNNN_labelTrainIds.png``
  (raw ``ROOT/GT/LABELS/NNNNNNN.png``: 16-bit 3-channel PNG, class id in the R channel).
* Cityscapes: ``ROOT/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png`` and
  ``ROOT/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelTrainIds.png``
  (raw ``_gtFine_labelIds.png`` / ``_gtFine_polygons.json``). Class statistics exist for ``train``.

A ``folder`` dataset (:class:`ImageFolder`) is any images directory, with an optional labels
directory whose files match the images by relative path and stem (``a/b.jpg`` <-> ``a/b.png``)
and hold the values of a class table (``cluda_kit.data.classes``); without labels every label is
ignore (an unlabelled target domain).

Each item is the common sample dict ``{"image": uint8 (3, H, W) RGB, "label": int64 (H, W) trainIds
(255 = ignore), "name": str}``; an optional ``transform(image, label) -> (image, label)`` is applied.
``class_stats()`` returns, per sample in index order, ``{trainId: pixel count}`` of the full-resolution
label (ignored pixels not counted), read from ``sample_class_stats.json``: a JSON list of
``{"file": <trainIds label path relative to ROOT>, "<trainId>": count, ...}`` (DAFormer's format, with
relative paths), the input of :class:`cluda_kit.data.sampling.RareClassSampler`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cluda_kit.data.transforms import resize, resize_image

__all__ = [
    "STATS_FILE",
    "DatasetError",
    "SegmentationFolder",
    "GTA5",
    "Synthia",
    "Cityscapes",
    "ImageFolder",
    "build_dataset",
    "read_image",
    "read_label",
    "describe_unreadable",
    "refused_mode",
]

STATS_FILE = "sample_class_stats.json"
"""Per-sample class statistics in the dataset root, written by ``cluda_kit.data.prepare`` and read
by :meth:`SegmentationFolder.class_stats` (rare class sampling)."""


Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class DatasetError(RuntimeError):
    """A prepared dataset is incomplete or inconsistent (unreadable file, stale statistics...)."""


_TV_DECODES = (".png", ".jpg", ".jpeg", ".webp")  # decoded by torchvision.io (libpng/libjpeg/libwebp)


@functools.lru_cache(maxsize=1)
def _torchvision_decoder():
    """torchvision's image decoder, or None where this torchvision no longer has one (its image
    decoding is deprecated since 0.29 in favour of TorchCodec, which measured the same speed)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from torchvision.io import ImageReadMode, decode_image, read_file
        except ImportError:
            return None
    return lambda path: decode_image(read_file(str(path)), mode=ImageReadMode.RGB)


# single-channel images of more than 8 bits: depth, disparity, instance or label maps, not photos
_DEEP_GREY_MODES = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def describe_unreadable(path: Path, err: BaseException, what: str = "image") -> str:
    """What is wrong with an image or label file that cannot be decoded, in words for one line
    (the file is not named: the caller puts it in front)."""
    from cluda_kit.batch import describe

    if isinstance(err, (IsADirectoryError, PermissionError)):
        return describe(err)
    if isinstance(err, Image.DecompressionBombError):
        return f"{what} too large to decode safely ({err})"
    try:
        if Path(path).stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    if isinstance(err, Image.UnidentifiedImageError):
        return f"not a readable {what} (unknown format or corrupt data)"
    return f"not a readable {what} (corrupt or truncated data)"


def refused_mode(img: Image.Image) -> str | None:
    """Why the opened image ``img`` is no photo the kit reads (None when it is one)."""
    bits = _DEEP_GREY_MODES.get(img.mode)
    if bits is None:
        return None
    return (f"{bits}-bit single-channel image (PIL mode {img.mode}: a depth or label map?); expected "
            "an 8-bit RGB, greyscale or palette image, or 16-bit RGB")


def read_image(path: Path, *, fast: bool = True) -> torch.Tensor:
    """Read an image file as a uint8 (3, H, W) RGB tensor; errors name the file and say what is wrong.

    PNG, JPEG and WebP are decoded by ``torchvision.io`` straight into a tensor: on a 3.8 MB
    1914x1052 PNG it took 31 ms against Pillow's 43 ms and OpenCV's 40 ms, same pixels
    (``python -m bench --only data``, "decoders"). Other formats, and what torchvision does not
    decode to 8 bits, go through Pillow. Converted to RGB: greyscale, palette and CMYK images; an
    alpha channel is dropped (the colour channels as stored); a 16-bit colour image keeps its top
    8 bits. Refused with a :class:`DatasetError`: a single-channel image of more than 8 bits (a
    depth, disparity or label map rather than a photo) and a file that is empty, cut or no image.
    ``fast=False`` reads with Pillow only: libpng inside torchvision prints its own complaint about
    a corrupt PNG on stderr, which a batch that reports each bad file in one line must not show.
    """
    path = Path(path)
    decode = _torchvision_decoder() if fast and path.suffix.lower() in _TV_DECODES else None
    if decode is not None:
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                image = decode(path)
            if image.dtype == torch.uint8:
                return image
        except RuntimeError:
            pass  # Pillow reads what torchvision refused, or says in words what is wrong with it
    try:
        with Image.open(path) as img:
            refused = refused_mode(img)
            if refused is not None:
                raise DatasetError(f"{path}: {refused}")
            arr = np.asarray(img.convert("RGB"))
    except DatasetError:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise many kinds of error on a bad file
        raise DatasetError(f"{path}: {describe_unreadable(path, exc)}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def read_label(path: Path) -> np.ndarray:
    """Read a single-channel label PNG (trainIds or palette indices) as a uint8 (H, W) array."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise DatasetError(f"label {path} has PIL mode {img.mode!r}; expected a single-channel 8-bit PNG")
            arr = np.array(img)
    except FileNotFoundError:
        raise FileNotFoundError(f"label file {path} does not exist") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read label {path}: {exc}") from None
    return arr


class SegmentationFolder(Dataset):
    """A list of (image file, trainIds label file) pairs under a prepared root.

    Subclasses find the pairs; this class loads samples and class statistics.

    Args:
        root: the dataset root.
        pairs: ``(name, image path, label path or None)`` in index order; a missing label (only
            allowed for Cityscapes ``test``) gives an all-255 label.
        transform: optional ``transform(image, label) -> (image, label)``.
        length: keep only the first ``length`` samples (None: all).
        prepare_script: the script that prepares this dataset, named in error messages.
    """

    def __init__(
        self,
        root: Path,
        pairs: list[tuple[str, Path, Path | None]],
        transform: Transform | None,
        length: int | None,
        prepare_script: str,
    ) -> None:
        self.root = root
        self.transform = transform
        self.prepare_script = prepare_script
        self._all_pairs = pairs
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0 or None, got {length}")
        self.pairs = pairs if length is None else pairs[:length]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        if label_path is None:
            label = torch.full(image.shape[1:], 255, dtype=torch.int64)
        else:
            label = torch.from_numpy(self._train_ids(label_path)).to(torch.int64)
            if label.shape != image.shape[1:]:
                fix = f": re-run {self.prepare_script} {self.root}" if self.prepare_script else ""
                raise DatasetError(f"label {label_path} is {tuple(label.shape)} (H, W) but image "
                                   f"{image_path} is {tuple(image.shape[1:])}{fix}")
        if self.transform is not None:
            image, label = self.transform(image, label)
        return {"image": image, "label": label, "name": name}

    def _train_ids(self, path: Path) -> np.ndarray:
        """The (H, W) uint8 training ids of a label file (prepared trainIds: as stored)."""
        return read_label(path)

    def class_stats(self) -> list[dict[int, int]]:
        """Per-sample ``{trainId: pixel count}`` (index order) from ``ROOT/sample_class_stats.json``.

        Raises:
            FileNotFoundError: the statistics file does not exist.
            DatasetError: it is unreadable, or stale: it does not list exactly the dataset's labels.
        """
        path = self.root / STATS_FILE
        rerun = f"re-run {self.prepare_script} {self.root}"
        if not path.is_file():
            raise FileNotFoundError(f"class statistics {path} not found: {rerun}")
        try:
            entries = json.loads(path.read_text())
            table = {e["file"]: {int(k): int(v) for k, v in e.items() if k != "file"} for e in entries}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DatasetError(f"cannot parse class statistics {path}: {exc}; {rerun}") from None
        keys = [label.relative_to(self.root).as_posix() for _, _, label in self._all_pairs if label is not None]
        if len(table) != len(keys):
            raise DatasetError(
                f"stale class statistics {path}: it lists {len(table)} files but the dataset has "
                f"{len(keys)} labelled samples; {rerun}"
            )
        missing = [k for k in keys if k not in table]
        if missing:
            raise DatasetError(
                f"stale class statistics {path}: {len(missing)} labels are not listed (first: {missing[0]}); {rerun}"
            )
        return [table[label.relative_to(self.root).as_posix()] for _, _, label in self.pairs if label is not None]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, samples={len(self)})"


def _require_dir(path: Path, what: str, script: str, root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    if not path.is_dir():
        raise FileNotFoundError(f"folder {path} not found: expected {what} (see {script} --help)")


def _pair_flat(
    root: Path, image_dir: Path, label_dir: Path, script: str
) -> list[tuple[str, Path, Path | None]]:
    """Pair ``image_dir/STEM.png`` with ``label_dir/STEM_labelTrainIds.png``."""
    images = sorted(p for p in image_dir.glob("*.png"))
    if not images:
        raise FileNotFoundError(f"no images found in {image_dir}: is {root} the dataset root?")
    have = {p.name for p in label_dir.glob("*_labelTrainIds.png")}
    if not have:
        raise FileNotFoundError(f"no *_labelTrainIds.png labels in {label_dir}: run {script} {root} first")
    pairs: list[tuple[str, Path, Path | None]] = []
    missing: list[Path] = []
    for image in images:
        label = label_dir / f"{image.stem}_labelTrainIds.png"
        if label.name not in have:
            missing.append(label)
        pairs.append((image.stem, image, label))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(images)} images have no trainIds label (first: {missing[0]}): run "
            f"{script} {root} (it converts what is missing and names files it cannot convert; remove "
            f"those images to exclude them)"
        )
    return pairs


def _check_split(split: str, allowed: tuple[str, ...], dataset: str) -> None:
    if split not in allowed:
        raise ValueError(f"{dataset} split must be one of {allowed}, got {split!r}")


class GTA5(SegmentationFolder):
    """GTA5 (24 966 frames, 1914x1052, all used for training) over a prepared root; see the module doc.

    ``split`` accepts only ``"train"`` (every image), as in UDA practice.
    """

    SCRIPT = "data_scripts/prepare_gta.py"

    def __init__(
        self, root: str | Path, split: str = "train", transform: Transform | None = None, *, length: int | None = None
    ) -> None:
        root = Path(root)
        _check_split(split, ("train",), "GTA5")
        for sub in ("images", "labels"):
            _require_dir(root / sub, "the GTA5 download (images/, labels/)", self.SCRIPT, root)
        pairs = _pair_flat(root, root / "images", root / "labels", self.SCRIPT)
        super().__init__(root, pairs, transform, length, self.SCRIPT)


class Synthia(SegmentationFolder):
    """SYNTHIA-RAND-CITYSCAPES (9 400 frames, 1280x760) over a prepared root; see the module doc.

    ``split`` accepts only ``"train"`` (every image). Terrain, truck and train never occur.
    """

    SCRIPT = "data_scripts/prepare_synthia.py"

    def __init__(
        self, root: str | Path, split: str = "train", transform: Transform | None = None, *, length: int | None = None
    ) -> None:
        root = Path(root)
        _check_split(split, ("train",), "Synthia")
        for sub in ("RGB", "GT/LABELS"):
            _require_dir(root / sub, "SYNTHIA-RAND-CITYSCAPES (RGB/, GT/LABELS/)", self.SCRIPT, root)
        pairs = _pair_flat(root, root / "RGB", root / "GT" / "LABELS", self.SCRIPT)
        super().__init__(root, pairs, transform, length, self.SCRIPT)


class Cityscapes(SegmentationFolder):
    """Cityscapes fine annotations (train 2 975, val 500, test 1 525; 2048x1024); see the module doc.

    Labels are required for ``train`` and ``val``; ``test`` images without a converted label get an
    all-ignore (255) label.  ``class_stats()`` exists for ``train`` only.
    """

    SCRIPT = "data_scripts/prepare_cityscapes.py"
    IMAGE_SUFFIX = "_leftImg8bit.png"
    LABEL_SUFFIX = "_gtFine_labelTrainIds.png"

    def __init__(
        self, root: str | Path, split: str = "train", transform: Transform | None = None, *, length: int | None = None
    ) -> None:
        root = Path(root)
        _check_split(split, ("train", "val", "test"), "Cityscapes")
        self.split = split
        image_dir = root / "leftImg8bit" / split
        label_dir = root / "gtFine" / split
        _require_dir(image_dir, "the leftImg8bit_trainvaltest download", self.SCRIPT, root)
        images = sorted(image_dir.glob(f"*/*{self.IMAGE_SUFFIX}"))
        if not images:
            raise FileNotFoundError(f"no *{self.IMAGE_SUFFIX} images found in {image_dir}/<city>/")
        if split != "test":
            _require_dir(label_dir, "the gtFine_trainvaltest download", self.SCRIPT, root)
        have = {p.relative_to(label_dir).as_posix() for p in label_dir.glob(f"*/*{self.LABEL_SUFFIX}")}
        if split != "test" and not have:
            raise FileNotFoundError(f"no *{self.LABEL_SUFFIX} labels in {label_dir}/<city>/: run {self.SCRIPT} {root} first")
        pairs: list[tuple[str, Path, Path | None]] = []
        missing: list[Path] = []
        for image in images:
            base = image.name[: -len(self.IMAGE_SUFFIX)]
            rel = f"{image.parent.name}/{base}{self.LABEL_SUFFIX}"
            label: Path | None = label_dir / rel
            if rel not in have:
                missing.append(label_dir / rel)
                label = None
            pairs.append((base, image, label))
        if missing and split != "test":
            raise FileNotFoundError(
                f"{len(missing)} of {len(images)} {split} images have no trainIds label (first: {missing[0]}): "
                f"run {self.SCRIPT} {root}"
            )
        super().__init__(root, pairs, transform, length, self.SCRIPT)

    def class_stats(self) -> list[dict[int, int]]:
        if self.split != "train":
            raise ValueError(f"Cityscapes class statistics exist for the train split only, not {self.split!r}")
        return super().class_stats()


FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class ImageFolder(SegmentationFolder):
    """Any folder of images (recursive; png, jpg, jpeg, webp, bmp, tif), with an optional folder of
    single-channel label images matched by relative path and stem (``city/0001.jpg`` <->
    ``city/0001.png``), whose values ``table`` (a :class:`~cluda_kit.data.classes.ClassTable`,
    default Cityscapes' with labelIds) maps to training ids.

    Without ``labels`` every label is 255 (ignore): valid as an unlabelled target domain.
    Errors name the file: an image without a label, a label of another size, a label value the
    table does not know, an unreadable image or label. ``class_stats()`` counts the labels once
    and caches the counts (keyed by the files' paths, sizes and times) like miniscapes does.
    """

    def __init__(self, images: str | Path, labels: str | Path | None = None, transform: Transform | None = None,
                 *, length: int | None = None, table: Any = None) -> None:
        from cluda_kit.data.classes import cityscapes_table

        images = Path(images)
        if not images.is_dir():
            raise FileNotFoundError(f"image folder {images} does not exist")
        found = sorted(p for p in images.rglob("*") if p.suffix.lower() in FOLDER_SUFFIXES and p.is_file())
        if not found:
            raise FileNotFoundError(f"no images ({', '.join(FOLDER_SUFFIXES)}) under {images}")
        self.table = table if table is not None else cityscapes_table()
        self.labels = Path(labels) if labels else None
        pairs: list[tuple[str, Path, Path | None]] = []
        if self.labels is not None:
            if not self.labels.is_dir():
                raise FileNotFoundError(f"label folder {self.labels} does not exist")
            by_stem: dict[str, Path] = {}
            for p in sorted(self.labels.rglob("*")):
                if p.suffix.lower() in FOLDER_SUFFIXES and p.is_file():
                    key = p.relative_to(self.labels).with_suffix("").as_posix()
                    if key in by_stem:
                        raise DatasetError(f"two labels for {key}: {by_stem[key]} and {p}")
                    by_stem[key] = p
        for image in found:
            key = image.relative_to(images).with_suffix("").as_posix()
            label = None
            if self.labels is not None:
                label = by_stem.get(key)
                if label is None:
                    raise DatasetError(f"image {image} has no label: expected {self.labels / key}.png "
                                       f"(labels match images by relative path and stem)")
            pairs.append((key, image, label))
        super().__init__(images, pairs, transform, length, prepare_script="")

    def _train_ids(self, path: Path) -> np.ndarray:
        from cluda_kit.data.classes import ClassTableError

        try:
            return self.table.to_train_ids(read_label(path), where=f"label {path}")
        except ClassTableError as err:
            raise DatasetError(str(err)) from None

    def class_stats(self) -> list[dict[int, int]]:
        """Per-sample ``{train id: pixel count}`` of the labels (cached; see the class doc)."""
        import hashlib

        from cluda_kit.data.miniscapes import stats_cache_dir
        from cluda_kit.fileio import atomic_write_text

        labelled = [lab for _, _, lab in self._all_pairs if lab is not None]
        if not labelled:
            raise DatasetError(f"{self.root}: no labels, so no class statistics (a source domain needs labels)")
        h = hashlib.sha256(self.table.source.encode() + repr(self.table).encode())
        for lab in labelled:
            st = lab.stat()
            h.update(f"{lab.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        cache = stats_cache_dir()
        path = cache / "folder_stats" / f"{h.hexdigest()[:32]}.json" if cache is not None else None
        stats = None
        if path is not None and path.is_file():
            try:
                stats = [{int(c): int(n) for c, n in d.items()} for d in json.loads(path.read_text())]
            except (OSError, ValueError, TypeError, AttributeError):
                stats = None
        if stats is None or len(stats) != len(labelled):
            from tqdm.auto import tqdm

            stats = []
            for lab in tqdm(labelled, desc=f"class statistics of {self.labels}", unit="label"):
                counts = np.bincount(self._train_ids(lab).ravel(), minlength=256)[: self.table.num_classes]
                stats.append({int(c): int(n) for c, n in enumerate(counts) if n > 0})
            if path is not None:
                try:
                    atomic_write_text(path, json.dumps([{str(c): n for c, n in d.items()} for d in stats]))
                except OSError:
                    pass  # a read-only cache: recount next time
        index = {lab: i for i, lab in enumerate(labelled)}
        return [stats[index[lab]] for _, _, lab in self.pairs if lab is not None]


class _Resized(Dataset):
    """``dataset`` with every sample resized to fit ``size`` (keep ratio) before ``transform``;
    with ``resize_label=False`` only the image (the label keeps its full resolution)."""

    def __init__(self, dataset: SegmentationFolder, size: tuple[int, int], transform: Transform | None,
                 resize_label: bool = True):
        self.dataset = dataset
        self.size = size
        self.transform = transform
        self.resize_label = resize_label

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        if self.resize_label:
            image, label = resize(sample["image"], sample["label"], self.size, keep_ratio=True)
        else:
            image, label = resize_image(sample["image"], self.size, keep_ratio=True), sample["label"]
        if self.transform is not None:
            image, label = self.transform(image, label)
        return {"image": image, "label": label, "name": sample["name"]}

    def class_stats(self) -> list[dict[int, int]]:
        """Statistics of the full-resolution labels (as DAFormer's RCS uses them)."""
        return self.dataset.class_stats()


def _field(spec: Any, name: str, default: Any = None) -> Any:
    if isinstance(spec, Mapping):
        return spec.get(name, default)
    return getattr(spec, name, default)


def build_dataset(spec: Any, transform: Transform | None = None) -> Dataset:
    """Build a dataset from a small spec (a mapping or an object such as the config's ``DatasetConfig``).

    Fields (missing ones default to None): ``name`` in {"miniscapes", "gta", "synthia", "cityscapes"};
    ``split`` ("train"); ``size`` (H, W); ``length``; for miniscapes also ``domain`` in
    {"game", "sim", "real"} and ``seed`` (0); for the file datasets ``root``.

    * miniscapes: ``Miniscapes(domain, split, size=size, length=length, seed=seed, transform=transform)``
      (``size`` None keeps Miniscapes' default).
    * gta / synthia / cityscapes: the reader over ``root`` with its first ``length`` samples; a
      ``size`` resizes every sample to fit (H, W) keeping the ratio (DAFormer: GTA (720, 1280),
      Cityscapes (512, 1024)) before ``transform``; ``resize_label`` False resizes the image only
      (evaluation against full-resolution labels). ``class_stats()`` still describes full-resolution labels.
    """
    name = _field(spec, "name")
    split = _field(spec, "split") or "train"
    size = _field(spec, "size")
    length = _field(spec, "length")
    if size is not None:
        size = tuple(int(s) for s in size)
    if name == "miniscapes":
        from cluda_kit.data.miniscapes import Miniscapes

        domain = _field(spec, "domain")
        if domain is None:
            raise ValueError("dataset spec 'miniscapes' needs a domain: one of 'game', 'sim', 'real'")
        kwargs: dict[str, Any] = {"length": length, "seed": _field(spec, "seed", 0) or 0, "transform": transform}
        if size is not None:
            kwargs["size"] = size
        if _field(spec, "gap") is not None:
            kwargs["gap"] = float(_field(spec, "gap"))
        return Miniscapes(domain, split, **kwargs)
    readers = {"gta": GTA5, "synthia": Synthia, "cityscapes": Cityscapes}
    if name == "folder":
        if not _field(spec, "root"):
            raise ValueError("dataset spec 'folder' needs a root: the images folder")
        def folder(t: Transform | None) -> ImageFolder:
            return ImageFolder(_field(spec, "root"), _field(spec, "labels") or None, t, length=length,
                               table=_field(spec, "table"))

        if size is None:
            return folder(transform)
        return _Resized(folder(None), size, transform, resize_label=bool(_field(spec, "resize_label", True)))
    if name not in readers:
        raise ValueError(f"unknown dataset name {name!r}; expected one of {['miniscapes', 'folder', *readers]}")
    root = _field(spec, "root")
    if not root:
        raise ValueError(f"dataset spec {name!r} needs a root folder")
    if size is None:
        return readers[name](root, split, transform, length=length)
    return _Resized(readers[name](root, split, None, length=length), size, transform,
                    resize_label=bool(_field(spec, "resize_label", True)))
