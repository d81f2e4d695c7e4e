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

nb = setup()  # profile (CLUDA_PROFILE: tiny | demo | full), threads, seeds, figure dpi, trained runs found
PROFILE = nb.profile

# %%
import torch
import torch.nn.functional as F

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
# stages are fine-grained and follow colour and texture; the late stages are coarse
# (4×8 cells at stride 32) and, in a trained model, semantic. The fused map combines both: stride-4 resolution with
# context from every level. This is why CLUDA contrasts *this* map — pixels of one class should
# have similar fused features regardless of the domain, and the loss can push them together at
# full stride-4 detail.

# %% [markdown]
# ## Where the contrastive loss taps in
#
# In every training step the loss is applied twice on the **student** (never the teacher), from
# iteration 0, with weight 1 each: on the source batch (labels = source ground truth) and on the
# mixed batch (labels = y_mix, weights = w_mix). `resize_for_contrast` puts the fused map, the
# labels and the weights on the contrastive grid (`loss.contrastive.grid`). The release's 512×512
# crop gives a 128×128 fused map resized to 65×65; the demo preset keeps the same ratio, about half
# the stride-4 map of its crop:

# %%
for name in ("gta2cs_daformer_cluda", "miniscapes_cluda"):
    c = load_config(name)
    print(f"{name}: crop {c.data.crop_size}, stride-4 map {tuple(n // 4 for n in c.data.crop_size)}, "
          f"contrastive grid {c.loss.contrastive.grid}")

# %% [markdown]
# A batch of two images therefore gives 2 × 65 × 65 = 8450 anchors in the paper and 2 × 16 × 32 =
# 1024 in the demo (ignored cells are dropped). Random stand-in features on both grids:

# %%
# NBVAL_CHECK_OUTPUT
feats = torch.randn(2, 64, 32, 64, generator=torch.Generator().manual_seed(0))  # stand-in fused maps
labels = torch.stack([real[i]["label"] for i in (0, 1)])  # (2, 128, 256) trainIds
for grid in [(16, 32), (65, 65)]:
    f, y, _ = resize_for_contrast(feats, labels, None, size=grid)
    print(f"grid {grid}: features {tuple(f.shape)}, labels {tuple(y.shape)}, anchors B*h*w = {y.numel()}, "
          f"ignored {int((y == 255).sum())}")
loss = pixel_contrastive_loss(*resize_for_contrast(feats, labels, size=(16, 32))[:2])
print(f"loss on the 16x32 grid: {float(loss):.3g}")  # 3 significant digits: the same on every machine

# %% [markdown]
# On the grid, each cell takes the label of the nearest label pixel. Cells on object boundaries
# and thin structures (poles, signs) are therefore approximate — one reason CLUDA works on the
# dense stride-4 map rather than the stride-32 stage.

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
# **Next:** notebook 04 writes the contrastive loss itself as a naive loop and checks the library
# against it.
