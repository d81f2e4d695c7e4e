"""Rare class sampling (RCS) and endless, resumable source/target sample streams.

How the trainer uses this module::

    source = build_dataset(cfg.source)                 # no random transform on the dataset itself
    rcs = RareClassSampler(source.class_stats(), temperature=0.01, min_pixels=3000, seed=seed,
                           rank=rank, world_size=world_size)
    src_ds = TransformedDataset(source, PairedTransform(crop=512, cat_max_ratio=0.75),
                                min_crop_pixels=3000 * 0.5)          # r = 0.5 for 512 crops
    src = endless(DataLoader(src_ds, batch_size=2, sampler=rcs, num_workers=4))

    tgt_sampler = InfiniteSampler(len(target), seed=seed, rank=rank, world_size=world_size)
    tgt = endless(DataLoader(TransformedDataset(target, PairedTransform(crop=512)),
                             batch_size=2, sampler=tgt_sampler))
    batch = next(src)                                   # {"image", "label", "name"} batched
    state = {"source": src.state_dict(), "target": tgt.state_dict()}   # into the checkpoint
    ...
    src.load_state_dict(state["source"])                # the stream continues identically

Determinism: sample ``k`` of a stream depends only on ``(seed, k)`` (and rank / world size): the
samplers use counter-based random numbers rather than a running generator. A DataLoader draws
indices ahead of the batches it returns (prefetching), so a sampler cannot know how far the trainer
got; :class:`Endless` counts the samples the trainer actually received and turns that count into
the sampler state ``{"epoch", "position"}``. The samplers yield :class:`SampleKey` tuples that carry
a per-sample seed, and :class:`TransformedDataset` seeds the random crop/flip with it, so a resumed
stream reproduces the same crops in any number of worker processes.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "class_pixel_counts",
    "rcs_probabilities",
    "SampleKey",
    "RareClassSampler",
    "InfiniteSampler",
    "TransformedDataset",
    "rcs_recrop",
    "Endless",
    "endless",
]


def _mix(*words: int) -> int:
    """A 63-bit seed from a well-mixed hash of the non-negative integers ``words`` (counter-based RNG)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def _seeded_generator(*words: int) -> torch.Generator:
    """A torch.Generator seeded with ``_mix(*words)``."""
    return torch.Generator().manual_seed(_mix(*words))


def class_pixel_counts(stats: Sequence[Mapping[int, int]], num_classes: int = 19) -> torch.Tensor:
    """Sum per-image class statistics into total pixels per class, int64 (C,).

    Args:
        stats: per image ``{trainId: pixel count}`` (``dataset.class_stats()``); keys >= ``num_classes``
            (e.g. 255) are an error.
    """
    totals = torch.zeros(num_classes, dtype=torch.int64)
    for i, counts in enumerate(stats):
        for c, n in counts.items():
            c = int(c)
            if not 0 <= c < num_classes:
                raise ValueError(f"class statistics of image {i} have class {c}; expected 0..{num_classes - 1}")
            totals[c] += int(n)
    return totals


def rcs_probabilities(class_pixel_counts: Any, temperature: float = 0.01) -> torch.Tensor:
    """RCS class probabilities P(c) = softmax((1 - f_c) / T) over the classes present.

    f_c is the class frequency: pixels of c divided by the pixels of all classes present
    (docs/method.md §3; DAFormer's ``get_rcs_class_probs``).

    Args:
        class_pixel_counts: total pixels per class, a (C,) tensor / array / sequence, or a mapping
            ``{trainId: count}`` (then C = max key + 1).
        temperature: T (0.01); smaller is closer to uniform-over-rare, larger to uniform over classes.

    Returns:
        float64 (C,) probabilities summing to 1, exactly 0 for classes with no pixels.
    """
    if isinstance(class_pixel_counts, Mapping):
        size = max((int(c) for c in class_pixel_counts), default=-1) + 1
        counts = torch.zeros(size, dtype=torch.float64)
        for c, n in class_pixel_counts.items():
            counts[int(c)] = float(n)
    else:
        counts = torch.as_tensor(np.asarray(class_pixel_counts), dtype=torch.float64).flatten()
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if (counts < 0).any():
        raise ValueError(f"class pixel counts must be >= 0, got {counts.tolist()}")
    present = counts > 0
    if not present.any():
        raise ValueError("rare class sampling needs at least one class with pixels; all counts are 0")
    freq = counts[present] / counts[present].sum()
    probs = torch.zeros_like(counts)
    probs[present] = torch.softmax((1.0 - freq) / temperature, dim=0)
    return probs


