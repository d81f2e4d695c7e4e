"""2-D projections of feature vectors and measures of how well they cluster by class and mix by domain.

``embed`` projects (N, D) features with t-SNE, UMAP or PCA. ``cluster_measures`` summarises a
feature set per class: the silhouette (how compact and separated the class is, cosine distance on
the normalised features, the geometry the CLUDA loss shapes) and a domain-mixing score (how much the
source and target points of a class are interleaved). scikit-learn and umap-learn are imported only
when used.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

METHODS = ("tsne", "umap", "pca")


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _prefer_numba_workqueue() -> None:
    """Make numba (used by UMAP) run on its own ``workqueue`` threads rather than the system
    OpenMP runtime, unless the user chose a layer or numba already started one.

    Once numba starts the system libgomp pool, scikit-learn's bundled OpenMP (t-SNE's gradient)
    slows down many times over in the same process (measured: a 64-point t-SNE 0.2 s -> 9 s of
    CPU). UMAP with a ``random_state`` is single-threaded anyway, so nothing is lost.
    """
    import os

    from numba.core import config
    from numba.np.ufunc import parallel

    if "NUMBA_THREADING_LAYER" not in os.environ and not parallel._is_initialized:
        config.THREADING_LAYER = "workqueue"


TSNE_BACKENDS = ("auto", "sklearn", "opentsne")


def _opentsne_available() -> bool:
    try:
        import openTSNE  # noqa: F401
    except ImportError:
        return False
    return True


def embed(features: np.ndarray, method: str = "tsne", *, n_components: int = 2, seed: int = 0,
          l2_normalize: bool = True, pca_dims: int | None = 50, backend: str = "auto",
          **kwargs) -> np.ndarray:
    """Project features (N, D) to (N, n_components) float32.

    Args:
        features: (N, D) feature vectors (numpy or anything ``np.asarray`` accepts).
        method: ``"tsne"`` (see ``backend``; PCA initialisation, automatic learning rate,
            perplexity 30 clipped to (N - 1) / 3), ``"umap"`` (umap-learn, ``n_neighbors=15``,
            ``min_dist=0.1``; exact neighbours from :func:`exact_knn` for 4096 to 100k points) or
            ``"pca"`` (scikit-learn).
        n_components: output dimension.
        seed: random state. All three methods are deterministic for a fixed seed on one machine:
            PCA uses the exact SVD; t-SNE (either backend) is seeded by ``random_state``; UMAP with a
            ``random_state`` runs single-threaded and reproducibly (slower than its parallel mode).
            UMAP makes numba use its ``workqueue`` threading layer (see
            :func:`_prefer_numba_workqueue`) so that t-SNE stays fast in the same process.
        l2_normalize: project the unit-normalised features (the cosine geometry of the contrastive
            loss) instead of the raw ones.
        pca_dims: for t-SNE and UMAP, first reduce to this many dimensions with PCA when D is
            larger (speed; None = never).
        backend: t-SNE implementation: ``"opentsne"`` (openTSNE: FFT-accelerated gradients, PCA
            initialisation, learning rate N/12, the same perplexity, all cores: ``n_jobs=-1``),
            ``"sklearn"`` (Barnes-Hut) or ``"auto"`` (the default: openTSNE when importable, else
            scikit-learn). openTSNE is the default because it is the faster tool: 20k points in
            45 s against scikit-learn's 122 s, 50k in 75 s against > 300 s, on the 2-core test
            machine (``python -m bench --only analysis``, bench/results/analysis.md). The two give
            different (equally valid) layouts; each is deterministic for a fixed seed and core
            count.
        **kwargs: passed to the estimator (``TSNE`` of scikit-learn or openTSNE, ``umap.UMAP`` or
            ``PCA``), overriding the defaults above.
    """
    x = np.asarray(features, dtype=np.float32)
    if method not in METHODS:
        raise ValueError(f"embed: method must be one of {METHODS}, got {method!r}")
    if x.ndim != 2 or x.shape[0] < max(n_components + 1, 3):
        raise ValueError(f"embed: expected features (N, D) with N >= {max(n_components + 1, 3)}, "
                         f"got shape {x.shape}")
    if l2_normalize:
        x = _l2_normalize(x)
    from sklearn.decomposition import PCA

    if method == "pca":
        return PCA(**{"n_components": n_components, "svd_solver": "full", "random_state": seed, **kwargs}
                   ).fit_transform(x).astype(np.float32)
    if pca_dims is not None and x.shape[1] > pca_dims:
        x = PCA(n_components=min(pca_dims, x.shape[0]), svd_solver="full", random_state=seed).fit_transform(x)
    if backend not in TSNE_BACKENDS:
        raise ValueError(f"embed: backend must be one of {TSNE_BACKENDS}, got {backend!r}")
    if method == "tsne" and (backend == "opentsne" or (backend == "auto" and _opentsne_available())):
        from openTSNE import TSNE as OpenTSNE

        params = {"n_components": n_components, "initialization": "pca", "learning_rate": "auto",
                  "perplexity": min(30.0, (x.shape[0] - 1) / 3), "random_state": seed, "n_jobs": -1,
                  "verbose": False, **kwargs}
        return np.asarray(OpenTSNE(**params).fit(np.ascontiguousarray(x, dtype=np.float64)),
                          dtype=np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        params = {"n_components": n_components, "init": "pca", "learning_rate": "auto",
                  "perplexity": min(30.0, (x.shape[0] - 1) / 3), "random_state": seed, **kwargs}
        return TSNE(**params).fit_transform(x).astype(np.float32)
    _prefer_numba_workqueue()
    import umap

    params = {"n_components": n_components, "n_neighbors": min(15, x.shape[0] - 1), "min_dist": 0.1,
              "random_state": seed, **kwargs}
    if (UMAP_SMALL_DATA <= x.shape[0] <= EXACT_KNN_MAX and "precomputed_knn" not in kwargs
            and params.get("metric", "euclidean") == "euclidean"):
        params["precomputed_knn"] = exact_knn(x, params["n_neighbors"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value .* overridden", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
        return umap.UMAP(**params).fit_transform(x).astype(np.float32)


UMAP_SMALL_DATA = 4096
"""Below this many points umap-learn computes exact neighbours itself (its small-data path)."""
EXACT_KNN_MAX = 100_000
"""Up to this many points UMAP gets exact neighbours from :func:`exact_knn`; above, NN-descent."""


def exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (Euclidean, each point its own first neighbour) of x (N, D):
    (indices (N, k) int64, distances (N, k) float32), by scikit-learn's chunked brute force.

    For UMAP's ``precomputed_knn``: exact instead of NN-descent's approximate neighbours, and
    faster up to ~10^5 points: UMAP of 20k points took 14.0 s with these against 42.6 s with
    NN-descent, 50k 40.0 s against 69.0 s (plus a one-off numba compilation of 13-16 s in a fresh
    process either way; ``python -m bench --only analysis``, bench/results/analysis.md).
    """
    from sklearn.neighbors import NearestNeighbors

    dist, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors(x)
    return idx.astype(np.int64), dist.astype(np.float32)


