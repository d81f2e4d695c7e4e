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
# # 06 · The feature space: source-only vs CLUDA
#
# CLUDA's claim is geometric: the contrastive loss on the fused features (notebooks 03–04) should
# make pixels of one class cluster together **and** make source and target pixels of that class
# share a cluster. Here we look. For a source-only model and a CLUDA model we
#
# 1. extract fused features of source (`game`) and target (`real`) validation images —
#    **class-balanced** (at most a fixed number of cells per class) and **purity-filtered** (a
#    stride-4 cell counts for class c only if ≥ 90 % of its 4×4 label patch is c);
# 2. project them with **t-SNE** (openTSNE, the kit's default backend) and **UMAP**;
# 3. explore them in the `FeatureExplorer` widget (method, model, domain, classes);
# 4. compare **cluster measures**: per-class silhouette (compactness and separation, cosine
#    distance) and a domain-mixing score (1 = source and target points of a class are interleaved as
#    if at random, 0 = separated).
#
# Models: if the run directories `runs/source_only` and `runs/demo` (from `make demo`) exist, their
# students are loaded; otherwise both models are trained briefly here (`tiny`: seconds — expect
# weak clusters; `demo`/`full`: longer).

# %%
# %matplotlib inline
from cluda_kit.notebook import setup

nb = setup()  # profile (CLUDA_PROFILE: tiny | demo | full), threads, seeds, figure dpi, trained runs found
PROFILE = nb.profile

# %%
from pathlib import Path

import numpy as np
import torch
from IPython.display import Markdown
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cluda_kit.analysis import FeatureExplorer, FeatureSet, cluster_measures, embed, extract_features, measures_table, patch_labels
from cluda_kit.config import load_config
from cluda_kit.data.labels import CLASSES, PALETTE
from cluda_kit.data.miniscapes import Miniscapes
from cluda_kit.engine.trainer import Trainer
from cluda_kit.models import build_segmentor

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
# ## Two models
#
# Source-only: DAFormer's definition, supervised on `game` only. CLUDA: self-training plus the
# contrastive losses. Run directories are used when they exist.

# %%
REPO = Path.cwd().parent
RUNS = {"source_only": REPO / "runs" / "source_only", "cluda": REPO / "runs" / "demo"}
ITERS = {"tiny": 12, "demo": 300, "full": 1500}[PROFILE]
PRESET = "miniscapes_tiny" if PROFILE == "tiny" else "miniscapes_cluda"
SETTINGS = {"source_only": ["uda.mode=source_only", "loss.contrastive.enabled=false"], "cluda": []}


def get_model(name):
    ckpt = RUNS[name] / "checkpoints" / "last.pt"
    if ckpt.is_file():
        model = build_segmentor(load_config(RUNS[name] / "config.yaml").model)
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["student"])
        return model, f"loaded {RUNS[name].relative_to(REPO)}"
    cfg = load_config(PRESET, SETTINGS[name] + [f"train.max_iters={ITERS}", "train.eval_every=0", "train.figure_every=0"])
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    return trainer.student, f"trained {ITERS} iterations of {PRESET} ({trainer.cfg.uda.mode})"

# %%
models = {}
for name in ("source_only", "cluda"):
    models[name], how = get_model(name)
    print(f"{name}: {how}")

# %% [markdown]
# ## Extract features
#
# `extract_features` runs a model in eval mode over images of one domain, labels each fused-feature
# cell by its purity-filtered patch and keeps a uniform random sample of at most `max_per_class`
# cells per class (a seeded generator, so both models see the same cells).

# %%
SIZE = (64, 128) if PROFILE == "tiny" else (128, 256)
N_IMAGES, PER_CLASS = (8, 20) if PROFILE == "tiny" else (40, 150)
domains = {d: Miniscapes(d, "val", size=SIZE, length=N_IMAGES) for d in ("game", "real")}
feature_sets = {}
for name, model in models.items():
    parts = [extract_features(model, ds, domain=d, num_samples=N_IMAGES, max_per_class=PER_CLASS, purity=0.9,
                              seed=0, model_name=name, progress=False) for d, ds in domains.items()]
    feature_sets[name] = FeatureSet.concat(parts)
fs = feature_sets["cluda"]
print("points per model:", len(fs), "| D =", fs.dim, "| domains", fs.domain_names)
print({CLASSES[c]: n for c, n in fs.class_counts("real").items()})

# %% [markdown]
# Classes seen in only one domain cannot tell us anything about alignment; we keep the classes with
# at least 5 points in each domain.

# %%
keep = [c for c in fs.classes if min(fs.class_counts(d).get(c, 0) for d in fs.domain_names) >= 5]
feature_sets = {name: s.subset(classes=keep) for name, s in feature_sets.items()}
print("classes:", [CLASSES[c] for c in keep])

# %% [markdown]
# ## t-SNE and UMAP
#
# Both project the L2-normalised features (the cosine geometry the loss shapes) after a PCA to at
# most 50 dimensions. t-SNE preserves neighbourhoods and exaggerates cluster separation; UMAP
# preserves somewhat more of the global layout. Neither preserves distances between clusters —
# read them for *which points are together*, not for how far apart groups are. Colour = class,
# ● = source (`game`), ▲ = target (`real`).

# %%
explorer = FeatureExplorer(feature_sets, methods=("tsne", "umap", "pca"), seed=0)
fig = Figure(figsize=(10, 7.5))
for k, (name, method) in enumerate((m, meth) for m in feature_sets for meth in ("tsne", "umap")):
    ax = fig.add_subplot(2, 2, k + 1, xticks=[], yticks=[], title=f"{method} · {name}")
    pts, xy = explorer.projection(name, method)
    for d, marker in enumerate(("o", "^")):
        sel = pts.domain_index == d
        ax.scatter(xy[sel, 0], xy[sel, 1], c=PALETTE[pts.labels[sel]] / 255, marker=marker, s=16, alpha=0.7, linewidths=0)
handles = [Line2D([], [], ls="", marker="o", color=PALETTE[c] / 255, label=CLASSES[c]) for c in keep]
handles += [Line2D([], [], ls="", marker=m, color="0.4", label=d) for m, d in (("o", "game (source)"), ("^", "real (target)"))]
fig.legend(handles=handles, loc="lower center", ncol=min(len(keep), 7), fontsize=8, frameon=False)
fig.tight_layout(rect=(0, 0.08, 1, 1))
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
# ## Cluster measures side by side
#
# Silhouette of a point: (b − a) / max(a, b), a = mean cosine distance to its own class, b = to the
# nearest other class; averaged per class (−1 … 1, higher = tighter, better separated). Domain
# mixing of a class: the share of each point's 10 nearest same-class neighbours that come from the
# other domain, relative to the share expected under perfect mixing (1 = mixed, 0 = separated).

# %%
measures = {name: cluster_measures(s.features, s.labels, s.domain) for name, s in feature_sets.items()}
Markdown(measures_table(measures, CLASSES))

# %% [markdown]
# What to expect: with well-trained models (`demo` or the paper setting), CLUDA's classes are
# tighter (higher silhouette) and its target points sit inside the source clusters (mixing closer
# to 1), whereas a source-only model keeps target pixels apart. In the `tiny` profile the models
# trained for seconds: the measures are close, and that is the honest result of such a run.
