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
# # 04 · The CLUDA pixel contrastive loss
#
# CLUDA adds a supervised contrastive loss on the fused features (notebook 03): pixels of the same
# class should have similar features, pixels of different classes dissimilar ones — across the
# source and the mixed (source + pseudo-labelled target) images. Flatten the B·h·w pixels,
# normalise u_i = F_i / ‖F_i‖ and let z_ij = u_i·u_j / τ. Positives P_ij = [y_i = y_j, i ≠ j],
# negatives N_ij = [y_i ≠ y_j] (docs/method.md §5):
#
# $$\ell_{ij} = z_{ij} - \log\Big(e^{z_{ij}} + \sum_k N_{ik}\, e^{z_{ik}}\Big), \qquad
#   L = -\frac{\tau}{\tau_b}\,\frac{1}{M}\sum_i \frac{\sum_j P_{ij}\,\omega_{ij}\,\ell_{ij}}{\max(1, \sum_j P_{ij})}$$
#
# with pair weights ω_ij = ρ_i ρ_j (ρ = the mixed pixel weight: 1 on source pixels, q on target
# pixels, 0 in margins) and M the number of anchors, counting anchors without positives. Unlike
# SupCon, each positive is contrasted with itself and the negatives only — the other positives are
# not in the denominator. The release uses τ = τ_b = 1 (raw cosines).
#
# We (1) write the loss as a slow, obvious loop and check the library against it, (2) look at the
# temperature and the pair weights, (3) measure time and memory against the number of anchors, and
# (4) reproduce a quirk of the released code, which the kit fixes by default.

# %%
# %matplotlib inline
from cluda_kit.notebook import setup

nb = setup()  # threads, seeds, figure dpi; prints the profile and the trained runs found
PROFILE = nb.profile

# %%
import json
import math
import time

import torch
from IPython.display import Markdown
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cluda_kit.analysis.plots import to_rgb_uint8
from cluda_kit.analysis.studies import paired_result, read_study
from cluda_kit.config import load_config
from cluda_kit.data.labels import CLASSES
from cluda_kit.data.miniscapes import Miniscapes
from cluda_kit.uda.contrastive import pixel_contrastive_loss, resize_for_contrast

# %% [markdown]
# ## Anchors, positives and negatives on two real images
#
# Every labelled cell of the contrastive grid is an anchor in turn. Take a `game` source image and a
# `real` target image as one batch of two — in training, source and target pixels meet this way in
# the mixed batch, where the target pixels carry pseudo-labels; here the target's ground truth
# stands in for them — and put their labels on the demo's contrastive grid (notebook 03). Pick one
# anchor cell of class *car*: its positives are all other car cells, **in both images**; its
# negatives are all cells of any other class; ignored cells (255) take no part.

# %%
GRID = load_config("miniscapes_cluda").loss.contrastive.grid
pair = [Miniscapes("game", size=(128, 256))[0], Miniscapes("real", size=(128, 256))[0]]
images = torch.stack([p["image"] for p in pair])  # (2, 3, 128, 256) uint8: source, target
_, cells, _ = resize_for_contrast(torch.zeros(2, 1, *GRID), torch.stack([p["label"] for p in pair]), size=GRID)
CAR = CLASSES.index("car")
i, j = (cells[0] == CAR).nonzero()[0].tolist()  # the anchor: the first car cell of the source image
positive, negative = cells == CAR, (cells != CAR) & (cells != 255)
positive[0, i, j] = False  # an anchor is not its own positive
print(f"grid {GRID}, anchor cell {(i, j)} of the source image")
for k, name in enumerate(("source", "target")):
    print(f"{name}: {int(positive[k].sum())} positives, {int(negative[k].sum())} negatives, "
          f"{int((cells[k] == 255).sum())} ignored")

# %%
MARKERS = {"anchor": {"marker": "*", "s": 260, "c": "yellow", "edgecolors": "black", "zorder": 3},
           "positive": {"marker": "o", "s": 24, "facecolors": "none", "edgecolors": "lime", "lw": 1.3},
           "negative": {"marker": "x", "s": 9, "c": "tab:red", "lw": 0.7}}
