"""Feature-space analysis cost: fused-feature extraction of the demo model on miniscapes, and
t-SNE (scikit-learn; openTSNE when installed) and UMAP of N points (5k / 20k / 50k).

The embedded points are class-structured synthetic features (19 Gaussian clusters in D = 64, the
demo's fused width, with per-class spread): the projection's cost depends on N and D, not on where
the features come from, and extracting 50k real cells would dominate the run. Each projection runs
in a fresh subprocess (numba / OpenMP thread pools do not interfere) and is timed once; one that
runs past the limit (300 s; 60 s in ``--quick``) is stopped and reported as such. UMAP's first call
in a process compiles its numba kernels: that one-off cost is measured separately (an UMAP of 300
points first, in the same process) and reported as ``compile_s``, next to the projection itself.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from cluda_kit.analysis.embedding import _opentsne_available, embed

REPO = Path(__file__).resolve().parent.parent


def synthetic_features(n: int, dim: int = 64, classes: int = 19, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    spread = rng.uniform(0.3, 1.0, classes).astype(np.float32)
    return centres[labels] + rng.normal(size=(n, dim)).astype(np.float32) * spread[labels, None], labels


def _project(method: str, backend: str, n: int) -> dict:
    """Runs inside the subprocess."""
    import os

    x, _ = synthetic_features(n)
    compile_s = None
    if backend.startswith("umap"):  # numba compiles on the first call: time it apart
        t0 = time.perf_counter()
        embed(synthetic_features(300, seed=1)[0], method="umap")
        compile_s = time.perf_counter() - t0
    # "umap": exact neighbours (the kit's default from 4096 points); "umap-nndescent": umap-learn's
    # own approximate NN-descent, whose numba code compiles inside the timed call
    kwargs = {"opentsne": {"backend": "opentsne", "n_jobs": os.cpu_count()},
              "sklearn": {"backend": "sklearn"},
              "umap-nndescent": {"precomputed_knn": (None, None, None)}}.get(backend, {})
    t0 = time.perf_counter()
    embed(x, method=method, **kwargs)
    return {"method": method, "backend": backend, "n": n, "seconds": time.perf_counter() - t0,
            "compile_s": compile_s}


def project(method: str, backend: str, n: int, timeout: float) -> dict:
    code = (f"import json; from bench.analysis import _project; "
            f"print('@@' + json.dumps(_project({method!r}, {backend!r}, {n})))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=str(REPO), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "backend": backend, "n": n, "seconds": None,
                "note": f"stopped after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"method": method, "backend": backend, "n": n, "seconds": None,
                "note": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("@@")][-1][2:])


def extraction(quick: bool) -> dict:
    import torch

    from cluda_kit.analysis.features import extract_features
    from cluda_kit.config import load_config
    from cluda_kit.data.miniscapes import Miniscapes
    from cluda_kit.data.transforms import normalize
    from cluda_kit.models import build_segmentor

    cfg = load_config("miniscapes_cluda")
    torch.manual_seed(0)
    model = build_segmentor(cfg.model)
    n_img = 4 if quick else 100
    ds = Miniscapes("real", "val", size=tuple(cfg.data.val.size), length=n_img)
    t0 = time.perf_counter()
    fs = extract_features(model, ds, domain="real", num_samples=n_img, max_per_class=None,
                          normalize=lambda x: normalize(x.float() / 255), progress=False)
    sec = time.perf_counter() - t0
    return {"images": n_img, "size": list(cfg.data.val.size), "points": int(len(fs.labels)),
            "seconds": sec, "images_per_s": n_img / sec}


def run(quick: bool = False) -> dict:
    sizes = [200] if quick else [5000, 20000, 50000]
    timeout = 60.0 if quick else 300.0
    # --quick leaves UMAP out: numba's compilation in a fresh process (30-50 s on a loaded 2-core
    # machine) would dominate a tiny run
    jobs = [] if quick else [("umap", "umap"), ("umap", "umap-nndescent")]
    jobs.append(("tsne", "sklearn"))
    if _opentsne_available():
        jobs.append(("tsne", "opentsne"))
    rows = [project(m, b, n, timeout) for n in sizes for m, b in jobs]
    return {"extraction": extraction(quick), "projection": rows, "dim": 64,
            "opentsne": _opentsne_available()}


def table(r: dict) -> str:
    e = r["extraction"]
    lines = [f"Extraction: {e['images']} images {e['size'][0]}x{e['size'][1]} -> {e['points']} points "
             f"(purity 0.9, all cells) in {e['seconds']:.1f} s ({e['images_per_s']:.1f} images/s).", "",
             f"Projection of N points (D = {r['dim']}, PCA to 50 first; one run each, fresh process):", "",
             "| N | method | backend | seconds | + one-off numba compile (s) |", "|---:|---|---|---:|---:|"]
    for row in r["projection"]:
        sec = f"{row['seconds']:.1f}" if row["seconds"] is not None else row.get("note", "-")
        comp = f"{row['compile_s']:.1f}" if row.get("compile_s") is not None else ""
        lines.append(f"| {row['n']} | {row['method']} | {row['backend']} | {sec} | {comp} |")
    return "\n".join(lines)
