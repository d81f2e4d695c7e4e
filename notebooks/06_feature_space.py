# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · The feature space: source-only, DAFormer and CLUDA
#
# CLUDA's claim is geometric: the contrastive loss on the fused features (notebooks 03–04) should
# make pixels of one class cluster together **and** make source and target pixels of that class
# share a cluster. Here we look, with three models trained at the same budget, size and seed —
# they differ only in the method:
#
# * **source-only**: supervised on the source (`game`) only, DAFormer's definition;
# * **DAFormer**: self-training with the EMA teacher, ClassMix, rare class sampling and the feature
#   distance (notebooks 01, 02, 05);
# * **CLUDA**: DAFormer plus the two pixel contrastive losses.
#
# For each we
#
# 1. read the per-class IoU on the target (`real`) validation set from its `summary.json`;
# 2. extract fused features of source (`game`) and target (`real`) validation images —
#    **class-balanced** (at most a fixed number of cells per class) and **purity-filtered** (a
#    stride-4 cell counts for class c only if ≥ 90 % of its 4×4 label patch is c);
# 3. project them with **t-SNE** (openTSNE, the kit's default backend) and **UMAP**, side by side,
#    and explore them in the `FeatureExplorer` widget (method, model, domain, classes), then compare
#    DAFormer and CLUDA point by point in the `LinkedExplorer` (linked views, lasso, the pixels behind
#    the points);
# 4. compare **cluster measures** (`run_feature_measures`): per-class silhouette and intra/inter-class
#    distance ratio of the target features, and how well source and target points of a class mix;
# 5. write the conclusion from those numbers — a cell generates it, so it cannot say more than
#    they do.
#
# The models are the runs `make notebook-runs` trains once (`runs/notebooks/source_only`,
# `daformer`, `cluda`: the demo setting, seed 0). Only a missing run is replaced by a short stand-in
# trained here (`tiny`: 12 iterations of `miniscapes_tiny` switched to each method, seconds —
# expect no clusters to speak of).

# %%
# %matplotlib inline
from cluda_kit.notebook import setup

nb = setup()  # profile (CLUDA_PROFILE: tiny | demo | full), threads, seeds, figure dpi, trained runs found
PROFILE = nb.profile

# %%
import json
import math
from pathlib import Path

import numpy as np
import torch
from IPython.display import Image, Markdown
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cluda_kit.analysis import FeatureExplorer, FeatureSet, embed, extract_features, patch_labels
from cluda_kit.analysis.explorer import LinkedExplorer
from cluda_kit.analysis.runs import load_run_model, run_feature_measures
from cluda_kit.config import load_config
from cluda_kit.data.labels import CLASSES, PALETTE
from cluda_kit.data.miniscapes import Miniscapes

MODEL_COLOURS = {"source_only": "0.6", "daformer": "tab:blue", "cluda": "tab:orange"}

# %% [markdown]
# ## The purity filter
#
# A stride-4 feature cell sees a 4×4 patch of labels. At boundaries the patch mixes classes and the
# cell's feature is a blend, so `patch_labels(labels, size, purity=0.9)` keeps a cell only where one
# class covers ≥ 90 % of its patch (else 255 = ignore). A toy 8×8 label map, 2×2 cells:

# %%
# NBVAL_CHECK_OUTPUT
toy = torch.zeros(1, 8, 8, dtype=torch.long)
toy[0, :, 5:] = 13  # a "car" strip cuts through the right column of cells
toy[0, 0, 0] = 255  # one ignored pixel
print(toy[0].tolist())
for p in (0.9, 0.5, None):
    print(f"purity {p}:", patch_labels(toy, (2, 2), purity=p)[0].tolist())

# %% [markdown]
# ## Three runs
#
# `nb.run_or_train(name)` returns the run directory, or trains the stand-in into a temporary one and
# says so; `load_run_model` builds the student from the run's `config.yaml` and loads
# `checkpoints/last.pt`. The table checks that the three differ only in the method.

