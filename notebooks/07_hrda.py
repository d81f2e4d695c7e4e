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
# # 07 · HRDA: context and detail crops, a learned scale attention, and CLUDA across resolutions
#
# Notebooks 01–06 followed CLUDA on DAFormer, which trains on 512×512 crops of a Cityscapes frame
# downscaled to half resolution. CLUDA's headline result sits on **HRDA** (high-resolution domain
# adaptation) instead: the papers report 73.8 mIoU GTA5 → Cityscapes for HRDA and 74.4 for
# HRDA + CLUDA — published numbers (MiT-B5, Cityscapes val), not measured anywhere in this notebook.
# What this notebook's own HRDA + CLUDA run reaches on miniscapes is printed next to them below.
#
# HRDA keeps two views of every training crop and lets a small head decide, per pixel and per class,
# which one to trust:
#
# 1. **Why multi-resolution** — what a coarse grid does to thin classes (measured on label maps).
# 2. **Context and detail crops** — a large view at half resolution and a small window at full resolution.
# 3. **The scale attention** — context logits, detail logits, the attention map and their fusion.
# 4. **Sliding-window inference** — overlapping detail windows, and what must equal what.
# 5. **The multi-resolution contrastive loss** — CLUDA's learned-weighted blend of the low- and
#    high-resolution features, and the max-entropy detail window.
#
# The kit's method reference is `docs/method.md`; the code is `cluda_kit/models/hrda.py` and
# `cluda_kit/uda/contrastive.py`.

# %%
from cluda_kit.notebook import setup

nb = setup()  # threads, seeds, figure dpi; prints the profile and the trained runs found
PROFILE = nb.profile
# %matplotlib inline

# %%
import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cluda_kit.analysis.plots import class_legend, image_grid, pca_rgb, present_classes, to_rgb_uint8, value_colorbar
from cluda_kit.config import load_config
from cluda_kit.data.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES
from cluda_kit.data.miniscapes import Miniscapes
from cluda_kit.data.transforms import normalize
from cluda_kit.engine.checkpoint import load_checkpoint
from cluda_kit.engine.evaluate import confusion_matrix, iou_per_class, predict_slide, predict_whole
from cluda_kit.models import build_segmentor
from cluda_kit.models.hrda import HRDASegmentor, crop_to_box, max_entropy_window, random_window, window_starts
from cluda_kit.uda.contrastive import multi_resolution_contrastive_loss, pixel_contrastive_loss, resize_for_contrast

# %% [markdown]
# **Profiles.** `tiny` (what the tests run) and `demo` use the CPU preset `miniscapes_hrda_cluda`
# (128×256 training crops); `tiny` looks at one 128×256 scene, `demo` at the 160×320 scenes the
# preset trains on. `full` uses the paper preset `gta2cs_hrda_cluda` (1024×1024 crops of the
# 1024×2048 Cityscapes frame, MiT-B5; meant for a GPU) — with a miniscapes scene rendered at that size
# standing in for a Cityscapes frame, so no prepared data is needed. A trained HRDA + CLUDA run is
# read from `runs/notebooks/hrda_cluda` (`cluda-kit train miniscapes_hrda_cluda --out
# runs/notebooks/hrda_cluda` writes it) when it exists; otherwise the model below is **untrained**
# and the next cell says so. The shapes, the checks and the toy losses do not depend on the weights;
# the predictions, attention and weight maps do.

