"""Data plumbing of the trainer: the config's dataset sections -> resumable streams and loaders.

Source stream: random crop (with the 75 % single-class limit), flip, and rare class sampling when
``data.rcs.enabled``. Target stream: random crop and flip, uniform indices. Both are endless and
resumable (:class:`cluda_kit.data.sampling.Endless`). The validation loader runs over the whole
val split (or its first ``data.val_length`` samples), sharded by rank under DDP.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from ..config import Config, ConfigError, DatasetConfig
from ..data.classes import class_table_of
from ..data.datasets import DatasetError, build_dataset
from ..data.sampling import Endless, InfiniteSampler, RareClassSampler, SampleKey, TransformedDataset, endless
from ..data.transforms import PairedTransform


class CheckedLabels(Dataset):
    """``dataset`` (common sample dicts) whose labels are checked as they are read: every value
    must be a trainId 0..C-1 or ``ignore_index``, else :class:`DatasetError` names the label file
    (a raw labelId map instead of the prepared trainIds one, a foreign label table...).
    ``class_stats`` passes through."""

    def __init__(self, dataset: Dataset, num_classes: int, ignore_index: int = 255):
        self.dataset = dataset
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        label = sample["label"]
        bad = ((label < 0) | (label >= self.num_classes)) & (label != self.ignore_index)
        if bool(bad.any()):
            values = label[bad].unique()[:5].tolist()
            raise DatasetError(
                f"label {self._source(index, sample)} holds the values {values}, outside the "
                f"trainIds 0..{self.num_classes - 1} and {self.ignore_index} (ignore){self._fix()}"
            )
        return sample

    def _folder(self) -> Any:
        ds = self.dataset
        while not hasattr(ds, "pairs") and hasattr(ds, "dataset"):
            ds = ds.dataset
        return ds if hasattr(ds, "pairs") else None

    def _source(self, index: int, sample: dict) -> str:
        folder = self._folder()
        if folder is not None and folder.pairs[index][2] is not None:
            return str(folder.pairs[index][2])
        return f"of sample {sample.get('name', index)!r}"

    def _fix(self) -> str:
        folder = self._folder()
        script = getattr(folder, "prepare_script", None)
        return f": re-run {script} {folder.root}" if script else ""

    def class_stats(self) -> list[dict[int, int]]:
        return self.dataset.class_stats()  # type: ignore[attr-defined]


class FrameMarginMask(Dataset):
    """Target samples whose ``label`` is replaced by the pseudo-label validity of the whole frame:
    1 inside, 0 in the ``(top, bottom, left, right)`` pixel margins (HRDA zeroes the margins of
    the full frame before cropping). The training crop and flip then move the mask with the
    image; padding comes back as 255 (invalid). Target ground truth is never used for training,
    so nothing is lost; it also guarantees none leaks into the step."""

    def __init__(self, dataset: Dataset, margins: tuple[int, int, int, int]):
        self.dataset = dataset
        self.margins = margins

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.dataset[index])
        h, w = sample["label"].shape[-2:]
        top, bottom, left, right = self.margins
        valid = torch.zeros((h, w), dtype=torch.int64)
        valid[top:max(h - bottom, top), left:max(w - right, left)] = 1
        sample["label"] = valid
        return sample


def dataset_from_config(spec: DatasetConfig, where: str, num_classes: int | None = None,
                        table: Any = None) -> Dataset:
    """Build the dataset a config section describes; errors name the section and the problem.
    With ``num_classes``, labels read from files are checked (:class:`CheckedLabels`). ``table``:
    the class table a ``folder`` dataset's label values are read with (default Cityscapes')."""
    fields: dict[str, Any] = {"name": spec.name, "split": spec.split, "length": spec.length,
                              "domain": spec.domain, "seed": spec.seed, "root": spec.root,
                              "gap": spec.gap, "resize_label": spec.resize_label,
                              "labels": spec.labels, "table": table}
    fields["size"] = spec.size if spec.name == "miniscapes" else spec.resize
    try:
        ds = build_dataset(fields)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise ConfigError(f"{where}: {err}") from None
    if len(ds) == 0:
        raise ConfigError(f"{where}: the dataset {spec.name}:{spec.root or spec.domain} is empty")
    if num_classes is not None and spec.name != "miniscapes":  # miniscapes labels are generated
        ds = CheckedLabels(ds, num_classes, getattr(table, "ignore_index", 255))
    return ds


def _stream_seed(cfg: Config, domain: str) -> int:
    return cfg.train.seed * 2 + (0 if domain == "source" else 1)


def train_stream(cfg: Config, domain: str, rank: int = 0, world_size: int = 1) -> Endless:
    """Endless batches ``{"image": uint8 (B,3,h,w), "label": int64 (B,h,w), "name"}`` of the
    source (``domain="source"``) or target training set, cropped to ``data.crop_size``."""
    d = cfg.data
    spec = d.source if domain == "source" else d.target
    ds = dataset_from_config(spec, f"data.{domain}", cfg.model.num_classes, class_table_of(cfg))
    is_source = domain == "source"
    if not is_source and any(d.frame_margins):
        ds = FrameMarginMask(ds, d.frame_margins)
    transform = PairedTransform(crop=d.crop_size, flip=d.flip_prob,
                                cat_max_ratio=d.cat_max_ratio if is_source else 1.0)
    seed = _stream_seed(cfg, domain)
    if is_source and d.rcs.enabled:
        try:
            stats = ds.class_stats()
        except (FileNotFoundError, DatasetError) as err:
            raise DatasetError(f"data.rcs.enabled=true needs the class statistics of "
                               f"data.{domain}: {err}") from None
        try:
            sampler = RareClassSampler(stats, d.rcs.temperature, d.rcs.min_pixels,
                                       num_classes=cfg.model.num_classes, seed=seed, rank=rank,
                                       world_size=world_size)
        except ValueError as err:
            raise ConfigError(f"data.rcs (data.{domain}): {err}") from None
        tds = TransformedDataset(ds, transform, min_crop_pixels=d.rcs.min_pixels * d.rcs.min_crop_ratio,
                                 max_recrops=d.rcs.max_tries)
    else:
        sampler = InfiniteSampler(len(ds), seed=seed, rank=rank, world_size=world_size)
        tds = TransformedDataset(ds, transform)
    loader = DataLoader(
        tds, batch_size=d.batch_size, sampler=sampler, num_workers=d.num_workers, drop_last=True,
        pin_memory=torch.cuda.is_available(), persistent_workers=d.num_workers > 0,
        # its own generator: starting an iterator must not consume the global RNG (resume)
        generator=torch.Generator().manual_seed(seed),
    )
    return endless(loader)


def val_loader(cfg: Config, rank: int = 0, world_size: int = 1) -> DataLoader:
    """The target validation loader (whole images, no augmentation), this rank's shard."""
    ds = dataset_from_config(cfg.data.val, "data.val", cfg.model.num_classes, class_table_of(cfg))
    n = len(ds) if cfg.data.val_length is None else min(cfg.data.val_length, len(ds))
    indices = list(range(rank, n, world_size))
    return DataLoader(Subset(ds, indices), batch_size=cfg.data.val_batch_size, shuffle=False,
                      num_workers=cfg.data.num_workers, generator=torch.Generator())


def peek(stream: Endless, k: int = 0) -> dict:
    """Sample ``k`` of the stream's dataset as a batch of one, with its training transform, without
    advancing the stream (for figures and notebooks)."""
    ds = stream.loader.dataset
    return default_collate([ds[SampleKey(k % len(ds), seed=k)]])
