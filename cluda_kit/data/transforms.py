"""Paired image/label transforms and ImageNet normalisation.

Every function here works on the tensors of the common sample dict:

* ``image``: ``torch.uint8`` of shape (3, H, W), RGB;
* ``label``: ``torch.int64`` of shape (H, W), trainIds with 255 = ignore.

The geometric transforms follow the DAFormer / mmseg data pipeline that docs/method.md §3 describes:
``Resize(img_scale, keep_ratio=True)`` -> ``RandomCrop(crop_size, cat_max_ratio)`` ->
``RandomFlip(0.5)`` -> ``Pad(crop_size, image 0, label 255)``.  Random functions take an optional
``torch.Generator`` so a data stream can be replayed bit-identically (see :mod:`cluda_kit.data.sampling`).

Float conversion and ImageNet normalisation happen later, on the batch and on the device:
:func:`normalize` maps float images in [0, 1] to the network input, :func:`denormalize` inverts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from cluda_kit.runtime import host_tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "normalize",
    "denormalize",
    "rescale_size",
    "resize",
    "random_crop",
    "random_flip",
    "pad_to",
    "PairedTransform",
]

IMAGENET_MEAN = (123.675, 116.28, 103.53)
"""ImageNet channel means on the 0-255 scale (RGB)."""
IMAGENET_STD = (58.395, 57.12, 57.375)
"""ImageNet channel standard deviations on the 0-255 scale (RGB)."""


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"expected images of shape (..., 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a float image tensor in [0, 1], got dtype {x.dtype}")
    mean = host_tensor(IMAGENET_MEAN, x.device, x.dtype).view(3, 1, 1)
    std = host_tensor(IMAGENET_STD, x.device, x.dtype).view(3, 1, 1)
    return mean, std


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise float RGB images in [0, 1].

    Args:
        x: float images (B, 3, H, W) (or (3, H, W)) with values in [0, 1].

    Returns:
        ``(x * 255 - mean) / std`` with mean (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375),
        same shape, dtype and device as ``x``.
    """
    mean, std = _channel_stats(x)
    return (x * 255.0 - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Invert :func:`normalize`: network input (B, 3, H, W) -> float RGB images in [0, 1] (not clamped)."""
    mean, std = _channel_stats(x)
    return (x * std + mean) / 255.0


def _check_pair(image: torch.Tensor, label: torch.Tensor) -> None:
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image of shape (3, H, W), got {tuple(image.shape)}")
    if label.ndim != 2 or label.shape != image.shape[1:]:
        raise ValueError(
            f"expected a label of shape (H, W) = {tuple(image.shape[1:])} matching the image, "
            f"got {tuple(label.shape)}"
        )


def rescale_size(height: int, width: int, size: tuple[int, int], keep_ratio: bool = True) -> tuple[int, int]:
    """Output (H, W) of :func:`resize` for an input of ``height`` x ``width``.

    With ``keep_ratio`` this is mmcv's ``rescale_size`` as used by mmseg's
    ``Resize(img_scale, keep_ratio=True)``: the scale factor is
    ``min(max(size) / max(H, W), min(size) / min(H, W))`` (long edge to long edge, short edge to short
    edge, so the orientation of ``size`` does not matter) and each side becomes ``int(side * s + 0.5)``.
    GTA5 1914x1052 with size (720, 1280) gives 704x1280; Cityscapes 2048x1024 with (512, 1024) gives
    512x1024.  Without ``keep_ratio`` the output is exactly ``size``.
    """
    out_h, out_w = int(size[0]), int(size[1])
    if not keep_ratio:
        return out_h, out_w
    scale = min(max(out_h, out_w) / max(height, width), min(out_h, out_w) / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_image(image: torch.Tensor, size: tuple[int, int], keep_ratio: bool = True,
                 antialias: bool = False) -> torch.Tensor:
    """Resize a uint8 image (3, H, W) bilinearly as :func:`resize` does, without a label (the
    papers' evaluation resizes the image for the network and keeps the full-resolution label)."""
    out_h, out_w = rescale_size(image.shape[1], image.shape[2], size, keep_ratio)
    if (out_h, out_w) == tuple(image.shape[1:]):
        return image
    return TF.resize(image, [out_h, out_w], interpolation=InterpolationMode.BILINEAR, antialias=antialias)


def resize(
    image: torch.Tensor,
    label: torch.Tensor,
    size: tuple[int, int],
    keep_ratio: bool = True,
    antialias: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize an image (bilinear) and its label (nearest) together.

    Args:
        image: uint8 (3, H, W).
        label: int64 (H, W) trainIds, 255 = ignore.
        size: target (H, W); with ``keep_ratio`` the image is scaled to fit it as
            :func:`rescale_size` describes (mmseg semantics).
        keep_ratio: keep the aspect ratio (DAFormer's setting) or stretch to exactly ``size``.
        antialias: low-pass filter when downscaling. Off by default, like the reference's cv2 resize.

    Returns:
        ``(image, label)`` of shapes (3, H', W') uint8 and (H', W') int64.
    """
    _check_pair(image, label)
    out_h, out_w = rescale_size(image.shape[1], image.shape[2], size, keep_ratio)
    if (out_h, out_w) == tuple(image.shape[1:]):
        return image, label
    image = resize_image(image, size, keep_ratio, antialias)
    # nearest resizing is not implemented for int64; trainIds fit in uint8
    label8 = TF.resize(label.to(torch.uint8)[None], [out_h, out_w], interpolation=InterpolationMode.NEAREST)
    return image, label8[0].to(label.dtype)


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (1,), generator=generator).item())


def _crop_box(height: int, width: int, crop_size: tuple[int, int], generator: torch.Generator | None):
    top = _randint(max(height - crop_size[0], 0) + 1, generator)
    left = _randint(max(width - crop_size[1], 0) + 1, generator)
    return top, left, min(crop_size[0], height), min(crop_size[1], width)


def _dominated(label: torch.Tensor, cat_max_ratio: float, ignore_index: int) -> bool:
    """mmseg's rejection test: True unless >1 class is present and none covers >= cat_max_ratio."""
    valid = label[label != ignore_index]
    counts = torch.bincount(valid.flatten())
    counts = counts[counts > 0]
    return not (counts.numel() > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio)


def random_crop(
    image: torch.Tensor,
    label: torch.Tensor,
    crop_size: tuple[int, int],
    cat_max_ratio: float = 1.0,
    max_tries: int = 10,
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop of at most ``crop_size`` = (h, w), rejecting crops dominated by one class.

    mmseg's ``RandomCrop`` semantics (used by DAFormer with ``cat_max_ratio=0.75`` on the source):
    the top-left corner is uniform over all positions; if ``cat_max_ratio < 1`` a crop is accepted
    when more than one class is present among its non-ignored pixels and the largest class covers
    less than ``cat_max_ratio`` of them; up to ``max_tries`` crops are tested and if none passes,
    one more crop is drawn and kept unchecked.  A side smaller than the crop is kept whole (use
    :func:`pad_to` afterwards).

    Args:
        image: uint8 (3, H, W). label: int64 (H, W), ``ignore_index`` = ignore.

    Returns:
        ``(image, label)`` of shapes (3, min(h, H), min(w, W)) and (min(h, H), min(w, W)).
    """
    _check_pair(image, label)
    height, width = label.shape
    box = _crop_box(height, width, crop_size, generator)
    if cat_max_ratio < 1.0:
        for _ in range(max_tries):
            top, left, h, w = box
            if not _dominated(label[top : top + h, left : left + w], cat_max_ratio, ignore_index):
                break
            box = _crop_box(height, width, crop_size, generator)
    top, left, h, w = box
    return image[:, top : top + h, left : left + w], label[top : top + h, left : left + w]


def random_flip(
    image: torch.Tensor,
    label: torch.Tensor,
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip image (3, H, W) and label (H, W) horizontally together with probability ``p``."""
    _check_pair(image, label)
    if p > 0 and torch.rand((), generator=generator).item() < p:
        return TF.horizontal_flip(image), TF.horizontal_flip(label)
    return image, label


def pad_to(
    image: torch.Tensor,
    label: torch.Tensor,
    size: tuple[int, int],
    image_fill: int = 0,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad on the bottom and right up to at least ``size`` = (h, w): image with ``image_fill``, label with 255.

    mmseg pads after normalisation, so its image fill 0 is the ImageNet mean colour; here images are
    still uint8, so the padded image pixels are black.  Sides already >= the target are unchanged.
    """
    _check_pair(image, label)
    pad_h = max(int(size[0]) - image.shape[1], 0)
    pad_w = max(int(size[1]) - image.shape[2], 0)
    if pad_h == 0 and pad_w == 0:
        return image, label
    padding = [0, 0, pad_w, pad_h]  # left, top, right, bottom
    return TF.pad(image, padding, fill=image_fill), TF.pad(label[None], padding, fill=ignore_index)[0]


def _pair(value: Any, field: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{field} must be an int or an (H, W) pair, got {value!r}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class PairedTransform:
    """The paired training pipeline: resize -> random crop -> random flip -> pad.

    Called as ``transform(image, label, generator=None) -> (image, label)`` on uint8 (3, H, W) /
    int64 (H, W) tensors; picklable, so it can live in DataLoader workers.

    Attributes:
        size: resize target (H, W) or None for no resizing (DAFormer: GTA (720, 1280),
            Cityscapes (512, 1024), SYNTHIA (760, 1280); HRDA doubles these).
        crop: crop size (h, w) (an int means square) or None for no crop (DAFormer: 512).
        flip: horizontal flip probability (0.5).
        cat_max_ratio: reject crops where one class covers >= this share (source 0.75, target 1.0 = off).
        keep_ratio: resize keeping the aspect ratio (mmseg ``keep_ratio=True``).
        max_tries: crops tested for ``cat_max_ratio`` before the fallback crop.
        ignore_index: label value of ignored pixels (255), also the label padding value.
    """

    size: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    flip: float = 0.5
    cat_max_ratio: float = 1.0
    keep_ratio: bool = True
    max_tries: int = 10
    ignore_index: int = 255

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _pair(self.size, "size"))
        object.__setattr__(self, "crop", _pair(self.crop, "crop"))
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"flip is a probability in [0, 1], got {self.flip}")
        if not 0.0 < self.cat_max_ratio <= 1.0:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {self.cat_max_ratio}")

    @classmethod
    def from_config(cls, cfg: Any) -> PairedTransform:
        """Build from a mapping or an object with (a subset of) the attribute names of this class.

        Unknown keys of a mapping are an error; missing ones keep their defaults.
        """
        names = {f for f in cls.__dataclass_fields__}
        if isinstance(cfg, dict):
            unknown = sorted(set(cfg) - names)
            if unknown:
                raise KeyError(f"unknown transform config keys {unknown}; expected some of {sorted(names)}")
            return cls(**cfg)
        return cls(**{n: getattr(cfg, n) for n in names if hasattr(cfg, n)})

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.size is not None:
            image, label = resize(image, label, self.size, keep_ratio=self.keep_ratio)
        if self.crop is not None:
            image, label = random_crop(
                image, label, self.crop, self.cat_max_ratio, self.max_tries, generator, self.ignore_index
            )
        image, label = random_flip(image, label, self.flip, generator)
        if self.crop is not None:
            image, label = pad_to(image, label, self.crop, ignore_index=self.ignore_index)
        return image, label
