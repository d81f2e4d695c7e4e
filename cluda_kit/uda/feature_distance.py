"""ImageNet feature distance on thing classes (DAFormer; docs/method.md §4).

A frozen ImageNet-initialised encoder sees the same source image as the student. On the last encoder
stage (stride 32) d(p) = ‖f_student(p) − f_imagenet(p)‖₂; the loss λ_FD · mean d over the cells whose
downscaled ground truth is a thing class regularises the student to keep ImageNet's object features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..runtime import host_tensor

__all__ = ["THING_CLASSES", "downscale_label_ratio", "feature_distance_loss"]

# traffic light, traffic sign, person, rider, car, truck, bus, train, motorcycle, bicycle
THING_CLASSES = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


def downscale_label_ratio(
    labels: torch.Tensor,
    scale_factor: int,
    min_ratio: float = 0.75,
    num_classes: int = 19,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Downscale labels by patch majority: each s×s patch gets its most frequent class if that class
    covers at least ``min_ratio`` of the patch, else ``ignore_index``.

    As in DAFormer's ``downscale_label_ratio``, the share is relative to ALL s² pixels of the patch,
    ignore pixels included, and ignore competes as a class of its own: a patch whose most frequent
    value is ignore is ignore. Rows/columns beyond the last full patch are dropped (h = ⌊H/s⌋,
    w = ⌊W/s⌋, like ``avg_pool2d``). Ties pick the lower class id; they cannot reach the default
    ratio 0.75.

    Args:
        labels: (B, H, W) integer trainIds in [0, num_classes) or ``ignore_index``.
        scale_factor: s, the patch side in pixels (32 for the stride-32 stage).
        min_ratio: minimum share of the majority class (0.75).
        num_classes: C (19).
        ignore_index: 255.

    Returns:
        (B, h, w) int64 downscaled labels.
    """
    if labels.dim() != 3 or labels.is_floating_point():
        raise ValueError(
            f"feature_distance.py: labels must be integer (B, H, W); got dtype {labels.dtype}, "
            f"shape {tuple(labels.shape)}"
        )
    s = int(scale_factor)
    if s < 1:
        raise ValueError(f"feature_distance.py: scale_factor must be a positive integer; got {scale_factor}")
    b, hh, ww = labels.shape
    h, w = hh // s, ww // s
    lab = labels[:, : h * s, : w * s].long()
    cls = torch.where(lab == ignore_index, torch.full_like(lab, num_classes), lab)
    bad = (cls < 0) | (cls > num_classes)
    # validated on the CPU only: on an accelerator ``bad.any()`` would synchronise every step
    # (the kit's datasets guarantee trainIds in range)
    if lab.device.type == "cpu" and bad.any():
        raise ValueError(
            f"feature_distance.py: label values must be in [0, {num_classes}) or {ignore_index}; "
            f"got {sorted(set(lab[bad].unique().tolist()))}"
        )
    # Count class occurrences per patch with one scatter_add over flat (cell, class) bins.
    rows = torch.arange(h * s, device=lab.device) // s
    cols = torch.arange(w * s, device=lab.device) // s
    cell = (torch.arange(b, device=lab.device).view(b, 1, 1) * h + rows.view(1, -1, 1)) * w + cols.view(1, 1, -1)
    keys = (cell * (num_classes + 1) + cls).flatten()
    counts = torch.zeros(b * h * w * (num_classes + 1), dtype=torch.int64, device=lab.device)
    counts.scatter_add_(0, keys, torch.ones_like(keys))
    top, arg = counts.view(b, h, w, num_classes + 1).max(dim=-1)
    ratio = top.to(torch.float32) / float(s * s)
    ignore = (arg == num_classes) | (ratio < min_ratio)
    return torch.where(ignore, torch.full_like(arg, ignore_index), arg)


def feature_distance_loss(
    student_feat: torch.Tensor,
    imnet_feat: torch.Tensor,
    labels: torch.Tensor,
    *,
    thing_classes: Sequence[int] = THING_CLASSES,
    lambda_fd: float = 0.005,
    min_ratio: float = 0.75,
    num_classes: int = 19,
    ignore_index: int = 255,
) -> torch.Tensor:
    """L_FD = λ_FD · mean over thing cells of ‖f_student − f_imagenet‖₂.

    Args:
        student_feat: (B, D, h, w) student features of the last encoder stage (stride 32).
        imnet_feat: (B, D, h, w) features of the frozen ImageNet encoder on the same images
            (detached here; run that encoder in eval mode without grad).
        labels: (B, H, W) source ground truth at full resolution (255 = ignore). The patch side is
            s = W // w (as in the reference); ⌊H/s⌋ × ⌊W/s⌋ must equal h × w.
        thing_classes: classes whose cells count (DAFormer's 10 thing classes).
        lambda_fd: λ_FD (0.005).
        min_ratio: majority share for a cell to keep its label (0.75), see ``downscale_label_ratio``.
        num_classes: C (19).
        ignore_index: 255.

    Returns:
        Scalar loss (float32). With no thing cell in the batch it is a zero still connected to the
        graph of ``student_feat`` (the reference returns NaN there), so backward gives zero grads.
    """
    if student_feat.shape != imnet_feat.shape or student_feat.dim() != 4:
        raise ValueError(
            f"feature_distance.py: student_feat and imnet_feat must have the same (B, D, h, w) shape; "
            f"got {tuple(student_feat.shape)} and {tuple(imnet_feat.shape)}"
        )
    h, w = student_feat.shape[-2:]
    if labels.dim() != 3 or labels.shape[0] != student_feat.shape[0]:
        raise ValueError(
            f"feature_distance.py: labels must be (B, H, W) with B = {student_feat.shape[0]}; got {tuple(labels.shape)}"
        )
    scale = labels.shape[-1] // w
    cell_labels = downscale_label_ratio(labels, scale, min_ratio, num_classes, ignore_index)
    if cell_labels.shape[-2:] != (h, w):
        raise ValueError(
            f"feature_distance.py: labels {tuple(labels.shape[-2:])} downscaled by {scale} give "
            f"{tuple(cell_labels.shape[-2:])} cells, but the features are {h}×{w}"
        )
    things = host_tensor(list(thing_classes), cell_labels.device, cell_labels.dtype)
    mask = torch.isin(cell_labels, things).to(torch.float32)
    diff = student_feat.float() - imnet_feat.detach().float()
    dist = torch.linalg.vector_norm(diff, ord=2, dim=1)  # (B, h, w)
    return lambda_fd * (dist * mask).sum() / mask.sum().clamp_min(1.0)