# %%
PRESET = "gta2cs_hrda_cluda" if PROFILE == "full" else "miniscapes_hrda_cluda"
RUN = nb.runs_dir / ("gta2cs_hrda_cluda" if PROFILE == "full" else "hrda_cluda")
TRAINED = (RUN / "checkpoints" / "last.pt").is_file()
cfg = load_config(RUN / "config.yaml" if TRAINED else PRESET, ["model.pretrained="])  # weights: the run or none
CROP, H = tuple(cfg.data.crop_size), cfg.model.hrda  # (H, W) training crop; the model.hrda section
# the scene looked at: tiny the crop, demo the 160×320 scenes the preset trains on, full a Cityscapes frame
FRAME = {"tiny": CROP, "demo": tuple(cfg.data.target.size), "full": tuple(cfg.data.target.resize or CROP)}[PROFILE]
DEVICE = torch.device("cuda" if PROFILE == "full" and torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
model = HRDASegmentor.from_config(build_segmentor(cfg.model), cfg.model)
if TRAINED:
    checkpoint = load_checkpoint(RUN / "checkpoints" / "last.pt")  # weights_only: tensors and plain data
    model.load_state_dict(checkpoint["student"])
model = model.to(DEVICE).eval()
state = f"{'TRAINED' if TRAINED else 'UNTRAINED (random init), no run at'} {nb.short(RUN)}"
print(f"preset {cfg.name} | crop {CROP} | frame {FRAME} | device {DEVICE} | model: {state}")


# %%
PAPER = {"HRDA": 73.8, "HRDA + CLUDA": 74.4}  # published, GTA5 -> Cityscapes, MiT-B5 (not measured here)
own = {n: json.loads((nb.runs_dir / n / "summary.json").read_text())["miou"]
       for n in ("daformer", "cluda", "hrda_cluda") if (nb.runs_dir / n / "summary.json").is_file()}
print("published (Cityscapes val):", ", ".join(f"{k} {v}" for k, v in PAPER.items()))
print("this kit's runs (miniscapes real val):", ", ".join(f"{k} {v:.2f}" for k, v in own.items()) or "none found")

# %%
if "hrda_cluda" in own:
    rest = {k: v for k, v in own.items() if k != "hrda_cluda"}
    iters = json.loads((nb.runs_dir / "hrda_cluda" / "summary.json").read_text())["iter"]
    text = (f"On miniscapes, this notebook's HRDA + CLUDA run ends at **{own['hrda_cluda']:.2f} mIoU** after "
            f"{iters} iterations"
            + (f" — {'below' if all(own['hrda_cluda'] < v for v in rest.values()) else 'not above all of'} the "
               f"DAFormer-based runs at the same budget, "
               + " and ".join(f"{k} ({v:.2f})" for k, v in rest.items()) if rest else "")
            + ". The paper's gain comes from full-resolution Cityscapes frames, where thin and distant objects need "
              f"the detail branch; on {FRAME[0]}×{FRAME[1]} scenes the detail window likely has less to add (this "
              "notebook does not measure that), while it costs a second pass. The published numbers above are not "
              "reproduced here.")
else:
    text = "No trained HRDA + CLUDA run was found: the model below is untrained, and no mIoU of this notebook compares with the paper's."
Markdown(text)

# %% [markdown]
# ## 1 · Why multi-resolution
#
# A DAFormer-style network predicts on a grid with **one cell per s = 4 input pixels**. HRDA's
# context branch sees the crop at half scale, so each of its cells covers **8** input pixels; the
# detail branch sees a window at full scale, 4 pixels per cell. What does a coarser grid cost, even
# for a perfect predictor? Send the ground-truth label maps of `real` validation scenes through
# both grids (nearest-neighbour down and back up) and measure each class's IoU against the original:

# %%
scenes = Miniscapes("real", "val", size=FRAME)


def grid_confusion(y, cell):
    """Confusion matrix of a label map y (H, W) against its round trip through a grid of cell x cell
    pixels (pixels that land on an ignored cell are left out)."""
    small = F.interpolate(y[None, None].float(), scale_factor=1 / cell, mode="nearest")
    back = F.interpolate(small, size=y.shape, mode="nearest")[0, 0].long()
    return confusion_matrix(back, y.masked_fill(back == IGNORE_INDEX, IGNORE_INDEX), NUM_CLASSES)


# %%
cm4 = cm8 = counts = 0
for i in range(32):  # 32 validation scenes
    y = scenes[i]["label"]  # (H, W) trainIds, 255 = ignore
    cm4, cm8 = cm4 + grid_confusion(y, 4), cm8 + grid_confusion(y, 8)
    counts = counts + torch.bincount(y.flatten(), minlength=256)
iou4, iou8 = 100 * iou_per_class(cm4), 100 * iou_per_class(cm8)
share = 100 * counts[:NUM_CLASSES].numpy() / float(counts.sum())  # % of all pixels
present = sorted((c for c in range(NUM_CLASSES) if not np.isnan(iou8[c])), key=lambda c: -share[c])
kept = sorted(present, key=lambda c: iou8[c] / iou4[c])  # least kept first
print(f"{i + 1} validation scenes of {FRAME}; the 5 classes that keep least and the 3 that keep most:")
for c in kept[:5] + kept[-3:]:
    print(f"{CLASSES[c]:>13} ({share[c]:5.2f} % of pixels): 4-pixel grid {iou4[c]:5.1f} % -> 8-pixel grid "
          f"{iou8[c]:5.1f} % (keeps {iou8[c] / iou4[c]:.2f})")

# %%
fig = Figure(figsize=(8, 2.6), layout="constrained")
ax = fig.subplots()
pos = np.arange(len(present))
ax.bar(pos - 0.2, iou4[present], 0.4, label="4-pixel grid (detail branch, fused output)", color="tab:blue")
ax.bar(pos + 0.2, iou8[present], 0.4, label="8-pixel grid (context branch)", color="tab:orange")
ax.set_xticks(pos, [CLASSES[c] for c in present], rotation=60, ha="right", fontsize=7)
ax.set_ylabel("IoU after the round trip (%)"), ax.set_ylim(0, 100), ax.legend(fontsize=7, loc="upper right")
ax.set_title("classes from the most to the least frequent", fontsize=8)
fig

# %% [markdown]
# What to see: for the frequent classes on the left the two bars are close; towards the rare end on
# the right the orange bars mostly fall far below the blue ones. The classes printed first keep the
# smallest share of their IoU — rare, small or thin things (in the small miniscapes profiles a pole is
# a pixel or two wide, so even the 4-pixel grid loses much of it) — while most of those that keep the
# largest share are large regions (a rare class can land there too, where its IoU was low on both
# grids to begin with). Training a MiT-B5 on large crops at full Cityscapes resolution costs too much GPU memory
# (DAFormer halves the frames for that reason), and small full-resolution crops alone would lose the
# context that separates road from sidewalk or bus from truck. HRDA therefore trains on a **large
# crop at low resolution plus a small window at full resolution**.
#
# ## 2 · Context and detail crops
#
# From a training crop x of size H×W (`data.crop_size`), HRDA builds
#
# - the **context** view: the whole crop resized by `model.hrda.context_scale` (0.5 in both presets);
# - the **detail** view: a window of `model.hrda.detail_crop` pixels at full scale, its corners on
#   multiples of `model.hrda.detail_divisible` (8), drawn at random for each batch (one box for the
#   whole batch, as in HRDA).
#
# One shared encoder + decoder runs on both. Below: a `real` validation scene, the training crop
# (its centre here), the two views and the window.

# %%
scene = scenes[5]
y0, x0 = (FRAME[0] - CROP[0]) // 2, (FRAME[1] - CROP[1]) // 2
image = scene["image"][:, y0 : y0 + CROP[0], x0 : x0 + CROP[1]].float() / 255  # (3, H, W) in [0, 1]
label = scene["label"][y0 : y0 + CROP[0], x0 : x0 + CROP[1]]  # (H, W) trainIds, 255 = ignore
x = normalize(image[None]).to(DEVICE)  # (1, 3, H, W): what the network sees
BOX = random_window(CROP, H.detail_crop, H.detail_divisible, generator=torch.Generator().manual_seed(0))
context_view = model.context_input(image[None])[0]  # the same bilinear resize the model applies to x
detail_view = crop_to_box(image, BOX)
print(f"context_scale {H.context_scale} | detail_crop {H.detail_crop} | detail_divisible {H.detail_divisible}")
print(f"crop {tuple(image.shape)} -> context {tuple(context_view.shape)} + detail {tuple(detail_view.shape)}")
print(f"detail window (y0, x0, y1, x1) = {BOX}")

# %%
fig = Figure(figsize=(10, 2.5), layout="constrained")
axes = fig.subplots(1, 3, width_ratios=[CROP[1], CROP[1], H.detail_crop[1]])
for ax, img, title in zip(axes, (image, context_view, detail_view),
                          (f"training crop {CROP}", f"context view {tuple(context_view.shape[1:])}",
                           f"detail view {tuple(detail_view.shape[1:])}")):
    ax.imshow(to_rgb_uint8(img), interpolation="nearest"), ax.set_title(title, fontsize=8), ax.set_axis_off()
by0, bx0, by1, bx1 = BOX
axes[0].add_patch(Rectangle((bx0 - 0.5, by0 - 0.5), bx1 - bx0, by1 - by0, fill=False, ec="red", lw=2,
                            label="detail window"))
axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7, frameon=False)
fig

