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
# # 01 · ClassMix: pasting source classes onto target images
#
# Mean-teacher self-training (DACS → DAFormer → HRDA → CLUDA) never trains the student on a plain
# target image. Every step builds a **mixed image**: some classes of a labelled *source* image are
# cut out and pasted onto an unlabelled *target* image. The mixed image gets a mixed label — ground
# truth on the pasted pixels, the teacher's pseudo-labels elsewhere — and is strongly augmented
# before the student sees it. This notebook takes the two steps apart (docs/method.md §2, steps 5–6):
#
# 1. **ClassMix** — choose ⌈n/2⌉ of the n classes present in a source label, build the binary mask
#    M of their pixels and mix: $x_{mix} = M\,x_s + (1-M)\,x_t$, $y_{mix} = M\,y_s + (1-M)\,\hat y_t$,
#    $w_{mix} = M\cdot 1 + (1-M)\,w_t$.
# 2. **Strong augmentation** of the mixed image only: colour jitter with probability 0.8
#    (strength 0.2 for brightness, contrast, saturation, hue), then a Gaussian blur with
#    probability 0.5 (σ ~ U(0.15, 1.15), kernel ≈ 10 % of the image side).
#
# Everything runs on the built-in *miniscapes* domains: `game` (GTA-like source) and `real`
# (Cityscapes-like target). The first cell prepares the notebook (threads, seeds, figure size) and
# prints what it found; this notebook does the same work whatever it prints.

# %%
# %matplotlib inline
from cluda_kit.notebook import setup

nb = setup()  # threads, seeds, figure dpi; prints the profile and the trained runs found
PROFILE = nb.profile

# %%
import torch
from IPython.display import Markdown

from cluda_kit.analysis.plots import class_legend, image_grid, mix_grid, present_classes, uda_step_diagram
from cluda_kit.data.labels import CLASSES, IGNORE_INDEX
from cluda_kit.data.miniscapes import Miniscapes
from cluda_kit.uda.mixing import blur_kernel_size, class_mix_masks, mix, strong_augment

# %% [markdown]
# ## One training step at a glance
#
# Before taking the step apart, here it is whole. Three batches flow into five loss terms: the
# labelled **source batch** goes through the student (cross-entropy, the source contrastive loss,
# and the feature distance to a frozen pretrained encoder); the unlabelled **target batch** goes
# through the EMA teacher, which turns it into pseudo-labels and their weight q; the **mixed
# batch**, built by ClassMix from both and strongly augmented, goes through the student again
# (mixed cross-entropy and mixed contrastive loss). One optimiser step on the summed losses updates
# the student θ; then the teacher φ follows θ by an exponential moving average.

# %%
uda_step_diagram()

# %% [markdown]
# Follow the arrows from each batch on the left to the losses on the right. This notebook is about
# the green ClassMix box; notebook 02 covers the teacher row (pseudo-labels, q, EMA), 03–04 the two
# contrastive terms, and 05 runs the whole step — with rare class sampling, which decides *which*
# source images enter the source batch, and the feature distance.

# %% [markdown]
# ## A batch of two source and two target scenes
#
# The trainer keeps images as **float RGB in [0, 1]** through mixing and augmentation and
# normalises them (ImageNet mean/std) only right before a network, so colour jitter and blur work
# on real colours. A batch holds B = 2 source + 2 target images, as in the paper.

# %%
SIZE = (128, 256)  # (H, W)
game, real = Miniscapes("game", size=SIZE), Miniscapes("real", size=SIZE)
src = [game[i] for i in (0, 1)]
tgt = [real[i] for i in (0, 1)]
xs = torch.stack([s["image"] for s in src]).float() / 255  # (B, 3, H, W) in [0, 1]
ys = torch.stack([s["label"] for s in src])  # (B, H, W) trainIds, 255 = ignore
xt = torch.stack([s["image"] for s in tgt]).float() / 255
yt = torch.stack([s["label"] for s in tgt])  # only for display: UDA never sees target labels
fig = image_grid([[xs[0], ys[0], xt[0], yt[0]], [xs[1], ys[1], xt[1], yt[1]]],
                 [["source (game)", "source label", "target (real)", "target label (unused)"]] * 2, cell_size=1.6)
class_legend(fig, present_classes(ys, yt))
fig

