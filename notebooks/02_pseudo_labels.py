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
# # 02 · Pseudo-labels, their confidence weight q, and the EMA teacher
#
# The target domain has no labels. Self-training lets a **teacher** network label the target images
# and trains the **student** on those pseudo-labels (mixed with source pixels, notebook 01).
# Three design choices of DACS/DAFormer keep this from collapsing (docs/method.md §2, steps 0 and 4):
#
# * **EMA teacher.** The teacher is an exponential moving average of the student:
#   φ ← α_t φ + (1 − α_t) θ with α_t = min(1 − 1/(t+1), α) and α = 0.999. It changes slowly, so its
#   pseudo-labels are more stable than the student's own predictions.
# * **Confidence weight q.** ŷ = argmax of the teacher's softmax, p = its max probability. One
#   scalar **q = fraction of all pixels of the target batch with p ≥ τ = 0.968** weights *every*
#   target pixel of the mixed loss. Early in training q ≈ 0 and the target pixels barely count;
#   as the teacher grows confident, q rises — how far, this notebook reads from a trained run.
# * **Margins.** `data.pseudo_margins = (top, bottom, left, right)` counts pixel rows and columns
#   at the edges of the **training crop** whose pseudo-label *weight* is set to 0 (the pseudo-labels
#   stay; those target pixels just do not count). DAFormer uses (15, 120, 0, 0) on its 512×512
#   crops of the 1024×512 Cityscapes frame; the crop is as high as the frame, so the bottom 120 rows
#   cover the ego-vehicle hood. HRDA instead zeroes (30, 240, 30, 30) of the whole 2048×1024 frame
#   before cropping (`data.frame_margins`). Source pixels that ClassMix pastes into a margin keep
#   weight 1.
#
# CLUDA inherits all three and reuses the same weights as pair weights of its contrastive loss.

# %%
# %matplotlib inline
from cluda_kit.notebook import setup

nb = setup()  # threads, seeds, figure dpi; prints the profile and the trained runs found
PROFILE = nb.profile

# %%
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown
from matplotlib.figure import Figure

from cluda_kit.analysis.plots import class_legend, confidence_map, image_grid, present_classes, value_colorbar
from cluda_kit.analysis.runs import load_run_model
from cluda_kit.config import load_config
from cluda_kit.data.miniscapes import Miniscapes
from cluda_kit.data.transforms import normalize
from cluda_kit.notebook import read_metrics
from cluda_kit.uda.ema import ema_alpha
from cluda_kit.uda.mixing import class_mix_masks, mix
from cluda_kit.uda.pseudo_label import pseudo_label, pseudo_label_stats

# %% [markdown]
# ## q and the margins on a synthetic batch
#
# `pseudo_label(logits, threshold=0.968, ignore_top=..., ignore_bottom=..., ignore_left=...,
# ignore_right=...)` takes teacher **logits** (B, C, H, W) at the label resolution and returns hard
# labels (B, H, W) and weights (B, H, W): q everywhere, 0 in the margins (the trainer passes
# `data.pseudo_margins` as the four margins). Seeded random logits stand in for a teacher on a
# 512×512 DAFormer crop:

# %%
# NBVAL_CHECK_OUTPUT
g = torch.Generator().manual_seed(0)
logits = 4.0 * torch.randn(2, 19, 512, 512, generator=g)  # a seeded stand-in for teacher logits
labels, weights = pseudo_label(logits, threshold=0.968, ignore_top=15, ignore_bottom=120)
print("labels", tuple(labels.shape), labels.dtype, "| weights", tuple(weights.shape), weights.dtype)
print(f"q = {float(weights.max()):.3g} | zero-weight pixels per image:", (weights == 0).sum(dim=(1, 2)).tolist())
stats = pseudo_label_stats(logits)  # 3 significant digits: every machine agrees on them
print(f"mean confidence {stats['mean_confidence']:.3g} | q {stats['q']:.3g}")

# %% [markdown]
# The zero-weight pixels are exactly the two margins: 512 · (15 + 120) = 69 120 per image. Every
# other pixel carries the same q, whatever its own confidence.

# %% [markdown]
# ## The EMA ramp α_t
#
# At t = 0 the teacher is a copy of the student (α_0 = 0). α_t = 1 − 1/(t+1) then rises quickly —
# 0.5 at t = 1, 0.9 at t = 9 — and is capped at α = 0.999 from t = 999 on: after the first thousand
# iterations the teacher averages the student over roughly the last 1000 steps.

# %%
# NBVAL_CHECK_OUTPUT
for t in (0, 1, 9, 99, 998, 999, 40000):
    print(f"t = {t:5d}: alpha_t = {ema_alpha(t, 0.999):.4f}")

