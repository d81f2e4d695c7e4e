"""Teacher pseudo-labels with the confidence weight q and zeroed margins (docs/method.md §2, step 4).

The teacher's logits are turned into hard labels ŷ = argmax softmax and a per-pixel weight: one scalar
q for the whole batch (the fraction of its pixels with max probability ≥ τ = 0.968), zero in the
image margins. Everything here runs without gradient.

Margins: DAFormer zeroes the top 15 and bottom 120 rows of its 512×512 crop of the 1024×512 frame
(``ignore_top=15, ignore_bottom=120``). HRDA zeroes margins of the full 2048×1024 frame before
cropping (top 30, bottom 240, left 30, right 30), i.e. a per-pixel validity mask that travels with
the crop; for that case the trainer multiplies the returned weights by the cropped mask itself.
"""

from __future__ import annotations

import torch

__all__ = ["pseudo_label", "confidence", "pseudo_label_stats"]


def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 4 or not logits.is_floating_point():
        raise ValueError(
            f"pseudo_label.py: expected float logits of shape (B, C, H, W); "
            f"got dtype {logits.dtype} and shape {tuple(logits.shape)}"
        )


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes in at least float32 (half-precision logits are promoted)."""
    return logits.detach().softmax(dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))


@torch.no_grad()
def confidence(logits: torch.Tensor) -> torch.Tensor:
    """Max softmax probability p per pixel. logits (B, C, H, W) (pre-softmax) -> (B, H, W) in (0, 1]."""
    _check_logits(logits)
    return _probabilities(logits).amax(dim=1)


@torch.no_grad()
def pseudo_label(
    logits: torch.Tensor,
    threshold: float = 0.968,
    *,
    ignore_top: int = 0,
    ignore_bottom: int = 0,
    ignore_left: int = 0,
    ignore_right: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels and their DAFormer confidence weights.

    Args:
        logits: (B, C, H, W) teacher logits (pre-softmax) at the label resolution (the trainer
            upsamples the stride-4 logits first).
        threshold: τ, the confidence threshold (0.968).
        ignore_top, ignore_bottom, ignore_left, ignore_right: margins, in pixels of this H×W
            resolution, whose weight is set to 0 (DAFormer: top 15, bottom 120 on 512×512 crops).

    Returns:
        labels: (B, H, W) int64, ŷ = argmax over classes.
        weights: (B, H, W) float (float32 unless the logits are float64); every pixel holds
            q = |{pixels of the batch with p ≥ τ}| / (B·H·W), the margins hold 0.
    """
    _check_logits(logits)
    margins = {"ignore_top": ignore_top, "ignore_bottom": ignore_bottom,
               "ignore_left": ignore_left, "ignore_right": ignore_right}
    for key, value in margins.items():
        if int(value) != value or value < 0:
            raise ValueError(f"pseudo_label.py: {key} must be a non-negative integer number of pixels; got {value!r}")
    probs = _probabilities(logits)
    p, labels = probs.max(dim=1)
    q = (p >= threshold).to(p.dtype).mean()
    keep = margin_mask(p.shape[-2:], ignore_top, ignore_bottom, ignore_left, ignore_right,
                       device=p.device, dtype=p.dtype)
    return labels, q * keep.expand_as(p)


def margin_mask(size: tuple[int, int] | torch.Size, top: int = 0, bottom: int = 0, left: int = 0,
                right: int = 0, *, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(H, W) mask: 1 inside, 0 in the ``top``/``bottom`` rows and ``left``/``right`` columns."""
    h, w = size
    mask = torch.ones((h, w), device=device, dtype=dtype)
    mask[: int(top)] = 0
    mask[h - min(int(bottom), h):] = 0
    mask[:, : int(left)] = 0
    mask[:, w - min(int(right), w):] = 0
    return mask


@torch.no_grad()
def pseudo_label_stats(logits: torch.Tensor, threshold: float = 0.968) -> dict:
    """Summary of a batch of teacher predictions, for notebooks and logs.

    Args:
        logits: (B, C, H, W) teacher logits (pre-softmax).
        threshold: τ (0.968).

    Returns:
        A dict with
        ``"q"``: float, fraction of the batch's pixels with p ≥ τ (the pseudo-label weight);
        ``"mean_confidence"``: float, mean of p over all pixels;
        ``"class_counts"``: (C,) int64 CPU tensor, pixels whose argmax is each class;
        ``"confident_counts"``: (C,) int64 CPU tensor, those pixels with p ≥ τ;
        ``"class_mean_confidence"``: (C,) float CPU tensor, mean p per predicted class (nan if none).
    """
    _check_logits(logits)
    num_classes = logits.shape[1]
    p, labels = _probabilities(logits).max(dim=1)
    flat_labels = labels.flatten()
    counts = torch.bincount(flat_labels, minlength=num_classes)
    confident = torch.bincount(flat_labels[(p >= threshold).flatten()], minlength=num_classes)
    conf_sum = torch.zeros(num_classes, dtype=p.dtype, device=p.device).index_add_(0, flat_labels, p.flatten())
    class_mean = conf_sum / counts.to(p.dtype)  # 0/0 -> nan for classes never predicted
    return {
        "q": (p >= threshold).to(p.dtype).mean().item(),
        "mean_confidence": p.mean().item(),
        "class_counts": counts.cpu(),
        "confident_counts": confident.cpu(),
        "class_mean_confidence": class_mean.cpu(),
    }
