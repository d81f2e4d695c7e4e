"""``model.hrda.entropy_window_compat``: the release's max-entropy window search, checked against a
slow reference written here from a description of what the release does (its ``get_entropy`` and
``max_entropy_crop`` in CLUDA's ``mmseg/models/segmentors/hrda_encoder_decoder.py``), and its
difference from the clean argmax.

The described procedure: the entropy of the context softmax (zero probabilities counted as
1e-8), divided by C log C, resized nearest to the crop; candidate windows on the sliding grid in
row-major order; per image, the first candidate's region of the map holds "the best window so far",
and a later candidate whose mean is higher is *copied into that region* (so candidates scored
after it that overlap the region see the copied values) and becomes the best."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cluda_kit.config import load_config
from cluda_kit.models.hrda import max_entropy_window


# ---------------------------------------------------------------- the described procedure, slowly
def _reference_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B, H, W) entropy of softmax(logits) with zeros counted as 1e-8, over C log C."""
    p = torch.softmax(logits.double(), dim=1)
    p = torch.where(p == 0, torch.full_like(p, 1e-8), p)
    c = logits.shape[1]
    return -(p * p.log()).sum(dim=1) / (c * math.log(c))


def _grid_starts(size, crop, stride):
    """Sliding-window corners in row-major order (the last window flush with the far edge)."""
    (h, w), (ch, cw), (sh, sw) = size, crop, stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    starts = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * sh + ch, h) - ch, min(c * sw + cw, w) - cw
            starts.append((max(y1, 0), max(x1, 0)))
    return starts


def _reference_search(ent: torch.Tensor, crop, stride) -> list[tuple[int, int, int, int]]:
    """Per image of (B, H, W): the chosen window (y0, x0, y1, x1) by the described overwrite rule."""
    ch, cw = crop
    boxes = []
    for image in ent.double():
        work = image.clone()
        starts = _grid_starts(tuple(work.shape), crop, stride)
        ky, kx = starts[0]  # the region where the best window's values are kept
        best = starts[0]
        for y, x in starts[1:]:
            if work[y:y + ch, x:x + cw].mean() > work[ky:ky + ch, kx:kx + cw].mean():
                work[ky:ky + ch, kx:kx + cw] = work[y:y + ch, x:x + cw].clone()
                best = (y, x)
        boxes.append((best[0], best[1], best[0] + ch, best[1] + cw))
    return boxes


def _release_window(logits, size, crop, stride):
    """The described procedure end to end on context logits, as kit boxes (y0, x0, y1, x1)."""
    ent = F.interpolate(_reference_entropy(logits)[:, None].float(), size=list(size), mode="nearest")[:, 0]
    return _reference_search(ent, crop, stride)


def _smooth_logits(g, batch, grid, cells=4, scale=6.0):
    """Random smooth logits: a coarse random field upsampled bilinearly (19 classes)."""
    coarse = scale * torch.randn(batch, 19, cells, cells, generator=g)
    return F.interpolate(coarse, size=grid, mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------ tests
def test_compat_window_is_the_release_window():
    """Small geometry (a 128x128 crop, 64x64 windows every 32 pixels: the release's 3x3 candidate
    layout at an eighth of its size), many images."""
    g = torch.Generator().manual_seed(0)
    differ = 0
    for _ in range(150):
        logits = _smooth_logits(g, 2, (16, 16))
        kit = max_entropy_window(logits, (128, 128), (64, 64), (32, 32), 8, per_image=True, compat=True)
        assert kit == _release_window(logits, (128, 128), (64, 64), (32, 32))
        clean = max_entropy_window(logits, (128, 128), (64, 64), (32, 32), 8, per_image=True)
        differ += sum(a != b for a, b in zip(kit, clean))
    # the release's window differs from the clean argmax for a real share of images (about a fifth)
    assert 0.05 * 300 < differ < 0.5 * 300, differ


def test_compat_window_at_the_release_size():
    """The release's own geometry: context logits 128x128 of a 1024x1024 crop, 512x512 windows
    every 256 pixels."""
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        logits = _smooth_logits(g, 2, (128, 128))
        kit = max_entropy_window(logits, (1024, 1024), (512, 512), (256, 256), 8, per_image=True, compat=True)
        assert kit == _release_window(logits, (1024, 1024), (512, 512), (256, 256))


def test_the_overwrite_decides_a_planted_case():
    """8x8 blocks of a 24x24 map, 16x16 windows A (0, 0), B (0, 8), C (8, 0), D (8, 8). On the
    clean map B has the highest mean (2.0 against D's 1.75); the release copies B into A's place,
    so D, which overlaps it, is scored on B's block 4.0 twice (2.75) and wins."""
    from cluda_kit.models.hrda import _release_entropy_search

    ent = torch.zeros(24, 24)
    ent[0:8, 16:24] = 4.0   # block (0, 2): in B only
    ent[8:16, 16:24] = 4.0  # block (1, 2): in B and D
    ent[16:24, 16:24] = 3.0  # block (2, 2): in D only
    starts = [(0, 0), (0, 8), (8, 0), (8, 8)]
    clean = [float(ent[y:y + 16, x:x + 16].mean()) for y, x in starts]
    assert clean == [0.0, 2.0, 0.0, 1.75]
    assert _release_entropy_search(ent[None], starts, (16, 16)).tolist() == [3]
    assert _reference_search(ent.expand(2, 24, 24), (16, 16), (8, 8)) == [(8, 8, 24, 24)] * 2  # D


def test_reference_preset_switches_it_on_and_the_default_is_the_argmax():
    assert load_config("gta2cs_hrda_cluda_reference").model.hrda.entropy_window_compat
    assert not load_config("gta2cs_hrda_cluda").model.hrda.entropy_window_compat


def test_the_switch_reaches_the_model():
    """``model.hrda.entropy_window_compat`` picks the release's window in the training forward."""
    from cluda_kit.models import build_segmentor
    from cluda_kit.models.hrda import HRDASegmentor

    cfg = load_config("miniscapes_hrda_cluda", ["model.hrda.entropy_window_compat=true", "model.pretrained="])
    torch.manual_seed(0)
    model = HRDASegmentor.from_config(build_segmentor(cfg.model), cfg.model).train()
    assert model.entropy_compat
    x = torch.randn(2, 3, 128, 256)
    out = model(x, window="entropy")
    h = cfg.model.hrda
    assert out.box == max_entropy_window(out.context_logits, (128, 256), tuple(h.detail_crop),
                                         tuple(h.inference_stride), h.detail_divisible,
                                         per_image=True, compat=True)
