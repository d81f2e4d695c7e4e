"""Tests for cluda_kit.uda.contrastive against slow loop references written from docs/method.md §5-6."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cluda_kit.uda.contrastive import (
    NORM_EPS,
    balanced_anchor_indices,
    multi_resolution_contrastive_loss,
    pixel_contrastive_loss,
    resize_for_contrast,
)

DT = torch.float64


# ----------------------------------------------------------------------------------------------
# Loop references (one anchor i, one positive j at a time; straight from the formula text)
# ----------------------------------------------------------------------------------------------
def _pixels(t: torch.Tensor, pixel_major: bool) -> list:
    """(B, D, h, w) -> list of D-vectors, or (B, h, w) -> list of scalars, in the given order."""
    b_, h, w = t.shape[0], t.shape[-2], t.shape[-1]
    coords = [(b, n) for n in range(h * w) for b in range(b_)] if pixel_major else [
        (b, n) for b in range(b_) for n in range(h * w)
    ]
    if t.dim() == 4:
        return [t[b, :, n // w, n % w] for b, n in coords]
    return [t[b, n // w, n % w] for b, n in coords]


def _unit(x: torch.Tensor) -> torch.Tensor:
    n = x.norm()
    return x / n if n > NORM_EPS else torch.zeros_like(x)


def _reference(
    lr, labels, weights=None, *, hr=None, weight_map=None, crop=None, tau=1.0, tau_b=1.0,
    loss_weight=1.0, compat=False, anchors=None, ignore=255,
):
    """Single-resolution loss when hr is None, otherwise the learned-weighted LR/HR loss.

    compat: features listed pixel-major, labels/weights/weight map/gate image-major, paired by
    position (the release); 255 is an ordinary class; the gate also requires label != 0.
    """
    u = [_unit(f) for f in _pixels(lr, compat)]
    v = [_unit(f) for f in _pixels(hr, compat)] if hr is not None else None
    y = [int(t) for t in _pixels(labels, False)]
    rho = _pixels(weights, False) if weights is not None else [1.0] * len(y)
    if hr is not None:
        wm = _pixels(weight_map.reshape(labels.shape), False)
        gate = [bool(c) and (not compat or lab != 0) for c, lab in zip(_pixels(crop, False), y)]
    if not compat:  # drop ignored pixels everywhere
        keep = [k for k in range(len(y)) if y[k] != ignore]
        u, y, rho = [u[k] for k in keep], [y[k] for k in keep], [rho[k] for k in keep]
        if hr is not None:
            v, wm, gate = [v[k] for k in keep], [wm[k] for k in keep], [gate[k] for k in keep]
    n = len(y)
    anchors = list(range(n)) if anchors is None else list(anchors)
    total = lr.sum() * 0.0
    for i in anchors:
        positives = [j for j in range(n) if j != i and y[j] == y[i]]
        negatives = [k for k in range(n) if y[k] != y[i]]

        def ell(cols, j):
            z_ij = torch.dot(u[i], cols[j]) / tau
            s_neg = sum((torch.exp(torch.dot(u[i], cols[k]) / tau) for k in negatives), lr.sum() * 0.0)
            return z_ij - torch.log(torch.exp(z_ij) + s_neg)

        acc = lr.sum() * 0.0
        for j in positives:
            if hr is None:
                term = ell(u, j)
            else:
                s = wm[i] * wm[j] * (1.0 if gate[i] else 0.0)
                term = s * ell(u, j) + (1 - s) * ell(v, j)
            acc = acc + rho[i] * rho[j] * term
        total = total - acc / max(1, len(positives))
    return loss_weight * (tau / tau_b) * total / len(anchors)


def _inputs(b=2, d=5, h=3, w=4, classes=3, seed=0, ignore_frac=0.0, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, d, h, w, generator=g, dtype=dtype)
    labels = torch.randint(0, classes, (b, h, w), generator=g)
    if ignore_frac:
        labels[torch.rand(b, h, w, generator=g) < ignore_frac] = 255
    weights = torch.rand(b, h, w, generator=g, dtype=dtype)
    return feats, labels, weights


def _multi_inputs(b=2, d=5, h=3, w=4, classes=3, seed=1, ignore_frac=0.0, zero_outside=True):
    g = torch.Generator().manual_seed(seed)
    lr, labels, weights = _inputs(b, d, h, w, classes, seed, ignore_frac)
    crop = torch.zeros(b, h, w, dtype=torch.bool)
    crop[:, : h - 1, 1:] = True
    hr = torch.randn(b, d, h, w, generator=g, dtype=DT)
    if zero_outside:
        hr = hr * crop[:, None]
    wmap = torch.rand(b, 1, h, w, generator=g, dtype=DT) * 0.9 + 0.05
    return lr, hr, labels, wmap, crop, weights


def _grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    out.backward()
    return out.detach(), [x.grad for x in leaves]


def _assert_close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------
# Single resolution
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["blocked", "plain"])
@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("tau", [1.0, 0.1])
@pytest.mark.parametrize("batch", [1, 2])
def test_single_matches_loop_reference_values_and_grads(compat, tau, batch, impl):
    feats, labels, weights = _inputs(b=batch, ignore_frac=0.2, seed=batch)
    kw = dict(temperature=tau, base_temperature=0.5, official_compat=compat, impl=impl)
    val, (gf, gw) = _grads(lambda f, w: pixel_contrastive_loss(f, labels, w, **kw), feats, weights)
    ref, (rf, rw) = _grads(
        lambda f, w: _reference(f, labels, w, tau=tau, tau_b=0.5, compat=compat), feats, weights
    )
    assert (labels == 255).any() and (labels != 255).any()
    _assert_close(val, ref)
    _assert_close(gf, rf)
    _assert_close(gw, rw)
    assert gf.abs().sum() > 0 and gw.abs().sum() > 0


def test_golden_two_pixel_per_class_by_hand():
    # Three pixels, unit features at angles: pixels 0 and 1 class 0, pixel 2 class 1.
    # Anchor 0: one positive (1), one negative (2); anchor 1 symmetric; anchor 2 has no positive.
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=DT)
    feats = a.T.reshape(1, 2, 1, 3)
    labels = torch.tensor([[[0, 0, 1]]])
    l0 = 0.6 - math.log(math.exp(0.6) + math.exp(0.0))  # z01 = 0.6, z02 = 0
    l1 = 0.6 - math.log(math.exp(0.6) + math.exp(0.8))  # z10 = 0.6, z12 = 0.8
    expected = -(l0 + l1) / 3  # M = 3 counts the anchor without positives
    assert pixel_contrastive_loss(feats, labels).item() == pytest.approx(expected, abs=1e-12)


def test_golden_small_temperature_far_positive_by_hand():
    # tau = 0.05: anchor 0 sees its positive at z = -12 and its negative at z = +12, so
    # l_01 = -softplus(24); anchor 1: z_10 = -12, z_12 = (-0.36 + 0.64)/0.05 = 5.6.
    a = torch.tensor([[1.0, 0.0], [-0.6, 0.8], [0.6, 0.8]], dtype=DT)
    feats = a.T.reshape(1, 2, 1, 3)
    labels = torch.tensor([[[0, 0, 1]]])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = (softplus(24.0) + softplus(17.6)) / 3  # tau/tau_b = 1, M = 3
    got = pixel_contrastive_loss(feats, labels, temperature=0.05, base_temperature=0.05).item()
    assert got == pytest.approx(expected, rel=1e-13)


def test_batch1_compat_equals_default_without_ignore_and_differs_with_batch2():
    feats, labels, weights = _inputs(b=1)
    _assert_close(
        pixel_contrastive_loss(feats, labels, weights, official_compat=True),
        pixel_contrastive_loss(feats, labels, weights),
    )
    feats2, labels2, weights2 = _inputs(b=2)
    diff = pixel_contrastive_loss(feats2, labels2, weights2, official_compat=True) - pixel_contrastive_loss(
        feats2, labels2, weights2
    )
    assert diff.abs() > 1e-6


def test_ignore_pixels_are_excluded_by_default_and_a_class_in_compat():
    feats, labels, _ = _inputs(b=1, ignore_frac=0.3, seed=3)
    valid = labels != 255
    # default: the loss is the loss of the valid pixels alone (equivalently: features of ignored
    # pixels get no gradient and do not change the value)
    f = feats.clone().requires_grad_(True)
    loss = pixel_contrastive_loss(f, labels)
    loss.backward()
    assert f.grad.permute(0, 2, 3, 1)[~valid].abs().max() == 0
    moved = feats.clone()
    moved.permute(0, 2, 3, 1)[~valid] += 5.0
    _assert_close(pixel_contrastive_loss(moved, labels), loss.detach())
    # compat: 255 behaves exactly like any unused class id
    relabelled = labels.clone()
    relabelled[~valid] = 7
    _assert_close(
        pixel_contrastive_loss(feats, labels, official_compat=True),
        pixel_contrastive_loss(feats, relabelled, official_compat=True),
    )


def test_release_order_example_from_docstring():
    # B = 2, h*w = 3: image 0's pixels take labels (a0, a2, c1), image 1's (a1, c0, c2).
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 4, 1, 3, generator=g, dtype=DT)
    labels = torch.tensor([[[0, 1, 2]], [[3, 4, 5]]])
    paired = torch.tensor([[[0, 2, 4]], [[1, 3, 5]]])
    _assert_close(
        pixel_contrastive_loss(feats, labels, official_compat=True),
        pixel_contrastive_loss(feats, paired),
    )


@pytest.mark.parametrize("multi", [False, True])
def test_block_size_does_not_change_values_or_grads(multi):
    if multi:
        lr, hr, labels, wmap, crop, weights = _multi_inputs(b=2, h=4, w=5, ignore_frac=0.1)

        def fn(block):
            return lambda a, b, c, d: multi_resolution_contrastive_loss(
                a, b, labels, c, crop, d, temperature=0.1, block_size=block
            )

        tensors = (lr, hr, wmap, weights)
    else:
        feats, labels, weights = _inputs(b=2, h=4, w=5, ignore_frac=0.1)

        def fn(block):
            return lambda a, d: pixel_contrastive_loss(a, labels, d, temperature=0.1, block_size=block)

        tensors = (feats, weights)
    v7, g7 = _grads(fn(7), *tensors)
    v1, g1 = _grads(fn(10_000), *tensors)
    _assert_close(v7, v1, 1e-12)
    for a, b in zip(g7, g1):
        _assert_close(a, b, 1e-12)


def test_upstream_gradient_scales_the_stored_gradients_and_no_grad_skips_them():
    lr, hr, labels, wmap, crop, weights = _multi_inputs(ignore_frac=0.1)
    fn = lambda a, b, c, d: multi_resolution_contrastive_loss(a, b, labels, c, crop, d, temperature=0.2)  # noqa: E731
    val, grads = _grads(fn, lr, hr, wmap, weights)
    _, scaled = _grads(lambda *t: -2.5 * fn(*t) + t[0].sum(), lr, hr, wmap, weights)
    _assert_close(scaled[0], -2.5 * grads[0] + 1.0)
    for a, b in zip(scaled[1:], grads[1:]):
        _assert_close(a, -2.5 * b)
    with torch.no_grad():
        _assert_close(fn(*(t.clone().requires_grad_(True) for t in (lr, hr, wmap, weights))), val)


def test_gradcheck_single():
    feats, labels, weights = _inputs(b=2, d=3, h=2, w=3, ignore_frac=0.15, seed=7)
    for compat in (False, True):
        assert torch.autograd.gradcheck(
            lambda f, w: pixel_contrastive_loss(f, labels, w, temperature=0.5, official_compat=compat, block_size=5),
            (feats.requires_grad_(True), weights.requires_grad_(True)),
        )


def test_small_temperature_is_stable_in_float32():
    feats, labels, weights = _inputs(b=2, d=8, h=4, w=4, seed=11)
    for tau in (0.07, 0.01):
        f32 = feats.float().requires_grad_(True)
        loss = pixel_contrastive_loss(f32, labels, weights.float(), temperature=tau, base_temperature=0.07)
        loss.backward()
        ref = pixel_contrastive_loss(feats, labels, weights, temperature=tau, base_temperature=0.07)
        assert torch.isfinite(loss) and torch.isfinite(f32.grad).all()
        assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    _assert_close(
        pixel_contrastive_loss(feats, labels, temperature=0.07), _reference(feats, labels, tau=0.07), 1e-9
    )


def test_degenerate_inputs_give_finite_zero_losses():
    feats = torch.randn(1, 4, 3, 3, dtype=DT, requires_grad=True)
    one_class = torch.zeros(1, 3, 3, dtype=torch.long)  # no negatives: every l_ij = 0
    all_distinct = torch.arange(9).reshape(1, 3, 3)  # no positives
    all_ignored = torch.full((1, 3, 3), 255)
    for labels in (one_class, all_distinct, all_ignored):
        feats.grad = None
        loss = pixel_contrastive_loss(feats, labels)
        loss.backward()
        assert loss.item() == 0.0
        assert torch.isfinite(feats.grad).all() and feats.grad.abs().max() == 0


def test_zero_feature_vectors_are_similarity_zero_without_gradient():
    feats, labels, _ = _inputs(b=1, d=4, h=3, w=3, seed=2)
    feats[0, :, 1, :] = 0.0
    f = feats.clone().requires_grad_(True)
    loss = pixel_contrastive_loss(f, labels)
    loss.backward()
    assert torch.isfinite(f.grad).all()
    assert f.grad[0, :, 1, :].abs().max() == 0
    assert f.grad[0, :, 0, :].abs().max() > 0
    _assert_close(loss.detach(), _reference(feats, labels))


def test_half_precision_features_are_computed_in_float32():
    feats, labels, _ = _inputs(b=1, d=8, h=4, w=4, seed=4)
    loss = pixel_contrastive_loss(feats.to(torch.bfloat16), labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(pixel_contrastive_loss(feats, labels).item(), rel=2e-2)


# ----------------------------------------------------------------------------------------------
# Anchor sampling
# ----------------------------------------------------------------------------------------------
def test_balanced_anchor_sampling_is_class_balanced_and_deterministic():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 3 + [255] * 10)
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))]
    picks = [balanced_anchor_indices(labels, 21, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(picks[0], picks[1])
    assert not torch.equal(picks[0], picks[2])
    for idx in picks:
        assert idx.numel() == 21 and idx.unique().numel() == 21
        assert torch.equal(idx, idx.sort().values)
        counts = sorted(torch.bincount(labels[idx], minlength=256)[[0, 1, 2, 255]].tolist())
        # water level: class 2 whole (3), the rest 18 split 6/6/6 over classes 0, 1, 255
        assert counts == [3, 6, 6, 6]
    # the remainder goes to randomly chosen classes: 20 anchors -> 3 + {6, 6, 5} in some order
    seen = set()
    for s in range(12):
        idx = balanced_anchor_indices(labels, 20, torch.Generator().manual_seed(s))
        counts = torch.bincount(labels[idx], minlength=256)[[0, 1, 2, 255]].tolist()
        assert sorted(counts) == [3, 5, 6, 6]
        seen.add(tuple(counts))
    assert len(seen) > 1
    assert torch.equal(balanced_anchor_indices(labels, 500), torch.arange(labels.numel()))


@pytest.mark.parametrize("multi", [False, True])
def test_max_anchors_keeps_all_pixels_as_columns(multi):
    feats, labels, weights = _inputs(b=2, h=3, w=4, ignore_frac=0.1, seed=9)
    valid = labels.reshape(-1)[labels.reshape(-1) != 255]
    anchors = balanced_anchor_indices(valid, 7, torch.Generator().manual_seed(3))
    if multi:
        lr, hr, _, wmap, crop, _ = _multi_inputs(b=2, h=3, w=4)
        val = multi_resolution_contrastive_loss(
            lr, hr, labels, wmap, crop, weights, max_anchors=7, generator=torch.Generator().manual_seed(3)
        )
        ref = _reference(lr, labels, weights, hr=hr, weight_map=wmap, crop=crop, loss_weight=0.5, anchors=anchors)
    else:
        val = pixel_contrastive_loss(feats, labels, weights, max_anchors=7, generator=torch.Generator().manual_seed(3))
        ref = _reference(feats, labels, weights, anchors=anchors)
    _assert_close(val, ref)
    full = pixel_contrastive_loss(feats, labels, weights)
    _assert_close(pixel_contrastive_loss(feats, labels, weights, max_anchors=10_000), full)


# ----------------------------------------------------------------------------------------------
# Multi resolution
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["blocked", "plain"])
@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("tau", [1.0, 0.1])
@pytest.mark.parametrize("batch", [1, 2])
def test_multi_matches_loop_reference_values_and_grads(compat, tau, batch, impl):
    lr, hr, labels, wmap, crop, weights = _multi_inputs(b=batch, ignore_frac=0.15, seed=batch + 3)
    labels[0, 0, 1:3] = 0  # road inside the window: the compat gate drops it
    kw = dict(temperature=tau, base_temperature=0.5, loss_weight=0.5, official_compat=compat, impl=impl)
    val, grads = _grads(
        lambda a, b, c, d: multi_resolution_contrastive_loss(a, b, labels, c, crop, d, **kw), lr, hr, wmap, weights
    )
    ref, ref_grads = _grads(
        lambda a, b, c, d: _reference(
            a, labels, d, hr=b, weight_map=c, crop=crop, tau=tau, tau_b=0.5, loss_weight=0.5, compat=compat
        ),
        lr, hr, wmap, weights,
    )
    _assert_close(val, ref)
    for a, b in zip(grads, ref_grads):
        _assert_close(a, b)
    assert grads[2].abs().sum() > 0  # the weight head learns through this loss


# ----------------------------------------------------------------------------------------------
# The two implementations
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("max_anchors", [None, 9])
def test_plain_and_blocked_are_equal_in_value_and_gradients(multi, compat, weighted, max_anchors):
    """impl="plain" (the formula with full matrices) and the default blocked kernel (block_size 5,
    so several blocks) on 2x4x5 pixels with ignore pixels, zero feature rows and a detail window;
    the same generator seed draws the same anchors."""
    lr, hr, labels, wmap, crop, weights = _multi_inputs(b=2, h=4, w=5, classes=4, ignore_frac=0.15, seed=7)
    lr[0, :, 1, 1] = 0.0  # a dead pixel: similarity 0, no gradient
    kw = dict(temperature=0.2, base_temperature=0.5, official_compat=compat, max_anchors=max_anchors)

    def run(impl):
        gen = torch.Generator().manual_seed(11)
        if multi:
            fn = lambda a, b, c, d: multi_resolution_contrastive_loss(  # noqa: E731
                a, b, labels, c, crop, d if weighted else None, generator=gen, impl=impl, block_size=5, **kw)
            return _grads(fn, lr, hr, wmap, weights)
        fn = lambda a, d: pixel_contrastive_loss(  # noqa: E731
            a, labels, d if weighted else None, generator=gen, impl=impl, block_size=5, **kw)
        return _grads(fn, lr, weights)

    (val_b, grads_b), (val_p, grads_p) = run("blocked"), run("plain")
    _assert_close(val_b, val_p)
    assert val_b.abs() > 0
    for gb, gp in zip(grads_b, grads_p):
        if gb is None or gp is None:  # weights unused when not weighted
            assert gb is None and gp is None
            continue
        _assert_close(gb, gp)
    assert grads_p[0][0, :, 1, 1].abs().max() == 0  # no gradient into the zero vector


def test_impl_must_be_known():
    feats, labels, _ = _inputs()
    with pytest.raises(ValueError, match=r"pixel_contrastive_loss: impl must be one of 'blocked', 'plain', got 'fast'"):
        pixel_contrastive_loss(feats, labels, impl="fast")
    lr, hr, labels, wmap, crop, _ = _multi_inputs()
    with pytest.raises(ValueError, match=r"multi_resolution_contrastive_loss: impl must be one of"):
        multi_resolution_contrastive_loss(lr, hr, labels, wmap, crop, impl="Plain")


def test_gradcheck_multi():
    lr, hr, labels, wmap, crop, weights = _multi_inputs(b=2, d=3, h=2, w=3, ignore_frac=0.1, zero_outside=False)
    for compat in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, c, d: multi_resolution_contrastive_loss(
                a, b, labels, c, crop, d, temperature=0.5, official_compat=compat, block_size=4
            ),
            tuple(t.clone().requires_grad_(True) for t in (lr, hr, wmap, weights)),
        )


def test_multi_reduces_to_single_when_wc_is_one():
    lr, hr, labels, _, _, weights = _multi_inputs(ignore_frac=0.1)
    ones = torch.ones(labels.shape, dtype=DT)
    inside = torch.ones(labels.shape, dtype=torch.bool)
    for tau in (1.0, 0.2):
        multi = multi_resolution_contrastive_loss(
            lr, hr, labels, ones, inside, weights, temperature=tau, base_temperature=0.3, loss_weight=0.5
        )
        single = pixel_contrastive_loss(lr, labels, weights, temperature=tau, base_temperature=0.3)
        _assert_close(multi, 0.5 * single)


def test_multi_reduces_to_cross_resolution_term_when_w_is_zero():
    lr, hr, labels, _, crop, weights = _multi_inputs(ignore_frac=0.1)
    zeros = torch.zeros(labels.shape, dtype=DT)
    val = multi_resolution_contrastive_loss(lr, hr, labels, zeros, crop, weights, temperature=0.3)
    # only l(u, v) remains: any gate and any other weight map with w_i w_j c_i = 0 gives the same
    _assert_close(val, _reference(lr, labels, weights, hr=hr, weight_map=zeros, crop=crop, tau=0.3, loss_weight=0.5))
    half = torch.full(labels.shape, 0.5, dtype=DT)
    outside = torch.zeros_like(crop)
    _assert_close(val, multi_resolution_contrastive_loss(lr, hr, labels, half, outside, weights, temperature=0.3))
    # with v = u the cross term is the single-resolution loss
    _assert_close(
        multi_resolution_contrastive_loss(lr, lr, labels, zeros, crop, weights, loss_weight=1.0),
        pixel_contrastive_loss(lr, labels, weights),
    )


def test_multi_zero_canvas_outside_window_has_no_nan_and_no_gradient():
    lr, hr, labels, wmap, crop, _ = _multi_inputs(b=2, d=6, h=4, w=4, zero_outside=True)
    a, b, c = (t.clone().requires_grad_(True) for t in (lr, hr, wmap))
    loss = multi_resolution_contrastive_loss(a, b, labels, c, crop, temperature=0.07)
    loss.backward()
    for g in (a.grad, b.grad, c.grad):
        assert torch.isfinite(g).all()
    outside = ~crop[:, None].expand_as(hr)
    assert b.grad[outside].abs().max() == 0 and b.grad[~outside].abs().max() > 0
    assert a.grad.abs().max() < 1e3


def test_multi_weight_map_shapes_and_validation():
    lr, hr, labels, wmap, crop, weights = _multi_inputs()
    _assert_close(
        multi_resolution_contrastive_loss(lr, hr, labels, wmap, crop, weights),
        multi_resolution_contrastive_loss(lr, hr, labels, wmap[:, 0], crop, weights),
    )
    with pytest.raises(ValueError, match="weight_map"):
        multi_resolution_contrastive_loss(lr, hr, labels, wmap.expand(-1, 2, -1, -1), crop)
    with pytest.raises(ValueError, match="hr_features"):
        multi_resolution_contrastive_loss(lr, hr[:, :2], labels, wmap, crop)
    with pytest.raises(ValueError, match="crop_mask"):
        multi_resolution_contrastive_loss(lr, hr, labels, wmap, crop[:, :1])
    all_ignored = torch.full_like(labels, 255)
    a = lr.clone().requires_grad_(True)
    loss = multi_resolution_contrastive_loss(a, hr, all_ignored, wmap, crop)
    loss.backward()
    assert loss.item() == 0.0 and a.grad.abs().max() == 0


def test_single_validation_messages():
    feats, labels, weights = _inputs()
    with pytest.raises(ValueError, match="labels"):
        pixel_contrastive_loss(feats, labels[:, :1])
    with pytest.raises(ValueError, match="integer"):
        pixel_contrastive_loss(feats, labels.double())
    with pytest.raises(ValueError, match="weights"):
        pixel_contrastive_loss(feats, labels, weights[:1])
    with pytest.raises(ValueError, match="max_anchors"):
        pixel_contrastive_loss(feats, labels, max_anchors=0)


# ----------------------------------------------------------------------------------------------
# Resizing
# ----------------------------------------------------------------------------------------------
def test_resize_for_contrast():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 16, 32, generator=g)
    labels = torch.randint(0, 4, (2, 64, 128), generator=g)
    labels[:, :8] = 255
    weights = torch.rand(2, 64, 128, generator=g)
    f, y, w = resize_for_contrast(feats, labels, weights, size=(9, 17))
    assert f.shape == (2, 3, 9, 17) and y.shape == (2, 9, 17) and w.shape == (2, 9, 17)
    assert y.dtype == torch.int64
    assert set(y.unique().tolist()) <= set(labels.unique().tolist())
    assert (y[:, 0] == 255).all()
    # align_corners=True keeps the corner pixels exactly; nearest labels copy a source pixel
    torch.testing.assert_close(f[..., 0, 0], feats[..., 0, 0])
    torch.testing.assert_close(f[..., -1, -1], feats[..., -1, -1])
    torch.testing.assert_close(w[:, -1, -1], weights[:, -1, -1])
    assert resize_for_contrast(feats, labels, size=(9, 17))[2] is None


# ----------------------------------------------------------------------------------------------
# CUDA (runs where a GPU is present)
# ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_follows_the_inputs_and_matches_cpu_float64():
    lr, hr, labels, wmap, crop, weights = _multi_inputs(b=2, d=16, h=9, w=9, ignore_frac=0.1)
    fn = lambda a, b, c, d, y, m: multi_resolution_contrastive_loss(a, b, y, c, m, d, temperature=0.1)  # noqa: E731
    ref, ref_grads = _grads(lambda *t: fn(*t, labels, crop), lr, hr, wmap, weights)
    cuda = [t.float().cuda() for t in (lr, hr, wmap, weights)]
    val, grads = _grads(lambda *t: fn(*t, labels.cuda(), crop.cuda()), *cuda)
    assert val.device.type == "cuda" and val.dtype == torch.float32
    torch.testing.assert_close(val.cpu().double(), ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.cpu().double(), b, rtol=1e-3, atol=1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = pixel_contrastive_loss(cuda[0].bfloat16(), labels.cuda(), temperature=0.1)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(pixel_contrastive_loss(lr, labels, temperature=0.1).item(), rel=2e-2)
    flat = labels.reshape(-1).cuda()
    picks = [balanced_anchor_indices(flat, 40, torch.Generator("cuda").manual_seed(0)) for _ in range(2)]
    assert torch.equal(picks[0], picks[1]) and picks[0].device.type == "cuda"
    counts = torch.bincount(flat[picks[0]], minlength=256)
    assert counts[counts > 0].max() - counts[counts > 0].min() <= 1  # 4 classes, all larger than 10


@pytest.mark.slow
def test_release_size_takes_a_quarter_of_the_plain_memory_and_no_more_time(tmp_path):
    """The memory contract at the release's size: 2 x 65 x 65 = 8450 anchors, 256 channels,
    forward + backward on the CPU. Each implementation runs in a fresh process
    (bench/contrastive_memory.py, peak = growth of the process's own RSS high-water mark); the
    kit's loss must peak at most at a quarter of a plain full-matrix loss and take no more time,
    with the same value and gradient."""
    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "contrastive.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.contrastive_memory", "--sizes", "8450", "--dim", "256",
         "--threads", "1", "--repeats", "3", "--json", str(out)],
        cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(out.read_text())["rows"][0]
    plain, kit = row["plain"], row["kit"]
    # a plain (8450, 8450) fp32 matrix is 272 MiB, and autograd keeps several of them
    assert plain["peak_mb"] > 1000, plain
    assert kit["peak_mb"] <= 0.25 * plain["peak_mb"], (kit["peak_mb"], plain["peak_mb"])
    assert kit["time_s"] <= plain["time_s"], (kit["time_s"], plain["time_s"])
    assert kit["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert kit["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-5)