LABELS = {"anchor": "anchor (car)", "positive": "positive: car, in both images", "negative": "negative: any other class"}
handles = [Line2D([], [], ls="", marker=m["marker"], ms=12 if k == "anchor" else 6, mfc=m.get("c", "none"),
                  mec=m.get("edgecolors", m.get("c")), mew=1.2, label=LABELS[k]) for k, m in MARKERS.items()]
handles.append(Line2D([], [], ls="", label="no marker: ignore (255)"))

# %%
rows, cols = (torch.arange(n) * size // n for n, size in zip(GRID, images.shape[-2:]))  # the pixel a cell reads
fig = Figure(figsize=(10, 3.2))
for k, ax in enumerate(fig.subplots(1, 2)):
    ax.imshow(to_rgb_uint8(images[k]))
    ax.set_axis_off()
    ax.set_title(["source (game)", "target (real; its labels stand in for pseudo-labels)"][k], fontsize=9)
    for name, mask in (("negative", negative[k]), ("positive", positive[k])):
        yy, xx = mask.nonzero(as_tuple=True)
        ax.scatter(cols[xx], rows[yy], **MARKERS[name])
fig.axes[0].scatter(cols[j], rows[i], **MARKERS["anchor"])
fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
fig.subplots_adjust(bottom=0.1, top=0.92, left=0.01, right=0.99, wspace=0.03)
fig

# %% [markdown]
# The green circles in the *target* image are what makes the loss a domain-alignment tool: the
# source car's feature is pulled towards target car features, and pushed away from every red
# cross, in either domain. Each marker sits on the pixel whose label its cell takes
# (nearest-neighbour resize).

# %% [markdown]
# ## A naive reference: one anchor at a time
#
# Pixels are flattened image-major (pixel n of image b is row b·h·w + n); ignored pixels (255) are
# dropped, as the kit does by default.

# %%
def loop_loss(features, labels, weights=None, tau=1.0, tau_b=1.0, ignore_index=255):
    f = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])  # (B*h*w, D) image-major
    y = labels.reshape(-1)
    rho = torch.ones(len(y), dtype=f.dtype) if weights is None else weights.reshape(-1)
    keep = y != ignore_index
    u, y, rho = f[keep] / f[keep].norm(dim=1, keepdim=True), y[keep], rho[keep]
    total = 0.0
    for i in range(len(y)):
        z = u @ u[i] / tau
        pos = (y == y[i]) & (torch.arange(len(y)) != i)
        neg_sum = torch.exp(z[y != y[i]]).sum()
        l = z[pos] - torch.log(torch.exp(z[pos]) + neg_sum)  # each positive vs itself + negatives
        total = total + (rho[i] * rho[pos] * l).sum() / max(1, int(pos.sum()))
    return -(tau / tau_b) * total / len(y)

# %%
# NBVAL_CHECK_OUTPUT
g = torch.Generator().manual_seed(0)
feats = torch.randn(2, 8, 5, 6, generator=g, dtype=torch.float64)  # (B, D, h, w)
labels = torch.randint(0, 4, (2, 5, 6), generator=g)
labels[0, 0, :3] = 255  # a few ignored pixels
weights = torch.rand(2, 5, 6, generator=g, dtype=torch.float64)  # pixel weights rho
for tau in (1.0, 0.1):
    ref = loop_loss(feats, labels, weights, tau=tau)
    lib = pixel_contrastive_loss(feats, labels, weights, temperature=tau)
    print(f"tau={tau}: loop {ref.item():.4g} | library {lib.item():.4g} | equal: {torch.allclose(ref, lib)}")

# %% [markdown]
# The gradients agree too. (The library does not build the N×N similarity matrix under autograd:
# it walks the anchors in row blocks and accumulates analytic gradients — see below.) In float64
# the two differ only by rounding residues, whose last digits change from one machine to the next;
# so we print whether they agree to within 1e-12, not the residue itself.

# %%
# NBVAL_CHECK_OUTPUT
a, b = feats.clone().requires_grad_(), feats.clone().requires_grad_()
loop_loss(a, labels, weights, tau=0.1).backward()
pixel_contrastive_loss(b, labels, weights, temperature=0.1).backward()
print("gradient shape", tuple(b.grad.shape), "| equal within 1e-12:", torch.allclose(a.grad, b.grad, rtol=0, atol=1e-12))

