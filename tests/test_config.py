"""Config system: presets load, overrides apply and are type-checked, errors name the culprit."""
from __future__ import annotations

import dataclasses

import pytest

from cluda_kit.config import (
    Config, ConfigError, dump_config, from_dict, load_config, preset_names, replace, to_dict,
)

DESIGN_PRESETS = {
    "miniscapes_tiny", "miniscapes_source_only", "miniscapes_oracle", "miniscapes_dacs",
    "miniscapes_daformer", "miniscapes_cluda", "gta2cs_daformer", "gta2cs_daformer_cluda",
    "synthia2cs_daformer_cluda", "gta2cs_deeplabv2_cluda",
}


def test_design_presets_exist_and_load():
    names = set(preset_names())
    assert DESIGN_PRESETS <= names
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name
        # the round trip through YAML text is exact
        import yaml

        assert from_dict(yaml.safe_load(dump_config(cfg))) == cfg


def test_paper_numbers_in_presets():
    cfg = load_config("gta2cs_daformer_cluda")
    assert cfg.optim.lr == 6e-5 and cfg.optim.betas == (0.9, 0.999)
    assert cfg.optim.weight_decay == 0.01 and cfg.optim.head_lr_mult == 10
    assert cfg.optim.warmup_iters == 1500 and cfg.optim.poly_power == 1.0
    assert cfg.train.max_iters == 40000 and cfg.data.batch_size == 2
    assert cfg.uda.ema_alpha == 0.999 and cfg.uda.pseudo_threshold == 0.968
    assert cfg.uda.fd.enabled and cfg.uda.fd.weight == 0.005 and cfg.uda.fd.min_ratio == 0.75
    assert cfg.uda.fd.thing_classes == (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)
    assert cfg.data.rcs.enabled and cfg.data.rcs.temperature == 0.01
    assert cfg.data.rcs.min_pixels == 3000 and cfg.data.rcs.min_crop_ratio == 0.5
    assert cfg.data.crop_size == (512, 512) and cfg.data.pseudo_margins == (15, 120, 0, 0)
    assert cfg.data.source.resize == (720, 1280) and cfg.data.target.resize == (512, 1024)
    assert cfg.model.embed_dim == 512 and cfg.model.fused_dim == 256
    assert cfg.model.aspp_dilations == (1, 6, 12, 18)
    c = cfg.loss.contrastive
    assert c.enabled and c.grid == (65, 65) and c.temperature == 1.0
    assert c.source_weight == 1.0 and c.mix_weight == 1.0 and not c.official_compat
    aug = cfg.uda.aug
    assert (aug.color_jitter_p, aug.color_jitter_s, aug.blur_p, aug.blur_sigma) == (
        0.8, 0.2, 0.5, (0.15, 1.15))
    assert load_config("synthia2cs_daformer_cluda").data.source.resize == (760, 1280)
    assert load_config("gta2cs_daformer").model.embed_dim == 256


def test_overrides_apply_and_convert():
    cfg = load_config("miniscapes_tiny", ["train.max_iters=7", "optim.lr=1e-3",
                                          "data.crop_size=[32, 64]", "uda.fd.enabled=false"])
    assert cfg.train.max_iters == 7 and cfg.optim.lr == 1e-3
    assert cfg.data.crop_size == (32, 64) and not cfg.uda.fd.enabled
    assert isinstance(cfg.optim.lr, float)
    assert replace(cfg, ["train.seed=3"]).train.seed == 3


@pytest.mark.parametrize("override, culprit", [
    ("train.max_itres=5", "max_itres"),
    ("train.max_iters=abc", "train.max_iters"),
    ("train.max_iters=1.5", "train.max_iters"),
    ("uda.fd.enabled=3", "uda.fd.enabled"),
    ("data.crop_size=[1, 2, 3]", "data.crop_size"),
    ("uda.mode=magic", "uda.mode"),
    ("optim.lr=-1", "optim.lr"),
    ("nonsense", "nonsense"),
])
def test_bad_overrides_name_the_key(override, culprit):
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.").replace("[", r"\[")):
        load_config("miniscapes_tiny", [override])


def test_bad_files_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_iters: 10\n  unknown_key: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown_key"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(broken)


def test_yaml_file_with_base(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: miniscapes_tiny\ntrain:\n  seed: 11\n")
    cfg = load_config(f)
    assert cfg.train.seed == 11 and cfg.name == "mine"
    assert cfg.model == load_config("miniscapes_tiny").model


def test_every_numeric_field_has_a_default():
    # building from an empty mapping gives the defaults; every section is frozen
    cfg = from_dict({})
    assert cfg == Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.max_iters = 3  # type: ignore[misc]
    assert to_dict(cfg)["train"]["max_iters"] == 40000


def test_reference_preset_trains_like_the_release():
    """gta2cs_hrda_cluda_reference switches on the release's quirks and trains in fp32 as the
    release does (the other paper presets use bf16 on CUDA: train.amp=auto)."""
    import torch

    from cluda_kit.runtime import autocast_dtype

    ref = load_config("gta2cs_hrda_cluda_reference")
    assert ref.train.amp == "none" and autocast_dtype(ref.train.amp, torch.device("cuda")) is None
    assert load_config("gta2cs_hrda_cluda").train.amp == "auto"
    assert ref.loss.contrastive.official_compat and ref.loss.ce_mean_over_all
    assert not ref.uda.mix_per_image and ref.uda.teacher_mode == "train"


def test_cluda_kit_presets_prints_one_line_per_preset_without_torch():
    """``cluda-kit presets``: every shipped preset with its method, data, crop, budget and the
    published number where a paper reports one; listing loads no torch."""
    import subprocess
    import sys

    from cluda_kit.config import preset_names

    code = ("import sys; from cluda_kit.cli import main; rc = main(['presets']); "
            "assert 'torch' not in sys.modules, 'presets imported torch'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert sorted(lines) == sorted(preset_names())
    assert "cluda (HRDA)" in lines["gta2cs_hrda_cluda"] and "paper 74.4 ± 0.3 (CLUDA)" in lines["gta2cs_hrda_cluda"]
    assert "crop 1024x1024" in lines["gta2cs_hrda_cluda"] and "40000 it" in lines["gta2cs_hrda_cluda"]
    assert "daformer + MIC (HRDA)" in lines["gta2cs_hrda_mic"]
    assert "miniscapes game -> real" in lines["miniscapes_pipa"] and " pipa " in lines["miniscapes_pipa"]
    assert "paper" not in lines["miniscapes_cluda"]
