"""Checkpoints of the released code fit the kit's presets key for key and shape for shape.

The facts in ``tests/data/release_keys/<family>.json`` are the ``state_dict`` keys and shapes of
checkpoints saved by the releases' own UDA modules (CLUDA, HRDA, DAFormer, MIC; written by
``bench/release_compare.py --make``, which also proves the loaded weights compute the release's
outputs, bench/results/release_compare.md). Here, without the releases: a checkpoint with exactly
those keys and shapes (meta tensors, no memory) goes through the kit's loader
(``to_kit_layout`` + ``load_pretrained(strict=True)``, as ``cluda_kit.load_model(..., config=PRESET)``
does) into the preset's network built on the meta device, for student and teacher; every release
key must map to a distinct kit name, every shape must agree, and every kit parameter and buffer
(BatchNorm counters included: the release saves them) must be filled.

HRDA's scale fusion in the order of the HRDA and MIC releases (``context_fusion="context_grid"``,
which their checkpoints need to reproduce their logits) is checked against its formula at the end.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from cluda_kit.config import ConfigError, load_config
from cluda_kit.models import build_segmentor
from cluda_kit.models.hrda import CONTEXT_FUSIONS, HRDASegmentor, fuse_scales
from cluda_kit.models.weights import load_pretrained, to_kit_layout

FACTS = Path(__file__).parent / "data" / "release_keys"
FAMILIES = ("hrda_cluda", "daformer_cluda", "hrda", "daformer", "hrda_mic", "daformer_mic")
# (family, preset): each gta2cs preset of the facts, and the synthia2cs presets on the same networks
CASES = [(f, None) for f in FAMILIES] + [("hrda_cluda", "synthia2cs_hrda_cluda"),
                                         ("daformer_cluda", "synthia2cs_daformer_cluda")]


class _MetaAllocation(TorchFunctionMode):
    """Parameters and buffers (torch.empty/zeros/ones without a device) on the meta device; other
    factories (e.g. MiT's drop-path linspace, read with .tolist()) stay on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in (torch.empty, torch.zeros, torch.ones) and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


@lru_cache(maxsize=None)
def _facts(family: str) -> dict:
    return json.loads((FACTS / f"{family}.json").read_text())


@lru_cache(maxsize=None)
def _network(preset: str, overrides: tuple[str, ...] = ()) -> torch.nn.Module:
    """The preset's network as ``load_model`` builds it for a released checkpoint, on meta."""
    cfg = load_config(preset, ["model.pretrained=", *overrides])
    with _MetaAllocation():
        net = build_segmentor(cfg.model)
        if cfg.model.hrda.enabled:
            net = HRDASegmentor.from_config(net, cfg.model)
    assert all(t.is_meta for t in net.state_dict().values() if t.is_floating_point())
    return net


def _release_checkpoint(facts: dict) -> dict:
    """A checkpoint with exactly the release's keys and shapes under every prefix it saves
    (zeros; meta tensors for the floats)."""
    sd = {}
    for prefix in facts["prefixes"]:
        for key, shape in facts["keys"].items():
            if key.endswith("num_batches_tracked"):  # a CPU buffer in the kit's modules too
                sd[prefix + key] = torch.zeros(shape, dtype=torch.long)
            else:
                sd[prefix + key] = torch.empty(shape, device="meta")
    return {"state_dict": sd, "meta": {"family": facts["family"]}}


@pytest.mark.parametrize("family", FAMILIES)
def test_facts_are_complete(family):
    facts = _facts(family)
    assert facts["family"] == family
    assert facts["prefixes"] == ["model.", "ema_model.", "imnet_model."]
    assert len(facts["release_commit"]) == 40
    keys = facts["keys"]
    assert any(k.startswith("backbone.block3.39.") for k in keys)  # MiT-B5: 40 blocks in stage 3
    assert any(k.startswith("decode_head.") for k in keys)
    if family.startswith("hrda"):
        assert any(k.startswith("decode_head.scale_attention.") for k in keys)
    assert any(k.startswith("decode_head.feat_weighter.") for k in keys) == (family == "hrda_cluda")


@pytest.mark.parametrize("family,preset", CASES)
@pytest.mark.parametrize("which", ["student", "teacher"])
def test_release_checkpoint_fills_the_preset_exactly(family, preset, which):
    facts = _facts(family)
    net = _network(preset or facts["preset"])
    ckpt = _release_checkpoint(facts)
    n = len(facts["keys"])

    state, layout, unconverted = to_kit_layout(ckpt, key=which)
    assert layout == "mmseg_uda"
    assert unconverted == []  # every release key matches a rule
    assert len(state) == n  # ... and goes to its own kit name (none dropped, none merged)

    report = load_pretrained(net, ckpt, key=which, strict=True)  # raises on any misfit
    own = net.state_dict()
    assert (report.layout, report.target) == ("mmseg_uda", "segmentor")
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert report.loaded == n == len(own)  # nothing left unfilled, counters included

    prefix = "segmentor." if isinstance(net, HRDASegmentor) else ""
    for name, t in state.items():
        target = own[prefix + name] if prefix + name in own else own[name]
        assert t.numel() == target.numel(), name
        assert tuple(t.shape) == tuple(target.shape) or tuple(target.shape) == (*t.shape, 1, 1), name


def test_a_changed_head_width_is_caught():
    facts = _facts("hrda_cluda")
    net = _network("gta2cs_hrda_cluda", ("model.embed_dim=256",))  # the release embeds at 512
    with pytest.raises(ValueError, match="shape mismatches"):
        load_pretrained(net, _release_checkpoint(facts), key="student")


def test_a_missing_head_is_caught():
    net = _network("gta2cs_hrda")  # no feat_weighter: CLUDA's weight head would be left over
    with pytest.raises(ValueError, match="feat_weighter"):
        load_pretrained(net, _release_checkpoint(_facts("hrda_cluda")), key="teacher")


# ----------------------------------------------------------------- HRDA's fusion, as each release
def _tiny_hrda(context_fusion: str) -> HRDASegmentor:
    cfg = load_config("miniscapes_hrda_cluda", ["model.pretrained=", "model.embed_dim=8", "model.fused_dim=8",
                                                "model.dropout=0.0", "model.drop_path_rate=0.0"])
    torch.manual_seed(0)
    net = HRDASegmentor(build_segmentor(cfg.model), cfg.model.num_classes, detail_crop=(32, 32),
                        inference_stride=(16, 16), feat_weighter=True, embed_dim=8, fused_dim=8,
                        dropout=0.0, context_fusion=context_fusion)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # logits and attentions of order 1, not the initialisation's ~1e-3
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


def _up2(t: torch.Tensor) -> torch.Tensor:  # the releases' resize(scale_factor=2), bilinear
    return torch.nn.functional.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)