# %%
ts = np.arange(1, 3000)  # from t = 1: a log axis has no place for t = 0 (where α_0 = 0)
fig = Figure(figsize=(5, 2.6))
ax = fig.subplots()
ax.plot(ts, [ema_alpha(int(t)) for t in ts])
ax.axvline(999, ls="--", c="0.5", label="cap reached, t = 999")
ax.set(xscale="log", xlabel="iteration t (log scale)", ylabel="α_t", title="EMA decay ramp (cap 0.999 from t = 999)")
ax.legend(fontsize=7, loc="lower right")
fig.tight_layout()
fig

# %% [markdown]
# ## q during training, read from the trained CLUDA run
#
# The trainer logs q of each logged step's target batch (every `train.log_every` iterations) in the
# run's `metrics.jsonl`, and its checkpoint holds the EMA teacher next to the student. We read the
# CLUDA run that `make notebook-runs` trains once (`runs/notebooks/cluda`: the demo setting,
# seed 0): q from its metrics, the teacher with `load_run_model(run, "teacher")`. Only when that
# run is missing does `nb.run_or_train` train a short stand-in here (`tiny`: 40 iterations of
# `miniscapes_tiny`, seconds; `demo`/`full`: 200 iterations of `miniscapes_cluda`, minutes). Its
# printed line says which of the two every figure below shows.

# %%
RUN = nb.run_or_train("cluda")  # the run, else a stand-in trained here (STAND_IN_ITERS of the profile)
SHOWN = nb.origins["cluda"]  # the run every figure below shows
cfg = load_config(RUN / "config.yaml")
records = [r for r in read_metrics(RUN) if "q" in r]  # the training records (evaluations carry miou)
ITERS = records[-1]["iter"]
teacher = load_run_model(RUN, "teacher")  # the EMA teacher of checkpoints/last.pt, eval mode

