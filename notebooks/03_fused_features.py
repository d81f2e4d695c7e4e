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
# The kit's demo model is a small MiT (`mit_nano`, 32/64/160/256 channels) with a 64-channel
# decoder, so everything runs on a CPU.

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
import torch.nn.functional as F

from cluda_kit.analysis.plots import image_grid, pca_rgb
from cluda_kit.config import ModelConfig, load_config
from cluda_kit.data.miniscapes import Miniscapes
from cluda_kit.data.transforms import normalize
from cluda_kit.engine.trainer import Trainer
from cluda_kit.models import build_segmentor
from cluda_kit.uda.contrastive import pixel_contrastive_loss, resize_for_contrast

# %% [markdown]
# ## Shapes through the network
#
# We build a demo-sized model — `mit_nano` with a DAFormer decoder of 64-channel level embeddings
# and D = 64 (the `miniscapes_*` presets use this family; `load_config("miniscapes_cluda").model`
# shows their current widths) — with a seeded random initialisation and feed a 128×256 image.
# `segmentor(x, return_stages=True)` returns a `SegOutput` with the stage maps, the fused feature
# and the logits. The shapes do not depend on the weights.

# %%
model_cfg = ModelConfig(encoder="mit_nano", decoder="daformer", num_classes=19, embed_dim=64, fused_dim=64)
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
# stride-4 size, concatenate (4 × 64 = 256 channels here), fuse. The result must equal the fused
# map the model returned.

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
# colours. To see something more meaningful than a random network, we first train the model briefly
# on the source domain (`tiny`: a few iterations; `demo`/`full`: longer).

# %%
ITERS = {"tiny": 30, "demo": 400, "full": 2000}[PROFILE]
short = ["optim.warmup_iters=5"] if PROFILE == "tiny" else []
train_cfg = load_config("miniscapes_source_only", [f"train.max_iters={ITERS}", "train.eval_every=0",
                                                   "train.figure_every=0", "train.log_every=10", *short])
trainer = Trainer(train_cfg, progress=True)
trainer.fit()
model = trainer.student.eval()

# %%
with torch.no_grad():
    out = model(x, return_stages=True)
maps = [pca_rgb(s[0]) for s in out.stages] + [pca_rgb(out.fused[0])]
titles = [f"stage {i + 1}: {s.shape[1]} ch, {s.shape[-2]}×{s.shape[-1]}" for i, s in enumerate(out.stages)]
titles.append(f"fused: {out.fused.shape[1]} ch, {out.fused.shape[-2]}×{out.fused.shape[-1]}")
image_grid([[image, label, maps[4]], maps[:4]], [["target image", "ground truth", titles[4]], titles[:4]],
           cell_size=2.0)

# %% [markdown]
# The early stages are fine-grained and follow colour and texture; the late stages are coarse
# (4×8 cells at stride 32) and semantic. The fused map combines both: stride-4 resolution with
# context from every level. This is why CLUDA contrasts *this* map — pixels of one class should
# have similar fused features regardless of the domain, and the loss can push them together at
# full stride-4 detail.

# %% [markdown]
# ## Where the contrastive loss taps in
#
# In every training step the loss is applied twice on the **student** (never the teacher), from
# iteration 0, with weight 1 each: on the source batch (labels = source ground truth) and on the
# mixed batch (labels = y_mix, weights = w_mix). `resize_for_contrast` puts the fused map, the
# labels and the weights on the contrastive grid. The kit's demo uses the stride-4 grid of its
# 128×256 crops (32×64); the release's 512×512 crop gives a 128×128 fused map resized to 65×65,
# i.e. 2 × 65 × 65 = 8450 anchors per batch of two.

# %%
# NBVAL_CHECK_OUTPUT
feats = torch.randn(2, 64, 32, 64, generator=torch.Generator().manual_seed(0))  # stand-in fused maps
labels = torch.stack([real[i]["label"] for i in (0, 1)])  # (2, 128, 256) trainIds
for grid in [(32, 64), (65, 65)]:
    f, y, _ = resize_for_contrast(feats, labels, None, size=grid)
    print(f"grid {grid}: features {tuple(f.shape)}, labels {tuple(y.shape)}, anchors B*h*w = {y.numel()}, "
          f"ignored {int((y == 255).sum())}")
print("loss on the 32x64 grid:", round(float(pixel_contrastive_loss(*resize_for_contrast(feats, labels, size=(32, 64))[:2])), 4))

# %% [markdown]
# On the grid, each cell takes the label of the nearest label pixel. Cells on object boundaries
# and thin structures (poles, signs) are therefore approximate — one reason CLUDA works on the
# dense stride-4 map rather than the stride-32 stage.

# %%
with torch.no_grad():
    fused = model(normalize(torch.stack([real[i]["image"] for i in (0, 1)]).float() / 255)).fused
f, y, _ = resize_for_contrast(fused, labels, None, size=(32, 64))
image_grid([[labels[0], y[0], pca_rgb(f[0])]],
           [["label 128×256", "label on the 32×64 grid", "fused feature on the grid (PCA)"]], cell_size=2.0)

# %% [markdown]
# **Next:** notebook 04 writes the contrastive loss itself as a naive loop and checks the library
# against it.
