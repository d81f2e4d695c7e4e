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
# # 03 · The fused feature map: where CLUDA's contrastive loss taps in
#
# CLUDA does not contrast the encoder's features, nor the logits: it contrasts the **multi-level
# fused feature** of the DAFormer decoder (docs/method.md §5). This notebook follows an image through
# the network and prints the shape at every step:
#
# 1. The **encoder** (a Mix Transformer, MiT) returns four stage maps at strides 4, 8, 16 and 32
#    (MiT-B5: 64/128/320/512 channels).
# 2. The **DAFormer decoder** embeds each stage with a per-pixel linear layer (256 channels in
#    DAFormer; the CLUDA release uses 512), upsamples all four to stride 4 and concatenates them.
# 3. A depthwise-separable **ASPP** (dilations 1, 6, 12, 18, no image pooling) and a 3×3 conv →
#    D = 256 channels, BN, ReLU **fuse** them. That stride-4 map, *before* dropout and the 1×1
#    classifier, is the feature CLUDA's loss works on.
# 4. For the loss, the fused map is resized bilinearly to a fixed grid (the release: 65×65,
#    `align_corners=True`); labels are resized nearest, pixel weights bilinearly.
#
# The kit's demo model is a small MiT (`mit_nano`, 32/64/160/256 channels) whose decoder embeds
# each level in 32 channels and fuses them into D = 64, so everything runs on a CPU.

# %%
# %matplotlib inline
from cluda_kit.notebook import setup

nb = setup()  # threads, seeds, figure dpi; prints the profile and the trained runs found
PROFILE = nb.profile

# %%
import torch
import torch.nn.functional as F
from IPython.display import Markdown

from cluda_kit.analysis import cluster_measures, patch_labels
from cluda_kit.analysis.plots import class_legend, image_grid, pca_rgb, present_classes
from cluda_kit.analysis.runs import load_run_model
from cluda_kit.config import ModelConfig, load_config
from cluda_kit.data.miniscapes import Miniscapes
from cluda_kit.data.transforms import normalize
from cluda_kit.models import build_segmentor
from cluda_kit.uda.contrastive import pixel_contrastive_loss, resize_for_contrast

# %% [markdown]
# ## Shapes through the network
#
# We build the demo's model — the widths of the `miniscapes_*` presets, printed here — with a
# seeded random initialisation and feed it a 128×256 image. `segmentor(x, return_stages=True)`
# returns a `SegOutput` with the stage maps, the fused feature and the logits. The shapes do not
# depend on the weights.

# %%
demo = load_config("miniscapes_cluda").model
print(f"miniscapes presets: encoder {demo.encoder}, level embeddings {demo.embed_dim} ch, fused D = {demo.fused_dim}")

# %%
model_cfg = ModelConfig(encoder="mit_nano", decoder="daformer", num_classes=19, embed_dim=32, fused_dim=64)
torch.manual_seed(0)
model = build_segmentor(model_cfg).eval()
real = Miniscapes("real", "val", size=(128, 256))
image, label = real[0]["image"], real[0]["label"]
x = normalize(image[None].float() / 255)  # (1, 3, H, W), ImageNet-normalised
with torch.no_grad():
    out = model(x, return_stages=True)

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'input':<28}{tuple(x.shape)}")
for i, s in enumerate(out.stages):
    print(f"{f'encoder stage {i + 1} (stride {128 // s.shape[-2]})':<28}{tuple(s.shape)}")
print(f"{'fused (before dropout)':<28}{tuple(out.fused.shape)}")
print(f"{'logits (pre-softmax)':<28}{tuple(out.logits.shape)}")
print("parameters:", sum(p.numel() for p in model.parameters()))

# %% [markdown]
# ## Inside the decoder
#
# We can redo the decoder's work by hand: embed every stage with its 1×1 layer, upsample to the
# stride-4 size, concatenate (4 × 32 = 128 channels here), fuse to D = 64. The result must equal
# the fused map the model returned.

