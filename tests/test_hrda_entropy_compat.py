"""``model.hrda.entropy_window_compat``: the release's max-entropy window search, checked against a
slow transcription of the release's own code (``get_entropy`` and ``max_entropy_crop`` of CLUDA's
``mmseg/models/segmentors/hrda_encoder_decoder.py``), and its difference from the clean argmax."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cluda_kit.config import load_config
from cluda_kit.models.hrda import max_entropy_window


# ---------------------------------------------------------------- the release, line for line
def _release_get_entropy(out):
    outputs_softmax = F.softmax(out, dim=1)
    outputs_softmax = torch.where(outputs_softmax == 0, torch.tensor(1e-8, dtype=outputs_softmax.dtype),
                                  outputs_softmax)
    logp = torch.log(outputs_softmax)
    plogp = outputs_softmax * logp
    k = torch.Tensor([19])
    return -plogp.sum(dim=1) / (k * torch.log(k))


def _release_max_entropy_crop(ent, crop_size, stride):
    """The release's loop (two images, hard-coded), its `e_max = ecp` view and in-place
    `e_max[i] = ecp[i]` assignments kept; only the sizes are arguments (the release: 1024x1024
    map, 512x512 windows every 256 pixels)."""
    h_stride, w_stride = stride
    h_crop, w_crop = crop_size
    bs, _, h_img, w_img = ent.size()
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    e_max = [None] * 2
    crop_boxes = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            ecp = ent[:, :, y1:y2, x1:x2]
            if e_max[0] is None:
                e_max = ecp
                crop_boxes.append([y1, y2, x1, x2])
                crop_boxes.append([y1, y2, x1, x2])
            else:
                if torch.mean(ecp[0]) > torch.mean(e_max[0]):
                    e_max[0] = ecp[0]
                    crop_boxes[0] = [y1, y2, x1, x2]
                if torch.mean(ecp[1]) > torch.mean(e_max[1]):
                    e_max[1] = ecp[1]
                    crop_boxes[1] = [y1, y2, x1, x2]
    return crop_boxes


def _release_window(logits, size, crop, stride):
    """The release's ``_forward_train_features_mix`` up to its box, as kit boxes (y0, x0, y1, x1).
    One thread: the in-place copy then runs in memory order, as the release's sequential copy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ent = _release_get_entropy(logits)
        ent_hr = F.interpolate(ent.unsqueeze(1), size=list(size), mode="nearest")
        boxes = _release_max_entropy_crop(ent_hr, crop, stride)
    finally:
        torch.set_num_threads(threads)
    return [(y1, x1, y2, x2) for y1, y2, x1, x2 in boxes]


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
    literal = _release_max_entropy_crop(ent.expand(2, 1, 24, 24).clone(), (16, 16), (8, 8))
    assert literal == [[8, 24, 8, 24]] * 2  # the release's [y1, y2, x1, x2] of D


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
