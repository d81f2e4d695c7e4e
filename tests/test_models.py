"""Encoders, decoders and the Segmentor: sizes, wiring against slow references, gradients,
determinism, activation checkpointing, channels-last."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import torchvision

from cluda_kit.models import SegOutput, Segmentor, build_segmentor
from cluda_kit.models.heads import DAFormerHead, DeepLabV2Head, SegFormerHead
from cluda_kit.models.mit import MIT_SPECS, MiTSpec, MixTransformer, mit
from cluda_kit.models.resnet import ResNetEncoder

torch.set_num_threads(1)


def model_cfg(**kw) -> SimpleNamespace:
    base = dict(encoder="mit_nano", decoder="daformer", num_classes=19, embed_dim=16, fused_dim=16,
                aspp_dilations=(1, 6, 12, 18), dropout=0.1, drop_path_rate=0.1, output_stride=8,
                deeplab_dilation_quirk=False, pretrained="", channels_last=False,
                activation_checkpointing=False, projection_dim=0)
    base.update(kw)
    return SimpleNamespace(**base)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------ parameter counts
def mit_params_by_arithmetic(spec: MiTSpec) -> int:
    """Count MiT parameters from the architecture description alone."""
    total, c_in = 0, 3
    for i, (d, n, r) in enumerate(zip(spec.embed_dims, spec.depths, spec.sr_ratios)):
        k = 7 if i == 0 else 3
        total += c_in * d * k * k + d + 2 * d  # patch conv + LayerNorm
        h = spec.mlp_ratio * d
        block = (2 * d  # norm1
                 + (d * d + d) + (d * 2 * d + 2 * d) + (d * d + d)  # q, kv, proj
                 + ((d * d * r * r + d) + 2 * d if r > 1 else 0)  # sr conv + its LayerNorm
                 + 2 * d  # norm2
                 + (d * h + h) + (h * 9 + h) + (h * d + d))  # fc1, depthwise 3x3, fc2
        total += n * block + 2 * d  # blocks + stage LayerNorm
        c_in = d
    return total


# SegFormer's published encoder sizes (millions) and our exact counts.
PUBLISHED_M = {"mit_b0": 3.3, "mit_b1": 13.1, "mit_b2": 24.2, "mit_b3": 44.0, "mit_b4": 60.8,
               "mit_b5": 81.4}
EXACT = {"mit_b0": 3_319_392, "mit_b1": 13_151_424, "mit_b2": 24_196_288, "mit_b3": 44_072_128,
         "mit_b4": 60_842_688, "mit_b5": 81_443_008, "mit_nano": 1_902_944}


@pytest.mark.parametrize("name", ["mit_b0", "mit_b1", "mit_nano"])
def test_mit_param_counts_exact(name):
    model = mit(name)
    assert n_params(model) == EXACT[name] == mit_params_by_arithmetic(MIT_SPECS[name])


def test_mit_param_counts_published():
    for name, published in PUBLISHED_M.items():
        assert mit_params_by_arithmetic(MIT_SPECS[name]) == EXACT[name]
        assert abs(EXACT[name] / 1e6 - published) <= 0.1, name


def test_mit_b5_count_and_tiny_forward():
    torch.manual_seed(0)
    model = mit("mit_b5").eval()
    assert n_params(model) == EXACT["mit_b5"]
    assert len(model.block3) == 40
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 8, 8), (1, 128, 4, 4), (1, 320, 2, 2),
                                              (1, 512, 1, 1)]


def test_mit_key_layout_matches_segformer():
    keys = set(mit("mit_b0").state_dict())
    for k in ["patch_embed1.proj.weight", "patch_embed1.norm.weight", "block1.0.norm1.weight",
              "block1.0.attn.q.weight", "block1.0.attn.kv.weight", "block1.0.attn.proj.weight",
              "block1.0.attn.sr.weight", "block1.0.attn.norm.weight", "block1.1.mlp.fc1.weight",
              "block1.1.mlp.dwconv.dwconv.weight", "block1.1.mlp.fc2.bias", "norm1.weight",
              "patch_embed4.proj.weight", "block4.1.attn.kv.bias", "norm4.bias"]:
        assert k in keys, k
    assert "block4.0.attn.sr.weight" not in keys  # sr ratio 1 in the last stage


def test_mit_drop_path_rises_linearly():
    model = mit("mit_b2", drop_path_rate=0.1)
    rates = [blk.drop_path.p for i in range(1, 5) for blk in getattr(model, f"block{i}")]
    assert len(rates) == 16
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert rates == pytest.approx([0.1 * i / 15 for i in range(16)])
    assert all(blk.drop_path.mode == "row" for blk in model.block1)


# --------------------------------------------------------------------- references for wiring
def test_mit_attention_matches_naive_reference():
    torch.manual_seed(0)
    attn = mit("mit_b0").block1[0].attn.eval()  # 1 head, sr 8
    h, w = 16, 24
    x = torch.randn(2, h * w, 32)
    # naive: keys/values from the sr-reduced, normalised map; kv rows: first keys, then values
    red = F.conv2d(x.transpose(1, 2).reshape(2, 32, h, w), attn.sr.weight, attn.sr.bias, stride=8)
    red = F.layer_norm(red.flatten(2).transpose(1, 2), (32,), attn.norm.weight, attn.norm.bias)
    q = x @ attn.q.weight.T + attn.q.bias
    kv = red @ attn.kv.weight.T + attn.kv.bias
    k, v = kv[..., :32], kv[..., 32:]
    ref = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(32), dim=-1) @ v
    ref = ref @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(attn(x, h, w), ref, rtol=1e-4, atol=1e-5)


def test_daformer_head_matches_functional_reference():
    torch.manual_seed(0)
    chans = (8, 12, 16, 20)
    head = DAFormerHead(chans, num_classes=5, embed_dim=6, fused_dim=7, dropout=0.5).eval()
    for m in head.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    stages = [torch.randn(2, c, 13 // s + 1, 17 // s + 1) for c, s in zip(chans, (1, 2, 4, 8))]

    def cbr(x, unit, dilation=1):
        k = unit.conv.weight.shape[-1]
        y = F.conv2d(x, unit.conv.weight, None, padding=dilation * (k // 2), dilation=dilation,
                     groups=unit.conv.groups)
        y = F.batch_norm(y, unit.bn.running_mean, unit.bn.running_var, unit.bn.weight,
                         unit.bn.bias, False, 0.0, unit.bn.eps)
        return y.relu()

    size = stages[0].shape[-2:]
    embedded = []
    for x, conv in zip(stages, head.embed_layers):
        y = torch.einsum("bchw,ec->behw", x, conv.weight[:, :, 0, 0]) + conv.bias[None, :, None, None]
        embedded.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
    cat = torch.cat(embedded, 1)
    branches = [cbr(cat, head.fuse_layer.aspp_modules[0])]
    for d, sep in zip((6, 12, 18), head.fuse_layer.aspp_modules[1:]):
        branches.append(cbr(cbr(cat, sep.depthwise_conv, d), sep.pointwise_conv))
    fused_ref = cbr(torch.cat(branches, 1), head.fuse_layer.bottleneck)
    logits_ref = F.conv2d(fused_ref, head.conv_seg.weight, head.conv_seg.bias)
    logits, fused = head(stages)
    torch.testing.assert_close(fused, fused_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-5)
    assert fused.shape == (2, 7, 14, 18) and logits.shape == (2, 5, 14, 18)


@pytest.mark.parametrize("quirk,dilations", [(False, (6, 12, 18, 24)), (True, (6, 12))])
def test_deeplabv2_head_sums_dilated_branches(quirk, dilations):
    torch.manual_seed(0)
    head = DeepLabV2Head(10, num_classes=4, dilation_quirk=quirk)
    assert head.dilations == dilations and len(head.aspp_modules) == len(dilations)
    x = torch.randn(1, 10, 30, 31)
    ref = sum(F.conv2d(x, c.weight, c.bias, padding=d, dilation=d)
              for c, d in zip(head.aspp_modules, dilations))
    logits, fused = head([x, x, x, x])
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-6)
    assert fused is x


def test_segformer_head_shapes_and_fused():
    torch.manual_seed(0)
    head = SegFormerHead((4, 5, 6, 7), num_classes=3, embed_dim=8, fused_dim=9).eval()
    stages = [torch.randn(1, c, 16 // s, 20 // s) for c, s in zip((4, 5, 6, 7), (1, 2, 4, 8))]
    logits, fused = head(stages)
    assert logits.shape == (1, 3, 16, 20) and fused.shape == (1, 9, 16, 20)
    assert (fused >= 0).all()  # after ReLU
    torch.testing.assert_close(logits, F.conv2d(fused, head.linear_pred.weight, head.linear_pred.bias))


def test_resnet_dilation_matches_torchvision():
    torch.manual_seed(0)
    ref = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
    ours = ResNetEncoder(50, output_stride=8)
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
    ref.eval(), ours.eval()
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        refs = []
        for layer in (ref.layer1, ref.layer2, ref.layer3, ref.layer4):
            y = layer(y)
            refs.append(y)
        outs = ours(x)
    for a, b in zip(outs, refs):
        torch.testing.assert_close(a, b)
    assert ours.layer4[0].conv2.dilation == (2, 2) and ours.layer4[1].conv2.dilation == (4, 4)


@pytest.mark.parametrize("os_,strides", [(8, (4, 8, 8, 8)), (16, (4, 8, 16, 16)), (32, (4, 8, 16, 32))])
def test_resnet18_output_strides(os_, strides):
    enc = ResNetEncoder(18, output_stride=os_).eval()
    assert enc.strides == strides and enc.out_channels == (64, 128, 256, 512)
    with torch.no_grad():
        outs = enc(torch.randn(1, 3, 64, 96))
    assert [o.shape[-2:] for o in outs] == [(64 // s, 96 // s) for s in strides]
    if os_ == 8:  # BasicBlock dilation: first block keeps the previous dilation
        assert enc.layer3[0].conv1.dilation == (1, 1) and enc.layer3[1].conv2.dilation == (2, 2)
        assert enc.layer4[0].conv1.dilation == (2, 2) and enc.layer4[1].conv1.dilation == (4, 4)


# ------------------------------------------------------------------------- segmentor behaviour
PAIRS = [(e, d) for e in ("mit_nano", "resnet18") for d in ("daformer", "segformer", "deeplabv2")]


@pytest.mark.parametrize("encoder,decoder", PAIRS)
def test_output_shapes_all_pairs(encoder, decoder):
    torch.manual_seed(0)
    model = build_segmentor(model_cfg(encoder=encoder, decoder=decoder, projection_dim=5)).eval()
    # DeepLabV2 reads the last stage: stride 8 on the dilated ResNet, 32 on MiT
    stride = {"deeplabv2": 8 if encoder == "resnet18" else 32}.get(decoder, 4)
    assert model.output_stride == stride
    d = {"deeplabv2": 512 if encoder == "resnet18" else 256}.get(decoder, 16)
    with torch.no_grad():
        for h, w in [(100, 150), (64, 64), (128, 256)]:
            out = model(torch.randn(2, 3, h, w), return_stages=True)
            assert isinstance(out, SegOutput)
            hh, ww = math.ceil(h / stride), math.ceil(w / stride)
            assert out.logits.shape == (2, 19, hh, ww)
            assert out.fused.shape == (2, d, hh, ww)
            assert out.embedding.shape == (2, 5, hh, ww)
            assert len(out.stages) == 4 and out.stages[0].shape[-2:] == (math.ceil(h / 4), math.ceil(w / 4))
        assert model(torch.randn(1, 3, 64, 64)).stages is None


@pytest.mark.parametrize("encoder", ["mit_b0", "resnet50", "resnet101"])
def test_bigger_encoders_with_daformer(encoder):
    torch.manual_seed(0)
    model = build_segmentor(model_cfg(encoder=encoder)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, 19, 16, 16) and out.fused.shape == (1, 16, 16, 16)
    assert out.embedding is None


@pytest.mark.parametrize("encoder,decoder", [("mit_nano", "daformer"), ("resnet18", "deeplabv2"),
                                             ("mit_nano", "segformer")])
def test_gradients_reach_every_parameter(encoder, decoder):
    torch.manual_seed(0)
    model = build_segmentor(model_cfg(encoder=encoder, decoder=decoder, projection_dim=4,
                                      drop_path_rate=0.0, dropout=0.0)).train()
    out = model(torch.randn(2, 3, 64, 96))
    (out.logits.square().mean() + out.embedding.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_deterministic_forward_and_build():
    torch.manual_seed(3)
    a = build_segmentor(model_cfg())
    torch.manual_seed(3)
    b = build_segmentor(model_cfg())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    x = torch.randn(2, 3, 64, 64)
    a.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x).logits, a(x).logits, rtol=0, atol=0)
    a.train()
    torch.manual_seed(5)
    y1 = a(x).logits
    torch.manual_seed(5)
    y2 = a(x).logits
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.manual_seed(6)
    assert not torch.equal(a(x).logits, y1)  # dropout / drop path are active in train mode


@pytest.mark.parametrize("encoder", ["mit_nano", "resnet18"])
def test_activation_checkpointing_same_outputs_grads_and_bn_stats(encoder):
    x = torch.randn(2, 3, 64, 64)
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_segmentor(model_cfg(encoder=encoder, activation_checkpointing=ckpt,
                                          drop_path_rate=0.3)).train()
        torch.manual_seed(1)
        out = model(x)
        out.logits.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((out.logits.detach(), grads, {k: v.clone() for k, v in model.state_dict().items()}))
    (y0, g0, s0), (y1, g1, s1) = results
    torch.testing.assert_close(y0, y1, rtol=0, atol=0)
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=1e-5, atol=1e-7, msg=n)
    for k in s0:  # BN running statistics updated exactly once
        torch.testing.assert_close(s0[k], s1[k], rtol=0, atol=0, msg=k)


def test_channels_last_matches_contiguous():
    x = torch.randn(2, 3, 64, 96)
    outs = []
    for cl in (False, True):
        torch.manual_seed(0)
        model = build_segmentor(model_cfg(encoder="resnet18", channels_last=cl)).eval()
        if cl:
            assert model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            outs.append(model(x).logits)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)


def test_mit_maps_are_the_tokens_channels_last_views():
    """MiT hands the decoder its tokens' memory seen as maps (channels-last strides, no copy),
    whatever the image's layout: on a CPU the decoder is faster on them than on contiguous
    copies (bench/README.md). Values do not depend on the image's layout."""
    torch.manual_seed(0)
    enc = mit("mit_nano").eval()
    x = torch.randn(2, 3, 64, 96)
    results = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        with torch.no_grad():
            results[fmt] = enc(x.contiguous(memory_format=fmt))
        for t in results[fmt]:
            assert t.is_contiguous(memory_format=torch.channels_last), (fmt, tuple(t.shape), t.stride())
            assert not t.is_contiguous(), tuple(t.shape)
    for a, b in zip(results[torch.contiguous_format], results[torch.channels_last]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_real_model_config_and_errors():
    from cluda_kit.config import ModelConfig

    torch.manual_seed(0)
    model = build_segmentor(ModelConfig(encoder="mit_nano", embed_dim=8, fused_dim=8))
    assert isinstance(model, Segmentor) and model.projection is None
    with pytest.raises(ValueError, match="mit_b9"):
        build_segmentor(model_cfg(encoder="mit_b9"))
    with pytest.raises(ValueError, match="upernet"):
        build_segmentor(model_cfg(decoder="upernet"))
    with pytest.raises(ValueError, match="output_stride 4"):
        build_segmentor(model_cfg(encoder="resnet18", output_stride=4))


def test_segmentor_from_parts():
    enc = MixTransformer(MiTSpec((8, 8, 8, 8), (1, 1, 1, 1), (1, 1, 1, 1)))
    model = Segmentor(enc, DAFormerHead(enc.out_channels, 3, 4, 6, fusion="conv1x1"), projection_dim=2)
    out = model(torch.randn(1, 3, 32, 32))
    assert out.logits.shape == (1, 3, 8, 8) and out.fused.shape == (1, 6, 8, 8)
    assert out.embedding.shape == (1, 2, 8, 8)


@pytest.mark.parametrize("decoder", ["daformer", "segformer"])
def test_decoder_init_mmcv_is_kaiming_normal_fan_out_and_torch_is_the_default(decoder):
    """model.decoder_init: "mmcv" (the paper presets) gives every conv-BN-ReLU of the heads mmcv's
    ConvModule init, std sqrt(2 / fan_out) with zero-mean normal weights; "torch" (miniscapes)
    keeps PyTorch's kaiming_uniform(a=sqrt(5)), std 1/sqrt(3 fan_in). The classifier is normal(0,
    0.01) either way."""
    import math

    from cluda_kit.config import load_config
    from cluda_kit.models.heads import ConvBNReLU
    from cluda_kit.models.segmentor import build_segmentor

    assert load_config("gta2cs_daformer_cluda").model.decoder_init == "mmcv"
    assert load_config("miniscapes_cluda").model.decoder_init == "torch"
    base = ["model.encoder=mit_nano", "model.pretrained=", f"model.decoder={decoder}",
            "model.embed_dim=64", "model.fused_dim=96"]
    for init in ("mmcv", "torch"):
        torch.manual_seed(0)
        model = build_segmentor(load_config("miniscapes_cluda", base + [f"model.decoder_init={init}"]).model)
        convs = [m.conv for m in model.decoder.modules() if isinstance(m, ConvBNReLU)]
        assert convs
        for conv in convs:
            w = conv.weight
            k = w.shape[2] * w.shape[3]
            want = math.sqrt(2 / (w.shape[0] * k)) if init == "mmcv" else 1 / math.sqrt(3 * w.shape[1] * k)
            assert abs(w.std().item() / want - 1) < 0.1, (init, tuple(w.shape), w.std().item(), want)
            if init == "mmcv":
                assert w.abs().max() > math.sqrt(3) * want  # normal, not uniform: tails beyond the uniform bound
        cls = model.decoder.conv_seg if decoder == "daformer" else model.decoder.linear_pred
        assert abs(cls.weight.std().item() - 0.01) < 0.002


def test_deeplabv2_preset_keeps_the_releases_two_dilations():
    """The release builds every DeepLabV2 run from deeplabv2red_r50-d8.py ("dlv2red"): the
    classifier's dilations (6, 12) only. The paper preset does the same."""
    from cluda_kit.config import load_config
    from cluda_kit.models.heads import DeepLabV2Head
    from cluda_kit.models.segmentor import build_decoder

    cfg = load_config("gta2cs_deeplabv2_cluda")
    assert cfg.model.decoder == "deeplabv2" and cfg.model.deeplab_dilation_quirk is True
    head = build_decoder("deeplabv2", (8, 16, 32, 64), 19, deeplab_dilation_quirk=cfg.model.deeplab_dilation_quirk)
    assert isinstance(head, DeepLabV2Head) and head.dilations == (6, 12) and len(head.aspp_modules) == 2
