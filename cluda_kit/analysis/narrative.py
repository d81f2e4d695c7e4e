"""Sentences written from numbers: the conclusions the notebooks print, so that no claim can say more
than the numbers under it.

    feature_space_conclusion(values, iou, labels)   # notebook 06: mIoU, cluster measures, alignment
    study_sentence(paired_result(study, "cluda", "daformer"), "CLUDA", "DAFormer")

``values[run]`` holds a run's ``miou`` and its cluster measures ``silhouette``, ``ratio``, ``mixing``
and ``class_silhouette`` ({trainId: value}); ``iou[run]`` its per-class IoU ({class name: value or
None}); ``labels[run]`` its display name. The runs are ``source_only``, ``daformer`` and ``cluda``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from cluda_kit.data.labels import CLASSES

__all__ = ["SMALL", "feature_space_conclusion", "study_sentence"]

SMALL = {"miou": 1.0, "silhouette": 0.02, "ratio": 0.02, "mixing": 0.05}
"""Below these margins a difference between two runs counts as small (mIoU points; measure units)."""


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def feature_space_conclusion(values: Mapping[str, Mapping], iou: Mapping[str, Mapping[str, float | None]],
                             labels: Mapping[str, str], *, small: Mapping[str, float] = SMALL,
                             trained_here: Iterable[str] = (), equal: bool = True) -> str:
    """The conclusion of notebook 06 as markdown paragraphs: which run has the highest mIoU and by how
    much, CLUDA's classes above/below DAFormer's, the tightest target clusters by silhouette and
    intra/inter ratio, CLUDA vs DAFormer on each measure (each difference marked small below its
    margin in ``small``), the largest per-class silhouette gain and loss, and the domain mixing
    against source-only; caveats for runs ``trained_here`` (stand-ins) and unequal settings."""
    names = tuple(labels)

    def num(n, key):
        return f"{values[n][key]:.1f}" if key == "miou" else f"{values[n][key]:.3f}"

    def is_small(a, b, key):
        return abs(values[a][key] - values[b][key]) < small[key]

    def diff(a, b, key):
        # the difference of the numbers as printed (mIoU to 0.1), so that it adds up on the page
        d = (round(values[a][key], 1) - round(values[b][key], 1) if key == "miou"
             else values[a][key] - values[b][key])
        return (f"{d:+.1f} points" if key == "miou" else f"{d:+.3f}") + (", small" if abs(d) < small[key] else "")

    def others(n, key):
        return ", ".join(f"{labels[o]} {num(o, key)}" for o in names if o != n)

    text = []
    best, second, third = sorted(names, key=lambda n: -values[n]["miou"])
    text.append(f"**mIoU.** {_cap(labels[best])} has the highest mIoU on the target, {num(best, 'miou')}, ahead of "
                f"{labels[second]} ({num(second, 'miou')}; {diff(best, second, 'miou')}) and {labels[third]} "
                f"({num(third, 'miou')}; {diff(best, third, 'miou')}).")
    if is_small(best, third, "miou"):
        text.append(f"All three lie within {small['miou']:.0f} point of each other: too close to rank on one seed.")
    elif is_small(best, second, "miou"):
        text.append(f"The lead over {labels[second]} is too small to rank the two on one seed.")
    # Compared at the per-class table's precision (0.1 point), so the counts are the ones a reader
    # finds in the table: an IoU of 0.03 against 0 is "equal", as both print 0.0.
    pairs = [(round(iou["cluda"][c], 1), round(iou["daformer"][c], 1)) for c in CLASSES
             if iou["cluda"].get(c) is not None and iou["daformer"].get(c) is not None]
    ties = [a for a, b in pairs if a == b]
    zero = "all" if all(a == 0 for a in ties) else sum(a == 0 for a in ties)
    text.append(f"Class by class, at the table's 0.1-point precision, CLUDA's IoU is above DAFormer's in "
                f"{sum(a > b for a, b in pairs)} classes, below in {sum(a < b for a, b in pairs)} and equal in "
                f"{len(ties)}" + (f" ({zero} of them 0.0 for both)." if ties else "."))

    by_sil = max(names, key=lambda n: values[n]["silhouette"])
    by_ratio = min(names, key=lambda n: values[n]["ratio"])
    if by_sil == by_ratio:
        text.append(f"**Target clusters.** {_cap(labels[by_sil])} has the tightest target clusters by both measures: "
                    f"silhouette {num(by_sil, 'silhouette')} ({others(by_sil, 'silhouette')}) and intra/inter ratio "
                    f"{num(by_sil, 'ratio')} ({others(by_sil, 'ratio')}).")
    else:
        text.append(f"**Target clusters.** The two measures disagree on the tightest target clusters: {labels[by_sil]} "
                    f"by the silhouette ({num(by_sil, 'silhouette')}; {others(by_sil, 'silhouette')}), "
                    f"{labels[by_ratio]} by the intra/inter ratio ({num(by_ratio, 'ratio')}; "
                    f"{others(by_ratio, 'ratio')}).")

    c, d = values["cluda"], values["daformer"]
    votes = {k: +1 if (c[k] > d[k]) == (k == "silhouette") else -1 for k in ("silhouette", "ratio")
             if not is_small("cluda", "daformer", k)}  # +1: CLUDA tighter by that measure
    measure = {"silhouette": "the silhouette", "ratio": "the intra/inter ratio"}
    if not votes:
        verdict = "about as tight as DAFormer's by both measures"
    elif len(set(votes.values())) == 2:
        verdict = "tighter than DAFormer's by one measure and looser by the other"
    else:
        word = "tighter than" if next(iter(votes.values())) > 0 else "looser than"
        if len(votes) == 2:
            verdict = f"{word} DAFormer's by both measures"
        else:
            (k,) = votes
            rest = "ratio" if k == "silhouette" else "silhouette"
            verdict = (f"{word} DAFormer's by {measure[k]}, while {measure[rest]} differs by less than its margin")
    mixing = ("about as mixed as DAFormer's" if is_small("cluda", "daformer", "mixing")
              else f"{'more' if c['mixing'] > d['mixing'] else 'less'} mixed than DAFormer's")
    text.append(f"**CLUDA vs DAFormer.** CLUDA's target clusters are {verdict}: "
                f"silhouette {num('cluda', 'silhouette')} vs {num('daformer', 'silhouette')} "
                f"({diff('cluda', 'daformer', 'silhouette')}), intra/inter ratio {num('cluda', 'ratio')} vs "
                f"{num('daformer', 'ratio')} ({diff('cluda', 'daformer', 'ratio')}; lower is tighter). Its source "
                f"and target points are {mixing}: {num('cluda', 'mixing')} vs {num('daformer', 'mixing')} "
                f"({diff('cluda', 'daformer', 'mixing')}).")
    if all(is_small("cluda", "daformer", k) for k in ("silhouette", "ratio", "mixing")):
        text.append("All three differences are below their margins: in these runs the contrastive loss did not "
                    "change the feature space measurably.")
    gains = {k: c["class_silhouette"][k] - d["class_silhouette"][k] for k in c["class_silhouette"]
             if not math.isnan(c["class_silhouette"][k] - d["class_silhouette"].get(k, math.nan))}
    if gains:
        up, down = max(gains, key=gains.get), min(gains, key=gains.get)
        text.append(f"Per class, CLUDA's silhouette is the higher in {sum(v > 0 for v in gains.values())} of "
                    f"{len(gains)} classes (largest gain {CLASSES[up]} {gains[up]:+.3f}, largest loss "
                    f"{CLASSES[down]} {gains[down]:+.3f}).")

    mixed = max(("daformer", "cluda"), key=lambda n: values[n]["mixing"])
    text.append(f"**Alignment.** Source-only mixes source and target points of a class at "
                f"{num('source_only', 'mixing')}; the better mixed adapted model, {labels[mixed]}, at "
                f"{num(mixed, 'mixing')} ({diff(mixed, 'source_only', 'mixing')}).")
    trained_here = list(trained_here)
    if trained_here:
        text.append(f"**Caveat.** No trained run was found for {', '.join(labels[n] for n in trained_here)}: these "
                    "are stand-ins trained here for seconds, and their numbers describe barely trained networks, not "
                    "the methods. `make notebook-runs` trains the real runs once.")
    if not equal:
        text.append("**Caveat.** The runs differ in more than the method (model, crop, batch, budget or seed; see "
                    "the table of the three runs), so the comparison is not like for like.")
    return "\n\n".join(text)


def study_sentence(paired: Mapping, arm: str, baseline: str) -> str:
    """One paragraph on a multi-seed comparison (:func:`cluda_kit.analysis.studies.paired_result`):
    the mean mIoU difference ± its standard deviation over seeds, the wins, the p-value, and on how
    many seeds the arm's target clusters were tighter by each measure and its domains more mixed."""
    n = paired["n"]
    p = paired.get("p")
    tighter_ratio = n - paired["ratio_higher"]  # lower ratio = tighter
    return (f"Over {n} seeds, {arm} minus {baseline} is {paired['delta']:+.2f} ± {paired['delta_std']:.2f} mIoU "
            f"points ({arm} {paired['arm_miou']:.1f}, {baseline} {paired['baseline_miou']:.1f}); {arm} wins on "
            f"{paired['wins']} of {n} seeds" + (f", paired t-test p = {p:.3f}" if p is not None else "") + ". "
            f"Its target intra/inter ratio is lower (tighter) on {tighter_ratio} of {n} seeds and its domain mixing "
            f"higher on {paired['mixing_higher']} of {n}; its target silhouette is higher on "
            f"{paired['silhouette_higher']} of {n} (mean {paired['silhouette_arm']:.3f} vs "
            f"{paired['silhouette_baseline']:.3f}).")
