from __future__ import annotations

import pytest
import torch

from cluda_kit.data.transforms import (
    PairedTransform,
    denormalize,
    normalize,
    pad_to,
    random_crop,
    random_flip,
    rescale_size,
    resize,
)


def _pair(h: int = 32, w: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    label = torch.randint(0, 19, (h, w), generator=g)
    return image, label


def _coords(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose channels encode (row, column, 7) and a label = column, to track pixels."""
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    image = torch.stack([rows, cols, torch.full((h, w), 7)]).to(torch.uint8)
    return image, cols.clone().to(torch.int64)


def test_normalize_golden_values_and_inverse():
    x = torch.zeros(2, 3, 4, 5, dtype=torch.float64)
    x[:, 0] = 1.0  # red channel white, others black
    y = normalize(x)
    assert y[0, 0, 0, 0].item() == pytest.approx((255 - 123.675) / 58.395)
    assert y[0, 1, 0, 0].item() == pytest.approx(-116.28 / 57.12)
    assert y[0, 2, 0, 0].item() == pytest.approx(-103.53 / 57.375)
    r = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(denormalize(normalize(r)), r, atol=1e-6)
    assert normalize(r.half()).dtype == torch.float16
    with pytest.raises(TypeError, match="float"):
        normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3, H, W"):
        normalize(torch.zeros(1, 4, 2, 2))


@pytest.mark.parametrize(
    ("hw", "size", "expected"),
    [
        ((1052, 1914), (720, 1280), (704, 1280)),  # GTA5 -> DAFormer's 1280x720 (keep ratio)
        ((1024, 2048), (512, 1024), (512, 1024)),  # Cityscapes
        ((760, 1280), (760, 1280), (760, 1280)),  # SYNTHIA kept
        ((2048, 1024), (512, 1024), (1024, 512)),  # portrait: long edge to long edge (mmcv)
        ((100, 100), (50, 200), (50, 50)),
    ],
)
def test_rescale_size_matches_mmcv_rule(hw, size, expected):
    assert rescale_size(*hw, size) == expected


def test_rescale_size_without_keep_ratio_is_exact():
    assert rescale_size(1052, 1914, (720, 1280), keep_ratio=False) == (720, 1280)


def test_resize_shapes_nearest_labels_and_identity():
    image, label = _pair(32, 64)
    label[0, 0] = 255
    out_img, out_lbl = resize(image, label, (16, 48))
    assert out_img.shape == (3, 16, 32) and out_img.dtype == torch.uint8
    assert out_lbl.shape == (16, 32) and out_lbl.dtype == torch.int64
    assert set(out_lbl.unique().tolist()) <= set(label.unique().tolist())
    # nearest at exact factor 2 picks every other pixel (floor(i * 2))
    assert torch.equal(out_lbl, label[::2, ::2])
    same_img, same_lbl = resize(image, label, (32, 64))
    assert same_img is image and same_lbl is label
    s_img, s_lbl = resize(image, label, (20, 30), keep_ratio=False)
    assert s_img.shape == (3, 20, 30) and s_lbl.shape == (20, 30)


def test_resize_bilinear_of_constant_image_is_constant():
    image = torch.full((3, 10, 20), 77, dtype=torch.uint8)
    out, _ = resize(image, torch.zeros(10, 20, dtype=torch.int64), (7, 14))
    assert (out == 77).all()


def test_random_crop_takes_a_window_of_the_input():
    image, label = _coords(32, 64)
    g = torch.Generator().manual_seed(3)
    tops, lefts = set(), set()
    for _ in range(600):
        ci, cl = random_crop(image, label, (16, 24), generator=g)
        assert ci.shape == (3, 16, 24) and cl.shape == (16, 24)
        top, left = int(ci[0, 0, 0]), int(ci[1, 0, 0])
        assert torch.equal(ci, image[:, top : top + 16, left : left + 24])
        assert torch.equal(cl, label[top : top + 16, left : left + 24])
        tops.add(top)
        lefts.add(left)
    assert tops == set(range(17)) and lefts == set(range(41))  # every position reachable


def test_random_crop_smaller_input_keeps_the_side():
    image, label = _pair(10, 64)
    ci, cl = random_crop(image, label, (16, 16), generator=torch.Generator().manual_seed(0))
    assert ci.shape == (3, 10, 16) and cl.shape == (10, 16)


def _reference_crop(label, crop, ratio, tries, g):
    """Slow reference of mmseg's RandomCrop rule with the same draws."""
    h, w = label.shape

    def box():
        top = int(torch.randint(max(h - crop[0], 0) + 1, (1,), generator=g))
        left = int(torch.randint(max(w - crop[1], 0) + 1, (1,), generator=g))
        return top, left

    top, left = box()
    for _ in range(tries):
        window = label[top : top + crop[0], left : left + crop[1]].flatten().tolist()
        counts = {}
        for v in window:
            if v != 255:
                counts[v] = counts.get(v, 0) + 1
        if len(counts) > 1 and max(counts.values()) / sum(counts.values()) < ratio:
            break
        top, left = box()
    return top, left


def test_random_crop_cat_max_ratio_is_honoured():
    # left half class 0, right half class 1, a band of ignore: most 16x16 crops hold one class only
    image, _ = _coords(32, 64)
    label = torch.zeros(32, 64, dtype=torch.int64)
    label[:, 32:] = 1
    label[:4] = 255
    accepted = 0
    for seed in range(30):
        ci, cl = random_crop(image, label, (16, 16), cat_max_ratio=0.75, max_tries=50, generator=torch.Generator().manual_seed(seed))
        ref = _reference_crop(label, (16, 16), 0.75, 50, torch.Generator().manual_seed(seed))
        assert (int(ci[0, 0, 0]), int(ci[1, 0, 0])) == ref
        valid = cl[cl != 255]
        counts = torch.bincount(valid, minlength=2)
        assert (counts > 0).all()
        accepted += int(counts.max() / counts.sum() < 0.75)
    assert accepted == 30
    # switched off: crops holding a single class occur
    single = 0
    for seed in range(30):
        _, cl = random_crop(image, label, (16, 16), generator=torch.Generator().manual_seed(seed))
        single += int(cl[cl != 255].unique().numel() == 1)
    assert single > 10


def test_random_crop_gives_up_after_max_tries():
    image, _ = _pair(32, 64)
    label = torch.zeros(32, 64, dtype=torch.int64)  # every crop is dominated
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ci, _ = random_crop(image, label, (16, 16), cat_max_ratio=0.75, max_tries=10, generator=g1)
    assert ci.shape == (3, 16, 16)
    for _ in range(11):  # 1 first crop + 10 retries, two draws each
        torch.randint(17, (1,), generator=g2), torch.randint(49, (1,), generator=g2)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_random_flip_flips_image_and_label_together():
    image, label = _coords(8, 12)
    fi, fl = random_flip(image, label, p=1.0)
    assert torch.equal(fi, image.flip(-1)) and torch.equal(fl, label.flip(-1))
    assert torch.equal(fi[1].long(), fl)  # column channel still equals the label
    same_i, same_l = random_flip(image, label, p=0.0)
    assert torch.equal(same_i, image) and torch.equal(same_l, label)
    g = torch.Generator().manual_seed(0)
    flips = sum(int(random_flip(image, label, p=0.5, generator=g)[1][0, 0] == 11) for _ in range(400))
    assert 160 < flips < 240


def test_pad_to_fills_bottom_right_with_zero_and_ignore():
    image, label = _pair(10, 12)
    pi, pl = pad_to(image, label, (16, 16))
    assert pi.shape == (3, 16, 16) and pl.shape == (16, 16)
    assert torch.equal(pi[:, :10, :12], image) and torch.equal(pl[:10, :12], label)
    assert (pi[:, 10:] == 0).all() and (pi[:, :, 12:] == 0).all()
    assert (pl[10:] == 255).all() and (pl[:, 12:] == 255).all()


def test_paired_transform_pipeline_and_determinism():
    image, label = _pair(48, 96)
    t = PairedTransform(size=(32, 64), crop=24, flip=0.5, cat_max_ratio=0.75)
    a = t(image, label, generator=torch.Generator().manual_seed(11))
    b = t(image, label, generator=torch.Generator().manual_seed(11))
    assert a[0].shape == (3, 24, 24) and a[1].shape == (24, 24)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    small = PairedTransform(crop=(40, 40), flip=0.0)(*_pair(20, 30), generator=torch.Generator().manual_seed(0))
    assert small[0].shape == (3, 40, 40) and (small[1][20:] == 255).all()


def test_paired_transform_from_config():
    t = PairedTransform.from_config({"crop": 512, "cat_max_ratio": 0.75})
    assert t.crop == (512, 512) and t.cat_max_ratio == 0.75 and t.flip == 0.5 and t.size is None
    with pytest.raises(KeyError, match="unknown transform config keys"):
        PairedTransform.from_config({"crops": 3})
    with pytest.raises(ValueError, match="flip"):
        PairedTransform(flip=2.0)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="matching the image"):
        random_flip(torch.zeros(3, 4, 5, dtype=torch.uint8), torch.zeros(4, 6, dtype=torch.int64))
