"""Reading a declared study (cluda_kit.analysis.studies) against numbers worked out independently."""
import math

import pytest
from scipy import stats

from cluda_kit.analysis.studies import class_deltas, decision, paired_result


def _study(arms: dict[str, list[float]], p: dict[str, float]) -> dict:
    seeds = list(range(len(next(iter(arms.values())))))
    measures = {"silhouette": 0.1, "ratio": 0.5, "mixing": 0.2}

    def stat(name, m):
        return {"seeds": seeds, "miou": m, "paired": {"p": p.get(name)},
                "measures": {**measures, **{f"{k}_per_seed": [v + 0.01 * s * (name == "b") for s in seeds]
                                            for k, v in measures.items()}}}

    runs = {name: {str(s): {"iou": {"road": m[s], "pole": 2 * m[s]},
                            "measures": {"target": {"per_class_silhouette": {"0": 0.1 * s, "5": float("nan")}}}}
                   for s in seeds} for name, m in arms.items()}
    return {"stats": {name: stat(name, m) for name, m in arms.items()}, "runs": runs}


def test_paired_result_against_a_hand_count():
    base, arm = [24.0, 24.5, 24.2, 24.4, 24.1], [25.0, 24.4, 25.2, 25.4, 25.0]
    study = _study({"base": base, "b": arm}, {"b": stats.ttest_rel(arm, base).pvalue})
    r = paired_result(study, "b", "base")
    d = [a - b for a, b in zip(arm, base)]
    assert r["n"] == 5 and r["wins"] == 4
    assert r["delta"] == pytest.approx(sum(d) / 5)
    assert r["delta_std"] == pytest.approx(stats.tstd(d))
    assert r["silhouette_higher"] == 4  # arm b's per-seed silhouette is higher on seeds 1-4


def test_decision_rule_criterion_by_criterion():
    base = [24.0, 24.5, 24.2, 24.4, 24.1]
    good = [25.0, 24.4, 25.2, 25.4, 25.0]    # 4 of 5 wins
    other = [25.5, 25.5, 25.5, 25.5, 25.5]
    p = {"good": stats.ttest_rel(good, base).pvalue, "other": stats.ttest_rel(other, base).pvalue}
    study = _study({"base": base, "good": good, "other": other}, p)
    assert p["good"] < 0.05
    d = decision(study, "good", "base")
    assert d["complete"] and d["recommended"] and all(d["criteria"].values())
    d = decision(study, "good", "base", above="other")  # other's mean is higher: not recommended
    assert d["criteria"]["mean above other"] is False and not d["recommended"]
    short = _study({"base": base[:2], "good": good[:2]}, {"good": 0.01})
    d = decision(short, "good", "base")
    assert not d["complete"] and not d["recommended"] and not d["criteria"]["at least 4 of 5 wins"]


def test_class_deltas_skip_undefined_silhouettes():
    study = _study({"base": [20.0, 21.0], "b": [22.0, 21.5]}, {})
    out = class_deltas(study, "b", "base")
    assert set(out) == {"road"}  # class 5 (pole) has a NaN silhouette on every seed
    assert out["road"]["iou"] == pytest.approx(((22 - 20) + (21.5 - 21)) / 2)
    assert out["road"]["silhouette"] == 0.0 and out["road"]["seeds"] == 2
    assert not math.isnan(out["road"]["iou"])
