"""Tests of cluda_kit.analysis: feature extraction, projections, cluster measures, explorer widget.

A fake segmentor reads the label back from the image (channel 0 = 10 * trainId, 255 = ignore), so
its fused feature holds the exact class fractions of every 4x4 label patch plus the image index and
cell position: every extracted point can be checked against a slow loop over the label pixels.
"""
from __future__ import annotations

import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cluda_kit.analysis import FeatureSet, cluster_measures, embed, extract_features, measures_table
from cluda_kit.analysis.embedding import UMAP_SMALL_DATA, exact_knn, measures_rows
from cluda_kit.analysis.features import _ClassReservoir, patch_labels

C = 5  # classes of the fake data
STRIDE = 4


class FakeScenes(Dataset):
    """Label maps of pure 4x4 cells with an imbalanced class mix, salted with noise and ignore."""

    def __init__(self, n: int = 10, size: tuple[int, int] = (16, 24), seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        h, w = size[0] // STRIDE, size[1] // STRIDE
        cells = rng.choice(C, size=(n, h, w), p=[0.4, 0.25, 0.2, 0.1, 0.05])
        labels = np.repeat(np.repeat(cells, STRIDE, 1), STRIDE, 2)
        noisy = rng.random(labels.shape) < 0.06
        labels[noisy] = rng.choice(list(range(C)) + [255], size=int(noisy.sum()))
        self.labels = labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        label = torch.from_numpy(self.labels[i])
        image = torch.zeros(3, *label.shape, dtype=torch.uint8)
        image[0] = torch.where(label == 255, 255, label * 10).to(torch.uint8)
        image[1] = i
        return {"image": image, "label": label, "name": f"fake_{i}"}


class LabelReader(nn.Module):
    """fused (B, C+1+3, H/4, W/4) = [class fractions of the patch, ignore fraction, image index,
    cell row, cell column]; logits = the class fractions."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        label = torch.round(x[:, 0] * 255 / 10).long().clamp(max=C)
        fractions = F.avg_pool2d(F.one_hot(label, C + 1).permute(0, 3, 1, 2).float(), STRIDE)
        b, _, h, w = fractions.shape
        image_index = F.avg_pool2d(x[:, 1:2] * 255, STRIDE)
        rows = torch.arange(h, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
        cols = torch.arange(w, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
        fused = torch.cat([fractions, image_index, rows, cols], 1) * self.scale
        return SimpleNamespace(fused=fused, logits=fused[:, :C])


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def reference_cells(ds: FakeScenes | np.ndarray, purity: float | None) -> dict[tuple[int, int, int], int]:
    """{(image, row, col): class} of every qualifying cell, by counting pixels in a loop."""
    out = {}
    for n, label in enumerate(ds.labels if isinstance(ds, FakeScenes) else ds):
        for i in range(label.shape[0] // STRIDE):
            for j in range(label.shape[1] // STRIDE):
                patch = label[i * STRIDE:(i + 1) * STRIDE, j * STRIDE:(j + 1) * STRIDE].ravel().tolist()
                counts = [patch.count(c) for c in range(C)]
                best = max(range(C), key=lambda c: (counts[c], -c))
                if purity is None:
                    ok = counts[best] > patch.count(255)
                else:
                    ok = counts[best] >= purity * len(patch)
                if ok:
                    out[(n, i, j)] = best
    return out


def cells_of(fs: FeatureSet) -> list[tuple[int, int, int]]:
    return [tuple(int(round(v)) for v in row) for row in fs.features[:, C + 1:]]


# ----------------------------------------------------------------------------- features


@pytest.mark.parametrize("purity", [0.9, 0.5, None])
def test_patch_labels_matches_pixel_loop(purity):
    # 2x2 blocks of random classes: 4x4 patches hold quarters, with ties and ignore majorities
    rng = np.random.default_rng(3)
    blocks = rng.choice([0, 1, 2, 255], size=(4, 8, 12), p=[0.4, 0.3, 0.15, 0.15])
    labels = np.repeat(np.repeat(blocks, 2, 1), 2, 2)
    got = patch_labels(torch.from_numpy(labels), (4, 6), purity)
    ref = reference_cells(labels, purity)
    expected = torch.full((4, 4, 6), 255, dtype=torch.int64)
    for (n, i, j), c in ref.items():
        expected[n, i, j] = c
    assert torch.equal(got, expected)
    assert 0 < (got == 255).sum() < got.numel()  # some cells kept, some rejected


def test_extract_purity_and_class_balance():
    ds = FakeScenes(n=10)
    cap = 30
    fs = extract_features(LabelReader(), ds, domain="game", num_samples=None, max_per_class=cap,
                          purity=0.9, normalize=identity, seed=0, progress=False, model_name="fake")
    ref = reference_cells(ds, 0.9)
    available = {c: sum(v == c for v in ref.values()) for c in range(C)}
    assert min(available.values()) < cap < max(available.values())  # the cap binds for some classes only
    assert fs.class_counts() == {c: min(cap, n) for c, n in available.items() if n}
    cells = cells_of(fs)
    assert len(set(cells)) == len(cells)  # no cell sampled twice
    for cell, label, feat in zip(cells, fs.labels, fs.features):
        assert ref[cell] == label  # the sampled cell qualifies and carries its reference class
        assert feat[label] >= 0.9 and feat[:C + 1].argmax() == label
    assert fs.features.dtype == np.float32 and fs.features.shape == (len(fs), C + 4)
    assert list(fs.domain) == ["game"] * len(fs) and fs.model_name == "fake"
    assert np.all(np.diff(fs.labels) >= 0)  # sorted by class


def test_extract_without_cap_keeps_every_qualifying_cell_and_filters_classes():
    ds = FakeScenes(n=6, seed=1)
    model = LabelReader().train()
    for purity in (0.9, None):
        fs = extract_features(model, ds, domain="real", num_samples=None, max_per_class=None, purity=purity,
                              normalize=identity, progress=False)
        ref = reference_cells(ds, purity)
        assert dict(zip(cells_of(fs), fs.labels.tolist())) == ref and len(fs) == len(ref)
    assert model.training  # the training flag is restored
    fs = extract_features(model, ds, domain="real", num_samples=None, max_per_class=None, classes=[1, 3],
                          normalize=identity, progress=False)
    assert set(fs.labels.tolist()) == {1, 3}
    assert len(fs) == sum(v in (1, 3) for v in reference_cells(ds, 0.9).values())


def test_extract_is_seeded_and_dataset_equals_loader():
    ds = FakeScenes(n=10)
    kw = dict(domain="game", max_per_class=8, normalize=identity, progress=False)
    a = extract_features(LabelReader(), ds, num_samples=None, batch_size=3, seed=0, **kw)
    b = extract_features(LabelReader(), ds, num_samples=None, batch_size=3, seed=0, **kw)
    c = extract_features(LabelReader(), ds, num_samples=None, batch_size=3, seed=1, **kw)
    loader = DataLoader(ds, batch_size=3)
    d = extract_features(LabelReader(), loader, num_samples=None,
                         generator=torch.Generator().manual_seed(0), **kw)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.features, d.features)
    assert not np.array_equal(a.features, c.features)


def test_extract_num_samples_uses_that_many_images():
    ds = FakeScenes(n=10)
    for data in (ds, DataLoader(ds, batch_size=4)):
        fs = extract_features(LabelReader(), data, domain="game", num_samples=5, max_per_class=None,
                              normalize=identity, progress=False)
        assert len({cell[0] for cell in cells_of(fs)}) == 5
    first = extract_features(LabelReader(), DataLoader(ds, batch_size=4), domain="game", num_samples=5,
                             max_per_class=None, normalize=identity, progress=False)
    assert {cell[0] for cell in cells_of(first)} == set(range(5))  # a loader gives its first images


def test_extract_default_normalize_is_imagenet():
    transforms = pytest.importorskip("cluda_kit.data.transforms")
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(x)
            return SimpleNamespace(fused=torch.zeros(x.shape[0], 2, x.shape[2] // 4, x.shape[3] // 4),
                                   logits=None)

    ds = FakeScenes(n=2)
    extract_features(Recorder(), ds, domain="game", num_samples=None, progress=False)
    image = ds[0]["image"].float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    assert torch.allclose(seen[0][0], (image - mean) / std, atol=1e-4)
    assert transforms.normalize is not None


def test_extract_rejects_float_images():
    batch = [{"image": torch.rand(1, 3, 8, 8), "label": torch.zeros(1, 8, 8, dtype=torch.int64)}]
    with pytest.raises(ValueError, match="uint8"):
        extract_features(LabelReader(), batch, domain="game", normalize=identity, progress=False)


def test_reservoir_is_a_uniform_sample():
    # 60 items of one class arrive in 6 batches; with cap 6 each must be kept with probability 0.1.
    hits = torch.zeros(60)
    reps = 1500
    gen = torch.Generator().manual_seed(0)
    for _ in range(reps):
        res = _ClassReservoir(6, gen)
        for start in range(0, 60, 10):
            ids = torch.arange(start, start + 10, dtype=torch.float32).unsqueeze(1)
            res.offer(torch.zeros(10, dtype=torch.int64), lambda idx, ids=ids: ids[idx])
        (_, kept), = res.items()
        assert len(kept) == 6 and len(set(kept.squeeze(1).tolist())) == 6
        hits[kept.squeeze(1).long()] += 1
    freq = hits / reps
    # binomial sd = sqrt(0.1 * 0.9 / 1500) ~ 0.0077; per-batch means must match too (no recency bias)
    assert (freq - 0.1).abs().max() < 0.035
    assert (freq.view(6, 10).mean(1) - 0.1).abs().max() < 0.012


def test_featureset_concat_subset_save_load(tmp_path):
    rng = np.random.default_rng(0)
    a = FeatureSet(rng.normal(size=(5, 3)), [0, 1, 1, 2, 2], np.zeros(5), ("game",), "m")
    b = FeatureSet(rng.normal(size=(4, 3)), [1, 1, 2, 3], np.zeros(4), ("real",), "m")
    ab = FeatureSet.concat([a, b])
    assert ab.domain_names == ("game", "real") and len(ab) == 9
    assert list(ab.domain) == ["game"] * 5 + ["real"] * 4
    sub = ab.subset(classes=[1, 2], domains="real")
    assert np.array_equal(sub.features, b.features[:3]) and sub.labels.tolist() == [1, 1, 2]
    assert ab.subset(domains=["game", "real"]).labels.tolist() == ab.labels.tolist()
    ab.save(tmp_path / "f.npz")
    back = FeatureSet.load(tmp_path / "f.npz")
    assert np.array_equal(back.features, ab.features) and np.array_equal(back.labels, ab.labels)
    assert back.domain_names == ab.domain_names and back.model_name == "m"
    assert list(back.domain) == list(ab.domain)
    with pytest.raises(ValueError, match="model names"):
        FeatureSet.concat([a, FeatureSet(b.features, b.labels, b.domain_index, ("real",), "other")])
    with pytest.raises(ValueError, match="unknown domains"):
        ab.subset(domains="sim")


# ----------------------------------------------------------------------------- embedding


def blobs(n_per: int = 50, k: int = 4, dim: int = 64, spread: float = 0.05, seed: int = 0):
    """k tight clusters around orthogonal unit directions: features (k*n_per, dim), labels."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:k] * 3.0
    x = np.concatenate([c + spread * rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


def nn_accuracy(y2: np.ndarray, labels: np.ndarray) -> float:
    d = ((y2[:, None] - y2[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((labels[d.argmin(1)] == labels).mean())


def test_embed_pca_matches_svd():
    x, _ = blobs(n_per=20, dim=10, spread=0.5)
    got = embed(x, "pca", l2_normalize=False)
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc.astype(np.float64), full_matrices=False)
    ref = xc @ vt[:2].T
    for j in range(2):
        sign = np.sign(ref[:, j] @ got[:, j])
        np.testing.assert_allclose(got[:, j], sign * ref[:, j], atol=1e-4)


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embed_shape_determinism_and_separation(method):
    x, labels = blobs()
    a = embed(x, method, seed=0)
    b = embed(x, method, seed=0)
    assert a.shape == (len(x), 2) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert nn_accuracy(a, labels) == 1.0


@pytest.mark.slow
def test_embed_umap_runs_deterministic_and_separates():
    # the first UMAP fit in a process compiles numba code (~15 s of CPU): the one slow test here
    x, labels = blobs()
    a = embed(x, "umap", seed=0)
    b = embed(x, "umap", seed=0)
    assert a.shape == (len(x), 2) and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert nn_accuracy(a, labels) == 1.0
    if "NUMBA_THREADING_LAYER" not in os.environ:  # else the user's choice stands
        import numba

        assert numba.threading_layer() == "workqueue"  # libgomp's pool would slow t-SNE down ~40x


def test_exact_knn_matches_a_loop_reference():
    x = np.random.default_rng(3).normal(size=(60, 5)).astype(np.float32)
    idx, dist = exact_knn(x, 7)
    assert idx.shape == dist.shape == (60, 7) and idx.dtype == np.int64 and dist.dtype == np.float32
    for i in range(60):
        d = np.sqrt(((x.astype(np.float64) - x[i]) ** 2).sum(1))
        order = np.argsort(d, kind="stable")[:7]
        assert order[0] == i and np.array_equal(idx[i], order)
        np.testing.assert_allclose(dist[i], d[order], atol=1e-5)


def test_umap_gets_exact_neighbours_from_4096_points(monkeypatch):
    import umap

    seen, data = [], []

    class Spy(umap.UMAP):
        def fit_transform(self, X, *args, **kwargs):
            seen.append(self.get_params())
            data.append(np.asarray(X, dtype=np.float64))
            return super().fit_transform(X, *args, **kwargs)

    monkeypatch.setattr(umap, "UMAP", Spy)
    x, labels = blobs(n_per=UMAP_SMALL_DATA // 4 + 1)
    a = embed(x, "umap", seed=0, n_epochs=50)
    idx, dist = seen[-1]["precomputed_knn"]
    assert idx.shape == dist.shape == (len(x), 15)
    for i in range(0, len(x), 97):  # the neighbours of what UMAP projects, by brute force
        d = np.sqrt(((data[-1] - data[-1][i]) ** 2).sum(1))
        assert np.array_equal(idx[i], np.argsort(d, kind="stable")[:15])
    assert np.array_equal(a, embed(x, "umap", seed=0, n_epochs=50))
    from sklearn.neighbors import NearestNeighbors

    nearest = NearestNeighbors(n_neighbors=2).fit(a).kneighbors(a)[1][:, 1]
    assert (labels[nearest] == labels).mean() > 0.99
    embed(x[: UMAP_SMALL_DATA - 1], "umap", seed=0, n_epochs=20)  # umap-learn's own exact path
    assert seen[-1]["precomputed_knn"] == (None, None, None)


def test_embed_rejects_bad_input():
    with pytest.raises(ValueError, match="method"):
        embed(np.zeros((10, 3)), "mds")
    with pytest.raises(ValueError, match="N >="):
        embed(np.zeros((2, 3)), "pca")


# ----------------------------------------------------------------------------- cluster measures


def brute_silhouette(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = 1.0 - u @ u.T
    s = np.zeros(len(x))
    for i in range(len(x)):
        same = (labels == labels[i]) & (np.arange(len(x)) != i)
        a = d[i, same].mean() if same.any() else 0.0
        b = min(d[i, labels == c].mean() for c in set(labels.tolist()) if c != labels[i])
        s[i] = 0.0 if not same.any() else (b - a) / max(a, b)
    return s


def brute_mixing(x: np.ndarray, labels: np.ndarray, domains: np.ndarray, k: int) -> dict[int, float]:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = {}
    for c in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == c)
        obs = exp = 0.0
        for i in idx:
            others = [j for j in idx if j != i]
            dist = [np.linalg.norm(u[i] - u[j]) for j in others]
            nearest = [others[t] for t in np.argsort(dist, kind="stable")[:k]]
            obs += np.mean([domains[j] != domains[i] for j in nearest])
            exp += np.mean([domains[j] != domains[i] for j in others])
        out[c] = obs / exp
    return out


def test_cluster_measures_match_brute_force():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5))
    labels = rng.integers(0, 3, 40)
    domains = np.array(["game", "real"])[rng.integers(0, 2, 40)]
    m = cluster_measures(x, labels, domains, k=4)
    s = brute_silhouette(x, labels)
    assert m["silhouette"] == pytest.approx(s.mean(), abs=1e-9)
    for c in range(3):
        assert m["per_class_silhouette"][c] == pytest.approx(s[labels == c].mean(), abs=1e-9)
        assert m["counts"][c] == int((labels == c).sum())
    ref = brute_mixing(x, labels, domains, k=4)
    for c in range(3):
        assert m["domain_mixing"][c] == pytest.approx(ref[c], abs=1e-9)
    assert m["mixing"] == pytest.approx(np.mean(list(ref.values())))


def test_cluster_measures_separation_and_mixing_extremes():
    x, labels = blobs(n_per=60, k=3, dim=16, spread=0.05)
    rng = np.random.default_rng(0)
    interleaved = rng.integers(0, 2, len(x))
    m = cluster_measures(x, labels, interleaved)
    assert m["silhouette"] > 0.9 and min(m["per_class_silhouette"].values()) > 0.9
    assert all(0.75 < v < 1.25 for v in m["domain_mixing"].values())
    # separated: within each class the two domains sit in two distinct sub-clusters
    shifted = x + np.outer(interleaved, np.eye(16)[10]) * 1.0
    m2 = cluster_measures(shifted, labels, interleaved)
    assert all(v < 0.05 for v in m2["domain_mixing"].values())
    one_domain = cluster_measures(x, labels, np.zeros(len(x)))
    assert all(math.isnan(v) for v in one_domain["domain_mixing"].values())
    assert math.isnan(cluster_measures(x[:10], labels[:10])["silhouette"])  # a single class


def test_measures_table_and_rows():
    x, labels = blobs(n_per=20, k=3, dim=8)
    domains = np.arange(len(x)) % 2
    by_model = {"source_only": cluster_measures(x, labels, domains),
                "cluda": cluster_measures(x, labels)}
    rows = measures_rows(by_model, ["road", "sidewalk", "building"])
    assert [r["class"] for r in rows] == ["road", "sidewalk", "building", "mean"]
    assert rows[1]["source_only silhouette"] == by_model["source_only"]["per_class_silhouette"][1]
    assert "cluda mixing" not in rows[0] and "source_only mixing" in rows[0]
    table = measures_table(by_model, ["road", "sidewalk", "building"])
    lines = table.splitlines()
    assert len(lines) == 2 + 4 and lines[0].count("|") == 5
    assert f"{by_model['cluda']['silhouette']:.3f}" in lines[-1]


# ----------------------------------------------------------------------------- explorer widget


PALETTE = np.array([[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153]], np.uint8)
NAMES = ["road", "sidewalk", "building", "wall", "fence"]


def two_domain_set(name: str, seed: int) -> FeatureSet:
    x, labels = blobs(n_per=16, k=4, dim=12, seed=seed)
    return FeatureSet(x, labels, np.arange(len(x)) % 2, ("game", "real"), name)


@pytest.fixture
def explorer():
    from cluda_kit.analysis import FeatureExplorer

    sets = {"source_only": two_domain_set("source_only", 0), "cluda": two_domain_set("cluda", 1)}
    return FeatureExplorer(sets, NAMES, PALETTE, methods=("pca", "tsne"))


def test_explorer_builds_with_css_classes_and_status(explorer):
    box = explorer.widget
    assert "cluda-explorer" in box._dom_classes
    for widget, css in ((explorer.model_select, "cluda-model"), (explorer.method_select, "cluda-method"),
                        (explorer.domain_select, "cluda-domain"), (explorer.class_select, "cluda-classes"),
                        (explorer.plot, "cluda-plot"), (explorer.status, "cluda-status")):
        assert css in widget._dom_classes
    for widget, text in ((explorer.model_select, "model"), (explorer.method_select, "method"),
                         (explorer.domain_select, "domain"), (explorer.class_select, "classes")):
        assert widget.description == text
    assert explorer.domain_select.options == ("game", "real", "both")
    assert explorer.status.value == "pca · source_only · both · 4 classes · 64 points"
    assert explorer.plot.outputs[0]["data"]["image/png"]
    assert explorer.projection_calls == 1


def test_explorer_figure_renders_every_point(explorer):
    from cluda_kit.analysis.widgets import figure_png

    fig = explorer.figure("cluda", "pca", "real", [0, 2])
    drawn = sum(len(coll.get_offsets()) for coll in fig.axes[0].collections)
    fs = explorer.feature_sets["cluda"]
    assert drawn == np.sum(np.isin(fs.labels, [0, 2]) & (fs.domain == "real")) == 16
    png = figure_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["road", "building", "real"]


def test_explorer_reacts_to_controls_and_caches(explorer):
    explorer.method_select.value = "tsne"
    assert explorer.status.value == "tsne · source_only · both · 4 classes · 64 points"
    assert explorer.projection_calls == 2
    explorer.class_select.value = (1, 3)
    assert explorer.status.value == "tsne · source_only · both · 2 classes · 32 points"
    explorer.domain_select.value = "game"
    assert explorer.status.value == "tsne · source_only · game · 2 classes · 16 points"
    explorer.model_select.value = "cluda"
    assert explorer.projection_calls == 5
    explorer.model_select.value = "source_only"
    explorer.domain_select.value = "both"
    explorer.class_select.value = (0, 1, 2, 3)
    explorer.method_select.value = "pca"
    assert explorer.projection_calls == 5  # every selection above was seen before: served from the cache
    assert explorer.status.value == "pca · source_only · both · 4 classes · 64 points"


def test_explorer_without_cache_recomputes_and_reports_errors():
    from cluda_kit.analysis import FeatureExplorer

    ex = FeatureExplorer({"m": two_domain_set("m", 0)}, NAMES, PALETTE, methods=("pca",), cache=False)
    ex.domain_select.value = "real"
    ex.domain_select.value = "both"
    assert ex.projection_calls == 3
    ex.embed_kwargs = {"no_such_option": 1}
    ex.domain_select.value = "game"
    assert ex.status.value.startswith("error: TypeError")
    with pytest.raises(ValueError, match="methods"):
        FeatureExplorer({"m": two_domain_set("m", 0)}, NAMES, PALETTE, methods=("mds",))


def test_tsne_defaults_to_opentsne():
    # openTSNE is a dependency and the faster tool (bench/results/analysis.md): the default backend
    x, _ = blobs()
    assert np.array_equal(embed(x, "tsne"), embed(x, "tsne", backend="opentsne"))
    assert not np.array_equal(embed(x, "tsne"), embed(x, "tsne", backend="sklearn"))


def test_distance_ratio_matches_a_pairwise_loop():
    from cluda_kit.analysis import distance_ratio

    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 6))
    labels = rng.integers(0, 4, 30)
    labels[0] = 9  # a class of one point: nan
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    got = distance_ratio(x, labels)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rest = np.flatnonzero(labels != c)
        if len(idx) < 2:
            assert math.isnan(got[int(c)])
            continue
        intra = np.mean([1 - u[i] @ u[j] for i in idx for j in idx if i != j])
        inter = np.mean([1 - u[i] @ u[j] for i in idx for j in rest])
        assert got[int(c)] == pytest.approx(intra / inter, rel=1e-9)
    m = cluster_measures(x, labels)
    assert m["per_class_ratio"].keys() == got.keys()
    assert all(m["per_class_ratio"][c] == pytest.approx(v, nan_ok=True) for c, v in got.items())
    assert m["ratio"] == pytest.approx(np.nanmean(list(got.values())))
    tight, tl = blobs(n_per=40, k=3, dim=8, spread=0.05)
    assert max(distance_ratio(tight, tl).values()) < 0.05  # compact, separated classes


def _toy_mix_draw(seed, per_image, augment):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 8, 16, generator=g)
    mask = (torch.rand(2, 1, 8, 16, generator=g) > 0.5).float()
    label = torch.full((2, 8, 16), 255)
    label[0, :4] = 0   # road
    label[0, 4:] = 10  # sky
    label[1, :, :8] = 13  # car; the rest stays ignore
    return dict(source=x, target=x.flip(0), mask=mask, mixed=x, mixed_label=label)


def test_mixing_explorer_names_the_classes_of_the_mixed_labels():
    from cluda_kit.analysis.widgets import MixingExplorer
    from cluda_kit.data.labels import CLASSES

    ex = MixingExplorer(_toy_mix_draw, seed=0)
    fig, _ = ex.figure()
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    assert names == [CLASSES[0], CLASSES[10], CLASSES[13], "ignore (255)"]
    assert ex.plot.outputs and ex.plot.outputs[0]["data"]["image/png"]
    # a one-row grid names only the classes of that row
    ex1 = MixingExplorer(_toy_mix_draw, seed=0, max_images=1)
    assert [t.get_text() for t in ex1.figure()[0].legends[0].get_texts()] == [CLASSES[0], CLASSES[10]]


def test_pseudo_label_explorer_legend_colorbar_and_q():
    from cluda_kit.analysis.widgets import PseudoLabelExplorer
    from cluda_kit.data.labels import CLASSES

    probs = torch.zeros(1, 19, 4, 4)
    probs[0, 2, :2] = 0.99   # building, confident
    probs[0, 8, 2:] = 0.6    # vegetation, unsure
    probs[0, 0, 2:] = 0.4
    ex = PseudoLabelExplorer(probs, torch.rand(1, 3, 4, 4), threshold=0.968)
    fig = ex.figure()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [CLASSES[2], CLASSES[8]]
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "confidence p / mask"]
    assert len(bars) == 1
    assert ex.q(0.968) == 0.5 and ex.q(0.5) == 1.0
    ex.slider.value = 0.5
    assert "q = 1.0000" in ex.status.value


