from __future__ import annotations

import math

import pytest
import torch

from cluda_kit.uda.pseudo_label import confidence, pseudo_label, pseudo_label_stats


def _logits_from_probs(probs):
    return torch.log(torch.as_tensor(probs, dtype=torch.float32))


def test_q_by_hand_and_argmax():
    # B=2, C=3, H=1, W=2: confidences 0.98, 0.5 | 0.97, 0.96 -> 2 of 4 pixels >= 0.968
    probs = torch.tensor(
        [
            [[[0.98, 0.2]], [[0.01, 0.5]], [[0.01, 0.3]]],
            [[[0.01, 0.02]], [[0.02, 0.02]], [[0.97, 0.96]]],
        ]
    )
    labels, weights = pseudo_label(_logits_from_probs(probs))
    assert labels.dtype == torch.int64 and labels.shape == (2, 1, 2)
    assert labels.tolist() == [[[0, 1]], [[2, 2]]]
    assert weights.shape == (2, 1, 2)
    assert torch.allclose(weights, torch.full((2, 1, 2), 0.5))
    _, w = pseudo_label(_logits_from_probs(probs), threshold=0.9)
    assert torch.allclose(w, torch.full((2, 1, 2), 0.75))
    # the threshold is inclusive (p >= tau): equal logits give p = 0.5 exactly
    _, w = pseudo_label(torch.zeros(1, 2, 1, 3), threshold=0.5)
    assert torch.all(w == 1)
    assert torch.allclose(confidence(_logits_from_probs(probs)), torch.tensor([[[0.98, 0.5]], [[0.97, 0.96]]]))


def test_q_is_one_scalar_over_the_batch():
    g = torch.Generator().manual_seed(0)
    logits = 6 * torch.randn(3, 5, 8, 9, generator=g)
    labels, weights = pseudo_label(logits)
    p = logits.softmax(1).amax(1)
    q = (p >= 0.968).float().sum().item() / p.numel()
    assert 0 < q < 1
    assert torch.allclose(weights, torch.full_like(weights, q))
    assert torch.equal(labels, logits.argmax(1))


def test_margins_are_zero_in_pixel_units():
    logits = torch.zeros(2, 3, 10, 12)
    logits[:, 1] = 10.0  # every pixel confident -> q = 1
    _, w = pseudo_label(logits, ignore_top=2, ignore_bottom=3, ignore_left=1, ignore_right=4)
    expected = torch.zeros(10, 12)
    expected[2:7, 1:8] = 1.0
    assert torch.equal(w, expected.expand(2, 10, 12))
    # zero margins change nothing; margins larger than the image zero everything
    _, w0 = pseudo_label(logits)
    assert torch.all(w0 == 1)
    _, wbig = pseudo_label(logits, ignore_bottom=50)
    assert torch.all(wbig == 0)
    with pytest.raises(ValueError, match="ignore_top"):
        pseudo_label(logits, ignore_top=-1)


def test_no_grad_and_half_precision():
    logits = torch.randn(1, 4, 3, 3, requires_grad=True)
    labels, weights = pseudo_label(logits)
    assert not weights.requires_grad and not labels.requires_grad
    _, w16 = pseudo_label(torch.randn(1, 4, 3, 3).half())
    assert w16.dtype == torch.float32


def test_stats():
    probs = torch.tensor([[[[0.98, 0.2, 0.1]], [[0.01, 0.5, 0.1]], [[0.01, 0.3, 0.8]]]])
    stats = pseudo_label_stats(_logits_from_probs(probs), threshold=0.9)
    assert math.isclose(stats["q"], 1 / 3, rel_tol=1e-6)
    assert math.isclose(stats["mean_confidence"], (0.98 + 0.5 + 0.8) / 3, rel_tol=1e-5)
    assert stats["class_counts"].tolist() == [1, 1, 1]
    assert stats["confident_counts"].tolist() == [1, 0, 0]
    assert torch.allclose(stats["class_mean_confidence"], torch.tensor([0.98, 0.5, 0.8]))
    probs2 = torch.tensor([[[[0.9, 0.7]], [[0.1, 0.3]]]])
    stats2 = pseudo_label_stats(_logits_from_probs(probs2))
    assert stats2["class_counts"].tolist() == [2, 0]
    assert math.isnan(stats2["class_mean_confidence"][1].item())