# %% [markdown]
# Same scene statistics, different appearance: the `real` domain shifts and desaturates colours,
# adds textures, blur, noise and vignetting; its labels also mark the ego-vehicle hood at the
# bottom as ignore (black). Which classes does each source label hold?

# %%
# NBVAL_CHECK_OUTPUT
print("images", tuple(xs.shape), xs.dtype, "| labels", tuple(ys.shape), ys.dtype)
for b in range(2):
    present = [c for c in ys[b].unique().tolist() if c != IGNORE_INDEX]
    print(f"source {b}: n = {len(present)} classes -> ClassMix pastes ceil(n/2) = {(len(present) + 1) // 2}")

# %% [markdown]
# ## The ClassMix mask
#
# `class_mix_masks(labels, per_image=True, generator=g)` draws, for each image, a uniformly random
# subset of ⌈n/2⌉ of its n classes (the ignore label 255 is never chosen) and returns the
# (B, 1, H, W) float mask M, 1 where a source pixel is pasted. All randomness comes from an explicit
# `torch.Generator`, so a resumed training run draws exactly the same masks.

# %%
g = torch.Generator().manual_seed(0)
m = class_mix_masks(ys, per_image=True, generator=g)  # (B, 1, H, W)
x_mix = mix(xs, xt, m)  # M * source + (1 - M) * target
y_mix = mix(ys, yt, m)  # here the target *labels* stand in for the teacher's pseudo-labels (notebook 02)
fig = mix_grid(xs, xt, m, x_mix, y_mix, cell_size=1.6)
class_legend(fig, present_classes(y_mix))
fig

# %% [markdown]
# The mask M is 1 (yellow) where a source pixel is pasted. The pasted classes arrive with their sharp
# `game` look and their true labels; everything else is the `real` image and its (here: true)
# labels.

# %%
# NBVAL_CHECK_OUTPUT
def chosen(mask, labels):
    """Names of the classes whose pixels the mask pastes, per image."""
    return [[CLASSES[c] if c != IGNORE_INDEX else "ignore" for c in labels[b][mask[b, 0] > 0].unique().tolist()]
            for b in range(len(labels))]


print("mask", tuple(m.shape), m.dtype, "| pasted pixels per image:", m.sum(dim=(1, 2, 3)).long().tolist())
for b, names in enumerate(chosen(m, ys)):
    print(f"image {b}: pastes {names}")

# %% [markdown]
# ## Per-image (DACS) vs batch-wide (DAFormer/HRDA) class choice
#
# DACS draws the classes **per image**: each image picks half of the classes it contains. The
# DAFormer and HRDA releases — and therefore CLUDA's — call `torch.unique` on the labels of the
# **whole source batch** inside their per-image loop: each image draws ⌈n/2⌉ of the n label values
# present anywhere in the batch (the ignore value 255 counts as one) and pastes its own pixels of
# them, an acknowledged accident kept for reproducibility (`uda.mix_per_image=false`). An image
# may then paste few or none of its pixels, or its ignore pixels. The kit defaults to per-image.

# %% [markdown]
# With one seed the two modes rank the classes with the same random numbers, so when both images
# hold the same classes (and the source has no ignore pixels) they paste exactly the same thing.
# The difference shows when the batch's union holds values an image lacks: each image then draws
# ⌈N/2⌉ of the N values of the batch instead of ⌈n/2⌉ of its own n, and pastes only those it holds,
# so it can paste more classes than the per-image mode or fewer, depending on the draw.
# The next cell takes the first seed at which the two modes paste a different number of classes
# into some image, and prints both draws side by side:

# %%
# NBVAL_CHECK_OUTPUT
union = ys.unique().tolist()  # the release's torch.unique: 255 (ignore) included when present
own = [len([c for c in ys[b].unique().tolist() if c != IGNORE_INDEX]) for b in range(2)]


def both_modes(seed):
    """(per-image mask, batch-wide mask) drawn with the same seed."""
    return tuple(class_mix_masks(ys, per_image=p, generator=torch.Generator().manual_seed(seed)) for p in (True, False))


SEED = next(s for s in range(1000) if any(len(a) != len(b) for a, b in zip(*(chosen(m, ys) for m in both_modes(s)))))
m_own, m_batch = both_modes(SEED)
print(f"label values in the batch: n = {len(union)} -> each image draws {(len(union) + 1) // 2} of them "
      f"and pastes those it contains | seed {SEED}")
