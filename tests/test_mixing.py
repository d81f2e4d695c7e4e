from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from cluda_kit.uda.mixing import (
    blur_kernel_size,
    class_mix_masks,
    color_jitter,
    gaussian_blur,
    hsv_to_rgb,
    mix,
    rgb_to_hsv,
    strong_augment,
)


def _random_labels(b=4, h=12, w=16, num_classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (b, h, w), generator=g)
    labels[torch.rand(b, h, w, generator=g) < 0.1] = 255
    # image 1 misses some classes so that n differs between images
    labels[1][labels[1] >= 3] = 255
    labels[1][labels[1] == 255] = 2
    return labels


def _chosen_classes(label, mask):
    pasted = set(label[mask[0] > 0].unique().tolist())
    kept = set(label[mask[0] == 0].unique().tolist())
    return pasted, kept


# ---------------------------------------------------------------- ClassMix


def test_class_mix_per_image_selects_half_of_present_classes():
    labels = _random_labels()
    masks = class_mix_masks(labels, per_image=True, generator=torch.Generator().manual_seed(1))
    assert masks.shape == (4, 1, 12, 16) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    for label, mask in zip(labels, masks):
        present = set(label.unique().tolist()) - {255}
        pasted, kept = _chosen_classes(label, mask)
        assert 255 not in pasted
        assert pasted <= present
        assert len(pasted) == math.ceil(len(present) / 2)
        assert not (pasted & kept)  # whole classes are pasted, never parts of one
        assert torch.equal(mask[0], torch.isin(label, torch.tensor(sorted(pasted))).float())


def test_class_mix_release_mode_draws_per_image_from_the_batch_union_with_ignore():
    """per_image=False is the release's get_class_masks: for each image, ⌈n/2⌉ of the n values of
    torch.unique over the whole batch (255 included), drawn independently per image; the image
    pastes its own pixels of the drawn classes."""
    labels = _random_labels()
    union = set(labels.unique().tolist())
    assert 255 in union
    # every image holds every union value in this batch: each pasted set is the whole draw
    full = torch.tensor(sorted(union)).repeat_interleave(3).repeat(2, 1).view(2, 3, -1)
    differ, drew_ignore = False, False
    for seed in range(20):
        masks = class_mix_masks(full, per_image=False, generator=torch.Generator().manual_seed(seed))
        draws = []
        for label, mask in zip(full, masks):
            pasted, kept = _chosen_classes(label, mask)
            assert not (pasted & kept) and len(pasted) == math.ceil(len(union) / 2)
            draws.append(pasted)
            drew_ignore |= 255 in pasted
        differ |= draws[0] != draws[1]
        masks = class_mix_masks(labels, per_image=False, generator=torch.Generator().manual_seed(seed))
        for label, mask in zip(labels, masks):  # with fewer classes per image: a subset of a draw
            pasted, kept = _chosen_classes(label, mask)
            assert not (pasted & kept) and len(pasted) <= math.ceil(len(union) / 2)
    assert differ and drew_ignore  # independent per image; ignore is a class here