# %%
# NBVAL_CHECK_OUTPUT
dec = model.decoder
size = out.stages[0].shape[-2:]
with torch.no_grad():
    embedded = [F.interpolate(e(s), size=size, mode="bilinear", align_corners=False)
                for e, s in zip(dec.embed_layers, out.stages)]
    cat = torch.cat(embedded, dim=1)
    fused = dec.fuse_layer(cat)
print("embedded levels", [tuple(e.shape) for e in embedded])
print("concatenated", tuple(cat.shape), "-> fused", tuple(fused.shape))
print("equals out.fused:", torch.allclose(fused, out.fused, atol=1e-5))

# %% [markdown]
# ## Looking at the features: PCA to RGB
#
# A D-channel map cannot be drawn directly. `pca_rgb` projects every pixel's feature on the map's
# three principal components and shows them as R, G, B: pixels with similar features get similar
# colours. A random network's features mean little, so we look at a trained one: the **student of
# the CLUDA run** that `make notebook-runs` trains once (`runs/notebooks/cluda`, the demo setting,
# seed 0), loaded with `load_run_model`. Only when that run is missing does `nb.run_or_train` train
# a short stand-in here (`tiny`: 40 iterations of `miniscapes_tiny`, seconds; `demo`/`full`: 200
# iterations of `miniscapes_cluda`); the printed line says which the figures show.

# %%
RUN = nb.run_or_train("cluda")  # the run, else a stand-in trained here
SHOWN = nb.origins["cluda"]
model = load_run_model(RUN)  # the student of checkpoints/last.pt, built from the run's config.yaml, eval mode
run_model = load_config(RUN / "config.yaml").model
print(f"{SHOWN}: encoder {run_model.encoder}, level embeddings {run_model.embed_dim} ch, fused D = {run_model.fused_dim}")

# %%
with torch.no_grad():
    out = model(x, return_stages=True)
maps = [pca_rgb(s[0]) for s in out.stages] + [pca_rgb(out.fused[0])]
titles = [f"stage {i + 1}: {s.shape[1]} ch, {s.shape[-2]}×{s.shape[-1]}" for i, s in enumerate(out.stages)]
titles.append(f"fused: {out.fused.shape[1]} ch, {out.fused.shape[-2]}×{out.fused.shape[-1]}")
fig = image_grid([[image, label, maps[4]], maps[:4]], [["target image", "ground truth", titles[4]], titles[:4]],
                 cell_size=1.5)
fig.suptitle(f"CLUDA student · {SHOWN}", y=1.0, va="bottom", fontsize=9)
class_legend(fig, present_classes(label))
fig

# %% [markdown]
# The legend names the ground-truth colours; the PCA colours have no fixed meaning (each map gets
# its own three components), only *equal colour = similar feature* within one map. The early
# stages are fine-grained; the late stages are coarse (stride 32). The fused map combines all four
# at stride-4 resolution. Three colours show little of a 64- or 256-channel map, so rather than
# reading "semantic" off the pictures, measure it: how well does each map separate the classes?
# Label every cell of each map by its patch of the ground truth (majority class) on eight
# validation images and compute, on at most 2000 cells per map (a seeded sample), the
# intra/inter-class distance ratio (cosine; lower = pixels of one class closer together than to
# other classes) and the silhouette (higher = better separated):

# %%
imgs = torch.stack([real[i]["image"] for i in range(8)]).float() / 255
labs = torch.stack([real[i]["label"] for i in range(8)])
with torch.no_grad():
    o8 = model(normalize(imgs), return_stages=True)
sep, pick = {}, torch.Generator().manual_seed(0)
for name, fmap in [*((f"stage {i + 1}", s) for i, s in enumerate(o8.stages)), ("fused", o8.fused)]:
    cells = patch_labels(labs, tuple(fmap.shape[-2:]), purity=None).flatten()
    keep = (cells != 255).nonzero()[:, 0]
    keep = keep[torch.randperm(len(keep), generator=pick)[:2000]]
    m = cluster_measures(fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])[keep].numpy(), cells[keep].numpy())
    sep[name] = m
    print(f"{name:<8} {tuple(fmap.shape[-2:])}: {len(keep):4d} cells, intra/inter ratio {m['ratio']:.3f}, "
          f"silhouette {m['silhouette']:.3f}")