for b, (a, c) in enumerate(zip(chosen(m_own, ys), chosen(m_batch, ys))):
    print(f"image {b} ({own[b]} classes): per-image pastes {len(a)} classes, {int(m_own[b].sum())} px | "
          f"batch-wide pastes {len(c)} classes, {int(m_batch[b].sum())} px: {c}")

# %%
y_batch = mix(ys, yt, m_batch)
fig = mix_grid(xs, xt, m_batch, mix(xs, xt, m_batch), y_batch, cell_size=1.6)
class_legend(fig, present_classes(y_batch))
fig

# %% [markdown]
# One seed is one draw. Over 200 seeds, per image: how many classes and pixels each mode pastes on
# average, and the fewest and most:

# %%
# NBVAL_CHECK_OUTPUT
draws = [both_modes(s) for s in range(200)]
n_cls = {mode: torch.tensor([[len(x) for x in chosen(d[k], ys)] for d in draws]).float()
         for k, mode in enumerate(("per-image", "batch-wide"))}
n_px = {mode: torch.stack([d[k].sum(dim=(1, 2, 3)) for d in draws]) for k, mode in enumerate(("per-image", "batch-wide"))}
for mode in n_cls:
    print(f"{mode:>10}: classes pasted per image {n_cls[mode].mean():.2f} ({int(n_cls[mode].min())} to "
          f"{int(n_cls[mode].max())}) | pixels per image {n_px[mode].mean():.0f} ({int(n_px[mode].min())} to "
          f"{int(n_px[mode].max())})")

# %%
a, c = (n_cls[m].mean() for m in ("per-image", "batch-wide"))
lo, hi = int(n_cls["batch-wide"].min()), int(n_cls["batch-wide"].max())
Markdown(f"Per image, the per-image mode always pastes ⌈n/2⌉ of the image's own classes "
         f"({', '.join(str((n + 1) // 2) for n in own)} here). The batch-wide mode draws "
         f"{(len(union) + 1) // 2} of the batch's {len(union)} label values and pastes those the image holds: "
         f"from {lo} to {hi} classes in these 200 draws, {c:.2f} on average against {a:.2f} — "
         f"{'more' if c > a else 'fewer'} here, because each image holds "
         f"{' and '.join(str(n) for n in own)} of the {len(union)} values. In general an image holding n of the N "
         f"values pastes between max(0, k − (N − n)) and min(n, k) classes, k = ⌈N/2⌉ — here "
         f"{max(0, (len(union) + 1) // 2 - (len(union) - own[0]))} to {min(own[0], (len(union) + 1) // 2)} for image 0. "
         f"The more the images of a batch differ, the wider that range, down to nothing pasted: how much an image "
         f"pastes becomes a matter of which images share its batch — the accident the kit's default avoids.")

# %% [markdown]
# ## Strong augmentation of the mixed image
#
# The mixed image — and only the mixed image; the teacher sees the clean target — is colour-jittered
# and blurred. The on/off coin flips (p = 0.8 for jitter, p = 0.5 for blur) are shared by the batch;
# the factors (brightness, contrast, saturation ~ U(0.8, 1.2), hue shift ~ U(−0.2, 0.2), a random
# order of the four operations, σ ~ U(0.15, 1.15)) are drawn per image. The blur kernel is the largest
# odd number not above ⌈0.1 · side⌉ (the DACS rule):

# %%
# NBVAL_CHECK_OUTPUT
for side in (128, 256, 512, 1024):
    print(f"image side {side:4d} -> blur kernel {blur_kernel_size(side)}")