def _other_domain_fraction(x: np.ndarray, domains: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For points x (n, D) of one class: the observed fraction of each point's k nearest
    neighbours (self excluded) from another domain, and the fraction expected if domains were
    perfectly mixed, (n_other) / (n - 1)."""
    from sklearn.neighbors import NearestNeighbors

    n = len(x)
    kk = min(k, n - 1)
    idx = NearestNeighbors(n_neighbors=kk + 1).fit(x).kneighbors(x, return_distance=False)
    is_self = idx == np.arange(n)[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")  # drop self (or the farthest if self is tied out)
    neighbours = np.take_along_axis(idx, order, axis=1)[:, :kk]
    observed = (domains[neighbours] != domains[:, None]).mean(axis=1)
    _, inverse, counts = np.unique(domains, return_inverse=True, return_counts=True)
    expected = (n - counts[inverse]) / (n - 1)
    return observed, expected


def distance_ratio(features: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """Intra/inter-class cosine-distance ratio of each class of features (N, D) with labels (N,).

    For class c: the mean cosine distance 1 - cos(x_i, x_j) over pairs of distinct points of c,
    divided by the mean over pairs (i in c, j not in c). Below 1 the class is tighter than its
    distance to the rest; 0 = collapsed to one direction. Exact, O(N D): with unit vectors the
    sum of cosines over all pairs of a set is |sum x|^2 (minus the N self-pairs within a class).
    nan for a class with one point, or when there is no other class.
    """
    x = _l2_normalize(np.asarray(features, dtype=np.float64))
    labels = np.asarray(labels)
    total = x.sum(0)
    out = {}
    for c in np.unique(labels):
        xc = x[labels == c]
        n, m = len(xc), len(x) - len(xc)
        if n < 2 or m == 0:
            out[int(c)] = math.nan
            continue
        sc = xc.sum(0)
        intra = 1 - (sc @ sc - n) / (n * (n - 1))
        inter = 1 - (sc @ (total - sc)) / (n * m)
        out[int(c)] = float(intra / inter) if inter > 0 else math.nan
    return out


def cluster_measures(features: np.ndarray, labels: np.ndarray, domains: np.ndarray | None = None, *,
                     k: int = 10) -> dict:
    """Silhouette per class and domain mixing per class of features (N, D) with labels (N,).

    Features are L2-normalised first. Silhouettes use the cosine distance (``sklearn``'s
    ``silhouette_samples``, O(N^2) time, chunked memory). The domain-mixing score of class c is
    Σ_i observed_i / Σ_i expected_i over the points i of c, where observed_i is the fraction of i's
    k nearest neighbours *within class c* that come from another domain than i, and expected_i is
    that fraction under perfect mixing, (n_c - n_{c, domain(i)}) / (n_c - 1): 1 = mixed as if at
    random, 0 = the domains are separated (above 1 = more interleaved than random).

    The intra/inter-class distance ratio of class c is :func:`distance_ratio`.

    Args:
        features: (N, D).
        labels: (N,) class ids.
        domains: (N,) domain of each point (names or indices); None = no mixing scores.
        k: neighbours for the mixing score (fewer for classes with at most k points).

    Returns:
        ``{"silhouette": float, "per_class_silhouette": {c: float}, "counts": {c: int},
        "per_class_ratio": {c: float}, "ratio": float (mean over classes)}`` and, with
        ``domains``, ``"domain_mixing": {c: float}`` (nan for a class seen in one domain only) and
        ``"mixing": float`` (mean over classes with a score). Silhouettes are nan with fewer than
        two classes.
    """
    from sklearn.metrics import silhouette_samples

    x = _l2_normalize(np.asarray(features, dtype=np.float64))
    labels = np.asarray(labels)
    if x.ndim != 2 or labels.shape != (len(x),):
        raise ValueError(f"cluster_measures: expected features (N, D) and labels (N,), got {x.shape} "
                         f"and {labels.shape}")
    classes, counts = np.unique(labels, return_counts=True)
    if 2 <= len(classes) < len(x):
        samples = silhouette_samples(x, labels, metric="cosine")
        per_class = {int(c): float(samples[labels == c].mean()) for c in classes}
        overall = float(samples.mean())
    else:
        per_class = {int(c): math.nan for c in classes}
        overall = math.nan
    ratios = distance_ratio(x, labels)
    finite = [v for v in ratios.values() if not math.isnan(v)]
    out: dict = {"silhouette": overall, "per_class_silhouette": per_class,
                 "counts": {int(c): int(n) for c, n in zip(classes, counts)},
                 "per_class_ratio": ratios, "ratio": float(np.mean(finite)) if finite else math.nan}
    if domains is not None:
        domains = np.asarray(domains)
        if domains.shape != labels.shape:
            raise ValueError(f"cluster_measures: expected domains (N,) = {labels.shape}, got {domains.shape}")
        mixing = {}
        for c in classes:
            sel = labels == c
            if len(np.unique(domains[sel])) < 2:
                mixing[int(c)] = math.nan
                continue
            observed, expected = _other_domain_fraction(x[sel], domains[sel], k)
            mixing[int(c)] = float(observed.sum() / expected.sum())
        out["domain_mixing"] = mixing
        scored = [v for v in mixing.values() if not math.isnan(v)]
        out["mixing"] = float(np.mean(scored)) if scored else math.nan
    return out


def measures_rows(measures_by_model: Mapping[str, Mapping], class_names: Sequence[str] | None = None
                  ) -> list[dict]:
    """One row per class (plus a final ``"mean"`` row) with, per model, the class silhouette
    ``"<model> silhouette"`` and mixing ``"<model> mixing"`` (mixing only if measured)."""
    classes = sorted({c for m in measures_by_model.values() for c in m["per_class_silhouette"]})
    rows = []
    for c in classes:
        row: dict = {"class": class_names[c] if class_names is not None else str(c)}
        for name, m in measures_by_model.items():
            row[f"{name} silhouette"] = m["per_class_silhouette"].get(c, math.nan)
            if "domain_mixing" in m:
                row[f"{name} mixing"] = m["domain_mixing"].get(c, math.nan)
        rows.append(row)
    mean: dict = {"class": "mean"}
    for name, m in measures_by_model.items():
        mean[f"{name} silhouette"] = m["silhouette"]
        if "mixing" in m:
            mean[f"{name} mixing"] = m["mixing"]
    rows.append(mean)
    return rows


def measures_table(measures_by_model: Mapping[str, Mapping], class_names: Sequence[str] | None = None,
                   digits: int = 3) -> str:
    """Markdown table of :func:`measures_rows`: classes down, per model silhouette / mixing across.
    The ``mean`` row holds the overall silhouette (mean over points) and the mean class mixing."""
    rows = measures_rows(measures_by_model, class_names)
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [row["class"]] + [f"{row.get(h, math.nan):.{digits}f}" for h in header[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