# %%
NAMES = ("source_only", "daformer", "cluda")
LABEL = {"source_only": "source-only", "daformer": "DAFormer", "cluda": "CLUDA"}
runs = {name: nb.run_or_train(name, iters={"tiny": 12, "demo": 200, "full": 200}) for name in NAMES}
summaries = {name: json.loads((run / "summary.json").read_text()) for name, run in runs.items()}
configs = {name: load_config(run / "config.yaml") for name, run in runs.items()}
models = {name: load_run_model(run) for name, run in runs.items()}  # the students, eval mode


def setting(cfg):
    """What must be equal for a fair comparison: model, crop, batch, budget, seed."""
    m = cfg.model
    return (f"{m.encoder}, D = {m.fused_dim}", tuple(cfg.data.crop_size), cfg.data.batch_size, cfg.train.max_iters,
            cfg.train.seed)


rows = ["| run | from | uda.mode | contrastive | model | crop | batch | iterations | seed | mIoU |",
        "|---|---|---|---|---|---|---|---|---|---:|"]
for name in NAMES:
    cfg, (model, crop, batch, iters, seed) = configs[name], setting(configs[name])
    rows.append(f"| {LABEL[name]} | {nb.origins[name]} | {cfg.uda.mode} | {cfg.loss.contrastive.enabled} | {model} | "
                f"{crop[0]}×{crop[1]} | {batch} | {iters} | {seed} | {summaries[name]['miou']:.1f} |")
EQUAL = len({setting(c) for c in configs.values()}) == 1
rows.append(f"\nSame model, crop, batch, iterations and seed: **{'yes' if EQUAL else 'NO'}**.")
Markdown("\n".join(rows))

# %% [markdown]
# ## Per-class IoU on the target
#
# From each run's `summary.json`: the IoU of every class on the `real` validation set at the end of
# training (percent; "–" = the class does not occur there), and their mean, the mIoU.

# %%
iou = {name: {c: summaries[name]["iou"].get(c) for c in CLASSES} for name in NAMES}
scored = [c for c in CLASSES if any(iou[n][c] is not None for n in NAMES)]
fig = Figure(figsize=(10, 3.4))
ax = fig.subplots()
xs = np.arange(len(scored))
for k, name in enumerate(NAMES):
    ax.bar(xs + (k - 1) * 0.27, [iou[name][c] or 0.0 for c in scored], width=0.27, color=MODEL_COLOURS[name],
           label=f"{LABEL[name]} (mIoU {summaries[name]['miou']:.1f})")
ax.set_xticks(xs, scored, rotation=45, ha="right", fontsize=8)
ax.set(ylabel="IoU (%)", title="per-class IoU on real val, from summary.json")
ax.legend(fontsize=8)
fig.tight_layout()
fig

# %%
table = ["| class | " + " | ".join(LABEL[n] for n in NAMES) + " |", "|---|" + "---:|" * len(NAMES)]
for c in scored:
    table.append(f"| {c} | " + " | ".join("–" if iou[n][c] is None else f"{iou[n][c]:.1f}" for n in NAMES) + " |")
table.append("| **mIoU** | " + " | ".join(f"**{summaries[n]['miou']:.1f}**" for n in NAMES) + " |")
Markdown("\n".join(table))

# %% [markdown]
# ## Extract features
#
# `extract_features` runs a model in eval mode over images of one domain, labels each fused-feature
# cell by its purity-filtered patch and keeps a uniform random sample of at most `max_per_class`
# cells per class (a seeded generator, so every model sees the same cells). The settings are those
# `run_feature_measures` uses below, so the projections show the cells that are measured.

# %%
SIZE, N_IMAGES, PER_CLASS = ((64, 128), 8, 20) if PROFILE == "tiny" else ((128, 256), 40, 150)
domains = {d: Miniscapes(d, "val", size=SIZE, length=N_IMAGES) for d in ("game", "real")}
feature_sets = {}
for name, model in models.items():
    parts = [extract_features(model, ds, domain=d, num_samples=N_IMAGES, max_per_class=PER_CLASS, purity=0.9,
                              seed=0, model_name=name, progress=False) for d, ds in domains.items()]
    feature_sets[name] = FeatureSet.concat(parts)