def test_extract_records_each_points_image_pixel_and_prediction(tmp_path):
    """Provenance: the image (dataset index, also under a random subset), the centre pixel of the
    cell, and the model's prediction and confidence there; the same seed gives two models the
    same points (what the linked explorer pairs); it survives concat, subset, save and load."""
    ds = FakeScenes(n=12)
    fs = extract_features(LabelReader(), ds, domain="real", num_samples=5, max_per_class=None, purity=0.9,
                          batch_size=2, progress=False, seed=3, normalize=identity)
    cells = np.asarray(cells_of(fs))  # (image, row, col) written into the features by LabelReader
    assert fs.has_provenance and np.array_equal(fs.image_index, cells[:, 0])
    assert len(set(fs.image_index.tolist())) == 5 and set(fs.image_index.tolist()) <= set(range(12))
    assert np.array_equal(fs.pixel, cells[:, 1:] * STRIDE + STRIDE // 2)
    fractions = torch.from_numpy(fs.features[:, :C])
    assert np.array_equal(fs.prediction, fractions.argmax(1).numpy())
    assert np.allclose(fs.confidence, fractions.softmax(1).max(1).values.numpy(), atol=1e-6)
    assert fs.correct.all()  # a pure cell's majority class is its class
    other = extract_features(LabelReader(), ds, domain="real", num_samples=5, max_per_class=None, purity=0.9,
                             batch_size=3, progress=False, seed=3, normalize=identity)
    assert np.array_equal(other.image_index, fs.image_index) and np.array_equal(other.pixel, fs.pixel)
    both = FeatureSet.concat([fs, fs.subset(domains="real")])
    assert np.array_equal(both.pixel[len(fs):], fs.pixel)
    fs.save(tmp_path / "p.npz")
    again = FeatureSet.load(tmp_path / "p.npz")
    assert np.array_equal(again.pixel, fs.pixel) and np.array_equal(again.confidence, fs.confidence)
    plain = FeatureSet(fs.features, fs.labels, fs.domain_index, fs.domain_names, fs.model_name)
    assert not plain.has_provenance and not FeatureSet.concat([plain, fs]).has_provenance
    with pytest.raises(ValueError, match="give all of"):
        FeatureSet(fs.features, fs.labels, fs.domain_index, fs.domain_names, image_index=fs.image_index)