# %% [markdown]
# The context view is blocky — it has a quarter of the crop's pixels — but shows the whole scene; the
# detail view is sharp but sees only part of it. Both views have the same number of pixels, so HRDA
# costs two passes over a quarter of the crop's pixels each instead of one full-resolution pass over
# all of them. These relations hold in every profile:

# %%
# NBVAL_CHECK_OUTPUT
print("context = crop x context_scale:",
      tuple(context_view.shape[1:]) == tuple(round(s * H.context_scale) for s in CROP))
print("detail = detail_crop at full scale:", tuple(detail_view.shape[1:]) == tuple(H.detail_crop))
print("window corners on multiples of detail_divisible:",
      BOX[0] % H.detail_divisible == BOX[1] % H.detail_divisible == 0)
print("context and detail views have equal pixel counts:", context_view[0].numel() == detail_view[0].numel())

# %% [markdown]
# ## 3 · The scale attention
#
# The segmentor turns the context view into context logits (B, C, h_c, w_c) and the detail window
# into detail logits. A separate **scale-attention head** (DAFormer-style: per-level embeddings and a
# 1×1 fusion, C outputs, sigmoid) reads the context pass's encoder stages and gives a ∈ (0, 1) per
# pixel *and class*. On the fused grid (one cell per 4 input pixels):
#
# $$A = \mathrm{up}(a)\cdot m_{\text{window}}, \qquad
#   \hat y = A \cdot \mathrm{canvas}(y_{\text{detail}}) + (1 - A)\cdot \mathrm{up}(y_{\text{context}})$$
#
# `up` is a bilinear resize to the fused grid, `canvas` places the detail logits into a zero map at
# the window's position, and the window mask m makes the fused logits **exactly the context logits
# outside the window**. Training minimises (1 − λ_d) · CE(ŷ) + λ_d · CE(detail logits vs the label
# cropped to the window), λ_d = `model.hrda.detail_loss_weight`. Below, the training forward of this crop
# with the window of section 2 (the model in eval mode so dropout is off; `inference=False` asks for
# the training path).

# %%
with torch.no_grad():
    out = model(x, inference=False, box=BOX)  # HRDAOutput
grid = tuple(out.logits.shape[-2:])
up = lambda t: F.interpolate(t, size=grid, mode="bilinear", align_corners=False)  # noqa: E731
inside = out.window_mask()[0, 0].bool()  # (gh, gw): the detail window on the fused grid
ctx_pred, fused_pred = up(out.context_logits).argmax(1)[0], out.logits.argmax(1)[0]
det_pred = out.detail_canvas(out.detail_logits).argmax(1)[0].masked_fill(~inside, IGNORE_INDEX)
gt_grid = F.interpolate(label[None, None].float(), size=grid, mode="nearest")[0, 0].long()
print(f"context logits {tuple(out.context_logits.shape)} | detail logits {tuple(out.detail_logits.shape)}"
      f" | attention a -> A {tuple(out.attention.shape)} | fused logits {tuple(out.logits.shape)}")