# %%
its, qs = np.array([r["iter"] for r in records]), np.array([r["q"] for r in records])
above = its[qs >= 0.5]
tail = qs[-max(1, len(qs) // 10):]
print(f"{len(qs)} logged steps, iterations {its[0]}-{ITERS} | last q = 0 at iteration "
      f"{its[qs == 0].max() if (qs == 0).any() else '-'} | first q >= 0.5 at "
      f"{above.min() if len(above) else 'none'} | mean q of the last {len(tail)} logged steps {tail.mean():.3f}")

# %%
window = max(1, len(qs) // 20)
smooth = np.convolve(qs, np.ones(window) / window, mode="valid")
fig = Figure(figsize=(7.5, 3.2))
ax = fig.subplots()
ax.plot(its, qs, ".", ms=3, c="0.6", label="q of a logged step (its target batch)")
ax.plot(its[window - 1:], smooth, "k-", label=f"running mean over {window} logged steps")
ax.set(xlabel="iteration", ylabel="q (fraction with p ≥ 0.968)", ylim=(-0.02, 1.02),
       title=f"q during training · CLUDA, {SHOWN}")
ax.legend(fontsize=7, loc="upper left")
fig.tight_layout()
fig

# %% [markdown]
# Every logged point is one target batch of two images, so q jumps from step to step; the running
# mean shows the trend. At the start the teacher is untrained (its decoder random) and no pixel
# reaches 0.968: q = 0 and the mixed loss learns from the pasted source pixels only. This is the
# intended warm-up — wrong pseudo-labels at full weight would reinforce themselves. What this run
# did:

# %%
half = (f"first reaches 0.5 at iteration {above.min()}" if len(above) else "never reaches 0.5")
Markdown(f"In this run q {half}; the mean q of its last {len(tail)} logged steps is **{tail.mean():.2f}**, "
         f"far from 1. About {100 * tail.mean():.0f} % of a target batch's pixels reach p ≥ 0.968 "
         f"at the end of this run's {ITERS} iterations, so every target pixel of the mixed loss counts "
         f"{tail.mean():.2f} times as much as a pasted source pixel. A longer run (the paper trains 40 000 "
         f"iterations) lets the teacher grow more confident and q climb further.")

# %% [markdown]
# ## Teacher predictions and confidence maps
#
# The run's EMA teacher on clean target validation images (no augmentation). Pixels with p ≥ τ
# are the ones that count towards q; note where the teacher is unsure — object boundaries, small
# and rare classes.
#
# One difference from training: `load_run_model` returns the teacher in **eval mode**, so its
# BatchNorm layers (in the decoder) normalise with their running statistics. During training the
# kit's default `uda.teacher_mode: train` (the release's behaviour) runs the teacher in train mode
# with dropout off, so BatchNorm normalises with the statistics of the target batch it sees — an
# implicit AdaBN-style adaptation. Confidences here can therefore differ somewhat from the q the
# trainer logged.

# %%
val = Miniscapes("real", "val", size=cfg.data.val.size)
x_val = torch.stack([val[i]["image"] for i in range(4)]).float() / 255
with torch.no_grad():
    t_logits = teacher(normalize(x_val)).logits
t_logits = F.interpolate(t_logits, size=x_val.shape[-2:], mode="bilinear", align_corners=False)
probs = F.softmax(t_logits, dim=1)
pl, pw = pseudo_label(t_logits, threshold=cfg.uda.pseudo_threshold)
conf = confidence_map(probs)  # (B, H, W) max probability
y_val = [val[i]["label"] for i in range(2)]
stats = pseudo_label_stats(t_logits)
print(f"teacher at iteration {ITERS} on {len(x_val)} val images: mean confidence {stats['mean_confidence']:.3f} | "
      f"q = {stats['q']:.3f}")

# %%
titles = ["target (val)", "ground truth", f"teacher's ŷ (it. {ITERS})", "confidence p", "p ≥ 0.968 (white)"]
fig = image_grid([[x_val[i], y_val[i], pl[i], conf[i], conf[i] >= 0.968] for i in range(2)], [titles] * 2,
                 cell_size=1.3)
fig.suptitle(f"EMA teacher · CLUDA, {SHOWN}", y=1.0, va="bottom", fontsize=9)  # above the panel titles
value_colorbar(fig, "confidence p", axes=[fig.axes[3], fig.axes[8]])
class_legend(fig, present_classes(*y_val, pl[:2]))
fig

# %% [markdown]
# ## The weight q against the threshold
#
# q is a step function of τ over the teacher's confidence distribution: the share of pixels whose
# confidence p reaches τ. The paper chose τ = 0.968 for a *trained* teacher, whose confidences pile
# up near 1. The curve is the same teacher on the same four validation images.

# %%
taus = np.linspace(0.3, 0.999, 200)
p_all = probs.amax(dim=1).flatten()
fig = Figure(figsize=(5, 2.8))
ax = fig.subplots()
ax.plot(taus, [float((p_all >= t).float().mean()) for t in taus], label="EMA teacher, 4 val images")
ax.axvline(0.968, ls="--", c="r", label="τ = 0.968")
ax.set(xlabel="threshold τ", ylabel="q = fraction with p ≥ τ", title=f"q vs τ · iteration {ITERS}, {SHOWN}")
ax.title.set_fontsize(8)
ax.legend(fontsize=7)
fig.tight_layout()
fig

# %%
q_at = {t: float((p_all >= t).float().mean()) for t in (0.5, 0.9, 0.968, 0.99)}
Markdown(f"Read the curve at τ = 0.968: **{100 * q_at[0.968]:.0f} %** of this teacher's pixels are that confident "
         f"(at τ = 0.5: {100 * q_at[0.5]:.0f} %, at 0.9: {100 * q_at[0.9]:.0f} %, at 0.99: {100 * q_at[0.99]:.0f} %). "
         + ("So τ = 0.968 does not sit far in the tail of this teacher's confidences: a trained teacher is very "
            "sure of a large share of its pixels, and the threshold keeps those. "
            if q_at[0.968] >= 0.2 else
            "Only a small share of this teacher's pixels reach τ = 0.968: a barely trained teacher is rarely that "
            "sure. ")
         + f"Between τ = 0.9 and 0.968, q changes by {100 * (q_at[0.9] - q_at[0.968]):.0f} points.")

# %% [markdown]
# ## The weight map of a mixed image
#
# After ClassMix the pixel weight is w_mix = M · 1 + (1 − M) · w_t, with w_t the target weight
# (q, and 0 in the margins): **1 on every pasted source pixel, q on the other target pixels, 0 on
# target pixels inside the margins**. We take the training crop and margins of the miniscapes
# presets (`data.crop_size`, `data.pseudo_margins`; the `real` frames end in an ego-vehicle hood,
# like Cityscapes) and, for visibility, q = 0.6. (`threshold=0` makes every pixel confident, so
# `pseudo_label` returns weight 1 outside the margins: the margin mask.)

# %%
preset_data = load_config("miniscapes_cluda").data
H, W = preset_data.crop_size
top, bottom, left, right = preset_data.pseudo_margins
print(f"crop {H}×{W}, data.pseudo_margins: top {top}, bottom {bottom}, left {left}, right {right} px")
_, keep = pseudo_label(torch.zeros(2, 19, H, W), threshold=0.0, ignore_top=top, ignore_bottom=bottom,
                       ignore_left=left, ignore_right=right)
w_t = 0.6 * keep  # q = 0.6 outside the margins
ys = torch.stack([Miniscapes("game", size=(H, W))[i]["label"] for i in range(2)])
m = class_mix_masks(ys, generator=torch.Generator().manual_seed(0))
w_mix = mix(torch.ones_like(w_t), w_t, m)

# %%
fig = image_grid([[m[i, 0] > 0, w_t[i], w_mix[i]] for i in range(2)],
                 [["mask M (white: source)", "target weight w_t", "w_mix"]] * 2, cell_size=1.3)
value_colorbar(fig, "pixel weight", axes=[fig.axes[1], fig.axes[5]])
fig

# %% [markdown]
# The bottom strip of w_t is the margin (weight 0, dark). In w_mix the pasted source pixels are
# bright (1) even inside that strip; only target pixels in the margin stay at 0:

# %%
# NBVAL_CHECK_OUTPUT
source, margin = m[:, 0] > 0, keep == 0
for name, where in (("source pixels", source), ("target pixels outside the margins", ~source & ~margin),
                    ("target pixels in the margins", ~source & margin)):
    print(f"{name}: w_mix =", [round(v, 3) for v in w_mix[where].unique().tolist()])

# %% [markdown]
# ## Explore: move the threshold
#
# The slider sets τ over the teacher's predictions on the validation batch; the status line gives
# the resulting q over all four images. The figure shows one image (`image_index=0`; pass
# `image_index=1` … `3` for the others). Lowering τ admits more (and noisier) pseudo-labels at full
# strength.

# %%
from cluda_kit.analysis.widgets import PseudoLabelExplorer

PseudoLabelExplorer(probs, x_val, threshold=0.968)

# %% [markdown]
# ## What to remember
#
# - The EMA teacher is a slowly moving average of the student (α = 0.999 from iteration 999 on);
#   it labels the target images.
# - One scalar q — the share of a target batch's pixels whose confidence reaches τ = 0.968 — weights
#   every target pixel of the mixed loss; margins set the weight to 0, pasted source pixels keep 1.
# - q starts at 0 (an untrained teacher is never that confident) and rises as the teacher learns; it
#   need not approach 1 within a short run.
# - The teacher runs in train mode during training (BatchNorm on the target batch's statistics).
#
# ## Exercises
#
# **1.** Change the confidence threshold: rerun the teacher cell with τ = 0.9 instead of the
# preset's 0.968. How much larger is q on the four validation images?
#
# <details><summary>Solution</summary>
#
# `pseudo_label(t_logits, threshold=0.9)` returns the weights; q is their maximum. The hidden cell
# prints both; the difference is the drop of the q-vs-τ curve between 0.9 and 0.968.
# </details>

# %% jupyter={"source_hidden": true} tags=["solution"]
for tau in (cfg.uda.pseudo_threshold, 0.9):
    _, w = pseudo_label(t_logits, threshold=tau)
    print(f"tau = {tau}: q = {float(w.max()):.3f}")

# %% [markdown]
# **2.** After how many iterations does the teacher average over (roughly) the last 100 student
# states, i.e. when does α_t reach 0.99?
#
# <details><summary>Solution</summary>
#
# α_t = 1 − 1/(t + 1) ≥ 0.99 from t = 99 on (the hidden cell finds it with `ema_alpha`).
# </details>

# %% jupyter={"source_hidden": true} tags=["solution"]
print("alpha_t >= 0.99 from t =", next(t for t in range(10_000) if ema_alpha(t, 0.999) >= 0.99))

# %% [markdown]
# **3.** HRDA zeroes (30, 240, 30, 30) pixels of the 2048×1024 frame. Which share of the frame's
# target pixels then carries no weight?
#
# <details><summary>Solution</summary>
#
# Only the rows and columns inside the frame minus the margins count: 1 − (1024 − 30 − 240)(2048 − 60)
# / (1024 · 2048). `pseudo_label` with `threshold=0` gives the same from the margin mask.
# </details>

# %% jupyter={"source_hidden": true} tags=["solution"]
_, kept = pseudo_label(torch.zeros(1, 2, 1024, 2048), threshold=0.0, ignore_top=30, ignore_bottom=240,
                       ignore_left=30, ignore_right=30)
print(f"zero-weight share: {1 - float(kept.mean()):.3f} | by hand: {1 - (1024 - 270) * (2048 - 60) / (1024 * 2048):.3f}")

# %% [markdown]
# **Next:** notebook 03 opens the network and finds the fused feature map the CLUDA contrastive
# loss works on.
