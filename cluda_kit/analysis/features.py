"""Per-pixel fused features with class and domain labels, for looking at the feature space.

``extract_features`` runs a segmentor over images, takes its fused decoder feature (B, D, h, w)
(stride 4, the map the CLUDA contrastive loss works on), gives every feature cell the class of its
label patch when that class is pure enough, and keeps a class-balanced random sample of at most
``max_per_class`` cells per class. The result is a :class:`FeatureSet` of numpy arrays that can be
concatenated across domains, subset, saved and projected (``cluda_kit.analysis.embed``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from tqdm.auto import tqdm

IGNORE_INDEX = 255


@dataclass
class FeatureSet:
    """N sampled feature vectors with their class and domain.

    Attributes:
        features: (N, D) float32 fused features (not normalised).
        labels: (N,) int64 trainIds (never the ignore index 255).
        domain_index: (N,) int64 index into ``domain_names``.
        domain_names: names of the domains, e.g. ``("game", "real")``.
        model_name: name of the model the features come from.
        image_index: (N,) int64 index of the point's image in its domain's dataset (-1: unknown).
        pixel: (N, 2) int64 (y, x) of the centre of the point's feature cell, in that image's pixels.
        confidence: (N,) float32 softmax probability of the model's prediction at that pixel.
        prediction: (N,) int64 the model's predicted trainId at that pixel.
        The last four are None for sets extracted without provenance (older files).
    """

    features: np.ndarray
    labels: np.ndarray
    domain_index: np.ndarray
    domain_names: tuple[str, ...]
    model_name: str = ""
    image_index: np.ndarray | None = None
    pixel: np.ndarray | None = None
    confidence: np.ndarray | None = None
    prediction: np.ndarray | None = None

    PROVENANCE = ("image_index", "pixel", "confidence", "prediction")

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.domain_index = np.asarray(self.domain_index, dtype=np.int64)
        self.domain_names = tuple(str(d) for d in self.domain_names)
        n = len(self.labels)
        dtypes = {"image_index": np.int64, "pixel": np.int64, "confidence": np.float32, "prediction": np.int64}
        given = [getattr(self, k) is not None for k in self.PROVENANCE]
        if any(given) and not all(given):
            raise ValueError(f"FeatureSet: give all of {self.PROVENANCE} or none")
        for k in self.PROVENANCE:
            v = getattr(self, k)
            if v is not None:
                v = np.asarray(v, dtype=dtypes[k]).reshape((n, 2) if k == "pixel" else (n,))
                setattr(self, k, v)
        if self.features.ndim != 2 or self.features.shape[0] != n or self.domain_index.shape != (n,):
            raise ValueError(
                f"FeatureSet: expected features (N, D), labels (N,) and domain_index (N,) with the same N; "
                f"got features {self.features.shape}, labels {self.labels.shape}, "
                f"domain_index {self.domain_index.shape}")
        if n and (self.domain_index.min() < 0 or self.domain_index.max() >= len(self.domain_names)):
            raise ValueError(f"FeatureSet: domain_index values must lie in [0, {len(self.domain_names)}) "
                             f"(domain_names={self.domain_names}); got range "
                             f"[{self.domain_index.min()}, {self.domain_index.max()}]")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_provenance(self) -> bool:
        """Whether every point knows its image, pixel, and the model's confidence and prediction."""
        return self.image_index is not None

    @property
    def correct(self) -> np.ndarray:
        """(N,) bool: the model's prediction equals the point's class (needs provenance)."""
        if self.prediction is None:
            raise ValueError("FeatureSet.correct: this set has no predictions (extracted without provenance)")
        return self.prediction == self.labels

    def _take(self, keep: np.ndarray, **changes) -> "FeatureSet":
        fields = {k: (getattr(self, k)[keep] if getattr(self, k) is not None else None) for k in self.PROVENANCE}
        fields.update(changes)
        return FeatureSet(self.features[keep], self.labels[keep], self.domain_index[keep], self.domain_names,
                          self.model_name, **fields)

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return self.features.shape[1]

    @property
    def domain(self) -> np.ndarray:
        """(N,) domain name of every point (str array)."""
        return np.asarray(self.domain_names, dtype=str)[self.domain_index] if len(self) else np.zeros(0, str)

    @property
    def classes(self) -> list[int]:
        """Sorted trainIds present."""
        return sorted(int(c) for c in np.unique(self.labels))

    def class_counts(self, domain: str | None = None) -> dict[int, int]:
        """Number of points per class (optionally within one domain)."""
        labels = self.labels if domain is None else self.labels[self.domain == domain]
        values, counts = np.unique(labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}

    @staticmethod
    def concat(sets: Sequence[FeatureSet]) -> FeatureSet:
        """Concatenate feature sets of one model (e.g. its source and target features).

        Domain names are merged in order of first appearance; the sets must share D and model_name.
        """
        if not sets:
            raise ValueError("FeatureSet.concat: expected at least one FeatureSet, got none")
        dims = {s.dim for s in sets}
        models = {s.model_name for s in sets}
        if len(dims) != 1:
            raise ValueError(f"FeatureSet.concat: feature dimensions differ: {sorted(dims)}")
        if len(models) != 1:
            raise ValueError(f"FeatureSet.concat: model names differ: {sorted(models)}; "
                             "concatenate features of one model only")
        names: list[str] = []
        for s in sets:
            names += [d for d in s.domain_names if d not in names]
        remapped = [np.asarray([names.index(d) for d in s.domain_names], dtype=np.int64)[s.domain_index]
                    for s in sets]
        provenance = {k: (np.concatenate([getattr(s, k) for s in sets]) if all(s.has_provenance for s in sets)
                          else None) for k in FeatureSet.PROVENANCE}
        return FeatureSet(
            features=np.concatenate([s.features for s in sets]),
            labels=np.concatenate([s.labels for s in sets]),
            domain_index=np.concatenate(remapped),
            domain_names=tuple(names),
            model_name=sets[0].model_name,
            **provenance,
        )

    def subset(self, classes: Iterable[int] | None = None,
               domains: str | Iterable[str] | None = None) -> FeatureSet:
        """Points whose class is in ``classes`` and domain in ``domains`` (None = all)."""
        keep = np.ones(len(self), dtype=bool)
        if classes is not None:
            keep &= np.isin(self.labels, np.asarray(list(classes), dtype=np.int64))
        if domains is not None:
            wanted = [domains] if isinstance(domains, str) else list(domains)
            unknown = [d for d in wanted if d not in self.domain_names]
            if unknown:
                raise ValueError(f"FeatureSet.subset: unknown domains {unknown}; "
                                 f"this set holds {list(self.domain_names)}")
            keep &= np.isin(self.domain_index, [self.domain_names.index(d) for d in wanted])
        return self._take(keep)

    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` file (no pickles)."""
        extra = {k: getattr(self, k) for k in self.PROVENANCE if getattr(self, k) is not None}
        np.savez_compressed(
            path, features=self.features, labels=self.labels, domain_index=self.domain_index,
            domain_names=np.asarray(self.domain_names, dtype=str), model_name=np.asarray(self.model_name), **extra)

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            missing = {"features", "labels", "domain_index", "domain_names", "model_name"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: not a FeatureSet file, missing arrays {sorted(missing)}")
            extra = {k: z[k] for k in cls.PROVENANCE if k in z.files}
            return cls(z["features"], z["labels"], z["domain_index"], tuple(z["domain_names"].tolist()),
                       str(z["model_name"]), **extra)


def patch_labels(labels: Tensor, size: tuple[int, int], purity: float | None = 0.9,
                 ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Downscale labels (B, H, W) to a feature grid (B, h, w) by patch purity.

    The patch of cell (i, j) is the region of the label that adaptive average pooling maps to it
    (for H = 4h, the stride-4 cell). Its class fractions are the average of the one-hot label;
    ignore pixels (``ignore_index``) count in the patch but are never a class. With ``purity`` p the
    cell gets class c if c covers at least p of the patch, else ``ignore_index``; with ``purity=None``
    it gets the most frequent class of the patch, or ``ignore_index`` where ignore pixels are at
    least as frequent. For p <= 0.5 a tie goes to the smaller trainId.
    """
    if purity is not None and not 0.0 < purity <= 1.0:
        raise ValueError(f"patch_labels: purity must lie in (0, 1] or be None, got {purity}")
    if labels.ndim != 3:
        raise ValueError(f"patch_labels: expected labels (B, H, W), got shape {tuple(labels.shape)}")
    b = labels.shape[0]
    best_frac = torch.zeros(b, *size, device=labels.device)
    best_class = torch.full((b, *size), ignore_index, dtype=torch.int64, device=labels.device)
    covered = torch.zeros(b, *size, device=labels.device)
    for c in torch.unique(labels).tolist():
        if c == ignore_index:
            continue
        frac = F.adaptive_avg_pool2d((labels == c).float().unsqueeze(1), size).squeeze(1)
        covered += frac
        better = frac > best_frac
        best_frac = torch.where(better, frac, best_frac)
        best_class = torch.where(better, torch.full_like(best_class, c), best_class)
    if purity is None:
        keep = best_frac > 1.0 - covered
    else:
        keep = best_frac >= purity - 1e-6
    return torch.where(keep & (best_frac > 0), best_class, torch.full_like(best_class, ignore_index))


class _ClassReservoir:
    """Uniform sample without replacement of at most ``cap`` items per class from a stream.

    Every offered item gets an i.i.d. U(0, 1) key; per class the ``cap`` smallest keys are kept,
    which is a uniform sample of everything offered so far. Only kept items are stored.
    """

    def __init__(self, cap: int | None, generator: torch.Generator) -> None:
        self.cap = cap
        self.generator = generator
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}

    def offer(self, labels: Tensor, gather: Callable[[Tensor], Tensor]) -> None:
        """Offer N items with class ``labels`` (N,) (int64, CPU); ``gather(idx)`` returns the rows
        (len(idx), ...) of the items at positions ``idx`` (only called for items that are kept)."""
        keys = torch.rand(labels.shape[0], generator=self.generator)
        for c in torch.unique(labels).tolist():
            idx = torch.nonzero(labels == c).squeeze(1)
            new_keys = keys[idx]
            if self.cap is not None and len(idx) > self.cap:
                new_keys, order = torch.topk(new_keys, self.cap, largest=False, sorted=False)
                idx = idx[order]
            new_values = gather(idx)
            if c in self.keys:
                new_keys = torch.cat([self.keys[c], new_keys])
                new_values = torch.cat([self.values[c], new_values])
            if self.cap is not None and len(new_keys) > self.cap:
                new_keys, order = torch.topk(new_keys, self.cap, largest=False, sorted=False)
                new_values = new_values[order]
            self.keys[c], self.values[c] = new_keys, new_values

    def items(self) -> Iterator[tuple[int, Tensor]]:
        """(class, kept rows sorted by key) for every class, in class order."""
        for c in sorted(self.keys):
            yield c, self.values[c][torch.argsort(self.keys[c])]


def _batches(data: Dataset | Iterable, num_samples: int | None, batch_size: int,
             generator: torch.Generator) -> tuple[Iterable, int | None, list[int] | None]:
    """Batches of sample dicts, the number of images they hold (None if unknown), and the dataset
    index of each image in order (None: the position in the stream)."""
    if isinstance(data, IterableDataset):
        return DataLoader(data, batch_size=batch_size, num_workers=0), num_samples, None
    if isinstance(data, Dataset):
        n = len(data)
        indices = list(range(n))
        if num_samples is not None and num_samples < n:
            indices = torch.randperm(n, generator=generator)[:num_samples].sort().values.tolist()
            data = Subset(data, indices)
            n = num_samples
        return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0), n, indices
    return data, num_samples, None


def extract_features(
    model: nn.Module,
    dataset_or_loader: Dataset | Iterable[dict],
    *,
    domain: str,
    num_samples: int | None = 100,
    max_per_class: int | None = 500,
    purity: float | None = 0.9,
    classes: Iterable[int] | None = None,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    normalize: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    model_name: str | None = None,
    ignore_index: int = IGNORE_INDEX,
    progress: bool = True,
) -> FeatureSet:
    """Sample fused features of ``model`` per class on one domain.

    Args:
        model: a segmentor; ``model(x)`` with x (B, 3, H, W) normalised returns an object with
            ``.fused`` (B, D, h, w) (the fused feature, stride 4 for DAFormer). It is run in eval
            mode without gradients; its training flag is restored afterwards. It is not moved.
        dataset_or_loader: a map-style dataset of common sample dicts (``image`` uint8 (3, H, W),
            ``label`` int64 (H, W), 255 = ignore) or an iterable of such dicts already batched
            (e.g. a DataLoader).
        domain: name stored with every point (e.g. ``"game"``, ``"real"``).
        num_samples: number of images to use (None = all). From a dataset, a random subset drawn
            with the generator; from a loader, the first ones.
        max_per_class: at most this many cells per class, a uniform random sample of all cells of
            that class seen (None = keep all, which holds every qualifying cell in memory).
        purity: a cell counts for class c only if at least this fraction of its label patch is c;
            None = majority class of the patch (see :func:`patch_labels`).
        classes: trainIds to keep (None = all).
        batch_size: images per forward pass when given a dataset.
        device: where to run; default the device of the model's parameters (CPU if it has none).
        normalize: maps float images in [0, 1] (B, 3, H, W) to the network input; default
            ``cluda_kit.data.transforms.normalize`` (ImageNet mean/std).
        generator: CPU torch generator for the image subset and the per-class sampling; default
            one seeded with ``seed``.
        model_name: stored in the result; default the model's class name.
        progress: show a tqdm bar.

    Returns:
        A :class:`FeatureSet` sorted by class, with features of the kept cells (float32, (N, D)).
    """
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    if normalize is None:
        from cluda_kit.data.transforms import normalize
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"extract_features: max_per_class must be >= 1 or None, got {max_per_class}")
    wanted = None if classes is None else torch.as_tensor(sorted(set(classes)), dtype=torch.int64)
    batches, total, image_ids = _batches(dataset_or_loader, num_samples, batch_size, generator)
    reservoir = _ClassReservoir(max_per_class, generator)
    was_training = model.training
    model.eval()
    seen = 0
    bar = tqdm(total=total, desc=f"features {domain}", unit="img", disable=not progress)
    try:
        with torch.inference_mode():
            for batch in batches:
                images, labels = batch["image"], batch["label"]
                if images.dtype != torch.uint8 or images.ndim != 4:
                    raise ValueError(f"extract_features: batch['image'] must be uint8 (B, 3, H, W) RGB, got "
                                     f"{images.dtype} {tuple(images.shape)}")
                if num_samples is not None:
                    images, labels = images[: num_samples - seen], labels[: num_samples - seen]
                x = normalize(images.to(device).float() / 255.0)
                out = model(x)
                fused = out.fused
                cell_labels = patch_labels(labels.to(device), tuple(fused.shape[-2:]), purity, ignore_index)
                flat_labels = cell_labels.reshape(-1).cpu()
                valid = flat_labels != ignore_index
                if wanted is not None:
                    valid &= torch.isin(flat_labels, wanted)
                positions = torch.nonzero(valid).squeeze(1)
                rows = torch.cat([fused.float(), _provenance(out, fused, images.shape[-2:], image_ids, seen)], 1)
                flat_rows = rows.permute(0, 2, 3, 1).reshape(-1, rows.shape[1])
                reservoir.offer(flat_labels[positions], lambda idx: flat_rows[positions[idx].to(device)].cpu())
                seen += images.shape[0]
                bar.update(images.shape[0])
                if num_samples is not None and seen >= num_samples:
                    break
    finally:
        bar.close()
        model.train(was_training)
    if seen == 0:
        raise ValueError(f"extract_features: no images in {type(dataset_or_loader).__name__} "
                         f"(num_samples={num_samples})")
    kept = list(reservoir.items())
    dim = fused.shape[1]
    table = torch.cat([v for _, v in kept]).numpy() if kept else np.zeros((0, dim + 5), np.float32)
    labels_out = np.concatenate([np.full(len(v), c) for c, v in kept]) if kept else np.zeros(0, np.int64)
    extra = table[:, dim:]
    return FeatureSet(
        features=table[:, :dim], labels=labels_out, domain_index=np.zeros(len(labels_out), np.int64),
        domain_names=(domain,), model_name=model_name if model_name is not None else type(model).__name__,
        image_index=np.rint(extra[:, 0]), pixel=np.rint(extra[:, 1:3]), confidence=extra[:, 3],
        prediction=np.rint(extra[:, 4]),
    )


def _provenance(out, fused: Tensor, image_size, image_ids: list[int] | None, seen: int) -> Tensor:
    """(B, 5, h, w) per feature cell: image index, pixel y and x of the cell centre, and the
    model's confidence and prediction there (from its logits at the nearest logit cell)."""
    b, _, h, w = fused.shape
    height, width = int(image_size[0]), int(image_size[1])
    dev = fused.device
    ids = torch.tensor([image_ids[seen + i] if image_ids is not None else seen + i for i in range(b)],
                       dtype=torch.float32, device=dev)
    ys = ((torch.arange(h, device=dev, dtype=torch.float32) + 0.5) * height / h).floor()
    xs = ((torch.arange(w, device=dev, dtype=torch.float32) + 0.5) * width / w).floor()
    logits = getattr(out, "logits", None)
    if logits is None:
        conf = torch.full((b, h, w), float("nan"), device=dev)
        pred = torch.full((b, h, w), -1.0, device=dev)
    else:
        lh, lw = logits.shape[-2:]
        ly = (ys * lh / height).long().clamp(max=lh - 1)
        lx = (xs * lw / width).long().clamp(max=lw - 1)
        at = logits.float()[:, :, ly][:, :, :, lx]  # (B, C, h, w): the logits at the cell centres
        pred = at.argmax(1)  # on the logits (softmax can merge nearly tied classes)
        conf = at.softmax(1).gather(1, pred[:, None])[:, 0]
        pred = pred.float()
    return torch.stack([ids[:, None, None].expand(b, h, w), ys[None, :, None].expand(b, h, w),
                        xs[None, None, :].expand(b, h, w), conf, pred], 1)
