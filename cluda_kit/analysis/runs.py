"""Trained runs as objects to look at: load a run's model, measure its fused-feature clusters.

    model = load_run_model("runs/demo")                  # the student of checkpoints/last.pt
    m = run_feature_measures("runs/demo")                # cached in runs/demo/feature_measures.json
    m["target"]["silhouette"], m["target"]["ratio"], m["both"]["mixing"]
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from torch import nn

from cluda_kit.analysis.embedding import cluster_measures
from cluda_kit.analysis.features import FeatureSet, extract_features
from cluda_kit.fileio import atomic_write_text

__all__ = ["load_run_model", "run_feature_measures", "MEASURES_FILE"]

MEASURES_FILE = "feature_measures.json"


def load_run_model(run_dir: str | Path, which: str = "student") -> nn.Module:
    """The ``student`` (or EMA ``teacher``) of ``RUN_DIR/checkpoints/last.pt``, in eval mode on the
    CPU, built from the run's own ``config.yaml`` (no pretrained file is read: the checkpoint
    holds every weight)."""
    from cluda_kit.config import load_config
    from cluda_kit.models import build_segmentor

    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no checkpoint; train the run first")
    cfg = load_config(run_dir / "config.yaml", overrides=["model.pretrained="])
    model = build_segmentor(cfg.model)
    from cluda_kit.engine.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt)  # tensors and plain data only (weights_only=True)
    if which not in state or state[which] is None:
        raise KeyError(f"{ckpt}: no {which!r} weights; it has {sorted(k for k in state if k in ('student', 'teacher'))}")
    model.load_state_dict(state[which])
    return model.eval()


def _clean(obj):
    """JSON-safe: nan -> None, numpy scalars -> float, int keys -> str."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else float(obj)
    return obj


def run_feature_measures(run_dir: str | Path, *, num_samples: int = 40, max_per_class: int = 150,
                         size: tuple[int, int] = (128, 256), seed: int = 0,
                         recompute: bool = False) -> dict:
    """Cluster measures of a run's fused features on miniscapes val scenes.

    Features of the run's student on ``num_samples`` scenes of ``game`` val (source) and ``real``
    val (target), purity-filtered cells, at most ``max_per_class`` per class and domain (the same
    cells for every run: the draws are seeded). Returns (and caches in ``RUN_DIR/`` +
    :data:`MEASURES_FILE`, keyed by the arguments)::

        {"target": cluster_measures(real features)          # per-class silhouette and
                                                             # intra/inter distance ratio
         "both": cluster_measures(game + real, domains)      # + per-class domain mixing
         "settings": {...}}

    Class keys are strings (JSON); nan is stored as None. Only classes with at least 5 points in
    each domain enter "both".
    """
    from cluda_kit.data.miniscapes import Miniscapes

    run_dir = Path(run_dir)
    settings = {"num_samples": num_samples, "max_per_class": max_per_class, "size": list(size),
                "seed": seed, "purity": 0.9}
    cache = run_dir / MEASURES_FILE
    if cache.is_file() and not recompute:
        data = json.loads(cache.read_text())
        if data.get("settings") == settings:
            return data
    model = load_run_model(run_dir)
    parts = [extract_features(model, Miniscapes(d, "val", size=size, length=num_samples), domain=d,
                              num_samples=num_samples, max_per_class=max_per_class, purity=0.9,
                              seed=seed, progress=False) for d in ("game", "real")]
    both = FeatureSet.concat(parts)
    target = parts[1]
    keep = [c for c in both.classes if min(both.class_counts(d).get(c, 0) for d in both.domain_names) >= 5]
    shared = both.subset(classes=keep)
    data = {"settings": settings,
            "target": _clean(cluster_measures(target.features, target.labels)),
            "both": _clean(cluster_measures(shared.features, shared.labels, shared.domain))}
    atomic_write_text(cache, json.dumps(data, indent=1))
    return data
