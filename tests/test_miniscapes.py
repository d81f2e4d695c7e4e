from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from cluda_kit.data.labels import NUM_CLASSES
from cluda_kit.data.miniscapes import (
    DOMAINS,
    Miniscapes,
    Scene,
    domain_style,
    render_scene,
    sample_scene,
    scene_rngs,
    stats_cache_dir,
)

SMALL = (64, 128)
COMMON = (0, 2, 8, 10, 13)  # road, building, vegetation, sky, car
RARE = (12, 14, 15, 16, 17)  # rider, truck, bus, train, motorcycle


@pytest.fixture(scope="module")
def presence():
    """Fraction of images containing each class, and pixel fractions, over 200 small scenes."""
    out = {}
    for domain in DOMAINS:
        ds = Miniscapes(domain, "train", size=SMALL, length=200)
        stats = ds.class_stats(progress=False)
        pres = np.zeros(NUM_CLASSES)
        pix = np.zeros(NUM_CLASSES)
        for s in stats:
            for c, n in s.items():
                pres[c] += 1
                pix[c] += n
        out[domain] = (pres / len(stats), pix / (len(stats) * SMALL[0] * SMALL[1]))
    return out


def test_determinism_and_distinct_samples():
    for domain in DOMAINS:
        a = Miniscapes(domain, size=SMALL)
        b = Miniscapes(domain, size=SMALL)
        img0, lab0 = a.render(3)
        img1, lab1 = b.render(3)
        assert img0.tobytes() == img1.tobytes() and lab0.tobytes() == lab1.tobytes()
        img2, lab2 = a.render(4)
        assert lab0.tobytes() != lab2.tobytes() and img0.tobytes() != img2.tobytes()
        img3, _ = Miniscapes(domain, size=SMALL, seed=1).render(3)
        assert img3.tobytes() != img0.tobytes()


def test_splits_never_share_scenes():
    train = {Miniscapes("game", "train", size=(32, 64)).render(i, label_only=True)[1].tobytes() for i in range(40)}
    val = {Miniscapes("game", "val", size=(32, 64)).render(i, label_only=True)[1].tobytes() for i in range(40)}
    assert len(train) == 40 and len(val) == 40 and not train & val


def test_same_bytes_in_a_fresh_process_with_another_hash_seed():
    code = (
        "import hashlib; from cluda_kit.data.miniscapes import Miniscapes;"
        "im, lab = Miniscapes('real', 'val', size=(32, 64)).render(7);"
        "print(hashlib.sha1(im.tobytes() + lab.tobytes()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    im, lab = Miniscapes("real", "val", size=(32, 64)).render(7)
    assert out.stdout.strip() == hashlib.sha1(im.tobytes() + lab.tobytes()).hexdigest()


@pytest.mark.parametrize("size", [(32, 64), (64, 128), (96, 160), (128, 256)])
@pytest.mark.parametrize("domain", DOMAINS)
def test_shapes_dtypes_and_label_values(domain, size):
    ds = Miniscapes(domain, "val", size=size, length=3)
    for i in range(3):
        img, lab = ds.render(i)
        assert img.shape == (*size, 3) and img.dtype == np.uint8 and img.flags.c_contiguous
        assert lab.shape == size and lab.dtype == np.uint8
        assert set(np.unique(lab).tolist()) <= set(range(NUM_CLASSES)) | {255}
        _, lab_only = ds.render(i, label_only=True)
        np.testing.assert_array_equal(lab_only, lab)


def test_getitem_sample_dict_and_transform():
    calls = []

    def transform(image, label):
        calls.append((image.shape, label.dtype))
        return image.flip(-1), label.flip(-1)

    ds = Miniscapes("game", size=SMALL, length=50)
    s = ds[42]
    img, lab = ds.render(42)
    assert s["name"] == "game_train_000042"
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, *SMALL)
    assert s["label"].dtype == torch.int64 and s["label"].shape == SMALL
    np.testing.assert_array_equal(s["image"].permute(1, 2, 0).numpy(), img)
    np.testing.assert_array_equal(s["label"].numpy(), lab)
    t = Miniscapes("game", size=SMALL, length=50, transform=transform)[-8]
    assert calls == [((3, *SMALL), torch.int64)] and t["name"] == "game_train_000042"
    np.testing.assert_array_equal(t["label"].numpy(), lab[:, ::-1])


def test_lengths_and_errors():
    assert len(Miniscapes("real")) == 2000 and len(Miniscapes("real", "val")) == 200
    assert len(Miniscapes("sim", length=7)) == 7
    with pytest.raises(IndexError, match="index 7"):
        Miniscapes("sim", length=7, size=SMALL)[7]
    with pytest.raises(ValueError, match="'gta'"):
        Miniscapes("gta")
    with pytest.raises(ValueError, match="'training'"):
        Miniscapes("game", "training")
    with pytest.raises(ValueError, match="gap"):
        Miniscapes("real", gap=-0.1)