# %%
best = min(sep, key=lambda k: sep[k]["ratio"])
Markdown(f"In the student shown ({SHOWN}), the map whose cells are grouped best by class is **{best}** (intra/inter ratio "
         f"{sep[best]['ratio']:.3f}; stage 1: {sep['stage 1']['ratio']:.3f}, stage 4: {sep['stage 4']['ratio']:.3f}, "
         f"fused: {sep['fused']['ratio']:.3f}). "
         + ("The fused map separates the classes at least as well as any single stage, at the finest resolution: "
            if sep["fused"]["ratio"] <= min(v["ratio"] for v in sep.values()) + 0.01 else
            "The fused map is not the best separated here, but it is the only one at stride-4 resolution with "
            "context from every level: ")
         + "this is why CLUDA contrasts *this* map — pixels of one class should have similar fused features "
           "regardless of the domain, and the loss pushes them together.")

# %% [markdown]
# ## Where the contrastive loss taps in
#
# In every training step the loss is applied twice on the **student** (never the teacher), from
# iteration 0, with weight 1 each: on the source batch (labels = source ground truth) and on the
# mixed batch (labels = y_mix, weights = w_mix). `resize_for_contrast` puts the fused map, the
# labels and the weights on the contrastive grid (`loss.contrastive.grid`). So the fused map has
# stride-4 resolution, but the loss reads it on a coarser grid:

# %%
grids = {}
for name in ("gta2cs_daformer_cluda", "miniscapes_cluda"):
    c = load_config(name)
    s4 = tuple(n // 4 for n in c.data.crop_size)
    grids[name] = (s4, tuple(c.loss.contrastive.grid), c.data.batch_size)
    print(f"{name}: crop {c.data.crop_size}, stride-4 map {s4}, contrastive grid {c.loss.contrastive.grid} "
          f"({c.loss.contrastive.grid[0] / s4[0]:.2f} of the map's side), batch {c.data.batch_size}")

# %%
(s4p, gp, bp), (s4d, gd, bd) = grids["gta2cs_daformer_cluda"], grids["miniscapes_cluda"]
Markdown(f"The paper's {s4p[0]}×{s4p[1]} fused map is resized to {gp[0]}×{gp[1]} and the demo's {s4d[0]}×{s4d[1]} to "
         f"{gd[0]}×{gd[1]}: about half the side of the stride-4 map in both, so the loss sees the fused feature at "
         f"roughly stride {4 * s4p[0] / gp[0]:.0f}, not at full stride-4 detail. A batch of {bp} images gives at most "
         f"{bp} × {gp[0]} × {gp[1]} = {bp * gp[0] * gp[1]} anchors in the paper and {bd} × {gd[0]} × {gd[1]} = "
         f"{bd * gd[0] * gd[1]} in the demo; cells whose label is ignore (255) are dropped. Random stand-in features "
         f"on both grids, with the labels of two real images:")

# %%
# NBVAL_CHECK_OUTPUT
feats = torch.randn(2, 64, 32, 64, generator=torch.Generator().manual_seed(0))  # stand-in fused maps
labels = torch.stack([real[i]["label"] for i in (0, 1)])  # (2, 128, 256) trainIds
for grid in [(16, 32), (65, 65)]:
    f, y, _ = resize_for_contrast(feats, labels, None, size=grid)
    print(f"grid {grid}: features {tuple(f.shape)}, labels {tuple(y.shape)}, cells B*h*w = {y.numel()}, "
          f"ignored {int((y == 255).sum())}")
loss = pixel_contrastive_loss(*resize_for_contrast(feats, labels, size=(16, 32))[:2])
print(f"loss on the 16x32 grid: {float(loss):.3g}")  # 3 significant digits: the same on every machine

# %%
f16, y16, _ = resize_for_contrast(feats, labels, None, size=(16, 32))
Markdown(f"On the demo grid these two images give **{int((y16 != 255).sum())} anchors**: {y16.numel()} cells, of "
         f"which {int((y16 == 255).sum())} take the ignore label (the ego-vehicle hood of the `real` frames). "
         f"Each cell takes the label of the nearest label pixel, so cells on object boundaries and thin structures "
         f"(poles, signs) are approximate — one reason CLUDA works on the fused map, resized from stride 4, "
         f"rather than on the stride-32 stage.")

# %%
with torch.no_grad():
    fused = model(normalize(torch.stack([real[i]["image"] for i in (0, 1)]).float() / 255)).fused
f, y, _ = resize_for_contrast(fused, labels, None, size=(16, 32))
fig = image_grid([[labels[0], y[0], pca_rgb(f[0])]],
                 [["label 128×256", "label on the 16×32 grid", "fused feature on the grid (PCA)"]], cell_size=1.5)
fig.suptitle(f"CLUDA student · {SHOWN}", y=1.0, va="bottom", fontsize=9)
class_legend(fig, present_classes(labels[0], y[0]))
fig

# %% [markdown]
# Compare the two label maps: thin poles and small signs shrink to a cell or vanish on the grid,
# and object borders become staircases. The PCA map on the right is what the loss sees.

# %% [markdown]
# ## Explore: every map of every image
#
# The widget below draws the PCA-to-RGB picture of one map — an encoder stage or the fused map — of
# one of the eight validation images the separation measures above were computed on, beside the
# image and its ground truth. Step through the stages of one image and watch the detail go from fine
# to coarse; then compare the fused map across images: do road, cars and vegetation take similar
# colours within a picture? (Colours compare only within one picture: each gets its own components.)

# %%
from cluda_kit.analysis.widgets import FeatureMapExplorer

FeatureMapExplorer.from_output(imgs, o8, labels=labs)

# %% [markdown]
# ## What to remember
#
# - The encoder gives four maps at strides 4, 8, 16, 32; the DAFormer decoder embeds, upsamples,
#   concatenates and fuses them into one stride-4 map of D channels.
# - CLUDA's contrastive loss works on that fused map (before dropout and the classifier), resized to
#   the contrastive grid: about half the side of the stride-4 map; labels nearest, weights bilinear.
# - Anchors are the grid cells with a label; ignored cells take no part.
#
# ## Exercises
#
# **1.** Change the contrastive grid of the demo to the full stride-4 map of its crop (32×64) and
# rerun the anchor count. How many anchors do the two images give, and how much larger is the N×N
# similarity matrix?
#
# <details><summary>Solution</summary>
#
# `resize_for_contrast(feats, labels, size=(32, 64))` and count the labels that are not 255. Four
# times the cells means about 16 times the matrix entries (the hidden cell prints both).
# </details>

# %% jupyter={"source_hidden": true} tags=["solution"]
for grid in [(16, 32), (32, 64)]:
    _, y, _ = resize_for_contrast(feats, labels, None, size=grid)
    n = int((y != 255).sum())
    print(f"grid {grid}: {n} anchors, similarity matrix {n}×{n} = {n * n / 1e6:.2f} M entries")

# %% [markdown]
# **2.** Redo the decoder by hand (section "Inside the decoder") but leave out the stride-32 stage:
# concatenate only three embedded levels. Why can the fuse layer not take it?
#
# <details><summary>Solution</summary>
#
# The fuse layer expects 4 × embed_dim input channels; with three levels it gets 3 × embed_dim and
# the convolution raises a shape error. The hidden cell shows the message.
# </details>

# %% jupyter={"source_hidden": true} tags=["solution"]
small_model = build_segmentor(model_cfg).eval()
with torch.no_grad():
    st = small_model(x, return_stages=True).stages
    three = torch.cat([F.interpolate(e(s), size=st[0].shape[-2:], mode="bilinear", align_corners=False)
                       for e, s in zip(small_model.decoder.embed_layers[:3], st[:3])], dim=1)
    try:
        small_model.decoder.fuse_layer(three)
    except RuntimeError as e:
        print(f"{tuple(three.shape)} -> RuntimeError: {str(e).splitlines()[0][:120]}")

# %% [markdown]
# **Next:** notebook 04 writes the contrastive loss itself as a naive loop and checks the library
# against it.