print(f"detail_loss_weight {H.detail_loss_weight}: loss = {1 - H.detail_loss_weight:.1f} CE(fused)"
      f" + {H.detail_loss_weight} CE(detail)")

# %%
att = out.attention[0].gather(0, fused_pred[None])[0]  # A of the class the fused map predicts
fig = image_grid([[gt_grid, ctx_pred, det_pred], [att, fused_pred]],
                 [["ground truth (fused grid)", "context prediction", "detail prediction (window)"],
                  ["attention A of the predicted class", "fused prediction"]], cell_size=2.2)
value_colorbar(fig, "attention A", axes=[fig.axes[3]])
class_legend(fig, present_classes(gt_grid, ctx_pred, det_pred, fused_pred))
fig

# %% [markdown]
# What to see: the attention map is zero outside the window (dark purple) and the fused prediction
# there is the context prediction; inside the window it blends in the detail prediction, class by
# class, as much as A says. (With an untrained model the predictions are noise and a ≈ 0.5; the first
# output of this notebook says which model this is.) The per-class attention inside the window, and
# the exact properties of the fusion:

# %%
in_gt = set(gt_grid[inside].unique().tolist()) - {IGNORE_INDEX}
missed = sorted(c for c in in_gt if not (fused_pred[inside] == c).any())
Markdown(f"Inside the window the ground truth holds {', '.join(CLASSES[c] for c in sorted(in_gt))}. "
         + (f"The fused prediction misses {', '.join(f'**{CLASSES[c]}**' for c in missed)} there entirely "
            f"({', '.join(f'{CLASSES[c]} {int((gt_grid[inside] == c).sum())}' for c in missed)} cells)"
            + (": the detail branch sees them at full resolution, but this model has not learned them — as in "
               "notebook 05, small and rare classes are the last to come." if TRAINED else
               ": the model is untrained, so this says nothing about HRDA yet.") if missed else "The fused prediction finds each of them somewhere in the window."))

# %%
pixels = {c: inside & (fused_pred == c) for c in fused_pred[inside].unique().tolist()}
for c, where in sorted(pixels.items(), key=lambda kv: -int(kv[1].sum()))[:6]:
    mean_a = float(out.attention[0, c][where].mean())
    print(f"{CLASSES[c]:>13}: {int(where.sum()):4d} cells in the window, mean A of the class {mean_a:.3f}")

# %%
# NBVAL_CHECK_OUTPUT
ctx_up = up(out.context_logits)
ref = out.attention * out.detail_canvas(out.detail_logits) + (1 - out.attention) * ctx_up
print("A = 0 outside the window:", bool((out.attention[..., ~inside] == 0).all()))
print("fused = up(context) outside the window, exactly:",
      torch.equal(out.logits[..., ~inside], ctx_up[..., ~inside]))