def test_class_stats_match_rendered_labels():
    ds = Miniscapes("real", "val", size=SMALL, length=4)
    stats = ds.class_stats(progress=False)
    for i, st in enumerate(stats):
        lab = ds.render(i)[1]
        counts = np.bincount(lab.ravel(), minlength=256)
        assert st == {c: int(counts[c]) for c in range(NUM_CLASSES) if counts[c]}
        assert sum(st.values()) == lab.size - counts[255]


def _loop_stats(ds):
    out = []
    for i in range(len(ds)):
        counts = np.bincount(ds.render(i)[1].ravel(), minlength=256)
        out.append({c: int(counts[c]) for c in range(NUM_CLASSES) if counts[c]})
    return out


def test_class_stats_workers_and_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUDA_KIT_CACHE", str(tmp_path))
    ds = Miniscapes("game", "train", size=SMALL, length=12)
    ref = _loop_stats(ds)
    assert ds.class_stats(progress=False, workers=2) == ref
    files = list(tmp_path.glob("miniscapes_stats_game_train_64x128_*.json"))
    assert len(files) == 1 and len(json.loads(files[0].read_text())) == 12
    # a fresh dataset with the same parameters reads the file and renders nothing
    with monkeypatch.context() as m:
        m.setattr(Miniscapes, "render", lambda *a, **k: pytest.fail("rendered despite the cache"))
        assert Miniscapes("game", "train", size=SMALL, length=12).class_stats(progress=False) == ref
    # every parameter that changes the labels is in the key
    for other in (Miniscapes("game", "train", size=SMALL, length=11),
                  Miniscapes("game", "train", size=SMALL, length=12, seed=1),
                  Miniscapes("game", "train", size=(32, 64), length=12),
                  Miniscapes("game", "val", size=SMALL, length=12)):
        assert other.class_stats(progress=False, workers=0) == _loop_stats(other)
    assert len(list(tmp_path.glob("*.json"))) == 5
    # a damaged cache file is recomputed and rewritten, not trusted
    files[0].write_text('[{"2": 5}]')
    assert Miniscapes("game", "train", size=SMALL, length=12).class_stats(progress=False) == ref
    assert len(json.loads(files[0].read_text())) == 12
    files[0].write_text("not json")
    assert Miniscapes("game", "train", size=SMALL, length=12).class_stats(progress=False) == ref
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setenv("CLUDA_KIT_CACHE", "off")
    assert stats_cache_dir() is None
    # computing the counts leaves the global RNG alone (a cache miss and a hit train alike)
    for workers in (0, 2):
        torch.manual_seed(7)
        Miniscapes("sim", "train", size=SMALL, length=4).class_stats(progress=False, workers=workers)
        after = torch.rand(3)
        torch.manual_seed(7)
        assert torch.equal(after, torch.rand(3))
    monkeypatch.delenv("CLUDA_KIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert stats_cache_dir() == tmp_path / "xdg" / "cluda_kit"


def test_sim_never_has_terrain_truck_train():
    ds = Miniscapes("sim", size=SMALL, length=150)
    for st in ds.class_stats(progress=False):
        assert not {9, 14, 16} & set(st)


def test_long_tail(presence):
    for domain in ("game", "real"):
        pres, pix = presence[domain]
        assert (pres > 0).all(), (domain, np.flatnonzero(pres == 0))  # every class shows up
        assert all(pres[c] > 0.9 for c in COMMON), (domain, pres[list(COMMON)])
        assert all(pres[c] < 0.5 for c in RARE), (domain, pres[list(RARE)])
        assert pix[list(COMMON)].sum() > 0.7
        assert all(pix[c] < 0.01 for c in RARE)
    pres, _ = presence["sim"]
    assert all(pres[c] > 0 for c in range(NUM_CLASSES) if c not in (9, 14, 16))


def test_real_class_balance_differs_moderately(presence):
    game, real = presence["game"][1], presence["real"][1]
    assert real[10] < game[10]  # less sky: taller, denser buildings
    assert real[9] < game[9]  # less terrain
    assert real[11] > game[11]  # more pedestrians
    tv = 0.5 * np.abs(real / real.sum() - game / game.sum()).sum()
    assert 0.03 < tv < 0.25, tv


def test_thin_poles_are_at_least_one_pixel_wide():
    scene = Scene(
        domain="game", camera={}, slot_class=[10, 5], slot_material=[0, 0], slot_shade=[1.0, 1.0],
        slot_instance=[0, 1], slot_flag=[0, 0], n_instances=2,
        prims=[("rect", 0, (-0.1, -0.1, 1.1, 1.1)), ("rect", 1, (0.3001, 0.2, 0.30012, 0.8))],
    )
    _, lab = render_scene(scene, (128, 256), domain_style("game"), np.random.default_rng(0), label_only=True)
    rows = np.flatnonzero((lab == 5).any(axis=1))
    assert rows.size >= 0.6 * 128 - 1 and (lab == 5).sum(axis=1)[rows].min() == 1
    # and poles survive in real layouts at 128x256
    ds = Miniscapes("real", size=(128, 256), length=40)
    assert np.mean([5 in st for st in ds.class_stats(progress=False)]) > 0.9


def test_layout_is_resolution_independent():
    small = Miniscapes("game", size=(64, 128), length=10)
    large = Miniscapes("game", size=(128, 256), length=10)
    agree = []
    for i in range(10):
        a = small.render(i, label_only=True)[1]
        b = large.render(i, label_only=True)[1][::2, ::2]
        agree.append(np.mean(a == b))
    assert np.mean(agree) > 0.9, agree


def _pair(scene_domain: str, i: int, style_a, style_b, size=SMALL):
    layout, _ = scene_rngs(scene_domain, "val", 0, i)
    scene = sample_scene(scene_domain, layout)
    img_a, lab_a = render_scene(scene, size, style_a, scene_rngs(scene_domain, "val", 0, i)[1])
    img_b, lab_b = render_scene(scene, size, style_b, scene_rngs(scene_domain, "val", 0, i)[1])
    np.testing.assert_array_equal(lab_a, lab_b)
    return img_a.astype(np.float64), img_b.astype(np.float64), lab_a


def test_gap_zero_is_game_and_gap_effect_is_monotone():
    game = domain_style("game")
    for i in range(3):
        a, b, _ = _pair("real", i, game, domain_style("real", 0.0))
        np.testing.assert_array_equal(a, b)
    gaps = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
    dist = [np.mean([np.abs(np.subtract(*_pair("real", i, game, domain_style("real", g))[:2])).mean()
                     for i in range(6)]) for g in gaps]
    assert all(d1 > d0 + 2.0 for d0, d1 in zip(dist, dist[1:])), dist
    # smooth: a small change of gap changes the image a little
    a, b, _ = _pair("real", 0, domain_style("real", 0.5), domain_style("real", 0.52))
    assert np.abs(a - b).mean() < 3.0


def _class_means(domain: str, n: int = 30) -> np.ndarray:
    ds = Miniscapes(domain, "val", size=SMALL, length=n)
    s = np.zeros((NUM_CLASSES, 3))
    c = np.zeros(NUM_CLASSES)
    for i in range(n):
        img, lab = ds.render(i)
        for k in np.unique(lab):
            if k < NUM_CLASSES:
                m = lab == k
                s[k] += img[m].sum(0)
                c[k] += m.sum()
    return s / np.maximum(c, 1)[:, None]


def test_real_appearance_is_a_per_class_change_not_a_global_one():
    game, real = _class_means("game"), _class_means("real")
    dist = np.linalg.norm(game - real, axis=1)  # mean class colours, RGB 0..255, default gap
    assert (dist > 25).sum() >= 15, dist.round()
    # the best global affine colour map (more than colour jitter can do) leaves large errors
    A = np.hstack([game, np.ones((NUM_CLASSES, 1))])
    coef, *_ = np.linalg.lstsq(A, real, rcond=None)
    residual = np.linalg.norm(A @ coef - real, axis=1)
    assert np.median(residual) > 12, residual.round()


def test_speed():
    timings = {}
    for domain in DOMAINS:
        ds = Miniscapes(domain, size=(256, 512))
        ds.render(0)  # texture banks
        t = time.process_time()
        for i in range(10):
            ds.render(i)
        timings[domain] = (time.process_time() - t) / 10 * 1e3
    assert timings["game"] < 20 and timings["sim"] < 30 and timings["real"] < 40, timings


def test_scenes_with_more_than_256_surfaces():
    n = 300
    prims = [("rect", 0, (-0.1, -0.1, 1.1, 1.1))]
    prims += [("rect", k, ((k % 20) / 20, (k // 20) / 16, (k % 20 + 1) / 20, (k // 20 + 1) / 16)) for k in range(1, n)]
    classes = [10] + [k % 19 for k in range(1, n)]
    scene = Scene(domain="game", camera={}, prims=prims, slot_class=classes, slot_material=[0] * n,
                  slot_shade=[1.0] * n, slot_instance=list(range(n)), slot_flag=[0] * n, n_instances=n)
    img, lab = render_scene(scene, (64, 80), domain_style("game"), np.random.default_rng(0))
    cell = np.arange(64)[:, None] // 4 * 20 + np.arange(80)[None, :] // 4  # 20 x 16 grid of 4 px cells
    want = np.array(classes)[np.where(cell < n, cell, 0)]
    np.testing.assert_array_equal(lab, want)
    assert img.shape == (64, 80, 3)
