from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from cluda_kit.data.sampling import (
    InfiniteSampler,
    RareClassSampler,
    SampleKey,
    TransformedDataset,
    class_pixel_counts,
    endless,
    rcs_probabilities,
    rcs_recrop,
)
from cluda_kit.data.transforms import PairedTransform


def test_rcs_probabilities_hand_computed():
    # pixels: class 0: 100, class 1: 300, class 2: absent, class 3: 600 -> f = 0.1, 0.3, 0.6
    probs = rcs_probabilities([100, 300, 0, 600], temperature=0.5)
    e = [math.exp((1 - 0.1) / 0.5), math.exp((1 - 0.3) / 0.5), math.exp((1 - 0.6) / 0.5)]
    expected = [e[0] / sum(e), e[1] / sum(e), 0.0, e[2] / sum(e)]
    assert probs.dtype == torch.float64
    assert probs.tolist() == pytest.approx(expected, rel=1e-12)
    assert rcs_probabilities({0: 100, 1: 300, 3: 600}, temperature=0.5).tolist() == pytest.approx(expected)


def test_rcs_probabilities_default_temperature_favours_rare_classes():
    probs = rcs_probabilities([9000, 900, 90, 10])  # T = 0.01
    assert probs.argmax().item() == 3 and probs[0] < 1e-30
    # ratio between two classes is exp((f_a - f_b) / T)
    assert (probs[3] / probs[2]).item() == pytest.approx(math.exp((0.009 - 0.001) / 0.01))
    with pytest.raises(ValueError, match="all counts are 0"):
        rcs_probabilities([0, 0])
    with pytest.raises(ValueError, match="temperature"):
        rcs_probabilities([1, 2], temperature=0)


def test_class_pixel_counts_sums_and_rejects_ignore():
    assert class_pixel_counts([{0: 5, 2: 1}, {2: 3}], num_classes=4).tolist() == [5, 0, 4, 0]
    with pytest.raises(ValueError, match="image 1 have class 255"):
        class_pixel_counts([{0: 1}, {255: 4}])


def _stats():
    # 40 images: class 0 everywhere (large), class 1 in every 4th image, class 2 in images 5 and 6,
    # class 3 only in image 7 but below min_pixels (never drawable)
    stats = []
    for i in range(40):
        s = {0: 50_000}
        if i % 4 == 0:
            s[1] = 8000
        if i in (5, 6):
            s[2] = 4000 if i == 5 else 2000  # image 6 is below min_pixels for class 2
        if i == 7:
            s[3] = 100
        stats.append(s)
    return stats


def test_rare_class_sampler_follows_probabilities():
    stats = _stats()
    with pytest.warns(UserWarning, match=r"classes \[3\]"):
        sampler = RareClassSampler(stats, temperature=0.1, min_pixels=3000, num_classes=4, seed=0)
    assert sampler.excluded_classes == [3]
    full = rcs_probabilities(class_pixel_counts(stats, 4), 0.1)
    expected = full.clone()
    expected[3] = 0
    expected /= expected.sum()
    assert torch.allclose(sampler.probs, expected)
    assert sampler.images_with_class[2].tolist() == [5]
    n = 6000
    it = iter(sampler)
    draws = [next(it) for _ in range(n)]
    freq = torch.bincount(torch.tensor([d.cls for d in draws]), minlength=4).double() / n
    sd = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 5 * sd + 1e-9).all(), (freq, expected)
    for d in draws:
        assert stats[d.index].get(d.cls, 0) > 3000  # the image holds > min_pixels of its class
    images_of_1 = {d.index for d in draws if d.cls == 1}
    assert images_of_1 == set(range(0, 40, 4))  # uniform over eligible images: all reached


def test_rare_class_sampler_single_draw_uses_generator():
    sampler = RareClassSampler([{0: 5000, 1: 4000}, {0: 6000}], min_pixels=3000, num_classes=2)
    a = [sampler.draw(torch.Generator().manual_seed(3)) for _ in range(3)]
    b = [sampler.draw(torch.Generator().manual_seed(3)) for _ in range(3)]
    assert a == b
    with pytest.warns(UserWarning, match="never drawn"), pytest.raises(ValueError, match="no image has more than"):
        RareClassSampler([{0: 10}], min_pixels=3000, num_classes=2)


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_infinite_sampler_epochs_are_permutations_and_shards_partition():
    s = InfiniteSampler(10, seed=1)
    keys = _take(s, 30)
    for e in range(3):
        assert sorted(k.index for k in keys[10 * e : 10 * e + 10]) == list(range(10))
    assert [k.index for k in keys[:10]] != [k.index for k in keys[10:20]]  # reshuffled
    assert len({k.seed for k in keys}) == 30
    ranks = [_take(InfiniteSampler(10, seed=1, rank=r, world_size=3), 4) for r in range(3)]
    epoch0 = [k.index for r in ranks for k in r]
    assert set(epoch0) == set(range(10)) and len(epoch0) == 12  # padded by wrapping
    assert _take(InfiniteSampler(5, shuffle=False), 7) == [
        SampleKey(i % 5, k.seed) for i, k in enumerate(_take(InfiniteSampler(5, shuffle=False), 7))
    ]