fs = feature_sets["cluda"]
print("points per model:", len(fs), "| D =", fs.dim, "| domains", fs.domain_names)
print("target points per class:", {CLASSES[c]: n for c, n in fs.class_counts("real").items()})

# %% [markdown]
# Classes seen in only one domain cannot tell us anything about alignment; we keep the classes with
# at least 5 points in each domain.

# %%
keep = [c for c in fs.classes if min(fs.class_counts(d).get(c, 0) for d in fs.domain_names) >= 5]
feature_sets = {name: s.subset(classes=keep) for name, s in feature_sets.items()}
print("classes:", [CLASSES[c] for c in keep])

# %% [markdown]
# ## t-SNE and UMAP, side by side
#
# Both project the L2-normalised features (the cosine geometry the loss shapes) after a PCA to at
# most 50 dimensions. t-SNE preserves neighbourhoods and exaggerates cluster separation; UMAP
# preserves somewhat more of the global layout. Neither preserves distances between clusters —
# read them for *which points are together*, not for how far apart groups are. Colour = class,
# ● = source (`game`), ▲ = target (`real`); one column per model.

# %%
explorer = FeatureExplorer(feature_sets, methods=("tsne", "umap", "pca"), seed=0)
fig = Figure(figsize=(12, 8))
for row, method in enumerate(("tsne", "umap")):
    for col, name in enumerate(NAMES):
        ax = fig.add_subplot(2, 3, 3 * row + col + 1, xticks=[], yticks=[], title=f"{method} · {LABEL[name]}")
        pts, xy = explorer.projection(name, method)
        for d, marker in enumerate(("o", "^")):
            sel = pts.domain_index == d
            ax.scatter(xy[sel, 0], xy[sel, 1], c=PALETTE[pts.labels[sel]] / 255, marker=marker, s=10, alpha=0.7,
                       linewidths=0)
handles = [Line2D([], [], ls="", marker="o", color=PALETTE[c] / 255, label=CLASSES[c]) for c in keep]
handles += [Line2D([], [], ls="", marker=m, color="0.4", label=d) for m, d in (("o", "game (source)"), ("^", "real (target)"))]
fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
fig.tight_layout(rect=(0, 0.09, 1, 1))
fig

# %% [markdown]
# Projections are deterministic for a fixed seed: `embed(..., method="tsne")` runs openTSNE (when it
# is installed, else scikit-learn's t-SNE) with `random_state = seed`, and UMAP runs single-threaded
# with `random_state`. openTSNE's layout also depends on the number of cores it uses, so a figure
# reproduces on the same machine:

# %%
# NBVAL_CHECK_OUTPUT
x = np.random.default_rng(0).normal(size=(60, 16)).astype(np.float32)
a, b = embed(x, "tsne", seed=0), embed(x, "tsne", seed=0)
print("t-SNE of (60, 16):", a.shape, a.dtype, "| identical for the same seed:", np.array_equal(a, b))
print("PCA of (60, 16):", embed(x, "pca").shape)

# %% [markdown]
# ## Explore
#
# Pick the method, the model, the domain (`game`, `real` or `both`) and the classes (ctrl/shift-click).
# Projections are cached per selection. The line under the plot names what is shown.

# %%
explorer

# %% [markdown]
# ## Two models, point by point
#
# `LinkedExplorer` puts DAFormer's and CLUDA's features of **the same pixels** side by side: both
# were extracted from the same images with the same seed, so point i is one pixel in both views
# (`extract_features` records each point's image, pixel, and the model's prediction and confidence
# there; the explorer refuses sets that differ). Projections (UMAP, seed 0) are cached on disk, so
# reopening is instant.

# %%
CACHE = Path(runs["cluda"]).parent / "explorer_cache"  # on disk beside the runs, keyed by the features' hash
pair = {n: feature_sets[n] for n in ("daformer", "cluda")}
linked = LinkedExplorer.from_datasets(pair, domains, method="umap", seed=0, cache_dir=CACHE)
for name in pair:
    linked.projection(name)  # computed here (or read, if this notebook ran before) and written to the cache
