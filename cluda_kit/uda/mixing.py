"""ClassMix domain mixing and the strong augmentation of the mixed image (docs/method.md §2, steps 5-6).

All functions are pure and batched. Images are float RGB in [0, 1] with shape (B, 3, H, W) — the
trainer keeps them in that range through mixing and augmentation and normalises right before a
network. Labels are int64 (B, H, W) trainIds with 255 = ignore; pixel weights are float (B, H, W).

Random draws take an optional ``torch.Generator``. Numbers are drawn on the generator's device
(CPU when none is given) and then moved to the data's device, so a CPU generator can drive CUDA data
and a resumed run that restores the generator state reproduces the same draws.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..runtime import uniform

__all__ = [
    "class_mix_masks",
    "mix",
    "strong_augment",
    "color_jitter",
    "gaussian_blur",
    "blur_kernel_size",
    "rgb_to_hsv",
    "hsv_to_rgb",
]

_LABEL_SLOTS = 256  # label values class_mix_masks accepts: trainIds and the ignore value 255
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"mixing.py: {name} must be float RGB images in [0, 1] of shape (B, 3, H, W); "
            f"got dtype {images.dtype} and shape {tuple(images.shape)}"
        )


# ----------------------------------------------------------------------------------------------
# ClassMix
# ----------------------------------------------------------------------------------------------


def class_mix_masks(
    labels: torch.Tensor,
    per_image: bool = True,
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """ClassMix masks: for each image choose ⌈n/2⌉ of the n classes present and mark their pixels.

    Args:
        labels: (B, H, W) integer source ground truth (trainIds, ``ignore_index`` = ignore), values
            in [0, 256).
        per_image: True (DACS, the default): each image draws from its own n present classes;
            ``ignore_index`` is never chosen (its pixels always take the target).
            False (the DAFormer/HRDA/CLUDA release, an acknowledged accident kept for
            reproducibility): each image draws, independently, ⌈n/2⌉ of the n classes present in
            the *whole batch*, ``ignore_index`` included (the release's ``torch.unique(labels)``
            inside its per-image loop), and pastes its own pixels of those classes (few or none
            when it holds few of them; its ignore pixels when 255 was drawn).
        generator: optional random generator for the class choice.
        ignore_index: the ignore label (see ``per_image``).

    Returns:
        (B, 1, H, W) float32 masks M in {0, 1}, 1 where the pixel's class was chosen (pasted from
        the source). Every subset of size ⌈n/2⌉ is equally likely. No host synchronisation.
    """
    if labels.dim() != 3 or labels.is_floating_point():
        raise ValueError(
            f"mixing.py: class_mix_masks expects integer labels of shape (B, H, W); "
            f"got dtype {labels.dtype} and shape {tuple(labels.shape)}"
        )
    b, h, w = labels.shape
    # Presence of each label value over a fixed 256-slot table: no data-dependent shapes, so no
    # host-device synchronisation on an accelerator (torch.unique would need one).
    flat = labels.reshape(b, h * w).long()
    present = torch.zeros(b, _LABEL_SLOTS, dtype=torch.bool, device=labels.device)
    try:  # an out-of-range value fails here (on the CPU; a device-side assert on CUDA)
        present.scatter_(1, flat, True)
    except RuntimeError as e:
        raise ValueError(f"mixing.py: class_mix_masks expects label values in [0, {_LABEL_SLOTS}); "
                         f"got min {int(flat.min())}, max {int(flat.max())}") from e
    if per_image:
        if 0 <= ignore_index < _LABEL_SLOTS:
            present[:, ignore_index] = False
    else:  # the release: every image draws from the union over the batch, ignore included
        present = present.any(dim=0, keepdim=True).expand(b, -1)
    n = present.sum(dim=1, keepdim=True)
    k = (n + 1) // 2  # ⌈n/2⌉
    # A uniformly random ranking of the present classes; the k best-ranked are chosen.
    keys = uniform(tuple(present.shape), generator, labels.device).masked_fill(~present, 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)
    chosen = present & (rank < k)
    return chosen.gather(1, flat).reshape(b, 1, h, w).to(torch.float32)


def mix(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mix two batches: ``mask * a + (1 - mask) * b`` (a = source side, b = target side).

    Args:
        a, b: images (B, 3, H, W), labels (B, H, W) or pixel weights (B, H, W), same shape.
        mask: (B, 1, H, W) mask M from ``class_mix_masks`` (float or bool).

    Returns:
        The mixed tensor, shape of ``a``. Floating inputs follow the formula (soft masks allowed;
        dtype = promotion of a, b and mask). Integer inputs (labels) keep their dtype and take
        ``a`` where ``mask > 0.5`` and ``b`` elsewhere, which is the formula for a binary mask.
    """
    if a.shape != b.shape:
        raise ValueError(f"mixing.py: mix expects a and b of the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mixing.py: mix expects a mask of shape (B, 1, H, W); got {tuple(mask.shape)}")
    if a.dim() == 3:
        mask = mask[:, 0]
    elif a.dim() != 4:
        raise ValueError(
            f"mixing.py: mix expects images (B, C, H, W) or labels/weights (B, H, W); got shape {tuple(a.shape)}"
        )
    if mask.shape[0] != a.shape[0] or mask.shape[-2:] != a.shape[-2:]:
        raise ValueError(f"mixing.py: mask shape {tuple(mask.shape)} does not match data shape {tuple(a.shape)}")
    if mask.dtype == torch.bool:
        mask = mask.to(a.dtype if a.is_floating_point() else torch.float32)
    if a.is_floating_point() or b.is_floating_point():
        return mask * a + (1 - mask) * b
    return torch.where(mask > 0.5, a, b)


