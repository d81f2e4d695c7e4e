"""MIC masked image consistency: random block masks (docs/method.md §2, MIC; optional).

The target image is colour-jittered and blurred (``mixing.strong_augment``), normalised, and then a
random 70 % of its b×b blocks are zeroed (b = 64, or 32 for 512 crops); the student is trained on it
with the teacher's pseudo-labels of the unmasked image. Masking multiplies the NORMALISED image, so a
masked pixel is 0 in normalised space (the ImageNet mean colour), exactly as in MIC: call
``mask_images`` after ``cluda_kit.data.transforms.normalize``, not on [0, 1] images (there 0 would be
black, a different input).
"""

from __future__ import annotations

import math

import torch

from ..runtime import uniform

__all__ = ["block_mask", "mask_images"]


def block_mask(
    shape_or_images: tuple[int, int, int] | torch.Size | torch.Tensor,
    block_size: int = 64,
    ratio: float = 0.7,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Random block mask: each block_size×block_size block is dropped independently with
    probability ``ratio``.

    Args:
        shape_or_images: (B, H, W) as a tuple, or images (B, C, H, W) whose shape, device and float
            dtype are used.
        block_size: b, the block side in pixels (64; 32 for 512×512 crops). Blocks start at pixel 0;
            when H or W is not a multiple of b the last row/column of blocks is cut to fit.
        ratio: r, the probability of dropping a block (0.7).
        generator: optional random generator (draws happen on its device, CPU without one).
        device: device of the mask when a shape is given (default: CPU); ignored for images.
        dtype: dtype of the mask when a shape is given (float32); ignored for images.

    Returns:
        (B, 1, H, W) mask in {0, 1}, 1 = keep, constant on every block.
    """
    if isinstance(shape_or_images, torch.Tensor):
        if shape_or_images.dim() != 4:
            raise ValueError(f"masking.py: images must be (B, C, H, W); got shape {tuple(shape_or_images.shape)}")
        b, _, h, w = shape_or_images.shape
        device = shape_or_images.device
        if shape_or_images.is_floating_point():
            dtype = shape_or_images.dtype
    else:
        if len(shape_or_images) != 3:
            raise ValueError(f"masking.py: shape must be (B, H, W); got {tuple(shape_or_images)}")
        b, h, w = (int(v) for v in shape_or_images)
        device = torch.device("cpu") if device is None else torch.device(device)
    if block_size < 1:
        raise ValueError(f"masking.py: block_size must be a positive integer; got {block_size}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"masking.py: ratio must be in [0, 1]; got {ratio}")
    gh, gw = math.ceil(h / block_size), math.ceil(w / block_size)
    keep = (uniform((b, 1, gh, gw), generator, device) >= ratio).to(dtype)
    keep = keep.repeat_interleave(block_size, dim=2).repeat_interleave(block_size, dim=3)
    return keep[:, :, :h, :w].contiguous()


def mask_images(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the masked blocks: images (B, C, H, W) NORMALISED, mask (B, 1, H, W) (1 = keep) -> images·mask.

    Apply after normalisation: masked pixels become 0 in normalised space (MIC's behaviour).
    """
    if images.dim() != 4 or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != images.shape[0] \
            or mask.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"masking.py: mask_images expects images (B, C, H, W) and mask (B, 1, H, W); "
            f"got {tuple(images.shape)} and {tuple(mask.shape)}"
        )
    return images * mask.to(images.dtype)
