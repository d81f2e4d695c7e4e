"""HRDA multi-resolution wrapper: windows, canvas placement, fusion, inference against a slow loop,
max-entropy window against brute force, gradients of the extra heads, trainer integration, presets."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cluda_kit.config import load_config, replace
from cluda_kit.uda.methods import cluda as cluda_mod
from cluda_kit.engine.trainer import Trainer
from cluda_kit.models import build_segmentor
from cluda_kit.models import hrda as hrda_mod
from cluda_kit.models.hrda import (
    HRDASegmentor, crop_to_box, max_entropy_window, place_in_canvas, random_window, window_starts,
)
from cluda_kit.models.segmentor import Segmentor

C = 5


# ------------------------------------------------------------------------------- fixtures
class PoolEncoder(nn.Module):
    """Stage maps = the image average-pooled at strides 4/8/16/32 (3 channels each; exact pooling
    at stride 4 when the size divides)."""

    out_channels = (3, 3, 3, 3)
    strides = (4, 8, 16, 32)

    def forward(self, x):
        h, w = x.shape[-2:]
        return [F.adaptive_avg_pool2d(x, (math.ceil(h / s), math.ceil(w / s))) for s in self.strides]


class LinearDecoder(nn.Module):
    """logits = fixed 1x1 projection of the stride-4 pooled image; fused = that pooled image."""

    fused_dim = 3

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, C, 1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.arange(C * 3, dtype=torch.float32).view(C, 3, 1, 1) / 7 - 1)
            self.proj.bias.copy_(torch.linspace(-1, 1, C))

    def forward(self, stages):
        return self.proj(stages[0]), stages[0]


def fake_hrda(**kw) -> HRDASegmentor:
    torch.manual_seed(0)
    kw = {"detail_crop": (16, 24), "inference_stride": (8, 8), "dropout": 0.0, "embed_dim": 4,
          "fused_dim": 4, **kw}
    return HRDASegmentor(Segmentor(PoolEncoder(), LinearDecoder()), C, **kw)


def tiny_model_cfg(**hrda):
    cfg = load_config("miniscapes_hrda_cluda", ["model.embed_dim=8", "model.fused_dim=8",
                                                "model.dropout=0.0", "model.drop_path_rate=0.0"])
    return cfg.model, {"detail_crop": (32, 64), "inference_stride": (16, 32), **hrda}


def real_hrda(**hrda) -> HRDASegmentor:
    model_cfg, kw = tiny_model_cfg(**hrda)
    torch.manual_seed(0)
    seg = build_segmentor(model_cfg)
    return HRDASegmentor(seg, model_cfg.num_classes, feat_weighter=True, embed_dim=8, fused_dim=8,
                         dropout=0.0, **kw)


# ------------------------------------------------------------------------------- windows
def test_random_window_corners_are_multiples_and_cover_all_positions():
    g = torch.Generator().manual_seed(1)
    seen_y, seen_x = set(), set()
    for _ in range(300):
        y0, x0, y1, x1 = random_window((64, 96), (32, 40), 8, g)
        assert y0 % 8 == 0 and x0 % 8 == 0
        assert 0 <= y0 and y1 <= 64 and 0 <= x0 and x1 <= 96
        assert (y1 - y0, x1 - x0) == (32, 40)
        seen_y.add(y0)
        seen_x.add(x0)
    assert seen_y == {0, 8, 16, 24, 32}  # every multiple of 8 with the window inside
    assert seen_x == {0, 8, 16, 24, 32, 40, 48, 56}
    # the same generator state draws the same window
    a = random_window((1024, 1024), (512, 512), 8, torch.Generator().manual_seed(5))
    b = random_window((1024, 1024), (512, 512), 8, torch.Generator().manual_seed(5))
    assert a == b
    # a crop larger than the image is clipped to it
    assert random_window((16, 16), (32, 32), 8, g) == (0, 0, 16, 16)


def test_window_starts_by_hand():
    assert window_starts(1024, 512, 256, 8) == [0, 256, 512]
    assert window_starts(2048, 1024, 512) == [0, 512, 1024]
    assert window_starts(72, 32, 16, 4) == [0, 16, 32, 40]  # the last aligned to the border
    assert window_starts(100, 64, 16, 8) == [0, 16, 32]  # 36 floored to 32
    assert window_starts(30, 64, 16) == [0]


# ------------------------------------------------------------------------------- training forward
@pytest.mark.parametrize("size", [(64, 64), (64, 128), (96, 160)])
def test_training_shapes_for_several_crops(size):
    model = real_hrda().train()
    x = torch.randn(2, 3, *size)
    out = model(x, generator=torch.Generator().manual_seed(0))
    h, w = size
    assert out.logits.shape == (2, 19, h // 4, w // 4)
    assert out.attention.shape == (2, 19, h // 4, w // 4)
    assert out.context_logits.shape == (2, 19, h // 8, w // 8)
    assert out.fused.shape == (2, 8, h // 8, w // 8)
    assert out.detail_logits.shape == (2, 19, 8, 16) and out.detail_fused.shape == (2, 8, 8, 16)
    assert out.weight_map.shape == (2, 1, h // 8, w // 8)
    assert ((out.weight_map > 0) & (out.weight_map < 1)).all()
    y0, x0, y1, x1 = out.box
    assert y0 % 8 == 0 and x0 % 8 == 0 and (y1 - y0, x1 - x0) == (32, 64)
    assert 0 <= y0 and y1 <= h and 0 <= x0 and x1 <= w
    pred = model.eval()(x)
    assert pred.logits.shape == (2, 19, h // 4, w // 4) and pred.box is None


def test_attention_zero_outside_window_and_fused_equals_context_there():
    model = real_hrda().train()
    x = torch.randn(2, 3, 64, 128)
    out = model(x, box=(16, 32, 48, 96))
    mask = torch.zeros(64 // 4, 128 // 4, dtype=torch.bool)
    mask[4:12, 8:24] = True
    assert torch.equal(out.window_mask()[0, 0].bool(), mask)
    assert (out.attention[..., ~mask] == 0).all()
    assert (out.attention[..., mask] > 0).all()
    ctx_up = F.interpolate(out.context_logits, size=(16, 32), mode="bilinear", align_corners=False)
    assert torch.equal(out.logits[..., ~mask], ctx_up[..., ~mask])
    assert not torch.allclose(out.logits[..., mask], ctx_up[..., mask])


def test_detail_placed_into_canvas_with_a_fake_segmentor():
    model = fake_hrda().train()
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32, 48)
    box = (8, 16, 24, 40)
    out = model(x, box=box)
    full = model.segmentor(x).logits  # (2, C, 8, 12): detail logits of the whole image
    canvas = out.detail_canvas(out.detail_logits)
    inside = torch.zeros(8, 12, dtype=torch.bool)
    inside[2:6, 4:10] = True
    assert torch.allclose(canvas[..., inside], full[..., inside], atol=1e-6)
    assert (canvas[..., ~inside] == 0).all()
    # the fusion by hand
    att = torch.sigmoid(model.scale_attention(model.segmentor(model.context_input(x), True).stages)[0])
    a = F.interpolate(att, size=(8, 12), mode="bilinear", align_corners=False) * inside
    ctx = F.interpolate(out.context_logits, size=(8, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(out.logits, a * canvas + (1 - a) * ctx, atol=1e-6)
    # place_in_canvas cuts what sticks out
    t = torch.ones(1, 1, 4, 4)
    assert place_in_canvas(t, (6, 10, 10, 14), (8, 12)).sum() == 2 * 2


def test_box_corner_must_match_the_output_stride():
    model = fake_hrda().train()
    with pytest.raises(ValueError, match="multiple of the output stride"):
        model(torch.randn(1, 3, 32, 48), box=(2, 0, 18, 24))
    with pytest.raises(ValueError, match="detail_divisible"):
        fake_hrda(detail_divisible=6)


# ------------------------------------------------------------------------------- inference
@pytest.mark.parametrize("maker", [fake_hrda, real_hrda])
def test_inference_equals_a_slow_loop(maker):
    model = maker().eval()
    torch.manual_seed(4)
    h, w = (72, 96)
    x = torch.randn(2, 3, h, w)
    out = model(x)
    wh, ww = model.detail_crop
    sh, sw = model.inference_stride
    # windows by hand: every stride, the last one aligned to the border
    ys = sorted({min(i * sh, h - wh) for i in range(math.ceil((h - wh) / sh) + 1)})
    xs = sorted({min(i * sw, w - ww) for i in range(math.ceil((w - ww) / sw) + 1)})
    gh, gw = h // 4, w // 4
    summed = torch.zeros(2, out.logits.shape[1], gh, gw)
    count = torch.zeros(gh, gw)
    with torch.no_grad():
        for y0 in ys:
            for x0 in xs:
                logits = model.segmentor(x[:, :, y0:y0 + wh, x0:x0 + ww]).logits
                for i in range(logits.shape[-2]):
                    for j in range(logits.shape[-1]):
                        summed[:, :, y0 // 4 + i, x0 // 4 + j] += logits[:, :, i, j]
                        count[y0 // 4 + i, x0 // 4 + j] += 1
        assert (count > 0).all()
        detail = summed / count
        ctx = model.segmentor(F.interpolate(x, scale_factor=0.5, mode="bilinear"), True)
        att = torch.sigmoid(model.scale_attention(ctx.stages)[0])
        a = F.interpolate(att, size=(gh, gw), mode="bilinear")
        ref = a * detail + (1 - a) * F.interpolate(ctx.logits, size=(gh, gw), mode="bilinear")
    assert torch.allclose(out.detail_logits, detail, atol=1e-5)
    assert torch.allclose(out.logits, ref, atol=1e-5)
    # forwarding the windows in chunks gives the same result
    model.inference_batch = 2
    assert torch.allclose(model(x).logits, out.logits, atol=1e-5)
    # a train-mode model can ask for inference explicitly (the train-mode EMA teacher)
    assert model.train()(x, inference=True).box is None


# ------------------------------------------------------------------------------- entropy window
def _brute_force_entropy_window(logits, size, window, stride, divisible):
    p = logits.softmax(1)
    ent = -(p * p.log()).sum(1, keepdim=True)
    ent = F.interpolate(ent, size=size, mode="bilinear", align_corners=False)[:, 0]
    best, best_box = -1.0, None
    h, w = size
    ys = sorted({min(i * stride[0], h - window[0]) // divisible * divisible
                 for i in range(math.ceil((h - window[0]) / stride[0]) + 1)})
    xs = sorted({min(i * stride[1], w - window[1]) // divisible * divisible
                 for i in range(math.ceil((w - window[1]) / stride[1]) + 1)})
    for y0 in ys:
        for x0 in xs:
            total = 0.0
            for b in range(ent.shape[0]):
                for i in range(y0, y0 + window[0]):
                    for j in range(x0, x0 + window[1]):
                        total += float(ent[b, i, j])
            if total > best + 1e-9:
                best, best_box = total, (y0, x0, y0 + window[0], x0 + window[1])
    return best_box


def test_max_entropy_window_against_brute_force():
    g = torch.Generator().manual_seed(0)
    for trial in range(3):
        logits = 4 * torch.randn(2, C, 8, 12, generator=g)
        box = max_entropy_window(logits, (32, 48), (16, 16), (8, 8), 8)
        assert box == _brute_force_entropy_window(logits, (32, 48), (16, 16), (8, 8), 8)
    # a planted uniform (maximum entropy) region is found
    logits = torch.zeros(1, C, 8, 12)
    logits[:, 0] = 20.0  # confident everywhere ...
    logits[:, 0, 4:8, 6:10] = 0.0  # ... except one 16x16 window at (16, 24)
    assert max_entropy_window(logits, (32, 48), (16, 16), (8, 8), 8) == (16, 24, 32, 40)


def test_entropy_window_forward():
    model = fake_hrda(detail_crop=(16, 16), entropy_per_image=False).train()
    x = torch.randn(2, 3, 32, 48)
    out = model(x, window="entropy")
    assert out.box == max_entropy_window(out.context_logits, (32, 48), (16, 16), (8, 8), 8)


def test_max_entropy_window_per_image_against_brute_force():
    g = torch.Generator().manual_seed(1)
    for trial in range(3):
        logits = 4 * torch.randn(3, C, 8, 12, generator=g)
        boxes = max_entropy_window(logits, (32, 48), (16, 16), (8, 8), 8, per_image=True)
        assert boxes == [_brute_force_entropy_window(logits[i : i + 1], (32, 48), (16, 16), (8, 8), 8)
                         for i in range(3)]
    # planted: image 0 uncertain at (16, 24), image 1 at (0, 0): each gets its own window
    logits = torch.zeros(2, C, 8, 12)
    logits[:, 0] = 20.0
    logits[0, 0, 4:8, 6:10] = 0.0
    logits[1, 0, 0:4, 0:4] = 0.0
    assert max_entropy_window(logits, (32, 48), (16, 16), (8, 8), 8, per_image=True) == [
        (16, 24, 32, 40), (0, 0, 16, 16)]


def test_per_image_windows_equal_each_image_forwarded_alone():
    """The release picks the max-entropy window per image: the batch forward with per-image boxes
    equals each image's forward with its own box (fused logits, detail logits, window mask, the
    detail label crop and canvas)."""
    model = fake_hrda(detail_crop=(16, 16)).eval()
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    x[1, :, :16, :16] = 0.0  # featureless corner: a different window for image 1
    out = model(x, inference=False, window="entropy")
    assert isinstance(out.box, list) and len(out.box) == 2
    assert out.box == max_entropy_window(out.context_logits, (32, 48), (16, 16), (8, 8), 8, per_image=True)
    labels = torch.randint(0, C, (2, 32, 48))
    crops = crop_to_box(labels, out.box)
    mask = out.window_mask()
    assert mask.shape == (2, 1, 8, 12)
    for i in range(2):
        alone = model(x[i : i + 1], inference=False, box=out.box[i])
        torch.testing.assert_close(out.logits[i], alone.logits[0])
        torch.testing.assert_close(out.detail_logits[i], alone.detail_logits[0])
        torch.testing.assert_close(mask[i], alone.window_mask()[0])
        torch.testing.assert_close(out.detail_canvas(out.detail_logits)[i],
                                   alone.detail_canvas(alone.detail_logits)[0])
        assert torch.equal(crops[i], crop_to_box(labels[i : i + 1], out.box[i])[0])


# ------------------------------------------------------------------------------- trainer
SHRINK = ["data.source.size=[64, 128]", "data.source.length=6", "data.target.size=[64, 128]",
          "data.target.length=6", "data.val.size=[64, 128]", "data.val.length=1",
          "data.crop_size=[64, 128]", "data.rcs.min_pixels=20", "model.embed_dim=16",
          "model.fused_dim=16", "loss.contrastive.grid=[16, 32]", "model.hrda.detail_crop=[32, 64]",
          "model.hrda.inference_stride=[16, 32]", "model.hrda.entropy_window_after=0",
          "train.max_iters=2", "train.eval_every=0", "train.checkpoint_every=0",
          "train.log_every=1", "train.figure_every=0", "train.threads=1"]


def test_gradients_reach_attention_head_and_feat_weighter_only_via_cl():
    trainer = Trainer(load_config("miniscapes_hrda_cluda", SHRINK), progress=False)
    student = trainer.student
    batch = next(trainer.source)
    xs, ys = batch["image"].float() / 255, batch["label"]
    ctx, seg = trainer.context(), trainer.method.seg
    out = seg.student(ctx, xs)
    seg.seg_loss(ctx, out, ys).backward(retain_graph=True)
    att_grads = [p.grad for p in student.scale_attention.parameters()]
    assert all(g is not None for g in att_grads) and any(g.abs().sum() > 0 for g in att_grads)
    assert all(p.grad is None for p in student.feat_weighter.parameters())
    student.zero_grad(set_to_none=True)
    cluda_mod.contrastive_term(ctx, trainer.cfg.loss.contrastive, out, ys, None).backward()
    fw = [p.grad for p in student.feat_weighter.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in fw)
    assert any(g.abs().sum() > 0 for g in fw)
    assert all(p.grad is None for p in student.scale_attention.parameters())


@pytest.mark.parametrize("mic", [False, True])
def test_miniscapes_hrda_cluda_trains(mic, monkeypatch):
    calls = {"multires": 0, "entropy": 0, "single": 0}

    def counting(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(cluda_mod, "multi_resolution_contrastive_loss",
                        counting("multires", cluda_mod.multi_resolution_contrastive_loss))
    monkeypatch.setattr(cluda_mod, "pixel_contrastive_loss",
                        counting("single", cluda_mod.pixel_contrastive_loss))
    monkeypatch.setattr(hrda_mod, "max_entropy_window", counting("entropy", hrda_mod.max_entropy_window))
    extra = ["uda.mic.enabled=true", "uda.mic.block_size=16"] if mic else []
    trainer = Trainer(load_config("miniscapes_hrda_cluda", SHRINK + extra), progress=False)
    assert isinstance(trainer.student, HRDASegmentor)
    summary = trainer.fit()
    losses = [r for r in trainer.history if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(r["loss"]) for r in losses)
    expected = {"ce_src", "ce_mix", "cl_src", "cl_mix", "fd", "q"} | ({"mic"} if mic else set())
    assert expected <= set(losses[0])
    assert calls == {"multires": 4, "single": 0, "entropy": 1}  # 2 per step; entropy after iter 0
    assert 0 <= summary["miou"] <= 100


def test_hrda_resume_is_bit_identical(tmp_path):
    cfg = load_config("miniscapes_hrda_cluda", SHRINK)
    straight = Trainer(cfg, tmp_path / "a", progress=False)
    straight.fit()
    first = Trainer(cfg, tmp_path / "b", progress=False)
    first.fit(max_iters=1)
    first.save()
    resumed = Trainer.resume(tmp_path / "b", progress=False)
    resumed.fit()
    la = [r["loss"] for r in straight.history if "loss" in r]
    lb = [r["loss"] for r in resumed.history if "loss" in r]
    assert la == lb


# ------------------------------------------------------------------------------- bench
def test_gpu_check_quick_runs_on_the_cpu(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--quick", "--out", str(tmp_path / "g.json")]) == 0
    records = json.loads((tmp_path / "g.json").read_text())["records"]
    assert len(records) == 8 and all("error" not in r for r in records)
    assert {(r["preset"], r["amp"], r["activation_checkpointing"]) for r in records} == {
        (p, a, c) for p in gpu_check.PRESETS for a in ("none", "bf16") for c in (False, True)}
    for r in records:
        assert r["sec_per_iter"] > 0 and r["flops_per_iter"] > 0 and math.isfinite(r["loss"])
    flops = {(r["preset"], r["activation_checkpointing"]): r["flops_per_iter"] for r in records}
    # activation checkpointing recomputes the encoder's forwards in backward
    for preset in gpu_check.PRESETS:
        assert flops[(preset, True)] > flops[(preset, False)]


# ------------------------------------------------------------------------------- presets
def test_hrda_paper_numbers_in_presets():
    cfg = load_config("gta2cs_hrda")
    h = cfg.model.hrda
    assert h.enabled and h.context_scale == 0.5 and h.detail_crop == (512, 512)
    assert h.detail_divisible == 8 and h.detail_loss_weight == 0.1
    assert h.inference_stride == (256, 256) and not h.feat_weighter
    assert cfg.data.source.resize == (1440, 2560) and cfg.data.target.resize == (1024, 2048)
    assert cfg.data.val.resize == (1024, 2048) and cfg.data.crop_size == (1024, 1024)
    assert cfg.data.rcs.enabled and cfg.data.rcs.min_crop_ratio == 2.0
    assert cfg.data.pseudo_margins == (0, 0, 0, 0)
    assert cfg.data.frame_margins == (30, 240, 30, 30)
    assert (cfg.train.eval_mode, cfg.train.eval_window, cfg.train.eval_stride) == (
        "slide", (1024, 1024), (512, 512))
    assert cfg.uda.fd.enabled and cfg.optim.lr == 6e-5 and cfg.train.max_iters == 40000

    cl = load_config("gta2cs_hrda_cluda")
    assert cl.model.hrda.feat_weighter and cl.model.hrda.entropy_window_after == 12000
    assert cl.model.embed_dim == 512
    c = cl.loss.contrastive
    assert c.enabled and c.multires_weight == 0.5 and c.grid == (65, 65) and not c.official_compat
    assert c.source_weight == 1.0 and c.mix_weight == 1.0 and c.temperature == 1.0
    assert cl.uda.mix_per_image and not cl.loss.ce_mean_over_all

    syn = load_config("synthia2cs_hrda_cluda")
    assert syn.data.source.name == "synthia" and syn.data.source.resize == (1520, 2560)
    assert syn.model.hrda == cl.model.hrda

    ref = load_config("gta2cs_hrda_cluda_reference")
    assert ref.loss.contrastive.official_compat and not ref.uda.mix_per_image
    assert ref.loss.ce_mean_over_all and ref.uda.teacher_mode == "train"
    # the model differs only by the release's max-entropy window search
    assert ref.model == replace(cl, ["model.hrda.entropy_window_compat=true"]).model
    assert ref.model.hrda.entropy_window_compat

    for name, block, crop in (("gta2cs_daformer_mic", 32, (512, 512)),
                              ("gta2cs_hrda_mic", 64, (1024, 1024))):
        mic = load_config(name)
        assert mic.uda.mic.enabled and mic.uda.mic.mask_ratio == 0.7
        assert mic.uda.mic.block_size == block and mic.uda.mic.weight == 1.0
        assert mic.data.crop_size == crop
    assert not load_config("gta2cs_daformer_mic").model.hrda.enabled

    mini = load_config("miniscapes_hrda_cluda")
    assert mini.model.hrda.enabled and mini.model.hrda.feat_weighter
    assert mini.loss.contrastive.enabled and mini.loss.contrastive.multires_weight == 0.5


def test_attention_heads_have_their_own_width():
    """The release builds HRDA's scale attention and CLUDA's feat_weighter at attention_embed_dim
    = 256 while the CLUDA decoder is 512 wide: model.hrda.attention_dim (256 in the paper presets;
    None = the decoder's widths, as miniscapes uses)."""
    from cluda_kit.models import build_segmentor

    cfg = load_config("gta2cs_hrda_cluda")
    assert cfg.model.embed_dim == 512 and cfg.model.hrda.attention_dim == 256
    assert load_config("gta2cs_hrda").model.hrda.attention_dim == 256
    assert load_config("miniscapes_hrda_cluda").model.hrda.attention_dim is None
    small = load_config("miniscapes_hrda_cluda", ["model.embed_dim=8", "model.fused_dim=12"])

    for dim, (embed, fused) in ((None, (8, 12)), (24, (24, 24))):
        cfg = replace(small, [f"model.hrda.attention_dim={'null' if dim is None else dim}"])
        net = HRDASegmentor.from_config(build_segmentor(cfg.model), cfg.model)
        for head, out in ((net.scale_attention, 19), (net.feat_weighter, 1)):
            shapes = {n: tuple(p.shape) for n, p in head.named_parameters()}
            assert {shapes[f"embed_layers.{k}.weight"][0] for k in range(4)} == {embed}
            assert shapes["fuse_layer.conv.weight"][:2] == (fused, 4 * embed)
            assert shapes["conv_seg.weight"][:2] == (out, fused)
        dec = {n: tuple(p.shape) for n, p in net.segmentor.decoder.named_parameters()}
        assert dec["embed_layers.0.weight"][0] == 8  # the decoder keeps its own width