# ----------------------------------------------------------------------------------------------
# Colour jitter (batched torchvision ColorJitter semantics with per-image factors)
# ----------------------------------------------------------------------------------------------


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(dim=1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _per_image(factor: torch.Tensor) -> torch.Tensor:
    return factor.reshape(-1, 1, 1, 1)


def _adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * _per_image(f)).clamp_(0, 1)


def _adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = _per_image(f)
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def _adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = _per_image(f)
    return (f * x + (1 - f) * _grayscale(x)).clamp_(0, 1)


def _adjust_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    h, s, v = rgb_to_hsv(x).unbind(dim=1)
    h = torch.remainder(h + f.reshape(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack((h, s, v), dim=1))


_OPS = (_adjust_brightness, _adjust_contrast, _adjust_saturation, _adjust_hue)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """Batched RGB -> HSV. images (B, 3, H, W) in [0, 1] -> (B, 3, H, W) with h, s, v in [0, 1).

    Grey pixels (max = min) get h = s = 0; ties of the maximum resolve red, then green, then blue.
    """
    r, g, b = images.unbind(dim=1)
    minc, maxc = torch.aminmax(images, dim=1)
    delta = maxc - minc
    grey = delta == 0
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    d = torch.where(grey, torch.ones_like(delta), delta)
    h_r = torch.remainder((g - b) / d, 6.0)
    h_g = (b - r) / d + 2.0
    h_b = (r - g) / d + 4.0
    h = torch.where(maxc == r, h_r, torch.where(maxc == g, h_g, h_b))
    h = torch.where(grey, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Batched HSV -> RGB, the inverse of ``rgb_to_hsv``. (B, 3, H, W) -> (B, 3, H, W) in [0, 1].

    Uses channel_n = v - v·s·clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6, n = 5, 3, 1 for R, G, B.
    """
    h, s, v = hsv.unbind(dim=1)
    n = torch.arange(5.0, 0.0, -2.0, dtype=hsv.dtype, device=hsv.device).view(1, 3, 1, 1)  # 5, 3, 1
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * ramp


def color_jitter(
    images: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
    order: torch.Tensor,
) -> torch.Tensor:
    """Colour jitter with per-image factors, each image applying the four operations in its own order.

    Matches torchvision.transforms.v2.functional's ``adjust_brightness`` (x·b), ``adjust_contrast``
    (blend with the mean of the grey image), ``adjust_saturation`` (blend with the grey image) and
    ``adjust_hue`` (shift of h in HSV) on float images, each clamped to [0, 1], applied image by image.

    Args:
        images: (B, 3, H, W) float RGB in [0, 1].
        brightness, contrast, saturation: (B,) non-negative factors (1 = identity).
        hue: (B,) hue shifts in [-0.5, 0.5] (0 = identity).
        order: (B, 4) integer permutations of 0..3 — 0 brightness, 1 contrast, 2 saturation, 3 hue
            (torchvision ColorJitter's ``fn_idx`` codes); row b lists image b's operations in order.

    Returns:
        (B, 3, H, W) jittered images in [0, 1] (a new tensor).
    """
    _check_images(images)
    bsz = images.shape[0]
    factors = (brightness, contrast, saturation, hue)
    for name, f in zip(("brightness", "contrast", "saturation", "hue"), factors):
        if f.shape != (bsz,):
            raise ValueError(f"mixing.py: color_jitter {name} must have shape ({bsz},); got {tuple(f.shape)}")
    if order.shape != (bsz, 4):
        raise ValueError(f"mixing.py: color_jitter order must have shape ({bsz}, 4); got {tuple(order.shape)}")
    # The grouping by operation is decided on the CPU once; the image work stays on images.device.
    order_cpu = order.detach().to("cpu", torch.long)
    if not torch.equal(order_cpu.sort(dim=1).values, torch.arange(4).expand(bsz, 4)):
        raise ValueError(f"mixing.py: color_jitter order rows must be permutations of 0..3; got {order_cpu.tolist()}")
    factors = tuple(f.to(device=images.device, dtype=images.dtype, non_blocking=True) for f in factors)
    out = images.clone()
    for position in range(4):
        for op in range(4):
            idx = (order_cpu[:, position] == op).nonzero().flatten()
            if idx.numel() == 0:
                continue
            idx = idx.to(images.device, non_blocking=True)
            out.index_copy_(0, idx, _OPS[op](out.index_select(0, idx), factors[op].index_select(0, idx)))
    return out


# ----------------------------------------------------------------------------------------------
# Gaussian blur with per-image sigma
# ----------------------------------------------------------------------------------------------


def blur_kernel_size(side: int, kernel_frac: float = 0.1) -> int:
    """Odd blur kernel for an image side: c = ⌈kernel_frac·side⌉, c if c is odd else c − 1 (at least 1).

    This is the reference (DACS/DAFormer) rule ⌊c − 0.5 + (c mod 2)⌋; e.g. 512 -> 51, 1024 -> 103.
    """
    c = math.ceil(kernel_frac * side)
    return max(1, c if c % 2 == 1 else c - 1)


def _gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) sigmas -> (B, size) normalised 1-D Gaussian kernels."""
    x = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - (size - 1) / 2
    k = torch.exp(-0.5 * (x.unsqueeze(0) / sigma.unsqueeze(1)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: tuple[int, int]) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma and reflect padding (torchvision/kornia borders).

    Args:
        images: (B, C, H, W) float.
        sigma: (B,) positive standard deviations in pixels (the same along both axes).
        kernel_size: (k_y, k_x), odd.

    Returns:
        (B, C, H, W) blurred images; equals torchvision's ``gaussian_blur(img, [k_x, k_y], [s, s])``
        per image up to float rounding.
    """
    ky, kx = kernel_size
    if ky % 2 == 0 or kx % 2 == 0 or ky < 1 or kx < 1:
        raise ValueError(f"mixing.py: gaussian_blur kernel_size must be odd and positive; got {kernel_size}")
    bsz, ch, h, w = images.shape
    if sigma.shape != (bsz,):
        raise ValueError(f"mixing.py: gaussian_blur sigma must have shape ({bsz},); got {tuple(sigma.shape)}")
    sigma = sigma.to(device=images.device, dtype=images.dtype, non_blocking=True)
    x = F.pad(images, (kx // 2, kx // 2, ky // 2, ky // 2), mode="reflect")
    x = x.reshape(1, bsz * ch, h + 2 * (ky // 2), w + 2 * (kx // 2))
    wx = _gaussian_kernels(sigma, kx).repeat_interleave(ch, dim=0).view(bsz * ch, 1, 1, kx)
    wy = _gaussian_kernels(sigma, ky).repeat_interleave(ch, dim=0).view(bsz * ch, 1, ky, 1)
    x = F.conv2d(x, wx, groups=bsz * ch)
    x = F.conv2d(x, wy, groups=bsz * ch)
    return x.reshape(bsz, ch, h, w)


# ----------------------------------------------------------------------------------------------
# Strong augmentation
# ----------------------------------------------------------------------------------------------


def strong_augment(
    images: torch.Tensor,
    *,
    color_jitter_p: float = 0.8,
    color_jitter_s: float = 0.2,
    blur_p: float = 0.5,
    blur_sigma: tuple[float, float] = (0.15, 1.15),
    blur_kernel_frac: float = 0.1,
    blur_per_image: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DACS strong augmentation of the mixed images: colour jitter, then Gaussian blur.

    With probability ``color_jitter_p`` (0.8; the release writes it as ``random() > 0.2``) the whole
    batch is colour-jittered with strength s = ``color_jitter_s`` (0.2): per image, brightness,
    contrast and saturation factors ~ U(max(0, 1 − s), 1 + s) and a hue shift ~ U(−s, s), applied in
    a random order per image (torchvision ColorJitter semantics, see ``color_jitter``). Then with
    probability ``blur_p`` (0.5) the whole batch is blurred with σ ~ U(0.15, 1.15) per image and an
    odd kernel of about ``blur_kernel_frac`` (10 %) of each image side (``blur_kernel_size``).
    The on/off draws are shared by the batch; the parameters are drawn per image.

    Difference to the reference: the release uses kornia 0.5.8's ColorJitter, whose brightness is
    additive (x + δ, δ ~ U(−s, s)) rather than torchvision's multiplicative x·b, and whose hue and
    saturation use kornia's own HSV conventions. The probabilities, strengths, random order and the
    blur are the same.

    Args:
        images: (B, 3, H, W) float RGB in [0, 1] (not normalised).
        blur_per_image: draw σ per image (DACS: the release augments each mixed image on its own);
            False: one σ for the batch (the release's MIC augments its masked batch in one call).
        generator: optional random generator. Every call consumes the same amount of random numbers
            whatever the on/off outcomes, so the stream stays aligned for bit-identical resumes.

    Returns:
        (B, 3, H, W) augmented images in [0, 1]; the input itself when both draws are off.
    """
    _check_images(images)
    bsz, _, h, w = images.shape
    device = images.device
    draws = uniform((2,), generator, torch.device("cpu"))
    factors = uniform((bsz, 3), generator, device)
    hue = uniform((bsz,), generator, device)
    order = uniform((bsz, 4), generator, torch.device("cpu")).argsort(dim=1)
    sigma_u = uniform((bsz,), generator, device)

    out = images
    if draws[0].item() < color_jitter_p:
        s = float(color_jitter_s)
        lo = max(0.0, 1.0 - s)
        bcs = lo + factors * (1.0 + s - lo)
        out = color_jitter(out, bcs[:, 0], bcs[:, 1], bcs[:, 2], (2 * hue - 1) * s, order)
    if draws[1].item() < blur_p:
        if not blur_per_image:  # the same number of draws either way: the stream stays aligned
            sigma_u = sigma_u[:1].expand(bsz)
        sigma = blur_sigma[0] + sigma_u * (blur_sigma[1] - blur_sigma[0])
        kernel = (blur_kernel_size(h, blur_kernel_frac), blur_kernel_size(w, blur_kernel_frac))
        out = gaussian_blur(out, sigma, kernel)
    return out