def test_class_mix_choice_is_uniform_and_reproducible():
    labels = torch.arange(6).repeat_interleave(4).view(1, 4, 6)  # 6 classes, 4 pixels each
    counts = torch.zeros(6)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        m = class_mix_masks(labels, generator=g)
        counts += torch.stack([m[0, 0][labels[0] == c].mean() for c in range(6)])
    # each class is chosen with probability 3/6
    assert torch.all((counts / 600 - 0.5).abs() < 0.08), counts / 600
    a = class_mix_masks(_random_labels(), generator=torch.Generator().manual_seed(3))
    b = class_mix_masks(_random_labels(), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_class_mix_all_ignore_gives_empty_mask():
    labels = torch.full((2, 5, 5), 255)
    labels[1, 0, 0] = 4  # one class -> ceil(1/2) = 1 chosen
    m = class_mix_masks(labels)
    assert m[0].sum() == 0
    assert m[1, 0, 0, 0] == 1 and m[1].sum() == 1


def test_mix_images_labels_weights_consistent():
    g = torch.Generator().manual_seed(0)
    labels_s = _random_labels(b=2, seed=2)
    labels_t = torch.randint(0, 19, (2, 12, 16), generator=g)
    img_s, img_t = torch.rand(2, 3, 12, 16, generator=g), torch.rand(2, 3, 12, 16, generator=g)
    w_t = torch.full((2, 12, 16), 0.37)
    mask = class_mix_masks(labels_s, generator=g)
    sel = mask[:, 0].bool()

    x = mix(img_s, img_t, mask)
    assert torch.equal(x.permute(0, 2, 3, 1)[sel], img_s.permute(0, 2, 3, 1)[sel])
    assert torch.equal(x.permute(0, 2, 3, 1)[~sel], img_t.permute(0, 2, 3, 1)[~sel])

    y = mix(labels_s, labels_t, mask)
    assert y.dtype == torch.int64
    assert torch.equal(y[sel], labels_s[sel]) and torch.equal(y[~sel], labels_t[~sel])

    w = mix(torch.ones_like(w_t), w_t, mask)
    assert w.dtype == torch.float32
    assert torch.all(w[sel] == 1) and torch.all(w[~sel] == 0.37)


def test_mix_dtype_rules():
    a8, b8 = torch.full((1, 2, 2), 3, dtype=torch.uint8), torch.full((1, 2, 2), 9, dtype=torch.uint8)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    out = mix(a8, b8, mask)
    assert out.dtype == torch.uint8 and out.tolist() == [[[3, 9], [9, 3]]]
    out = mix(a8.long(), b8.long(), mask.bool())
    assert out.dtype == torch.int64 and out.tolist() == [[[3, 9], [9, 3]]]
    a64 = torch.ones(1, 3, 2, 2, dtype=torch.float64)
    assert mix(a64, torch.zeros_like(a64), mask).dtype == torch.float64
    soft = torch.full((1, 1, 2, 2), 0.25)
    assert torch.allclose(mix(torch.ones(1, 2, 2), torch.zeros(1, 2, 2), soft), torch.full((1, 2, 2), 0.25))
    with pytest.raises(ValueError, match="same shape"):
        mix(torch.ones(1, 2, 2), torch.ones(1, 2, 3), mask)


# ---------------------------------------------------------------- colour jitter / blur


def _images(b=3, h=10, w=14, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_rgb_to_hsv_matches_colorsys():
    import colorsys

    x = _images(b=2, h=3, w=4)
    x[0, :, 0, 0] = torch.tensor([1.0, 1.0, 0.0])  # yellow, r = g tie
    x[0, :, 0, 1] = torch.tensor([0.5, 0.5, 0.5])  # grey
    x[0, :, 0, 2] = torch.tensor([0.2, 0.4, 0.8])  # h = (0.2-0.4)/0.6/6 + 4/6
    x[0, :, 0, 3] = 0.0  # black
    hsv = rgb_to_hsv(x)
    assert torch.allclose(hsv[0, :, 0, 2], torch.tensor([0.61111, 0.75, 0.8]), atol=1e-5)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                ref = torch.tensor(colorsys.rgb_to_hsv(*x[b, :, i, j].tolist()))
                assert torch.allclose(hsv[b, :, i, j], ref, atol=1e-6), (b, i, j)


def test_hsv_roundtrip_and_torchvision_hue():
    x = _images()
    x[0, :, :2, :2] = 0.5  # grey pixels
    x[1, :, 0, 0] = torch.tensor([1.0, 1.0, 0.0])  # r = g tie
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-6)
    for f in (-0.5, -0.13, 0.0, 0.2, 0.5):
        ours = color_jitter(x, torch.ones(3), torch.ones(3), torch.ones(3), torch.full((3,), f),
                            torch.tensor([[3, 0, 1, 2]] * 3))
        assert torch.allclose(ours, TF.adjust_hue(x, f), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_color_jitter_matches_torchvision_per_image(seed):
    g = torch.Generator().manual_seed(seed)
    x = _images(b=4, seed=seed)
    bri, con, sat = (0.6 + 0.8 * torch.rand(4, generator=g) for _ in range(3))
    hue = 0.4 * torch.rand(4, generator=g) - 0.2
    order = torch.rand(4, 4, generator=g).argsort(dim=1)
    order[0] = torch.tensor([0, 1, 2, 3])
    order[1] = torch.tensor([3, 2, 1, 0])
    ours = color_jitter(x, bri, con, sat, hue, order)
    ops = {
        0: lambda im, i: TF.adjust_brightness(im, bri[i].item()),
        1: lambda im, i: TF.adjust_contrast(im, con[i].item()),
        2: lambda im, i: TF.adjust_saturation(im, sat[i].item()),
        3: lambda im, i: TF.adjust_hue(im, hue[i].item()),
    }
    for i in range(4):
        ref = x[i]
        for op in order[i].tolist():
            ref = ops[op](ref, i)
        assert torch.allclose(ours[i], ref, atol=1e-5), (i, (ours[i] - ref).abs().max())
    # the order matters (otherwise the per-image order would be untested)
    swapped = color_jitter(x, bri, con, sat, hue, order.flip(1))
    assert not torch.allclose(swapped, ours, atol=1e-4)


def test_color_jitter_rejects_bad_order():
    x = _images(b=1)
    one = torch.ones(1)
    with pytest.raises(ValueError, match="permutations"):
        color_jitter(x, one, one, one, torch.zeros(1), torch.tensor([[0, 0, 1, 2]]))


def test_blur_kernel_size_reference_rule():
    # floor(ceil(0.1 s) - 0.5 + ceil(0.1 s) % 2), the DACS rule, by hand
    assert blur_kernel_size(512) == 51
    assert blur_kernel_size(1024) == 103
    assert blur_kernel_size(256) == 25
    assert blur_kernel_size(128) == 13
    assert blur_kernel_size(14) == 1
    assert blur_kernel_size(30) == 3
    for side in range(1, 300):
        k = blur_kernel_size(side)
        c = math.ceil(0.1 * side)
        assert k % 2 == 1 and k == max(1, math.floor(c - 0.5 + c % 2))


def test_gaussian_blur_matches_torchvision_per_image():
    x = _images(b=3, h=20, w=31)
    sigma = torch.tensor([0.15, 0.6, 1.15])
    out = gaussian_blur(x, sigma, (3, 5))
    for i in range(3):
        ref = TF.gaussian_blur(x[i], kernel_size=[5, 3], sigma=[sigma[i].item()] * 2)
        assert torch.allclose(out[i], ref, atol=1e-6)


def test_strong_augment_off_draws_leave_images_unchanged():
    x = _images()
    out = strong_augment(x, color_jitter_p=0.0, blur_p=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


def test_strong_augment_matches_explicit_composition():
    x = _images(b=3, h=40, w=60)
    seed = 5
    out = strong_augment(x, color_jitter_p=1.0, blur_p=1.0, generator=torch.Generator().manual_seed(seed))
    # replay the documented draw sequence
    g = torch.Generator().manual_seed(seed)
    torch.rand(2, generator=g)
    f = 0.8 + 0.4 * torch.rand(3, 3, generator=g)
    hue = (2 * torch.rand(3, generator=g) - 1) * 0.2
    order = torch.rand(3, 4, generator=g).argsort(dim=1)
    sigma = 0.15 + torch.rand(3, generator=g)
    ref = color_jitter(x, f[:, 0], f[:, 1], f[:, 2], hue, order)
    for i in range(3):
        expected = TF.gaussian_blur(ref[i], kernel_size=[5, 3], sigma=[sigma[i].item()] * 2)
        assert torch.allclose(out[i], expected, atol=1e-5)
    assert out.min() >= 0 and out.max() <= 1


def test_strong_augment_reproducible_probabilities_and_range():
    x = _images(b=2, h=32, w=32)
    a = strong_augment(x, generator=torch.Generator().manual_seed(11))
    b = strong_augment(x, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(0)
    changed, n = 0, 200
    for _ in range(n):
        out = strong_augment(x, blur_p=0.0, generator=g)
        assert out.min() >= 0 and out.max() <= 1
        changed += not torch.equal(out, x)
    assert abs(changed / n - 0.8) < 0.1
    # per-image parameters: with jitter on, the two images get different factors
    same = x[0:1].expand(2, -1, -1, -1).clone()
    out = strong_augment(same, color_jitter_p=1.0, blur_p=0.0, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(out[0], out[1])


def test_strong_augment_rejects_bad_images():
    with pytest.raises(ValueError, match="mixing.py"):
        strong_augment(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))


def test_class_mix_rejects_labels_outside_the_table():
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        class_mix_masks(torch.tensor([[[0, 300]]]))
    with pytest.raises(ValueError, match="min -1"):
        class_mix_masks(torch.tensor([[[-1, 3]]]))


def test_blur_sigma_per_image_or_one_for_the_batch():
    """blur_per_image=False (MIC, as the release blurs its masked batch in one call) blurs every
    image with the same sigma, drawn from the same random numbers as the per-image first image, so
    the generator stream does not depend on the switch."""
    from cluda_kit.uda.mixing import strong_augment

    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 24, 32, generator=g).expand(3, -1, -1, -1).contiguous()  # three equal images
    kw = dict(color_jitter_p=0.0, blur_p=1.0)
    per = strong_augment(img, generator=torch.Generator().manual_seed(5), **kw)
    one = strong_augment(img, generator=torch.Generator().manual_seed(5), blur_per_image=False, **kw)
    assert not torch.allclose(per[0], per[1])  # different sigmas per image
    assert torch.allclose(one[0], one[1]) and torch.allclose(one[1], one[2])
    torch.testing.assert_close(one[0], per[0])  # the batch's sigma is image 0's draw
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    strong_augment(img, generator=g1, **kw)
    strong_augment(img, generator=g2, blur_per_image=False, **kw)
    assert torch.equal(g1.get_state(), g2.get_state())
