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
# # 05 · Full training from a notebook cell
#
# Notebooks 01–04 took the CLUDA step apart. Here the `Trainer` runs all of it — EMA teacher,
# source cross-entropy, feature distance, pseudo-labels and q, ClassMix, strong augmentation, the
# mixed cross-entropy and the two contrastive losses, one AdamW step (docs/method.md §2) — with a
# **live loss / mIoU plot** and a progress bar, then **resumes** the run from its directory and
# ends with the per-class IoU table and prediction figures.
#
# | profile | preset | what it is for |
# |---|---|---|
# | `tiny` (default here) | `miniscapes_tiny` | tests: 64×128 scenes, a few iterations, seconds |
# | `demo` | `miniscapes_cluda` | the CPU demo: 1000 iterations on 128×256 crops (`make demo` trains the same) |
# | `full` | `gta2cs_daformer_cluda` | the paper: GTA5 → Cityscapes, MiT-B5, 40 000 iterations; needs a GPU and the prepared data under `data/` |
#
# Set `CLUDA_PROFILE=demo` (or `full`) in the environment before starting JupyterLab.

# %%
import os

PROFILE = os.environ.get("CLUDA_PROFILE", "tiny")  # tiny | demo | full
assert PROFILE in ("tiny", "demo", "full"), f"CLUDA_PROFILE={PROFILE!r}: expected tiny, demo or full"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no busy-waiting threads on a shared CPU
import numpy as np
import torch

torch.set_num_threads(2)
torch.manual_seed(0)
np.random.seed(0)
# %matplotlib inline
import matplotlib

matplotlib.rcParams["figure.dpi"] = 64  # small PNGs: the notebooks stay well under 2 MB
print(f"profile: {PROFILE}")

# %%
from pathlib import Path

from IPython.display import display

from cluda_kit.analysis.plots import debug_figure, image_grid, plot_curves
from cluda_kit.config import load_config
from cluda_kit.engine.trainer import Trainer, lr_at, print_summary

# %% [markdown]
# ## The paper's settings
#
# Every number of docs/method.md is a config field whose preset value is the paper's. The paper preset:

# %%
# NBVAL_CHECK_OUTPUT
paper = load_config("gta2cs_daformer_cluda")
print("model      ", paper.model.encoder, "+", paper.model.decoder, "| fused D =", paper.model.fused_dim,
      "| embed", paper.model.embed_dim)
print("optimiser   AdamW lr", paper.optim.lr, "betas", paper.optim.betas, "wd", paper.optim.weight_decay,
      "| head lr x", paper.optim.head_lr_mult)
print("schedule    warm-up", paper.optim.warmup_iters, "then poly", paper.optim.poly_power, "to", paper.train.max_iters)
print("batch       ", paper.data.batch_size, "+", paper.data.batch_size, "| crop", paper.data.crop_size)
print("self-train   alpha", paper.uda.ema_alpha, "| tau_p", paper.uda.pseudo_threshold, "| margins", paper.data.pseudo_margins)
c = paper.loss.contrastive
print("contrastive  tau", c.temperature, "tau_b", c.base_temperature, "| grid", c.grid, "| weights", c.source_weight, c.mix_weight)

# %% [markdown]
# The learning rate warms up linearly over 1500 iterations, then decays polynomially (power 1) to
# 0 at 40 000; decoder and head parameters get 10× the encoder's rate.

# %%
# NBVAL_CHECK_OUTPUT
o = paper.optim
for it in (0, 750, 1500, 20000, 39999):
    lr = lr_at(it, o.lr, paper.train.max_iters, o.warmup_iters, o.warmup_ratio, o.poly_power, o.min_lr)
    print(f"iter {it:5d}: encoder lr {lr:.3e} | head lr {lr * o.head_lr_mult:.3e}")

# %% [markdown]
# ## The run of this profile
#
# A run directory receives the resolved `config.yaml`, `metrics.jsonl`, TensorBoard events,
# checkpoints (`checkpoints/last.pt`) and `summary.json`.

