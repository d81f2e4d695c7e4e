from __future__ import annotations

import pytest
import torch

from cluda_kit.uda.masking import block_mask, mask_images


def test_block_mask_ratio_and_block_constant():
    g = torch.Generator().manual_seed(0)
    mask = block_mask((8, 128, 192), block_size=16, ratio=0.7, generator=g)
    assert mask.shape == (8, 1, 128, 192) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    blocks = mask.view(8, 1, 8, 16, 12, 16)
    per_block = blocks[:, :, :, 0, :, 0]
    # every pixel equals its block's top-left value
    assert torch.equal(blocks, per_block[:, :, :, None, :, None].expand_as(blocks))
    dropped = 1 - per_block.mean().item()  # 768 independent blocks, sd ~ 0.017
    assert abs(dropped - 0.7) < 0.06
    # blocks are drawn independently per image
    assert not torch.equal(mask[0], mask[1])


def test_block_mask_partial_blocks_images_and_generator():
    images = torch.randn(2, 3, 40, 70, dtype=torch.float64)
    m1 = block_mask(images, block_size=32, generator=torch.Generator().manual_seed(3))
    m2 = block_mask(images, block_size=32, generator=torch.Generator().manual_seed(3))
    assert m1.shape == (2, 1, 40, 70) and m1.dtype == torch.float64
    assert torch.equal(m1, m2)
    # a cut block at the border is constant too
    assert m1[:, :, 32:, 64:].unique().numel() <= 2
    for b in range(2):
        assert m1[b, 0, 32:, 64:].unique().numel() == 1
    assert torch.all(block_mask((1, 4, 4), ratio=0.0) == 1)
    assert torch.all(block_mask((1, 4, 4), ratio=1.0) == 0)
    with pytest.raises(ValueError, match="ratio"):
        block_mask((1, 4, 4), ratio=1.5)


def test_mask_images_zeroes_in_normalised_space():
    images = torch.randn(2, 3, 8, 8)
    mask = block_mask(images, block_size=4, generator=torch.Generator().manual_seed(1))
    out = mask_images(images, mask)
    keep = mask.bool().expand_as(images)
    assert torch.equal(out[keep], images[keep])
    assert torch.all(out[~keep] == 0)
    with pytest.raises(ValueError, match="mask_images"):
        mask_images(images, mask[:, :, :4])
