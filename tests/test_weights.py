"""Pretrained-weight loading: every supported layout is produced from our own model through an
independently written inverse renaming, saved, loaded into a differently seeded model, and must
reproduce the original weights and outputs exactly."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from cluda_kit.models import build_segmentor, load_pretrained
from cluda_kit.models.mit import mit
from cluda_kit.models.resnet import ResNetEncoder
from cluda_kit.models.weights import read_checkpoint, to_kit_layout

torch.set_num_threads(1)


def cfg(**kw) -> SimpleNamespace:
    base = dict(encoder="mit_nano", decoder="daformer", num_classes=19, embed_dim=8, fused_dim=8,
                aspp_dilations=(1, 6, 12, 18), dropout=0.1, drop_path_rate=0.1, output_stride=8,
                deeplab_dilation_quirk=False, pretrained="", channels_last=False,
                activation_checkpointing=False, projection_dim=0)
    base.update(kw)
    return SimpleNamespace(**base)


def seeded(seed: int, **kw):
    torch.manual_seed(seed)
    return build_segmentor(cfg(**kw)).eval()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def assert_same_outputs(a, b, x=None) -> None:
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0)) if x is None else x
    with torch.no_grad():
        ya, yb = a(x), b(x)
    if isinstance(ya, list):
        for u, v in zip(ya, yb):
            assert torch.equal(u, v)
    else:
        assert torch.equal(ya.logits, yb.logits) and torch.equal(ya.fused, yb.fused)


# ------------------------------------------------- inverse tables (ours -> foreign), hand-written
def ours_to_hf(encoder_sd: dict) -> dict:
    """MiT encoder state dict -> Hugging Face SegformerForImageClassification names."""
    out = {"classifier.weight": torch.zeros(1000, 256), "classifier.bias": torch.zeros(1000)}
    block_names = {"norm1": "layer_norm_1", "attn.q": "attention.self.query",
                   "attn.sr": "attention.self.sr", "attn.norm": "attention.self.layer_norm",
                   "attn.proj": "attention.output.dense", "norm2": "layer_norm_2",
                   "mlp.fc1": "mlp.dense1", "mlp.fc2": "mlp.dense2",
                   "mlp.dwconv.dwconv": "mlp.dwconv.dwconv"}
    for key, v in encoder_sd.items():
        module, param = key.rsplit(".", 1)
        if m := re.match(r"patch_embed(\d)\.(proj|norm)$", module):
            part = {"proj": "proj", "norm": "layer_norm"}[m.group(2)]
            out[f"segformer.encoder.patch_embeddings.{int(m.group(1)) - 1}.{part}.{param}"] = v
        elif m := re.match(r"norm(\d)$", module):
            out[f"segformer.encoder.layer_norm.{int(m.group(1)) - 1}.{param}"] = v
        else:
            m = re.match(r"block(\d)\.(\d+)\.(.+)$", module)
            stem = f"segformer.encoder.block.{int(m.group(1)) - 1}.{m.group(2)}"
            if m.group(3) == "attn.kv":
                half = v.shape[0] // 2
                out[f"{stem}.attention.self.key.{param}"] = v[:half]
                out[f"{stem}.attention.self.value.{param}"] = v[half:]
            else:
                out[f"{stem}.{block_names[m.group(3)]}.{param}"] = v
    return out


def ours_to_mmseg(seg_sd: dict, head_prefix: str = "decode_head.") -> dict:
    """Segmentor state dict -> mmseg EncoderDecoder names (DAFormer / DLV2 / SegFormer heads)."""
    out = {}
    for key, v in seg_sd.items():
        if key.startswith("encoder."):
            out["backbone." + key[len("encoder."):]] = v
            continue
        rest = key[len("decoder."):]
        if m := re.match(r"(embed_layers|linear_c)\.(\d+)\.(weight|bias)$", rest):
            out[f"{head_prefix}{m.group(1)}.{m.group(2)}.proj.{m.group(3)}"] = (
                v[:, :, 0, 0] if m.group(3) == "weight" else v)
        elif m := re.match(r"aspp_modules\.(\d+)\.(weight|bias)$", rest):
            out[f"{head_prefix}aspp_modules.{m.group(1)}.conv.{m.group(2)}"] = v
        else:
            out[head_prefix + rest] = v
    return out


# ------------------------------------------------------------------------------------- layouts
def test_segformer_mit_pth_into_segmentor_and_encoder(tmp_path):
    src = seeded(0)
    sd = dict(src.encoder.state_dict())
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, 256), torch.randn(1000)
    path = tmp_path / "mit_nano.pth"
    torch.save({"state_dict": sd}, path)

    dst = seeded(1)
    decoder_before = {k: v.clone() for k, v in dst.decoder.state_dict().items()}
    report = load_pretrained(dst, path)
    assert (report.layout, report.target) == ("segformer_mit", "encoder")
    assert report.loaded == len(src.encoder.state_dict())
    assert_same_weights(src.encoder, dst.encoder)
    for k, v in dst.decoder.state_dict().items():  # decoder untouched
        assert torch.equal(v, decoder_before[k])

    enc = mit("mit_nano").eval()
    load_pretrained(enc, path)
    assert_same_outputs(src.encoder, enc)


def test_huggingface_layout_bin(tmp_path):
    torch.manual_seed(0)
    src = mit("mit_b0").eval()
    hf = ours_to_hf(src.state_dict())
    assert "segformer.encoder.block.1.1.attention.self.value.weight" in hf
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf, path)
    torch.manual_seed(1)
    dst = mit("mit_b0").eval()
    assert load_pretrained(dst, path).layout == "hf_mit"
    assert_same_weights(src, dst)
    assert_same_outputs(src, dst)


def test_huggingface_layout_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    src = mit("mit_nano").eval()
    path = tmp_path / "model.safetensors"
    st.save_file({k: v.contiguous() for k, v in ours_to_hf(src.state_dict()).items()}, str(path))
    torch.manual_seed(1)
    dst = mit("mit_nano").eval()
    load_pretrained(dst, path)
    assert_same_weights(src, dst)


def test_torchvision_resnet_state_dict(tmp_path):
    torch.manual_seed(0)
    src = ResNetEncoder(18, output_stride=8).eval()
    sd = dict(src.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    dst = seeded(1, encoder="resnet18", decoder="deeplabv2")
    assert load_pretrained(dst, path).layout == "torchvision_resnet"
    assert_same_weights(src, dst.encoder)


@pytest.mark.parametrize("decoder", ["daformer", "segformer"])
def test_mmseg_segmentor_checkpoint(tmp_path, decoder):
    src = seeded(0, decoder=decoder)
    sd = ours_to_mmseg(src.state_dict())
    if decoder == "segformer":  # mmseg's SegFormerHead keeps an unused conv_seg
        sd["decode_head.conv_seg.weight"] = torch.randn(19, 8, 1, 1)
        sd["decode_head.conv_seg.bias"] = torch.randn(19)
    else:
        assert sd["decode_head.embed_layers.0.proj.weight"].dim() == 2
    path = tmp_path / "latest.pth"
    torch.save({"meta": {"iter": 40000}, "state_dict": sd}, path)
    dst = seeded(1, decoder=decoder)
    report = load_pretrained(dst, path)
    assert (report.layout, report.target) == ("mmseg", "segmentor")
    assert_same_weights(src, dst)
    assert_same_outputs(src, dst)


def test_mmseg_uda_checkpoint_student_and_teacher(tmp_path):
    student, teacher, imnet = seeded(0), seeded(1), seeded(2)
    sd = {}
    for prefix, model in (("model.", student), ("ema_model.", teacher), ("imnet_model.", imnet)):
        sd.update({prefix + k: v for k, v in ours_to_mmseg(model.state_dict()).items()})
    path = tmp_path / "iter_40000.pth"
    torch.save({"state_dict": sd, "optimizer": {}}, path)
    for key, ref in (("student", student), ("teacher", teacher)):
        dst = seeded(3)
        assert load_pretrained(dst, path, key=key).layout == "mmseg_uda"
        assert_same_weights(ref, dst)


def test_hrda_cluda_heads_are_renamed():
    src = seeded(0)
    sd = ours_to_mmseg(src.state_dict(), head_prefix="decode_head.head.")
    sd["decode_head.scale_attention.conv_seg.weight"] = torch.zeros(19, 8, 1, 1)
    sd["decode_head.scale_attention.embed_layers.2.proj.weight"] = torch.zeros(8, 160)
    sd["decode_head.feat_weighter.fuse_layer.conv.weight"] = torch.zeros(8, 32, 1, 1)
    state, layout, rest = to_kit_layout({"state_dict": sd})
    assert layout == "mmseg" and rest == []
    assert "scale_attention.conv_seg.weight" in state
    assert "scale_attention.embed_layers.2.weight" in state
    assert "feat_weighter.fuse_layer.conv.weight" in state
    assert "decoder.fuse_layer.bottleneck.conv.weight" in state
    dst = seeded(1)
    with pytest.raises(ValueError, match="scale_attention"):  # no such sub-heads in a Segmentor
        load_pretrained(dst, {"state_dict": sd})
    report = load_pretrained(dst, {"state_dict": sd}, strict=False)
    assert len(report.unexpected) == 3 and not report.missing
    assert_same_weights(src, dst)


def test_mmseg_deeplabv2_quirk_layout():
    src = seeded(0, encoder="resnet18", decoder="deeplabv2", deeplab_dilation_quirk=True)
    sd = ours_to_mmseg(src.state_dict())
    assert {k for k in sd if k.startswith("decode_head.")} == {
        f"decode_head.aspp_modules.{i}.conv.{p}" for i in (0, 1) for p in ("weight", "bias")}
    dst = seeded(1, encoder="resnet18", decoder="deeplabv2", deeplab_dilation_quirk=True)
    load_pretrained(dst, sd)
    assert_same_weights(src, dst)
    full = seeded(1, encoder="resnet18", decoder="deeplabv2")  # 4 branches: 2 missing
    with pytest.raises(ValueError, match=r"missing in file \(4\): decoder.aspp_modules.2.weight"):
        load_pretrained(full, sd)


def test_resnet_v1c_deep_stem_is_reported():
    src = seeded(0, encoder="resnet18", decoder="deeplabv2")
    sd = ours_to_mmseg(src.state_dict())
    del sd["backbone.conv1.weight"]
    sd["backbone.stem.0.weight"] = torch.zeros(32, 3, 3, 3)
    with pytest.raises(ValueError) as e:
        load_pretrained(seeded(1, encoder="resnet18", decoder="deeplabv2"), sd)
    assert "encoder.conv1.weight" in str(e.value) and "encoder.stem.0.weight" in str(e.value)


def test_kit_checkpoint_student_or_teacher(tmp_path):
    student, teacher = seeded(0, projection_dim=4), seeded(1, projection_dim=4)
    path = tmp_path / "last.pt"
    torch.save({"student": student.state_dict(), "teacher": teacher.state_dict(),
                "optimizer": {}, "iter": 7}, path)
    dst = seeded(2, projection_dim=4)
    assert load_pretrained(dst, path).layout == "kit"
    assert_same_weights(student, dst)
    load_pretrained(dst, path, key="teacher")
    assert_same_weights(teacher, dst)
    with pytest.raises(ValueError, match="'ema'"):
        load_pretrained(dst, path, key="ema")


def test_build_segmentor_loads_cfg_pretrained(tmp_path):
    src = seeded(0)
    path = tmp_path / "enc.pth"
    torch.save(src.encoder.state_dict(), path)
    torch.manual_seed(5)
    model = build_segmentor(cfg(pretrained=str(path))).eval()
    assert_same_weights(src.encoder, model.encoder)


# -------------------------------------------------------------------------------------- errors
def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope" / "mit_b5.pth"
    with pytest.raises(FileNotFoundError, match="mit_b5.pth"):
        load_pretrained(mit("mit_nano"), missing)
    with pytest.raises(FileNotFoundError, match="mit_b5.pth"):
        read_checkpoint(str(missing))


def test_mismatch_lists_keys_and_shapes():
    src = seeded(0, num_classes=16)
    sd = ours_to_mmseg(src.state_dict())
    sd.pop("backbone.norm4.weight")
    sd["decode_head.extra.weight"] = torch.zeros(3)
    dst = seeded(1)
    with pytest.raises(ValueError) as e:
        load_pretrained(dst, sd)
    msg = str(e.value)
    assert "missing in file (1): encoder.norm4.weight" in msg
    assert "unexpected in file (1): decoder.extra.weight" in msg
    assert "decoder.conv_seg.weight: file (16, 8, 1, 1) vs model (19, 8, 1, 1)" in msg
    # non-strict: everything else is copied, the problems are reported
    report = load_pretrained(dst, sd, strict=False)
    assert report.missing == ["encoder.norm4.weight"]
    assert len(report.mismatched) == 2  # conv_seg weight and bias
    assert torch.equal(dst.encoder.norm1.weight, src.encoder.norm1.weight)


def test_error_lists_at_most_ten_keys():
    sd = {f"backbone.junk{i}.weight": torch.zeros(1) for i in range(25)}
    with pytest.raises(ValueError, match=r"\(\+15 more\)"):
        load_pretrained(mit("mit_nano"), sd)


def test_unrecognised_layout():
    with pytest.raises(ValueError, match="unrecognised weight layout"):
        to_kit_layout({"foo.weight": torch.zeros(1)}, source="x.pth")


def test_transformers5_in_memory_layout_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="transformers>=5"):
        to_kit_layout({"segformer.stages.0.patch_embeddings.proj.weight": torch.zeros(1)})


def test_pickled_objects_are_refused_and_numpy_meta_is_read(tmp_path):
    """A third-party file is never unpickled with code execution: a pickled object is refused
    with one clear error naming the file and the object; numpy arrays and scalars (mmcv meta, an
    older kit checkpoint's RNG state) are plain data and load."""
    import argparse

    import numpy as np

    from cluda_kit.fileio import UnsafeCheckpointError

    src = seeded(0)
    path = tmp_path / "with_objects.pt"
    torch.save({"student": src.state_dict(), "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"with_objects.pt holds Python objects .*argparse.Namespace"):
        load_pretrained(seeded(1), path)
    path = tmp_path / "numpy_meta.pt"
    torch.save({"student": src.state_dict(), "meta": {"seed": np.int64(3), "hist": np.arange(4.0),
                                                      "rng": np.random.get_state()}}, path)
    dst = seeded(1)
    load_pretrained(dst, path)
    assert_same_weights(src, dst)


class _Wrapper(torch.nn.Module):
    """HRDA-style wrapper: the Segmentor nested as ``segmentor``, extra heads at the top."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        from cluda_kit.models.heads import DAFormerHead

        self.segmentor = seeded(seed)
        chans = self.segmentor.encoder.out_channels
        self.scale_attention = DAFormerHead(chans, 19, 8, 8, fusion="conv1x1")
        self.feat_weighter = DAFormerHead(chans, 1, 8, 8, fusion="conv1x1")

    @property
    def encoder(self):
        return self.segmentor.encoder


def test_hrda_cluda_checkpoint_into_a_wrapper():
    src = _Wrapper(0)
    sd = ours_to_mmseg(src.segmentor.state_dict(), head_prefix="decode_head.head.")
    for name in ("scale_attention", "feat_weighter"):
        sub = {"decoder." + k: v for k, v in getattr(src, name).state_dict().items()}
        sd.update(ours_to_mmseg(sub, head_prefix=f"decode_head.{name}."))
    dst = _Wrapper(1)
    report = load_pretrained(dst, {"state_dict": sd})
    assert report.target == "segmentor" and not report.unexpected
    assert_same_weights(src, dst)
    torch.manual_seed(7)
    enc = mit("mit_nano")
    enc_only = _Wrapper(2)
    assert load_pretrained(enc_only, enc.state_dict()).target == "encoder"
    assert_same_weights(enc, enc_only.encoder)