# %%
REPO = Path.cwd().parent  # the notebooks run in notebooks/
RUN_DIR = REPO / "runs" / f"notebook_05_{PROFILE}"
if PROFILE == "full":
    assert torch.cuda.is_available(), "the full profile trains the paper preset and needs a GPU"
    assert (REPO / "data/gta").is_dir(), "prepare GTA5 and Cityscapes under data/ first (README)"
    overrides = [f"data.{d}.root={REPO / 'data' / n}" for d, n in
                 (("source", "gta"), ("target", "cityscapes"), ("val", "cityscapes"))]
    cfg = load_config("gta2cs_daformer_cluda", overrides + [f"model.pretrained={REPO / 'pretrained/mit_b5.pth'}"])
elif PROFILE == "demo":
    cfg = load_config("miniscapes_cluda")
else:
    cfg = load_config("miniscapes_tiny", ["train.max_iters=8", "train.eval_every=4", "train.checkpoint_every=4"])
print(cfg.name, "| iterations", cfg.train.max_iters, "| eval every", cfg.train.eval_every, "| run dir", RUN_DIR.relative_to(REPO))

# %% [markdown]
# ## Train with a live plot
#
# The trainer calls every callback as `cb(trainer, record)` for each logged record (training
# losses every `train.log_every` iterations, evaluations with `miou` and per-class `iou`). The
# callback below redraws `plot_curves(trainer.history)` into one display handle — the figure updates
# in place while the progress bar runs.

# %%
KEYS = ("loss", "ce", "cl", "miou")
handle = display(plot_curves([], keys=KEYS, panel_size=(3.2, 2.4)), display_id=True)
REDRAW = max(1, cfg.train.max_iters // 20)


def live_plot(trainer, record):
    if "miou" in record or record["iter"] % REDRAW == 0:
        handle.update(plot_curves(trainer.history, keys=KEYS, panel_size=(3.2, 2.4)))

# %%
trainer = Trainer(cfg, RUN_DIR, callbacks=[live_plot], progress=True, overwrite=True)
summary = trainer.fit()
print(f"mIoU after {summary['iter']} iterations: {summary['miou']:.2f} ({summary['iters_per_s']:.2f} it/s)")

# %% [markdown]
# ## Resume from the run directory
#
# `Trainer.resume(RUN_DIR, overrides)` rebuilds the trainer from `RUN_DIR/config.yaml` and loads
# `checkpoints/last.pt`: weights of student and teacher, optimiser state, iteration, every random
# generator and the data streams' positions — a resumed run continues bit-identically. Only
# `train.*` may change, e.g. to train longer (the command line: `cluda-kit train --resume RUN_DIR
# --set train.max_iters=N`).

# %%
more = cfg.train.max_iters + max(4, cfg.train.max_iters // 6)
resumed = Trainer.resume(RUN_DIR, [f"train.max_iters={more}"], callbacks=[live_plot], progress=True)
print("resumed at iteration", resumed.iter, "with", len(resumed.history), "records reloaded")
summary = resumed.fit()

# %%
files = sorted(p.relative_to(RUN_DIR).as_posix() for p in RUN_DIR.rglob("*") if p.is_file() and "tb" not in p.parts)
print("run directory:", files)

# %% [markdown]
# ## Per-class IoU
#
# mIoU accumulates intersection and union per class over the whole validation set and averages the
# classes that occur (nan-mean). In the `tiny` profile the numbers are those of a network that
# trained for seconds — the point is the plumbing; `demo` gives meaningful ones.

# %%
print(print_summary(summary))

# %% [markdown]
# ## Predictions
#
# `trainer.evaluate(callback=...)` hands every validation batch and its prediction to a callback;
# we keep the first two. `trainer.debug_batch()` shows one step's intermediate tensors (the same
# figure the trainer writes to `figures/` every `train.figure_every` iterations).

# %%
shown = []


def keep_two(batch, pred):
    if len(shown) < 2:
        shown.append((batch["image"][0], batch["label"][0], pred[0].cpu()))


resumed.evaluate(progress=False, callback=keep_two)
image_grid([[img, lab, pred] for img, lab, pred in shown], [["target (val)", "ground truth", "prediction"]] * 2,
           cell_size=1.8)

# %%
debug_figure(**resumed.debug_batch(), cell_size=1.8)

# %% [markdown]
# **Next:** notebook 06 looks at what the contrastive loss did to the fused feature space.