@pytest.mark.parametrize("make", [lambda: InfiniteSampler(7, seed=4, rank=1, world_size=2), lambda: RareClassSampler(_small_stats(), num_classes=3, min_pixels=10, seed=2)])
def test_sampler_state_round_trip(make):
    ref = _take(make(), 25)
    s = make()
    state = s.state_at(11)
    fresh = make()
    fresh.load_state_dict(state)
    assert _take(fresh, 14) == ref[11:]
    assert set(state) == {"epoch", "position"}


def _small_stats():
    return [{0: 100, 1: 20}, {0: 90, 2: 30}, {1: 50}, {0: 10, 2: 11}]


class _Toy(Dataset):
    """Images whose pixels encode the index; labels: class 1 in a 6x6 corner square for odd indices."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        image = torch.full((3, 16, 16), i, dtype=torch.uint8)
        image[1] = torch.arange(16, dtype=torch.uint8).view(1, 16)
        label = torch.zeros(16, 16, dtype=torch.int64)
        if i % 2:
            label[:6, :6] = 1
        return {"image": image, "label": label, "name": str(i)}

    def class_stats(self):
        return [{0: 256 - 36 * (i % 2), **({1: 36} if i % 2 else {})} for i in range(6)]


def _loader(sampler, workers=0):
    ds = TransformedDataset(_Toy(), PairedTransform(crop=8, flip=0.5), min_crop_pixels=20)
    return DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers)


@pytest.mark.parametrize("workers", [0, 2])
def test_endless_resumes_identically(workers):
    def make_sampler():
        return RareClassSampler(_Toy().class_stats(), temperature=1.0, min_pixels=30, num_classes=2, seed=5)

    stream = endless(_loader(make_sampler(), workers))
    for _ in range(3):
        next(stream)
    state = stream.state_dict()
    assert state == {"epoch": 1, "position": 0}  # 6 samples = one "epoch" of 6 images
    expected = [next(stream) for _ in range(4)]
    resumed = endless(_loader(make_sampler(), workers))
    resumed.load_state_dict(state)
    got = [next(resumed) for _ in range(4)]
    for a, b in zip(expected, got):
        assert a["name"] == b["name"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert resumed.state_dict() == stream.state_dict() == {"epoch": 2, "position": 2}


def test_endless_restarts_finite_loader_and_refuses_state_without_our_sampler():
    loader = DataLoader(list(range(5)), batch_size=2)
    stream = endless(loader)
    assert [next(stream).tolist() for _ in range(4)] == [[0, 1], [2, 3], [4], [0, 1]]
    with pytest.raises(TypeError, match="InfiniteSampler"):
        stream.state_dict()


def test_rcs_recrop_retries_until_class_is_in_the_crop():
    ds = _Toy()
    sample = ds[1]
    t = PairedTransform(crop=8, flip=0.0)
    calls = []

    def counting(image, label, generator=None):
        calls.append(1)
        return t(image, label, generator=generator)

    passed = single = 0
    for seed in range(40):
        calls.clear()
        _, label = rcs_recrop(counting, sample["image"], sample["label"], 1, 8, generator=torch.Generator().manual_seed(seed))
        # slow reference: first of up to 11 crops from the same generator with > 8 pixels of class 1, else the last
        g = torch.Generator().manual_seed(seed)
        for attempt in range(11):
            _, ref = t(sample["image"], sample["label"], generator=g)
            single += int(attempt == 0 and (ref == 1).sum() > 8)
            if (ref == 1).sum() > 8:
                break
        assert torch.equal(label, ref) and len(calls) == attempt + 1
        passed += int((label == 1).sum() > 8)
    assert passed > 34 and single < 20  # one crop holds the class ~25 % of the time, 11 tries ~96 %
    calls.clear()
    rcs_recrop(counting, sample["image"], sample["label"], 1, 1000, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 11  # first crop + 10 re-crops, then gives up


def test_transformed_dataset_seeds_and_passthrough():
    ds = TransformedDataset(_Toy(), PairedTransform(crop=8))
    a, b = ds[SampleKey(2, 123)], ds[SampleKey(2, 123)]
    assert torch.equal(a["image"], b["image"]) and a["image"].shape == (3, 8, 8)
    assert ds[3]["image"].shape == (3, 8, 8) and len(ds) == 6
    assert TransformedDataset(_Toy())[SampleKey(4, 0)]["image"].shape == (3, 16, 16)
    assert ds.class_stats() == _Toy().class_stats()
