"""Reading a declared multi-seed study (``python -m bench.study``): its paired result and per-class deltas.

    study = read_study("bench/results/study_cluda_750.json")
    paired_result(study, "cluda", "daformer")   # mIoU difference per seed, wins, p; measures per seed
    class_deltas(study, "cluda", "daformer")    # per class: mean change of target silhouette and of IoU
    decision(study, "pipa", "daformer", above="cluda")  # a declared decision rule, criterion by criterion

The JSON is what ``bench/study.py`` writes: ``stats[arm]`` (``miou`` per seed, ``paired`` against the
baseline, ``measures`` with ``*_per_seed``) and ``runs[arm][seed]`` (each run's summary, its per-class
``iou`` and its cluster ``measures``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from cluda_kit.data.labels import CLASSES

__all__ = ["read_study", "paired_result", "class_deltas", "decision"]


def read_study(path: str | Path) -> dict:
    """The study JSON at ``path`` (``FileNotFoundError`` names the file and the command that writes it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no study results; `python -m bench.study <study.yaml>` writes them")
    return json.loads(path.read_text())


def _arm(study: dict, arm: str) -> dict:
    stats = study.get("stats", {})
    if arm not in stats:
        raise KeyError(f"study: no arm {arm!r}; expected one of {', '.join(stats)}")
    return stats[arm]


def paired_result(study: dict, arm: str, baseline: str) -> dict:
    """``arm`` against ``baseline`` over the seeds both ran.

    Returns ``{"seeds", "n", "arm_miou", "baseline_miou"`` (means), ``"delta"`` (mean of the per-seed
    differences arm − baseline, mIoU points), ``"delta_std"``, ``"wins"`` (seeds where the arm is
    higher), ``"p"`` (the study's two-sided paired t-test, None if absent), and for each cluster
    measure m in silhouette, ratio, mixing: ``"<m>_arm"``, ``"<m>_baseline"`` (means) and
    ``"<m>_higher"`` (seeds on which the arm's value is higher)}.
    """
    a, b = _arm(study, arm), _arm(study, baseline)
    seeds = [s for s in a["seeds"] if s in b["seeds"]]
    ia, ib = ({s: v for s, v in zip(x["seeds"], x["miou"])} for x in (a, b))
    deltas = [ia[s] - ib[s] for s in seeds]
    n = len(deltas)
    mean = sum(deltas) / n if n else math.nan
    std = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (n - 1)) if n > 1 else math.nan
    out = {"seeds": seeds, "n": n, "arm_miou": sum(ia[s] for s in seeds) / max(n, 1),
           "baseline_miou": sum(ib[s] for s in seeds) / max(n, 1), "delta": mean, "delta_std": std,
           "wins": sum(d > 0 for d in deltas), "p": a.get("paired", {}).get("p")}
    for m in ("silhouette", "ratio", "mixing"):
        pa, pb = a["measures"][f"{m}_per_seed"], b["measures"][f"{m}_per_seed"]
        xa, xb = dict(zip(a["seeds"], pa)), dict(zip(b["seeds"], pb))
        out[f"{m}_arm"], out[f"{m}_baseline"] = a["measures"][m], b["measures"][m]
        out[f"{m}_higher"] = sum(xa[s] > xb[s] for s in seeds)
    return out


def class_deltas(study: dict, arm: str, baseline: str) -> dict[str, dict[str, float]]:
    """Per class (name), the mean over seeds of ``arm`` − ``baseline``: ``"silhouette"`` (per-class
    silhouette of the target features) and ``"iou"`` (IoU on the target, points), over the seeds
    where both are defined; ``"seeds"`` counts them. Classes with no such seed are left out."""
    runs = study.get("runs", {})
    if arm not in runs or baseline not in runs:
        raise KeyError(f"study: no runs of {arm!r} or {baseline!r}")
    out: dict[str, dict[str, float]] = {}
    for c, name in enumerate(CLASSES):
        ds, di = [], []
        for seed, ra in runs[arm].items():
            rb = runs[baseline].get(seed)
            if rb is None:
                continue
            sa = ra.get("measures", {}).get("target", {}).get("per_class_silhouette", {}).get(str(c))
            sb = rb.get("measures", {}).get("target", {}).get("per_class_silhouette", {}).get(str(c))
            ia, ib = ra.get("iou", {}).get(name), rb.get("iou", {}).get(name)
            if None in (sa, sb, ia, ib) or any(map(math.isnan, (sa, sb, ia, ib))):
                continue
            ds.append(sa - sb)
            di.append(ia - ib)
        if ds:
            out[name] = {"silhouette": sum(ds) / len(ds), "iou": sum(di) / len(di), "seeds": len(ds)}
    return out


def decision(study: dict, arm: str, baseline: str, *, above: str | None = None, min_wins: int = 4,
             alpha: float = 0.05, seeds: int = 5) -> dict:
    """The decision rule the contrastive-variants study declared (bench/study_contrastive.yaml),
    criterion by criterion: paired by seed against ``baseline``, the mean mIoU difference is > 0,
    the arm wins on at least ``min_wins`` seeds, the two-sided paired t-test gives p < ``alpha``,
    and (when ``above`` is given) the arm's mean mIoU is above that arm's over the same seeds.

    Returns ``{"criteria": {name: bool}, "recommended": bool, "complete": bool}``; ``complete`` is
    False while fewer than ``seeds`` paired seeds exist, and nothing is recommended before then."""
    r = paired_result(study, arm, baseline)
    criteria = {"mean difference > 0": r["delta"] > 0,
                f"at least {min_wins} of {seeds} wins": r["wins"] >= min_wins,
                f"p < {alpha:g}": r["p"] is not None and r["p"] < alpha}
    if above is not None:
        o = paired_result(study, above, baseline)
        common = [x for x in r["seeds"] if x in o["seeds"]]
        miou = {name: dict(zip(_arm(study, name)["seeds"], _arm(study, name)["miou"])) for name in (arm, above)}
        criteria[f"mean above {above}"] = bool(common) and (
            sum(miou[arm][x] for x in common) > sum(miou[above][x] for x in common))
    complete = r["n"] >= seeds
    return {"criteria": criteria, "complete": complete, "recommended": complete and all(criteria.values())}