# %% [markdown]
# ## Temperature
#
# z_ij = cos(u_i, u_j) / τ. With τ = 1 (the release) the similarities live in [−1, 1] and even a
# perfect clustering leaves a sizeable loss: the softmax over one positive and many negatives
# cannot become sharp. A smaller τ sharpens it: the loss of well-clustered features drops towards
# 0, while random features are penalised more. We compare random features with "clustered" ones
# (a class mean per label plus noise).

# %%
g = torch.Generator().manual_seed(1)
lab = torch.randint(0, 6, (1, 16, 32), generator=g)
means = torch.randn(6, 32, generator=g)
clustered = (means[lab] + 0.5 * torch.randn(1, 16, 32, 32, generator=g)).permute(0, 3, 1, 2)
random_f = torch.randn(1, 32, 16, 32, generator=g)
taus = [0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
fig = Figure(figsize=(5, 3))
ax = fig.subplots()
for name, f in (("random features", random_f), ("clustered features", clustered)):
    ax.plot(taus, [pixel_contrastive_loss(f, lab, temperature=t, base_temperature=t).item() for t in taus], "o-", label=name)
ax.set(xscale="log", xlabel="temperature τ (τ_b = τ)", ylabel="loss", title="effect of the temperature")
ax.legend(); fig.tight_layout(); fig

# %% [markdown]
# Why is CLUDA's loss nearly flat at the release's τ = 1? Add the best case: **perfect** features,
# one orthogonal direction per class (every positive at cosine 1, every negative at 0). With τ = 1 a
# positive's term is ℓ = 1 − log(e¹ + Σ_neg e^{cos}); with cosines in [−1, 1] the sum over K
# negatives stays between K/e and K·e, so ℓ cannot approach 0 — the loss has a high floor:

# %%
# NBVAL_CHECK_OUTPUT
perfect_f = torch.nn.functional.one_hot(lab, 32).permute(0, 3, 1, 2).float()  # (1, 32, 16, 32): class c -> axis c
table = {}
for t in (1.0, 0.1):
    table[t] = {name: pixel_contrastive_loss(f, lab, temperature=t, base_temperature=t).item()
                for name, f in (("random", random_f), ("clustered", clustered), ("perfect", perfect_f))}
    print(f"tau = {t}: " + " | ".join(f"{k} {v:.2f}" for k, v in table[t].items()))
k_neg = (lab.numel() - torch.bincount(lab.flatten()).float().pow(2).sum() / lab.numel()).item()  # mean negatives
print(f"mean negatives per anchor K = {k_neg:.0f}; floor at tau = 1 by hand: log(e + K) - 1 = {math.log(math.e + k_neg) - 1:.2f}")

# %%
study = read_study(nb.root / "bench" / "results" / "study_cluda_750.json")
cl, t01 = paired_result(study, "cluda", "daformer"), paired_result(study, "cluda_tau0.1", "daformer")
r1, r01 = table[1.0], table[0.1]
Markdown(f"At τ = 1 the loss can only fall from {r1['random']:.2f} (random features) to {r1['perfect']:.2f} "
         f"(perfect ones); clustered features sit at {r1['clustered']:.2f}. The whole way from random to perfect is "
         f"{r1['random'] - r1['perfect']:.2f}, a {100 * (r1['random'] - r1['perfect']) / r1['random']:.0f} % drop, so "
         f"the loss looks nearly flat during training (notebook 05: `cl_src` stays near its start) and its gradient "
         f"pulls only gently. At τ = 0.1 the same features give {r01['random']:.2f}, {r01['clustered']:.2f} and "
         f"{r01['perfect']:.2f}: a perfect clustering is worth almost the whole loss. A nearly flat loss is one "
         f"candidate reason for CLUDA's weak effect on miniscapes, and the 5-seed study bears it out only in part: "
         f"over {cl['n']} seeds CLUDA (τ = 1) ends {cl['delta']:+.2f} ± {cl['delta_std']:.2f} mIoU against DAFormer "
         f"({cl['wins']}/{cl['n']} seeds above it), and with τ = 0.1 {t01['delta']:+.2f} ± {t01['delta_std']:.2f} "
         f"({t01['wins']}/{t01['n']}) — "
         + ("closer to DAFormer, but no gain over it"
            if cl['delta'] < t01['delta'] <= 0 else "see the study for what the temperature changes")
         + " (`bench/results/study_cluda_750.md`; notebook 06 reads the study).")

# %% [markdown]
# ## Pair weights
#
# On the mixed batch each pair is weighted by ω_ij = ρ_i ρ_j: source–source pairs 1, source–target
# pairs q, target–target pairs q², margin pixels 0. Early in training q ≈ 0 (notebook 02), so the
# target pixels hardly take part — they are anchors whose terms vanish, and they still count in M.
# Scaling every weight by c scales the loss by c²:

# %%
# NBVAL_CHECK_OUTPUT
base = pixel_contrastive_loss(clustered, lab).item()
ones = pixel_contrastive_loss(clustered, lab, torch.ones(1, 16, 32)).item()
half = pixel_contrastive_loss(clustered, lab, torch.full((1, 16, 32), 0.5)).item()
print(f"no weights {base:.3g} | all ones {ones:.3g} | all 0.5 {half:.3g} | ratio {half / base:.3g}")  # float32: 3 digits

# %%
is_target = torch.zeros(1, 16, 32, dtype=torch.bool)
is_target[..., 16:] = True  # right half = target pixels (weight q), left half = pasted source (weight 1)
qs = torch.linspace(0, 1, 11)
losses = [pixel_contrastive_loss(clustered, lab, torch.where(is_target, q, 1.0)).item() for q in qs]
fig = Figure(figsize=(5, 3))
ax = fig.subplots()
ax.plot(qs, losses, "o-", label="the same clustered features")
ax.set(xlabel="q (weight of the target pixels)", ylabel="loss", title="half the pixels weighted by q")
ax.legend(fontsize=8); fig.tight_layout(); fig

# %%
Markdown(f"The features are the same at every q; only the weights change. The loss rises from {losses[0]:.2f} at q = 0 "
         f"to {losses[-1]:.2f} at q = 1 because more pairs count: source–target pairs with weight q, target–target pairs "
         f"with q², while M (the anchors) stays the same. A higher contrastive loss as q grows during training therefore "
         f"means *more weighted pairs*, not worse features — keep that in mind when reading `cl_mix` in notebook 05.")

# %% [markdown]
# ## Time and memory against the number of anchors
#
# The release computes the full N×N similarity matrix under autograd. Memory is O(N²): at
# 2 × 65 × 65 = 8450 anchors (D = 256) the release's own loss grows a CPU process by gigabytes for
# one forward and backward (measured from a checkout of the release, printed at the end of this
# section), and a user of the release reported HRDA + CLUDA out of memory on a 24 GB GPU (the
# release's issue #4). The library has both: `impl="plain"` is the formula with full matrices under autograd (what the
# release does, a few dozen lines: `cluda_kit.uda.contrastive.plain_loss`), and the default
# `impl="blocked"` computes the same value in row blocks of 1024 anchors inside one autograd
# Function, so only O(block · N) scratch memory is alive and O(N · D) is kept for backward. Below,
# the two side by side: forward + backward time, and the bytes autograd keeps for the backward pass
# (counted with a saved-tensor hook).
# `bench/contrastive_memory.py` measures the peak resident memory in fresh processes.

# %%
def full_matrix_loss(features, labels):
    return pixel_contrastive_loss(features, labels, impl="plain")  # the formula, O(N²) memory

# %%
def measure(fn, features, labels):
    """Forward + backward seconds, MiB that autograd keeps for backward, loss value."""
    saved = []
    f = features.clone().requires_grad_()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
        loss = fn(f, labels)
    loss.backward()
    return time.perf_counter() - start, sum(saved) / 2**20, loss.item()

# %%
sizes = [512, 1024, 2048, 4096] if PROFILE == "tiny" else [1024, 2048, 4096, 8450]
rows = []
for n in sizes:
    g = torch.Generator().manual_seed(n)
    f, y = torch.randn(1, 64, 1, n, generator=g), torch.randint(0, 19, (1, 1, n), generator=g)
    full = measure(full_matrix_loss, f, y)
    lib = measure(lambda a, b: pixel_contrastive_loss(a, b, impl="blocked"), f, y)
    rows.append((n, full, lib))
    print(f"N={n:5d}  plain: {full[0]:.3f} s, {full[1]:7.1f} MiB kept | blocked: {lib[0]:.3f} s, "
          f"{lib[1]:5.2f} MiB kept | |loss difference| {abs(full[2] - lib[2]):.1e}")

# %%
fig = Figure(figsize=(9, 3))
ax1, ax2 = fig.subplots(1, 2)
ns = [r[0] for r in rows]
for k, name in ((1, 'impl="plain" (full matrices, as the release)'), (2, 'impl="blocked" (row blocks, the default)')):
    ax1.plot(ns, [r[k][0] for r in rows], "o-", label=name)
    ax2.plot(ns, [r[k][1] for r in rows], "o-", label=name)
ax1.set(xlabel="anchors N", ylabel="seconds", title="forward + backward time")
ax2.set(xlabel="anchors N", ylabel="MiB", yscale="log", title="memory kept for backward")
ax1.legend(fontsize=8); fig.tight_layout(); fig

# %%
release = {r["impl"]: r["peak_mb"] for r in json.loads(
    (nb.root / "bench" / "results" / "release_contrastive_memory.json").read_text())["rows"] if r["form"] == "source"}
n_last, kept_plain, kept_blocked = rows[-1][0], rows[-1][1][1], rows[-1][2][1]
Markdown(f"Three memory numbers, three different things. Above, at N = {n_last} (D = 64), autograd keeps "
         f"**{kept_plain:.0f} MiB** for the plain formula's backward and {kept_blocked:.1f} MiB for the blocked one: "
         f"only the saved tensors, not the temporaries of the forward pass. The whole process peaks higher. "
         f"The release's own loss, run from a checkout of the release on the same kind of inputs "
         f"(`bench/release_contrastive_memory.py`, each form in a fresh process), peaks at {release['release']:.0f} MB "
         f"at N = 8450, D = 256, against {release['kit_plain']:.0f} MB for the kit's plain formula and "
         f"{release['kit_blocked']:.0f} MB for the blocked kernel, with the same loss value. (A process peak depends on "
         f"the allocator and varies from run to run: `bench/results/contrastive.md` measured the kit's two forms "
         f"again in another run.) The full-matrix forms grow with N²; the blocked kernel's memory grows with N·D.")

# %% [markdown]
# The plain formula's memory grows with N² (doubling N quadruples it), the blocked kernel's with N·D.
# With a GPU, `loss.contrastive.max_anchors` additionally caps the anchors with class-balanced
# sampling (every valid pixel stays a positive/negative column).

# %% [markdown]
# ## The release's pixel-order quirk (`official_compat=True`)
#
# With batch B > 1 the released code flattens the **features pixel-major** (row n·B + b holds
# feature (b, n)) but the **labels and weights image-major** (row b·h·w + n holds pixel (b, n)),
# then pairs rows by position. So feature (b, n) is contrasted under the label at image-major index
# n·B + b — a different pixel, often of the other image. (With B = 1 the two orders agree.) The
# release also treats ignore (255) as a 20th class. Take two images of three pixels, labels
# [a0, a1, a2] and [c0, c1, c2]:

# %%
# NBVAL_CHECK_OUTPUT
B, HW = 2, 3
names = [["a0", "a1", "a2"], ["c0", "c1", "c2"]]
flat = [n for row in names for n in row]  # image-major labels
for b in range(B):
    print(f"image {b}: features of pixels 0,1,2 are paired with labels", [flat[n * B + b] for n in range(HW)])

# %% [markdown]
# To see the damage, give every pixel the perfect feature — a one-hot vector of its own class. The
# correct loss is then minimal. In compat mode with B = 2 the labels are scrambled: pixels carry
# features of other classes, and the loss rises. With B = 1 both modes agree (no ignore pixels here).

# %%
# NBVAL_CHECK_OUTPUT
lab2 = torch.stack([torch.tensor([[0, 0, 1, 1, 2, 2]]), torch.tensor([[3, 3, 3, 4, 4, 4]])])  # (2, 1, 6)
perfect = torch.nn.functional.one_hot(lab2, 8).permute(0, 3, 1, 2).float()  # (2, 8, 1, 6)
for bsz in (2, 1):
    f, y = perfect[:bsz], lab2[:bsz]
    fixed = pixel_contrastive_loss(f, y).item()
    compat = pixel_contrastive_loss(f, y, official_compat=True).item()
    print(f"B={bsz}: default {fixed:.3g} | official_compat {compat:.3g}")

# %% [markdown]
# The default (`loss.contrastive.official_compat=false`) keeps one consistent image-major order for
# features, labels and weights and excludes ignored pixels as anchors, positives and negatives.
# The `gta2cs_hrda_cluda_reference` preset switches the quirks on to reproduce the release.

# %% [markdown]
# ## Explore: slide the temperature
#
# The widget below places the clustered features of the temperature section (`clustered`, with their
# labels `lab`) between the two ends of the loss at every τ of its slider: a random embedding (about
# where an untrained network starts) and a perfectly clustered one (every class on its own vertex of
# a regular simplex; `cluda_kit.analysis.contrastive.loss_range`). The status line gives the span,
# random − clustered, in nats: the most the loss can fall at that τ. Start at the release's τ = 1 and
# read the span; then slide τ down and watch the ends move apart, and up and watch them close in.

# %%
from cluda_kit.analysis.widgets import TemperatureExplorer

explorer = TemperatureExplorer(clustered, lab, temperature=1.0)
explorer

# %%
Markdown(f"At τ = 1 the whole way from a random to a perfectly clustered embedding (the widget draws a random "
         f"embedding of its own, so its ends differ a little from the panels above) is "
         f"**{explorer.span(1.0):.2f} nats** (from {explorer.ranges[1.0]['random']:.2f} to "
         f"{explorer.ranges[1.0]['clustered']:.2f}); at τ = 0.1 it is {explorer.span(0.1):.2f} nats. The simplex "
         f"floor lies a little below the orthogonal *perfect* features above ({r1['perfect']:.2f} at τ = 1), because "
         f"its classes point away from each other instead of at right angles — but not by much: at τ = 1 no embedding "
         f"takes the loss far from where it starts, which is why it looks flat in training.")

# %% [markdown]
# ## What to remember
#
# - The loss pulls each anchor towards the other pixels of its class — in both domains — and pushes
#   it from every other class; each positive is contrasted with itself and the negatives only.
# - Pair weights ω_ij = ρ_i ρ_j carry q into the loss: a rising q means more weighted pairs and a
#   higher loss, not worse features.
# - At τ = 1 cosines in [−1, 1] leave a high floor: random and perfect features differ by little, so
#   the loss looks flat and pulls gently. A smaller τ makes clustering worth the whole loss.
# - The blocked kernel computes the same value and gradient as the full-matrix formula in O(N·D)
#   kept memory instead of O(N²).
#
# ## Exercises
#
# **1.** Change the temperature: recompute the random / clustered / perfect losses at τ = 0.5 and
# τ = 0.05. At which τ is the gap between random and perfect features largest relative to the
# random loss?
#
# <details><summary>Solution</summary>
#
# Rerun the floor cell with other temperatures; the relative gap (random − perfect) / random grows
# as τ falls, towards 1 (the hidden cell prints it).
# </details>

# %% jupyter={"source_hidden": true} tags=["solution"]
for t in (1.0, 0.5, 0.1, 0.05):
    r, p_ = (pixel_contrastive_loss(f, lab, temperature=t, base_temperature=t).item() for f in (random_f, perfect_f))
    print(f"tau = {t}: random {r:.2f}, perfect {p_:.2f}, relative gap {(r - p_) / r:.2f}")

# %% [markdown]
# **2.** Check the floor by hand: with perfect orthogonal features at τ = 1 every positive has
# cos = 1 and every negative cos = 0, so ℓ = 1 − log(e + K) with K negatives. Compare with the
# library for one anchor class of 10 pixels among 100 pixels of one other class.
#
# <details><summary>Solution</summary>
#
# For the 10-pixel class K = 100; for a pixel of the 100-pixel class K = 10. The loss averages the
# anchors: −(10 · (1 − log(e + 100)) + 100 · (1 − log(e + 10))) / 110.
# </details>

# %% jupyter={"source_hidden": true} tags=["solution"]
y2 = torch.cat([torch.zeros(10), torch.ones(100)]).long().reshape(1, 1, 110)
f2 = torch.nn.functional.one_hot(y2, 2).permute(0, 3, 1, 2).float()
by_hand = -(10 * (1 - math.log(math.e + 100)) + 100 * (1 - math.log(math.e + 10))) / 110
print(f"library {pixel_contrastive_loss(f2, y2).item():.4f} | by hand {by_hand:.4f}")

# %% [markdown]
# **Next:** notebook 05 trains the whole pipeline from a cell.