class SampleKey(NamedTuple):
    """What the samplers yield and :class:`TransformedDataset` accepts as an index.

    Attributes:
        index: dataset index.
        seed: seed of this sample's random transform.
        cls: the class RCS drew for it (-1: not drawn by RCS).
    """

    index: int
    seed: int
    cls: int = -1


class _StreamSampler(Sampler, ABC):
    """Base of the endless, counter-based samplers: sample k of this rank is ``self._key(k)``.

    State: ``count`` = number of samples of this rank that precede the next one a fresh iterator
    yields; exposed as ``{"epoch": count // epoch_length, "position": count % epoch_length}``.
    """

    def __init__(self, seed: int, rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.count = 0

    @property
    @abstractmethod
    def epoch_length(self) -> int:
        """Samples per epoch for this rank."""

    @abstractmethod
    def _key(self, k: int) -> SampleKey:
        """Sample ``k`` of this rank's stream."""

    def __iter__(self) -> Iterator[SampleKey]:
        k = self.count
        while True:
            yield self._key(k)
            k += 1

    def state_at(self, count: int) -> dict[str, int]:
        """The state after ``count`` samples of this rank: ``{"epoch", "position"}``."""
        return {"epoch": count // self.epoch_length, "position": count % self.epoch_length}

    def state_dict(self) -> dict[str, int]:
        """State of the next fresh iterator, ``{"epoch", "position"}``."""
        return self.state_at(self.count)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Make the next iterator start at ``state`` (from :meth:`state_dict` or ``Endless.state_dict``)."""
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except KeyError as exc:
            raise KeyError(f"sampler state needs 'epoch' and 'position', got keys {sorted(state)}") from None
        if not 0 <= position < self.epoch_length or epoch < 0:
            raise ValueError(
                f"sampler state epoch={epoch}, position={position} does not fit an epoch of "
                f"{self.epoch_length} samples (was the dataset or world size changed?)"
            )
        self.count = epoch * self.epoch_length + position


class InfiniteSampler(_StreamSampler):
    """Endless stream of dataset indices, reshuffled every epoch, sharded across ranks.

    Epoch e is a permutation of ``range(size)`` seeded by (seed, e) (identity without ``shuffle``),
    padded by wrapping around to a multiple of ``world_size``; rank r takes every ``world_size``-th
    entry starting at r (like ``DistributedSampler``), so an epoch has ``ceil(size / world_size)``
    samples per rank.  Yields :class:`SampleKey` (index, per-sample transform seed).

    Args:
        size: dataset length. shuffle: permute each epoch. seed: stream seed.
        rank, world_size: this process's shard (DDP rank and number of processes).
    """

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(seed, rank, world_size)
        if size < 1:
            raise ValueError(f"InfiniteSampler needs a non-empty dataset, got size {size}")
        self.size = size
        self.shuffle = shuffle
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    @property
    def epoch_length(self) -> int:
        return math.ceil(self.size / self.world_size)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            if self.shuffle:
                perm = torch.randperm(self.size, generator=_seeded_generator(self.seed, 0, epoch))
            else:
                perm = torch.arange(self.size)
            total = self.epoch_length * self.world_size
            self._perm = perm.repeat(math.ceil(total / self.size))[:total]
            self._perm_epoch = epoch
        return self._perm

    def _key(self, k: int) -> SampleKey:
        epoch, position = divmod(k, self.epoch_length)
        index = int(self._epoch_order(epoch)[position * self.world_size + self.rank])
        return SampleKey(index, _mix(self.seed, 1, epoch, position * self.world_size + self.rank))


class RareClassSampler(_StreamSampler):
    """Rare class sampling: draw a class c ~ P(c), then uniformly an image with > ``min_pixels`` of c.

    P(c) is :func:`rcs_probabilities` of the total class pixels over all images.  Classes without
    any image above ``min_pixels`` cannot be drawn (the reference asserts there are none); they are
    listed in :attr:`excluded_classes` with a warning, and P is renormalised over the rest.

    Iterating yields an endless stream of :class:`SampleKey` ``(index, seed, cls)``; draw j
    (global, ``j = k * world_size + rank`` for this rank's k-th sample) depends only on (seed, j).
    :meth:`draw` is a single draw from a caller's generator.  An "epoch" is ``len(stats)`` samples
    per rank (only a unit for the state; draws are with replacement).

    Args:
        stats: per image ``{trainId: pixel count}``, e.g. ``dataset.class_stats()``.
        temperature: T of P(c) (0.01).
        min_pixels: an image is eligible for class c if it has more than this many pixels of c (3000).
        num_classes: C (19).
        seed, rank, world_size: stream seed and DDP shard.

    Attributes:
        probs: float64 (C,) the P(c) used for drawing (after exclusions).
        images_with_class: per class, int64 tensor of eligible image indices.
        excluded_classes: classes present in the data but without an eligible image.
    """

    def __init__(
        self,
        stats: Sequence[Mapping[int, int]],
        temperature: float = 0.01,
        min_pixels: int = 3000,
        *,
        num_classes: int = 19,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(seed, rank, world_size)
        if len(stats) == 0:
            raise ValueError("RareClassSampler needs class statistics of at least one image")
        self.num_images = len(stats)
        self.temperature = temperature
        self.min_pixels = min_pixels
        probs = rcs_probabilities(class_pixel_counts(stats, num_classes), temperature)
        members: list[list[int]] = [[] for _ in range(num_classes)]
        for i, counts in enumerate(stats):
            for c, n in counts.items():
                if n > min_pixels:
                    members[int(c)].append(i)
        self.images_with_class = [torch.tensor(m, dtype=torch.int64) for m in members]
        self.excluded_classes = [c for c in range(num_classes) if probs[c] > 0 and not members[c]]
        if self.excluded_classes:
            warnings.warn(
                f"rare class sampling: classes {self.excluded_classes} occur but no image has more than "
                f"{min_pixels} pixels of them; they are never drawn (lower min_pixels to include them)",
                stacklevel=2,
            )
            probs[self.excluded_classes] = 0.0
        if probs.sum() <= 0:
            raise ValueError(f"rare class sampling: no image has more than {min_pixels} pixels of any class")
        self.probs = probs / probs.sum()

    @property
    def epoch_length(self) -> int:
        return self.num_images

    def draw(self, generator: torch.Generator | None = None) -> tuple[int, int]:
        """One RCS draw with ``generator``: returns ``(image index, class)``."""
        cls = int(torch.multinomial(self.probs, 1, generator=generator))
        members = self.images_with_class[cls]
        index = int(members[torch.randint(len(members), (1,), generator=generator)])
        return index, cls

    def _key(self, k: int) -> SampleKey:
        g = _seeded_generator(self.seed, 2, k * self.world_size + self.rank)
        index, cls = self.draw(g)
        return SampleKey(index, int(torch.randint(2**62, (1,), generator=g)), cls)


def rcs_recrop(
    transform: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    image: torch.Tensor,
    label: torch.Tensor,
    cls: int,
    min_crop_pixels: float,
    max_recrops: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a random ``transform`` until the result holds more than ``min_crop_pixels`` of class ``cls``.

    DAFormer's rule: the first result is checked, then up to ``max_recrops`` (10) new ones are drawn;
    the first that passes is returned, else the last one (unchecked).  ``min_crop_pixels`` is
    ``min_pixels * r`` (3000 * 0.5 for 512 crops, 3000 * 2.0 for HRDA's 1024 crops).

    Args:
        transform: ``transform(image, label, generator=...) -> (image, label)``, e.g. a
            :class:`~cluda_kit.data.transforms.PairedTransform`.
        image: uint8 (3, H, W); label: int64 (H, W) trainIds, 255 = ignore.
    """
    out = transform(image, label, generator=generator)
    for _ in range(max_recrops):
        if int((out[1] == cls).sum()) > min_crop_pixels:
            break
        out = transform(image, label, generator=generator)
    return out


class TransformedDataset(Dataset):
    """A dataset whose items are transformed with a per-sample seed, with the RCS re-crop rule.

    Index it with a :class:`SampleKey` from the samplers of this module (or a plain int: then the
    transform uses torch's global generator).  The wrapped ``dataset`` must return untransformed
    samples (``{"image", "label", "name"}``); ``transform(image, label, generator=...)`` is applied
    here.  When the key carries an RCS class and ``min_crop_pixels > 0``, :func:`rcs_recrop` is used.

    Args:
        dataset: returns the common sample dict.
        transform: random paired transform taking a ``generator`` keyword, or None.
        min_crop_pixels: RCS re-crop threshold (``min_pixels * r``); 0 disables re-cropping.
        max_recrops: re-crops after the first crop (10).
    """

    def __init__(
        self,
        dataset: Dataset,
        transform: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
        *,
        min_crop_pixels: float = 0.0,
        max_recrops: int = 10,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.min_crop_pixels = min_crop_pixels
        self.max_recrops = max_recrops

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any]:
        if isinstance(key, SampleKey):
            index, cls, generator = key.index, key.cls, torch.Generator().manual_seed(key.seed)
        else:
            index, cls, generator = int(key), -1, None
        sample = dict(self.dataset[index])
        if self.transform is None:
            return sample
        if cls >= 0 and self.min_crop_pixels > 0:
            image, label = rcs_recrop(
                self.transform, sample["image"], sample["label"], cls, self.min_crop_pixels, self.max_recrops, generator
            )
        else:
            image, label = self.transform(sample["image"], sample["label"], generator=generator)
        sample["image"], sample["label"] = image, label
        return sample

    def class_stats(self) -> list[dict[int, int]]:
        """The wrapped dataset's statistics (uncropped labels)."""
        return self.dataset.class_stats()  # type: ignore[attr-defined]


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        return _batch_len(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return len(batch) if not batch or not isinstance(batch[0], (torch.Tensor, Mapping)) else _batch_len(batch[0])
    raise TypeError(f"cannot tell the batch size of a {type(batch).__name__}")


class Endless:
    """Iterate over a DataLoader forever and keep a resumable state.

    A finite loader is restarted when exhausted.  With a sampler from this module
    (:class:`InfiniteSampler`, :class:`RareClassSampler`; as ``sampler=`` or inside a BatchSampler)
    :meth:`state_dict` returns the sampler state after exactly the samples handed out so far, and
    :meth:`load_state_dict` makes the stream continue from such a state identically, whatever the
    number of workers.  Other samplers iterate fine but have no state (TypeError).
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        sampler = loader.batch_sampler.sampler if loader.batch_sampler is not None else loader.sampler
        self.sampler = sampler if isinstance(sampler, _StreamSampler) else None
        self._iterator: Iterator[Any] | None = None
        self._consumed = 0

    def __iter__(self) -> Endless:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.loader)
            batch = next(self._iterator)
        self._consumed += _batch_len(batch)
        return batch

    def _require_sampler(self) -> _StreamSampler:
        if self.sampler is None:
            raise TypeError(
                "this DataLoader's sampler has no resumable state; build it with "
                "cluda_kit.data.sampling.InfiniteSampler or RareClassSampler"
            )
        return self.sampler

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position"}`` of the sampler after the samples returned so far."""
        sampler = self._require_sampler()
        return sampler.state_at(sampler.count + self._consumed)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from ``state``; in-flight prefetched batches are discarded."""
        self._require_sampler().load_state_dict(state)
        self._iterator = None
        self._consumed = 0


def endless(loader: DataLoader) -> Endless:
    """An endless, resumable iterator over ``loader``; see :class:`Endless`."""
    return Endless(loader)