same = all(np.array_equal(getattr(pair["daformer"], k), getattr(pair["cluda"], k)) for k in ("image_index", "pixel", "labels"))
print(f"{len(pair['cluda'])} points per view | same image, pixel and class in both views: {same}")
reopened = LinkedExplorer.from_datasets(pair, domains, method="umap", seed=0, cache_dir=CACHE)
for name in pair:
    reopened.projection(name)
print("projections computed on reopening:", reopened.projection_calls, "(read from the cache)")

# %% [markdown]
# In JupyterLab with a running kernel the next cell draws the explorer: pan and zoom with the mouse;
# hover a point for its class, domain, image, pixel and both models' predictions and confidences;
# draw a lasso (the lasso button, or shift + drag) in one view and the same points light up in the
# other, with the image crops they come from (the pixel marked), their per-class counts and the
# cluster measures of the classes and domain shown. Colour by class, domain, the view's confidence
# or whether its prediction is right. "selection → CSV" and "view → PNG" export. A stored copy of
# this notebook shows a picture of the views instead (the live plots need the kernel).

# %%
linked

# %% [markdown]
# The same, driven from code (what a lasso does): select the target points of the class whose
# CLUDA cluster is the least separated (lowest silhouette), see where they come from, and export
# the selection.

# %%
silhouette = linked.measures()["cluda"].get("per_class_silhouette") or {keep[0]: 0.0}
worst = min(silhouette, key=lambda c: (silhouette[c], c))
points = linked.sets["cluda"]
linked.select(np.flatnonzero((points.labels == worst) & (points.domain == "real"))[:16])
print(f"lowest CLUDA silhouette: {CLASSES[worst]!r} ({silhouette[worst]:.3f})")
print(f"selected {len(linked.selected)} target points of {CLASSES[worst]!r}")
print("per-class counts:", linked.selection_counts())

# %%
for name in ("daformer", "cluda"):
    right = linked.sets[name].correct[linked.selected]
    print(f"{LABEL[name]}: {right.sum()} of {len(right)} of these pixels predicted right")
linked.gallery_figure(limit=16)

# %% [markdown]
# The export: the selection as CSV (image, pixel, class, both models' predictions) and the views
# as PNG, the selected points circled (what the two buttons write):

# %%
print("wrote", linked.export_csv(CACHE / "selection.csv").name, "and", linked.export_png(CACHE / "feature_view.png").name)
Image(linked.png())

# %% [markdown]
# ## Cluster measures side by side
#
# `run_feature_measures(run)` extracts the run's features on the same cells and measures them (and
# caches the result in the run directory):
#
# * **silhouette** of a point: (b − a) / max(a, b), a = mean cosine distance to its own class, b = to
#   the nearest other class; averaged per class and over all points (−1 … 1, higher = tighter and
#   better separated). On the target features.
# * **intra/inter ratio** of a class: mean cosine distance within the class over the mean distance
#   to the other classes (below 1 = tighter than its distance to the rest; lower = tighter). On the
#   target features; the model's value is the mean over classes.
# * **domain mixing** of a class: the share of each point's 10 nearest same-class neighbours that
#   come from the other domain, relative to the share expected under perfect mixing (1 = source and
#   target mixed as if at random, 0 = separated). On source + target features of the classes with
#   at least 5 points in each domain; the model's value is the mean over those classes.

# %%
MEASURE_ARGS = dict(num_samples=N_IMAGES, max_per_class=PER_CLASS, size=SIZE)
measured = {name: run_feature_measures(run, **MEASURE_ARGS, recompute=name in nb.trained_here)
            for name, run in runs.items()}


def by_class(values):
    """JSON (class keys as strings, nan as None) -> {trainId: float}."""
    return {int(c): math.nan if v is None else v for c, v in values.items()}


def number(v):
    return math.nan if v is None else v