def _release_terms(net: HRDASegmentor, x: torch.Tensor, box=None):
    """(context logits, attention a, detail logits on the grid or None) computed piece by piece."""
    half = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    ctx = net.segmentor(half, return_stages=True)
    a = torch.sigmoid(net.scale_attention(ctx.stages)[0])
    if box is None:
        return ctx.logits, a, None
    y0, x0, y1, x1 = box
    grid = net.segmentor(x[..., y0:y1, x0:x1]).logits
    canvas = grid.new_zeros(grid.shape[:2] + (x.shape[-2] // 4, x.shape[-1] // 4))
    canvas[..., y0 // 4 : y1 // 4, x0 // 4 : x1 // 4] = grid
    mask = a.new_zeros((1, 1) + a.shape[-2:])
    mask[..., y0 // 8 : y1 // 8, x0 // 8 : x1 // 8] = 1
    return ctx.logits, a, (canvas, mask)


def test_context_grid_fusion_is_the_hrda_and_mic_releases():
    """HRDA's and MIC's HRDAHead: att masked on the context grid, lr = (1 - att) * lr, both
    upsampled, fused = up(att) * detail + up(lr). Without ``context_fusion="context_grid"`` the kit
    had only CLUDA's order, and the HRDA / MIC checkpoints' fused logits differed from the release
    (bench/results/release_compare.md)."""
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    box = (16, 32, 48, 64)
    release_way, cluda_way = _tiny_hrda("context_grid"), _tiny_hrda("fused_grid")
    with torch.no_grad():
        ctx, a, (canvas, mask) = _release_terms(release_way, x, box)
        out = release_way(x, inference=False, box=box)
        want = _up2(a * mask) * canvas + _up2((1 - a * mask) * ctx)
        assert torch.allclose(out.logits, want, atol=1e-5)
        assert torch.allclose(out.attention, _up2(a * mask), atol=1e-5)
        # inference: no mask, the averaged detail windows
        pred = release_way(x)
        ctx, a, _ = _release_terms(release_way, x)
        assert torch.allclose(pred.logits, _up2(a) * pred.detail_logits + _up2((1 - a) * ctx), atol=1e-5)
        # CLUDA's order (the default, unchanged): (1 - up(a)) * up(ctx), the mask on the fused grid
        other = cluda_way(x)
        cluda_formula = _up2(a) * other.detail_logits + (1 - _up2(a)) * _up2(ctx)
        assert torch.allclose(other.logits, cluda_formula, atol=1e-5)
        assert (other.logits - pred.logits).abs().max() > 1e-4  # the two orders do differ ...
        trained = cluda_way(x, inference=False, box=box)
        assert (trained.logits - out.logits).abs().max() > 1e-2  # ... most along the window's edges


def test_context_fusion_choices():
    assert _tiny_hrda("fused_grid").context_fusion == "fused_grid"
    with pytest.raises(ValueError, match="context_fusion"):
        _tiny_hrda("before")
    t = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="context_fusion"):
        fuse_scales(t, torch.zeros(1, 1, 4, 4), t, torch.ones(1, 1, 4, 4), context_fusion="before")
    assert set(CONTEXT_FUSIONS) == {"fused_grid", "context_grid"}
    with pytest.raises(ConfigError, match="model.hrda.context_fusion"):
        load_config("gta2cs_hrda", ["model.hrda.context_fusion=before"])


@pytest.mark.parametrize("preset, fusion", [
    ("gta2cs_hrda", "context_grid"), ("gta2cs_hrda_mic", "context_grid"),  # the HRDA and MIC releases
    ("gta2cs_hrda_cluda", "fused_grid"), ("synthia2cs_hrda_cluda", "fused_grid"),  # CLUDA's release
    ("gta2cs_hrda_cluda_reference", "fused_grid"), ("miniscapes_hrda_cluda", "fused_grid")])
def test_each_hrda_preset_fuses_in_its_releases_order(preset, fusion):
    assert load_config(preset).model.hrda.context_fusion == fusion
    assert _network(preset).context_fusion == fusion  # the network load_model builds