# %%
augs = [strong_augment(x_mix, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
rows = [[x_mix[b]] + [aug[b] for aug in augs] for b in range(2)]  # one row per image: mixed, then 3 draws
titles = [[f"mixed (image {b})"] + [f"augmented (seed {seed})" for seed in range(3)] for b in range(2)]
image_grid(rows, titles, cell_size=1.6)

# %% [markdown]
# The augmentation changes appearance but never geometry, so the mixed label stays valid. Why
# bother? The student must predict the pasted source pixels and the pseudo-labelled target pixels
# under photometric changes the teacher never saw — a consistency objective that makes
# self-training robust. A seeded generator makes the draws reproducible:

# %%
# NBVAL_CHECK_OUTPUT
aug = strong_augment(x_mix, generator=torch.Generator().manual_seed(0))
print("augmented", tuple(aug.shape), f"range {float(aug.min()):.3g} - {float(aug.max()):.3g}")
change = (aug - x_mix).abs().mean(dim=(1, 2, 3))  # 3 significant digits: the same on every machine
print("mean abs change per image:", ", ".join(f"{float(v):.3g}" for v in change))

# %% [markdown]
# ## Explore: resample the mix
#
# The widget below draws a new class choice with every click on **resample** (the seed goes up by
# one), switches between per-image and batch-wide choice, and optionally applies the strong
# augmentation. Resample in batch-wide mode and watch the number of pasted classes per image change
# from draw to draw (the status line names them).

# %%
from cluda_kit.analysis.widgets import MixingExplorer


def draw(seed, per_image, augment):
    gen = torch.Generator().manual_seed(seed)
    mask = class_mix_masks(ys, per_image=per_image, generator=gen)
    mixed = mix(xs, xt, mask)
    mixed = strong_augment(mixed, generator=gen) if augment else mixed
    names = "; ".join(", ".join(n) for n in chosen(mask, ys))
    return dict(source=xs, target=xt, mask=mask, mixed=mixed, mixed_label=mix(ys, yt, mask), status=names)


MixingExplorer(draw, seed=0)

# %% [markdown]
# ## What to remember
#
# - ClassMix pastes ⌈n/2⌉ of a source image's n classes onto a target image; the mixed label is the
#   source label on the pasted pixels and the teacher's pseudo-label elsewhere.
# - The releases of DAFormer, HRDA and CLUDA draw from the classes of the *whole batch* (ignore
#   included), so how many classes an image pastes depends on the other images of its batch (more
#   or fewer than half of its own; with very different images, none); the kit draws per image unless
#   `uda.mix_per_image=false`.
# - Strong augmentation (colour jitter, blur) touches only the mixed image and never its geometry.
#
# ## Exercises
#
# **1.** A source image holds n = 5 classes. How many classes does ClassMix paste, and how many
# different masks can it draw for that image?
#
# <details><summary>Solution</summary>
#
# ⌈5/2⌉ = 3 classes, and every 3-subset of the 5 is equally likely: C(5, 3) = 10 masks. The hidden
# cell below counts them from the library's draws.
# </details>

# %% jupyter={"source_hidden": true} tags=["solution"]
five = torch.tensor([[[0, 1, 2, 8, 10]]]).repeat_interleave(4, dim=1)  # one image, 5 classes
masks = {tuple(class_mix_masks(five, generator=torch.Generator().manual_seed(s))[0, 0, 0].int().tolist())
         for s in range(300)}
print(f"pasted classes: {sum(next(iter(masks)))} | different masks in 300 draws: {len(masks)}")

# %% [markdown]
# **2.** Change the mixing mode: redraw the mask of the section "The ClassMix mask" with
# `per_image=False` (the release's choice) and the same seed 0. Does image 0 paste the same classes?
#
# <details><summary>Solution</summary>
#
# Rerun that cell's two lines with `per_image=False`; the hidden cell prints both draws. With the
# same seed both modes rank the values with the same random numbers, so they differ only where the
# batch's union puts a value the image lacks among the drawn ones — the seed search above finds
# the first draw where the number of pasted classes differs.
# </details>

# %% jupyter={"source_hidden": true} tags=["solution"]
for per_image in (True, False):
    mask = class_mix_masks(ys, per_image=per_image, generator=torch.Generator().manual_seed(0))
    print(f"per_image={per_image}: image 0 pastes {chosen(mask, ys)[0]}")

# %% [markdown]
# **3.** Switch the colour jitter off (`color_jitter_p=0`) and the blur on for every draw
# (`blur_p=1`): how much does the mean absolute change per image of the seed-0 augmentation drop?
#
# <details><summary>Solution</summary>
#
# The hidden cell prints both. Blur alone changes only edges and textures, while the jitter moves the
# colour of every pixel, so the change without jitter is the smaller one.
# </details>

# %% jupyter={"source_hidden": true} tags=["solution"]
for kw in ({}, {"color_jitter_p": 0.0, "blur_p": 1.0}):
    out = strong_augment(x_mix, generator=torch.Generator().manual_seed(0), **kw)
    print(kw or "default", "-> mean abs change per image:",
          ", ".join(f"{float(v):.3g}" for v in (out - x_mix).abs().mean(dim=(1, 2, 3))))

# %% [markdown]
# **Next:** notebook 02 replaces the target labels used here by the teacher's pseudo-labels and
# their confidence weight q.
