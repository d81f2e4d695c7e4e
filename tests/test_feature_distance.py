from __future__ import annotations

from collections import Counter

import pytest
import torch

from cluda_kit.uda.feature_distance import THING_CLASSES, downscale_label_ratio, feature_distance_loss


def _slow_downscale(labels, s, min_ratio, ignore_index=255):
    """Per-cell loop reference: majority value (ignore counts as a value) over all s*s pixels."""
    b, hh, ww = labels.shape
    out = torch.empty(b, hh // s, ww // s, dtype=torch.int64)
    for n in range(b):
        for i in range(hh // s):
            for j in range(ww // s):
                patch = labels[n, i * s:(i + 1) * s, j * s:(j + 1) * s].flatten().tolist()
                counts = Counter(patch)
                best = max(counts.values())
                value = min(v for v, c in counts.items() if c == best)  # ties: lowest id (255 last)
                ok = value != ignore_index and best / (s * s) >= min_ratio
                out[n, i, j] = value if ok else ignore_index
    return out


def _labels(b=2, h=16, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    # blocky labels so that many 4x4 cells are pure or nearly pure
    coarse = torch.randint(0, 19, (b, h // 4, w // 4), generator=g)
    labels = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)
    noise = torch.rand(b, h, w, generator=g)
    labels[noise < 0.1] = 255
    labels[(noise >= 0.1) & (noise < 0.2)] = 13
    return labels


def test_downscale_matches_slow_loop():
    labels = _labels()
    for min_ratio in (0.0, 0.5, 0.75, 1.0):
        fast = downscale_label_ratio(labels, 4, min_ratio=min_ratio)
        assert fast.shape == (2, 4, 6) and fast.dtype == torch.int64
        assert torch.equal(fast, _slow_downscale(labels, 4, min_ratio))


def test_downscale_ignore_counts_in_denominator_and_as_class():
    lab = torch.zeros(1, 2, 4, dtype=torch.int64)
    lab[0, :, 0:2] = torch.tensor([[5, 5], [5, 255]])  # 3/4 = 0.75 of class 5, one ignore pixel
    lab[0, :, 2:4] = torch.tensor([[255, 255], [255, 7]])  # majority is ignore
    out = downscale_label_ratio(lab, 2, min_ratio=0.75)
    assert out.tolist() == [[[5, 255]]]
    out = downscale_label_ratio(lab, 2, min_ratio=0.8)  # 0.75 < 0.8 -> ignore
    assert out.tolist() == [[[255, 255]]]
    # remainder rows/cols beyond the last full patch are dropped
    assert downscale_label_ratio(torch.zeros(1, 5, 7, dtype=torch.int64), 2).shape == (1, 2, 3)
    with pytest.raises(ValueError, match="label values"):
        downscale_label_ratio(torch.full((1, 2, 2), 40), 2)


def _slow_fd(fs, fi, labels, lambda_fd=0.005, min_ratio=0.75):
    s = labels.shape[-1] // fs.shape[-1]
    cells = _slow_downscale(labels, s, min_ratio)
    dists = []
    for n in range(fs.shape[0]):
        for i in range(fs.shape[2]):
            for j in range(fs.shape[3]):
                if int(cells[n, i, j]) in THING_CLASSES:
                    dists.append(torch.sqrt(((fs[n, :, i, j] - fi[n, :, i, j]) ** 2).sum()))
    return lambda_fd * torch.stack(dists).mean()


def test_feature_distance_matches_slow_loop():
    labels = _labels(seed=1)
    g = torch.Generator().manual_seed(2)
    fs = torch.randn(2, 5, 4, 6, generator=g, requires_grad=True)
    fi = torch.randn(2, 5, 4, 6, generator=g)
    loss = feature_distance_loss(fs, fi, labels)
    ref = _slow_fd(fs, fi, labels)
    assert torch.allclose(loss, ref, atol=1e-6)
    cells = downscale_label_ratio(labels, 4)
    assert 0 < torch.isin(cells, torch.tensor(THING_CLASSES)).sum() < cells.numel()  # a real mask
    (grad,) = torch.autograd.grad(loss, fs)
    (grad_ref,) = torch.autograd.grad(ref, fs)
    assert torch.allclose(grad, grad_ref, atol=1e-7)
    # custom class set / lambda
    loss2 = feature_distance_loss(fs, fi, labels, thing_classes=(13,), lambda_fd=1.0)
    assert loss2.item() > 0


def test_imnet_features_are_detached():
    labels = torch.full((1, 8, 8), 13)
    fs = torch.randn(1, 3, 2, 2, requires_grad=True)
    fi = torch.randn(1, 3, 2, 2, requires_grad=True)
    feature_distance_loss(fs, fi, labels).backward()
    assert fi.grad is None and fs.grad is not None


def test_empty_mask_gives_connected_zero_and_finite_grads():
    labels = torch.zeros(2, 8, 8, dtype=torch.int64)  # road only: no thing cell
    fs = torch.randn(2, 3, 2, 2, requires_grad=True)
    loss = feature_distance_loss(fs, torch.randn(2, 3, 2, 2), labels)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(fs.grad == 0)
    # identical features (student == ImageNet model at t=0): d = 0, gradients must stay finite
    fs2 = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = feature_distance_loss(fs2, fs2.detach().clone(), torch.full((1, 8, 8), 13))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(fs2.grad).all()


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="cells"):
        feature_distance_loss(torch.zeros(1, 3, 3, 2), torch.zeros(1, 3, 3, 2), torch.zeros(1, 8, 8, dtype=torch.int64))