M = {name: {"silhouette": number(m["target"]["silhouette"]), "ratio": number(m["target"]["ratio"]),
            "mixing": number(m["both"]["mixing"]),
            "class_silhouette": by_class(m["target"]["per_class_silhouette"]),
            "class_ratio": by_class(m["target"]["per_class_ratio"]),
            "class_mixing": by_class(m["both"]["domain_mixing"])}
     for name, m in measured.items()}
rows = ["| run | mIoU | target silhouette ↑ | target intra/inter ratio ↓ | domain mixing ↑ |", "|---|---:|---:|---:|---:|"]
for name in NAMES:
    rows.append(f"| {LABEL[name]} | {summaries[name]['miou']:.1f} | {M[name]['silhouette']:.3f} | "
                f"{M[name]['ratio']:.3f} | {M[name]['mixing']:.3f} |")
Markdown("\n".join(rows))

# %% [markdown]
# Per class (silhouette and ratio on the target, mixing on source + target; "–" = not measured):

# %%
classes = sorted(set().union(*(M[n]["class_silhouette"] for n in NAMES)))
short = {"source_only": "SO", "daformer": "DAF", "cluda": "CLUDA"}
head = [f"{key} {short[n]}" for key in ("silhouette", "ratio", "mixing") for n in NAMES]
rows = ["| class | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]


def cell(v):
    return "–" if v is None or math.isnan(v) else f"{v:.3f}"


for c in classes:
    rows.append(f"| {CLASSES[c]} | " + " | ".join(cell(M[n][f"class_{key}"].get(c)) for key in ("silhouette", "ratio", "mixing")
                                                  for n in NAMES) + " |")
Markdown("\n".join(rows))

# %% [markdown]
# ## What the numbers say
#
# The next cell writes the conclusion from the numbers above — mIoU from the `summary.json` files,
# the measures from `run_feature_measures` — so it holds for whichever models this notebook loaded.
# A difference counts as **small** below these margins: 1 mIoU point, 0.02 in silhouette or ratio,
# 0.05 in mixing. They are rough: each model is one run with one seed, and a second seed moves the
# numbers by about that much.

# %%
SMALL = {"miou": 1.0, "silhouette": 0.02, "ratio": 0.02, "mixing": 0.05}
value = {n: {"miou": summaries[n]["miou"], **M[n]} for n in NAMES}


def num(name, key):
    """A run's value as the tables above print it."""
    return f"{value[name][key]:.1f}" if key == "miou" else f"{value[name][key]:.3f}"


def diff(a, b, key):
    """The difference a − b between two runs, marked small below its margin."""
    d = value[a][key] - value[b][key]
    return (f"{d:+.1f} points" if key == "miou" else f"{d:+.3f}") + (", small" if abs(d) < SMALL[key] else "")


def others(name, key):
    return ", ".join(f"{LABEL[o]} {num(o, key)}" for o in NAMES if o != name)


def small(a, b, key):
    return abs(value[a][key] - value[b][key]) < SMALL[key]


text = []
best, second, third = sorted(NAMES, key=lambda n: -value[n]["miou"])
text.append(f"**mIoU.** {LABEL[best][0].upper() + LABEL[best][1:]} has the highest mIoU on the target, "
            f"{num(best, 'miou')}, ahead of {LABEL[second]} ({num(second, 'miou')}; {diff(best, second, 'miou')}) and "
            f"{LABEL[third]} ({num(third, 'miou')}; {diff(best, third, 'miou')}).")
if small(best, third, "miou"):
    text.append(f"All three lie within {SMALL['miou']:.0f} point of each other: too close to rank on one seed.")
elif small(best, second, "miou"):
    text.append(f"The lead over {LABEL[second]} is too small to rank the two on one seed.")
pairs = [(iou["cluda"][c], iou["daformer"][c]) for c in scored if None not in (iou["cluda"][c], iou["daformer"][c])]
ties = [a for a, b in pairs if a == b]
text.append(f"Class by class, CLUDA's IoU is above DAFormer's in {sum(a > b for a, b in pairs)} classes, below in "
            f"{sum(a < b for a, b in pairs)} and equal in {len(ties)}"
            + (f" ({'all' if all(a == 0 for a in ties) else sum(a == 0 for a in ties)} of them 0 for both)." if ties else "."))

by_sil = max(NAMES, key=lambda n: value[n]["silhouette"])
by_ratio = min(NAMES, key=lambda n: value[n]["ratio"])
if by_sil == by_ratio:
    text.append(f"**Target clusters.** {LABEL[by_sil][0].upper() + LABEL[by_sil][1:]} has the tightest target clusters "
                f"by both measures: silhouette {num(by_sil, 'silhouette')} ({others(by_sil, 'silhouette')}) and "
                f"intra/inter ratio {num(by_sil, 'ratio')} ({others(by_sil, 'ratio')}).")
else:
    text.append(f"**Target clusters.** The two measures disagree on the tightest target clusters: {LABEL[by_sil]} by "
                f"the silhouette ({num(by_sil, 'silhouette')}; {others(by_sil, 'silhouette')}), {LABEL[by_ratio]} by "
                f"the intra/inter ratio ({num(by_ratio, 'ratio')}; {others(by_ratio, 'ratio')}).")

c, d = value["cluda"], value["daformer"]
votes = {+1 if (c[k] > d[k]) == (k == "silhouette") else -1 for k in ("silhouette", "ratio")
         if not small("cluda", "daformer", k)}  # +1: CLUDA tighter by that measure
verdict = {frozenset(): "about as tight as", frozenset({1}): "tighter than", frozenset({-1}): "looser than"}.get(
    frozenset(votes), "neither clearly tighter nor looser than")
mixing = ("about as mixed as DAFormer's" if small("cluda", "daformer", "mixing")
          else f"{'more' if c['mixing'] > d['mixing'] else 'less'} mixed than DAFormer's")
text.append(f"**CLUDA vs DAFormer.** CLUDA's target clusters are {verdict} DAFormer's: silhouette "
            f"{num('cluda', 'silhouette')} vs {num('daformer', 'silhouette')} ({diff('cluda', 'daformer', 'silhouette')}), "
            f"intra/inter ratio {num('cluda', 'ratio')} vs {num('daformer', 'ratio')} "
            f"({diff('cluda', 'daformer', 'ratio')}; lower is tighter). Its source and target points are {mixing}: "
            f"{num('cluda', 'mixing')} vs {num('daformer', 'mixing')} ({diff('cluda', 'daformer', 'mixing')}).")
if all(small("cluda", "daformer", k) for k in ("silhouette", "ratio", "mixing")):
    text.append("All three differences are below their margins: in these runs the contrastive loss did not change "
                "the feature space measurably.")
gains = {k: c["class_silhouette"][k] - d["class_silhouette"][k] for k in c["class_silhouette"]
         if not math.isnan(c["class_silhouette"][k] - d["class_silhouette"].get(k, math.nan))}
if gains:
    up, down = max(gains, key=gains.get), min(gains, key=gains.get)
    text.append(f"Per class, CLUDA's silhouette is the higher in {sum(v > 0 for v in gains.values())} of {len(gains)} "
                f"classes (largest gain {CLASSES[up]} {gains[up]:+.3f}, largest loss {CLASSES[down]} {gains[down]:+.3f}).")

mixed = max(("daformer", "cluda"), key=lambda n: value[n]["mixing"])
text.append(f"**Alignment.** Source-only mixes source and target points of a class at {num('source_only', 'mixing')}; "
            f"the better mixed adapted model, {LABEL[mixed]}, at {num(mixed, 'mixing')} "
            f"({diff(mixed, 'source_only', 'mixing')}).")
if nb.trained_here:
    text.append(f"**Caveat.** No trained run was found for {', '.join(LABEL[n] for n in nb.trained_here)}: these are "
                "stand-ins trained here for seconds, and their numbers describe barely trained networks, not the "
                "methods. `make notebook-runs` trains the real runs once.")
if not EQUAL:
    text.append("**Caveat.** The runs differ in more than the method (model, crop, batch, budget or seed; see the "
                "table of the three runs), so the comparison is not like for like.")
text.append("Each model is one run with seed 0: a difference marked small may reverse with another seed.")
Markdown("\n\n".join(text))