print("fused = A * canvas(detail) + (1 - A) * up(context):", torch.allclose(out.logits, ref, atol=1e-5))
per_cell = [CROP[0] // out.context_logits.shape[-2], H.detail_crop[0] // out.detail_logits.shape[-2],
            CROP[0] // grid[0]]
print("input pixels per cell (context, detail, fused):", per_cell)

# %% [markdown]
# ## 4 · Sliding-window inference
#
# At inference there is no single window: HRDA runs the context on the whole input and the detail
# branch on **overlapping windows** of `detail_crop`, one every `model.hrda.inference_stride` pixels
# (the last one moved back to end at the border), sums their logits on the fused grid and divides by
# the number of windows covering each cell. The attention is then not masked (every cell has detail
# logits). On top of that, the paper's test protocol slides **whole HRDA crops** over the frame
# (`train.eval_mode: slide`, `train.eval_window`, `train.eval_stride`: 1024×1024 windows every 512
# pixels over the 1024×2048 Cityscapes frame); the miniscapes preset evaluates whole images.

# %%
s, (wh, ww), (sh, sw) = model.output_stride, model.detail_crop, model.inference_stride
boxes = [(a, b, a + wh, b + ww) for a in window_starts(CROP[0], wh, sh, s)
         for b in window_starts(CROP[1], ww, sw, s)]  # (y0, x0, y1, x1) as HRDASegmentor.predict makes them
coverage = torch.zeros(CROP)
for a, b, a1, b1 in boxes:
    coverage[a:a1, b:b1] += 1
paper = load_config("gta2cs_hrda_cluda").train
print(f"inference_stride {model.inference_stride}: {len(boxes)} detail windows of {model.detail_crop} "
      f"over the crop {CROP}, {int(coverage.min())} to {int(coverage.max())} on each pixel")
print(f"test protocol: {cfg.name} eval_mode {cfg.train.eval_mode} | gta2cs_hrda_cluda eval_mode "
      f"{paper.eval_mode}, eval_window {paper.eval_window}, eval_stride {paper.eval_stride}")

# %%
fig = Figure(figsize=(9, 2.6), layout="constrained")
ax, ax2 = fig.subplots(1, 2)
ax.imshow(to_rgb_uint8(image)), ax.set_axis_off(), ax.set_title("detail windows in inference", fontsize=8)
for k, (a, b, a1, b1) in enumerate(boxes):
    inset = 0.6 * k  # pixels, so that coinciding edges stay apart
    ax.add_patch(Rectangle((b + inset, a + inset), b1 - b - 2 * inset, a1 - a - 2 * inset, fill=False, lw=1.2,
                           ec=f"C{k % 10}", label=f"({a}, {b})"))
ax.legend(title="window corner (y0, x0)", fontsize=6, title_fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
im = ax2.imshow(coverage, cmap="viridis", interpolation="nearest")
ax2.set_axis_off(), ax2.set_title("windows covering each pixel", fontsize=8)
fig.colorbar(im, ax=ax2, shrink=0.8, ticks=range(int(coverage.max()) + 1))
fig

# %% [markdown]
# The windows are drawn slightly inset (more for later ones) so that coinciding edges stay apart; the
# coverage map shows how many windows each pixel's detail logits are averaged over. Now the
# inference itself, checked against a slow loop over the same windows:

# %%
with torch.no_grad():
    pred = model(x)  # eval mode: HRDA inference
    total, count = torch.zeros_like(pred.logits), torch.zeros(grid, device=DEVICE)
    for a, b, a1, b1 in boxes:  # the slow loop: every window on its own, summed on the fused grid
        total[..., a // s : a1 // s, b // s : b1 // s] += model.segmentor(x[..., a:a1, b:b1]).logits
        count[a // s : a1 // s, b // s : b1 // s] += 1
    detail_mean = total / count
    ctx = model.segmentor(model.context_input(x), return_stages=True)
    a_up = up(torch.sigmoid(model.scale_attention(ctx.stages)[0]))  # a on the fused grid, not masked
    whole = predict_whole(model, x, NUM_CLASSES)  # the logits of the whole input, upsampled to H x W
    slide = predict_slide(model, x, NUM_CLASSES, window=CROP, stride=CROP)  # one window = the input

# %%
# NBVAL_CHECK_OUTPUT
print("detail logits = the mean of the windows' logits:",
      torch.allclose(pred.detail_logits, detail_mean, atol=1e-5))
print("attention not masked in inference: A = up(a):", torch.allclose(pred.attention, a_up, atol=1e-6))
ref = pred.attention * detail_mean + (1 - pred.attention) * up(pred.context_logits)
print("fused = A * detail + (1 - A) * up(context):", torch.allclose(pred.logits, ref, atol=1e-5))
print("slide with one window covering the input = whole inference:", torch.allclose(slide, whole, atol=1e-5))

# %% [markdown]
# Sliding windows are not the same as one pass over the whole input: a window's network sees less
# around each pixel. How much the averaged windows' detail prediction agrees with one detail pass
# over the whole crop, and how much the test-time slide over the whole frame (windows of the crop
# size, stride half of it — the paper's protocol scaled down; in the `tiny` profile the frame is the
# crop, so this is one window) agrees with one HRDA pass over the frame:

# %%
frame_x = normalize(scene["image"][None].float() / 255).to(DEVICE)
stride = tuple(paper.eval_stride) if PROFILE == "full" else (CROP[0] // 2, CROP[1] // 2)
n_frame = len(window_starts(FRAME[0], CROP[0], stride[0])) * len(window_starts(FRAME[1], CROP[1], stride[1]))
with torch.no_grad():
    one_pass = model.segmentor(x).logits.argmax(1)
    frame_slide = predict_slide(model, frame_x, NUM_CLASSES, window=CROP, stride=stride).argmax(1)
    frame_whole = predict_whole(model, frame_x, NUM_CLASSES).argmax(1)
agree_detail = 100 * float((pred.detail_logits.argmax(1) == one_pass).float().mean())
agree_frame = 100 * float((frame_slide == frame_whole).float().mean())
print(f"detail: {len(boxes)} windows vs one pass over the crop: argmax agreement {agree_detail:.1f} %")
print(f"frame {FRAME}: {n_frame} window(s) of {CROP} every {stride} vs one pass: argmax agreement {agree_frame:.1f} %")

# %%
fig = image_grid([[label, pred.logits.argmax(1)[0], pred.attention[0].mean(0)]],
                 [["ground truth", "HRDA inference: fused prediction", "inference attention A (mean over classes)"]],
                 cell_size=2.2)
value_colorbar(fig, "attention A", axes=[fig.axes[2]])
class_legend(fig, present_classes(label, pred.logits.argmax(1)[0]))
fig

# %% [markdown]
# In inference A covers the whole crop: the colourbar shows how much, averaged over the classes,
# the fused logits follow the averaged detail windows rather than the context.
#
# ## 5 · The multi-resolution contrastive loss
#
# CLUDA's loss on DAFormer contrasts the fused features of one resolution (notebook 04). On HRDA
# there are two: the context fused feature (**LR**, low resolution) and the detail fused feature
# (**HR**, only inside the window). Both are put on the contrastive grid `loss.contrastive.grid`
# (65×65 in the paper, 16×32 in the miniscapes preset; features bilinear, labels nearest), the HR
# feature as a canvas that is zero outside the window. A third head, the **`feat_weighter`**
# (`model.hrda.feat_weighter: true`; DAFormer-style, one output channel, sigmoid), reads the context
# stages and gives a weight w_i ∈ (0, 1) per pixel; c_i = 1 inside the detail window. With u the
# normalised LR and v the normalised HR features, s_ij = w_i·w_j·c_i, and ℓ_ij(a, b) notebook 04's
# log-term with the positive and the negatives taken from feature set b:
#
# $$\text{term}_{ij} = s_{ij}\,\ell_{ij}(u, u) + (1 - s_{ij})\,\ell_{ij}(u, v), \qquad
#   L = \lambda\cdot\frac{1}{M}\sum_i -\frac{\sum_j P_{ij}\,\omega_{ij}\,\text{term}_{ij}}{\max(1, \sum_j P_{ij})}$$
#
# λ = `loss.contrastive.multires_weight` (0.5), times τ/τ_b as in notebook 04 (1 in the release). Where
# s_ij = 1 (both weights 1, the anchor inside the window) the pair is contrasted LR with LR, as in the
# single-resolution loss; where s_ij = 0 the anchor's LR feature is contrasted with the HR features of
# the positive and the negatives. The weight head learns only through this loss, i.e. it learns per
# pixel which pairing gives the better contrast. The inputs of the loss for the crop above, prepared as the trainer does:

# %%
c = cfg.loss.contrastive
G = tuple(c.grid)
lr, lab, _ = resize_for_contrast(out.fused, label[None].to(DEVICE), size=G)  # LR (1, D, g_h, g_w), labels
hr = F.interpolate(out.detail_canvas(out.detail_fused), size=G, mode="bilinear", align_corners=True)
wmap = F.interpolate(out.weight_map, size=G, mode="bilinear", align_corners=True)  # w (1, 1, g_h, g_w)
crop = F.interpolate(out.window_mask(), size=G, mode="nearest")[:, 0].bool()  # c (1, g_h, g_w)
cos = F.cosine_similarity(lr, hr, dim=1)[0].masked_fill(~crop[0], 0)
print(f"grid {G} | multires_weight {c.multires_weight} | LR {tuple(lr.shape)} | HR {tuple(hr.shape)} | "
      f"w {tuple(wmap.shape)} in [{float(wmap.min()):.3f}, {float(wmap.max()):.3f}] | window cells {int(crop.sum())}")

# %%
both = torch.cat([lr[0].flatten(1), hr[0][:, crop[0]]], dim=1)  # one PCA basis for LR and HR features
rgb = torch.from_numpy(pca_rgb(both[:, None]))[0]  # (N, 3)
lr_rgb = rgb[: lr[0, 0].numel()].reshape(*G, 3)
hr_rgb = torch.zeros(*G, 3)
hr_rgb[crop[0].cpu()] = rgb[lr[0, 0].numel() :].float()
fig = image_grid([[lr_rgb.permute(2, 0, 1), hr_rgb.permute(2, 0, 1), crop[0].float().cpu()],
                  [wmap[0, 0].cpu(), cos.clamp(min=0).cpu()]],
                 [["LR (context) feature, PCA", "HR (detail) feature, PCA", "crop mask c (1 = window)"],
                  ["feat_weighter w", "cos(u_i, v_i) in the window (0 outside)"]], cell_size=2.2)
value_colorbar(fig, "c, w, cos (0 to 1)", axes=[fig.axes[2], fig.axes[3]])
fig

# %% [markdown]
# What to see: the two PCA panels share one projection (similar colour = similar feature), so the
# HR canvas can be compared with the LR map inside the window — and is black (zero) outside it. The
# mask c and the weight map w (colourbars on [0, 1]) decide where the LR–LR term may take over, and
# the last panel is the cosine between each pixel's own LR and HR features (0 outside the window).

# %%
w_lo, w_hi = float(wmap.min()), float(wmap.max())
Markdown(f"The learned weight map spans [{w_lo:.3f}, {w_hi:.3f}]"
         + (": the `feat_weighter` has **saturated**, so its panel is uniform. With w ≈ 1 everywhere, s_ij = c_i: "
            "inside the window every pair is contrasted LR with LR and the HR features take part only for anchors "
            "outside it — the learned blend has collapsed to the crop mask. The head learns only through this loss, "
            "so the loss favoured w near 1 in this run (the notebook does not show its trajectory)."
            if w_hi - w_lo < 0.01 and w_lo > 0.99 else
            ": the weights differ from pixel to pixel, so the LR–LR and LR–HR terms are blended differently across "
            "the crop." if w_hi - w_lo >= 0.01 else
            ": nearly uniform, so the blend is the same everywhere."))

# %% [markdown]
# The loss on these inputs, next to the single-resolution loss on the LR features, with the ground
# truth as labels (as on a source image):

# %%
kw = dict(temperature=c.temperature, base_temperature=c.base_temperature)
with torch.no_grad():
    multi = multi_resolution_contrastive_loss(lr, hr, lab, wmap, crop, loss_weight=c.multires_weight, **kw)
    single = pixel_contrastive_loss(lr, lab, **kw)
print(f"multi-resolution {float(multi):.4f} | single-resolution on LR {float(single):.4f}"
      f" (x multires_weight = {c.multires_weight * float(single):.4f})")

# %% [markdown]
# ### The same loss on seeded toy inputs
#
# To see the loss itself, independent of any network: one image, 16 channels on an 8×16 grid, four
# classes in vertical bands, features = class centre + noise (HR less noisy than LR, as a sharper
# view would be), a detail window of 4×8 cells, and a random weight map.

# %%
g = torch.Generator().manual_seed(0)
B, D, h, w = 1, 16, 8, 16
toy_labels = (torch.arange(w) // 4).expand(B, h, w).clone()  # classes 0..3 in vertical bands
centres = torch.randn(4, D, generator=g)[toy_labels].permute(0, 3, 1, 2)  # (B, D, h, w)
toy_crop = torch.zeros(B, h, w, dtype=torch.bool)
toy_crop[:, 2:6, 4:12] = True  # the detail window
toy_lr = centres + 1.0 * torch.randn(B, D, h, w, generator=g)
toy_hr = (centres + 0.5 * torch.randn(B, D, h, w, generator=g)) * toy_crop[:, None]  # zero outside
toy_w = torch.sigmoid(torch.randn(B, 1, h, w, generator=g))
ones, everywhere = torch.ones_like(toy_w), torch.ones_like(toy_crop)
print("toy inputs: LR", tuple(toy_lr.shape), "| HR", tuple(toy_hr.shape), "| window cells", int(toy_crop.sum()))

# %%
# NBVAL_CHECK_OUTPUT
def mr(wm, cm):
    return float(multi_resolution_contrastive_loss(toy_lr, toy_hr, toy_labels, wm, cm, loss_weight=0.5))


sr = float(pixel_contrastive_loss(toy_lr, toy_labels))
print(f"single-resolution L(u)                        {sr:.4g}")
print(f"multi-resolution, learned w and the window     {mr(toy_w, toy_crop):.4g}")
print(f"multi-resolution, w = 0 (LR-HR pairs only)     {mr(0 * toy_w, toy_crop):.4g}")
print(f"multi-resolution, w = c = 1 (LR-LR pairs only) {mr(ones, everywhere):.4g}"
      f" = 0.5 x single: {math.isclose(mr(ones, everywhere), 0.5 * sr, rel_tol=1e-6)}")

# %%
toy = {"single": sr, "random w": mr(toy_w, toy_crop), "w = 0": mr(0 * toy_w, toy_crop), "w = c = 1": mr(ones, everywhere)}
lo_, hi_ = sorted((toy["w = 0"], toy["w = c = 1"]))
Markdown(f"With w·c = 1 everywhere the blend is all LR–LR and the loss is exactly λ = 0.5 times the single-resolution "
         f"loss ({toy['w = c = 1']:.4g} = 0.5 × {sr:.4g}); with w = 0 every anchor is contrasted with the HR features, "
         f"which are zero outside the window (similarity 0 there): {toy['w = 0']:.4g}. The toy's random weight map gives "
         f"{toy['random w']:.4g}, "
         + ("between the two ends" if lo_ <= toy["random w"] <= hi_ else "outside the two ends")
         + (" and closer to the w = 0 end" if abs(toy["random w"] - toy["w = 0"]) < abs(toy["random w"] - toy["w = c = 1"])
            else " and closer to the LR–LR end")
         + f", because only the {int(toy_crop.sum())} window cells can use the LR–LR term, "
           "and there with weight s = w_i·w_j. The map receives gradients from this loss only:")

# %%
# NBVAL_CHECK_OUTPUT
w_req = toy_w.clone().requires_grad_()
multi_resolution_contrastive_loss(toy_lr, toy_hr, toy_labels, w_req, toy_crop, loss_weight=0.5).backward()
print("the weight map gets a gradient:", bool(w_req.grad.abs().sum() > 0),
      "| finite:", bool(torch.isfinite(w_req.grad).all()))

# %% [markdown]
# ### Where the detail window goes: the max-entropy window
#
# Up to iteration `model.hrda.entropy_window_after` the detail window is random. From then on, CLUDA
# places the **mixed batch's** window where the student is least sure: among the windows of
# `detail_crop` every `inference_stride` pixels (corners on multiples of `detail_divisible`), the one
# with the highest mean prediction entropy of the student's context logits, chosen **for each image
# of the mixed batch** by default (`model.hrda.entropy_window_per_image: true`, the release), or one
# window averaged over the batch when it is false (`max_entropy_window`); source batches keep random
# windows. The high-resolution pass — and the LR–HR contrast — then goes where the context view is
# least certain. One image here, so the two choices coincide.

# %%
logp = F.log_softmax(out.context_logits, dim=1)
entropy = -(logp.exp() * logp).sum(1, keepdim=True)  # (1, 1, h_c, w_c), 0 (sure) to log 19 (uniform)
entropy = F.interpolate(entropy, size=CROP, mode="bilinear", align_corners=False)[0, 0]
EBOX = max_entropy_window(out.context_logits, CROP, model.detail_crop, model.inference_stride, model.detail_divisible,
                          per_image=H.entropy_window_per_image)
EBOX = EBOX[0] if isinstance(EBOX, list) else EBOX  # per image: one box per image of the batch
print(f"entropy_window_after: {H.entropy_window_after} in {cfg.name}, "
      f"{load_config('gta2cs_hrda_cluda').model.hrda.entropy_window_after} in gta2cs_hrda_cluda")
print(f"prediction entropy on the crop: {float(entropy.min()):.3f} to {float(entropy.max()):.3f}"
      f" (the maximum, log 19 = {math.log(19):.3f})")
print(f"random window {BOX} | max-entropy window {EBOX}")

# %%
fig = Figure(figsize=(5.5, 2.6), layout="constrained")
ax = fig.subplots()
ax.set_title("prediction entropy of the context logits", fontsize=8)
im = ax.imshow(entropy.cpu(), cmap="viridis", vmin=0, vmax=math.log(NUM_CLASSES), interpolation="nearest")
fig.colorbar(im, ax=ax, shrink=0.8, label="entropy (0 to log 19)")
for (a, b, a1, b1), col, ls, name in ((BOX, "tab:cyan", "--", "random window"),
                                      (EBOX, "red", "-", "max-entropy window")):
    ax.add_patch(Rectangle((b - 0.5, a - 0.5), b1 - b, a1 - a, fill=False, ec=col, lw=2, ls=ls, label=name))
ax.set_axis_off(), ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, frameon=False)
fig

# %% [markdown]
# What to see: the red box sits over the brightest (least certain) region of the entropy map. With an
# untrained model the entropy is close to log 19 everywhere and the choice carries little meaning;
# the printed range above says how far this model is from that.
#
# ## 6 · Summary
#
# Written from the numbers of the cells above:

# %%
Markdown(
    f"- Round-tripping the ground truth through the context branch's 8-pixel grid keeps least of "
    f"{', '.join(CLASSES[c] for c in kept[:3])} and most of {', '.join(CLASSES[c] for c in kept[-3:])} — the "
    f"reason for a detail branch.\n"
    f"- The context view is the crop at scale {H.context_scale}, the detail view a {tuple(H.detail_crop)} window at "
    f"full scale; one logit cell covers {per_cell[0]} input pixels in the context branch and {per_cell[1]} in the "
    f"detail branch (checked above).\n"
    f"- The training-time attention is zero outside the detail window, where the fused logits equal the upsampled "
    f"context logits exactly.\n"
    f"- HRDA inference averages {len(boxes)} overlapping detail windows; they agree with one pass over the crop on "
    f"{agree_detail:.1f} % of the cells, and the slide over the frame with one pass on {agree_frame:.1f} %.\n"
    f"- On the toy inputs the multi-resolution loss is {toy['w = c = 1']:.4g} with w = c = 1 (0.5 × the "
    f"single-resolution {sr:.4g}), {toy['w = 0']:.4g} with w = 0 and {toy['random w']:.4g} with a random weight map; "
    f"on this crop {float(multi):.4f} against a single-resolution {float(single):.4f}.\n"
    f"- The model: {state}; its learned weight map spans [{w_lo:.3f}, {w_hi:.3f}].")

# %% [markdown]
# ## Explore: the max-entropy window of other scenes
#
# The widget below runs this model's context pass over the centre crops of the first six validation
# scenes and shows, for the image you select, the window the entropy rule picks for it (one window per
# image, the default): the crop with the window, the entropy map it is scored on, and the ground truth.
# It opens on the scene of section 2. Look at what lies inside each window — thin things, object
# borders, rare classes — and for scenes where the window lands on something the model should already
# know well, such as road or sky.

# %%
from cluda_kit.analysis.widgets import EntropyWindowExplorer

crops = torch.stack([scenes[i]["image"][:, y0 : y0 + CROP[0], x0 : x0 + CROP[1]] for i in range(6)]).float() / 255
crop_labels = torch.stack([scenes[i]["label"][y0 : y0 + CROP[0], x0 : x0 + CROP[1]] for i in range(6)])
with torch.no_grad():
    crop_logits = model(normalize(crops).to(DEVICE), inference=False, box=BOX).context_logits.cpu()
EntropyWindowExplorer(crops, crop_logits, window=model.detail_crop, stride=model.inference_stride,
                      divisible=model.detail_divisible, labels=crop_labels, image_index=5)

# %% [markdown]
# ## What to remember
#
# - HRDA trains on a large context crop at half resolution plus a small detail window at full
#   resolution, and a learned scale attention blends their logits per pixel and class.
# - Outside the detail window the fused logits are exactly the context logits during training; at
#   inference overlapping detail windows cover the whole crop.
# - CLUDA on HRDA contrasts low- and high-resolution features, blended by a learned weight map — which
#   can saturate, collapsing the blend to the crop mask.
# - Published numbers are not this kit's: on miniscapes HRDA + CLUDA is printed next to them above.
#
# ## Exercises
#
# **1.** Change the weight map of the toy loss to a constant 0.5 and rerun it. Where does the loss
# land between the w = 0 and w = c = 1 ends?
#
# <details><summary>Solution</summary>
#
# `mr(0.5 * ones, toy_crop)`: inside the window s_ij = w_i·w_j = ¼, so the anchors there mix a
# quarter LR–LR with three quarters LR–HR (hidden cell).
# </details>

# %% jupyter={"source_hidden": true} tags=["solution"]
print(f"w = 0: {toy['w = 0']:.4g} | w = 0.5: {mr(0.5 * ones, toy_crop):.4g} | random w: {toy['random w']:.4g} | "
      f"w = 1 in the window: {mr(ones, toy_crop):.4g}")

# %% [markdown]
# **2.** Move the detail window: draw it with seed 1 instead of 0 (section 2) and count the window's
# cells on the fused grid. Does the count depend on the seed?
#
# <details><summary>Solution</summary>
#
# No: the window always has `detail_crop` pixels, so its cell count is fixed; only its position
# changes (hidden cell).
# </details>

# %% jupyter={"source_hidden": true} tags=["solution"]
for seed in (0, 1):
    box = random_window(CROP, H.detail_crop, H.detail_divisible, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        o = model(x, inference=False, box=box)
    print(f"seed {seed}: window {box}, {int(o.window_mask().sum())} cells on the fused grid")
