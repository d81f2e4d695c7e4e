"""The trainer: run directory contract, exact resume, every preset family at tiny sizes, the
schedule and parameter groups, and the command line's one-line errors."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from cluda_kit.cli import main as cli_main
from cluda_kit.config import ConfigError, load_config
from cluda_kit.engine.trainer import Trainer, cross_entropy, lr_at, param_groups
from cluda_kit.analysis.callbacks import DebugFigures

TINY = ["train.max_iters=4", "train.eval_every=4", "train.checkpoint_every=2"]


def test_lr_schedule_golden_numbers():
    # mmcv poly with linear warm-up (DAFormer): computed by hand
    kw = dict(base_lr=6e-5, max_iters=40000, warmup_iters=1500, warmup_ratio=1e-6, power=1.0)
    assert lr_at(0, **kw) == pytest.approx(6e-5 * 1e-6)
    assert lr_at(750, **kw) == pytest.approx(6e-5 * (1 - 750 / 40000) * (1 - 0.5 * (1 - 1e-6)))
    assert lr_at(1500, **kw) == pytest.approx(6e-5 * (1 - 1500 / 40000))
    assert lr_at(20000, **kw) == pytest.approx(3e-5)
    assert lr_at(40000, **kw) == 0.0


def test_param_groups_head_lr_and_norm_decay():
    trainer_cfg = load_config("miniscapes_tiny")
    from cluda_kit.models import build_segmentor

    model = build_segmentor(trainer_cfg.model)
    groups = param_groups(model, lr=1.0, weight_decay=0.01, head_lr_mult=10.0, norm_decay=False)
    enc = {id(p) for p in model.encoder.parameters()}
    norms = {id(p) for m in model.modules()
             if isinstance(m, (torch.nn.LayerNorm, torch.nn.modules.batchnorm._BatchNorm))
             for p in m.parameters(recurse=False)}
    seen = 0
    for g in groups:
        for p in g["params"]:
            seen += 1
            assert g["lr"] == (1.0 if id(p) in enc else 10.0)
            assert g["weight_decay"] == (0.0 if id(p) in norms else 0.01)
    assert seen == sum(1 for _ in model.parameters())


def test_cross_entropy_means():
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, 0] = 255
    valid = labels != 255
    per_pixel = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    assert torch.allclose(cross_entropy(logits, labels), per_pixel.sum() / valid.sum())
    assert torch.allclose(cross_entropy(logits, labels, mean_over_all=True), per_pixel.sum() / 32)
    w = torch.rand(2, 4, 4)
    assert torch.allclose(cross_entropy(logits, labels, w), (per_pixel * w).sum() / valid.sum())


def test_run_directory_contract(tmp_path):
    cfg = load_config("miniscapes_tiny", TINY + ["train.figure_every=2"])
    summary = Trainer(cfg, tmp_path / "run", progress=False, callbacks=[DebugFigures()]).fit()
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "meta.json").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "miou" in r]
    assert evals and evals[-1]["iter"] == 4 and len(evals[-1]["iou"]) == 19
    assert any("loss" in r for r in records)
    saved = json.loads((run / "summary.json").read_text())
    assert saved["miou"] == summary["miou"] and 0 <= saved["miou"] <= 100
    assert {"iou", "wall_time_s", "iters_per_s"} <= set(saved)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # kit checkpoints need no unpickling
    assert {"student", "teacher", "optimizer", "iter"} <= set(ckpt) and ckpt["iter"] == 4
    assert list((run / "tb").glob("events.*"))
    figures = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert figures == ["iter_000002.png", "iter_000004.png"]


def test_resume_is_bit_identical(tmp_path):
    cfg = load_config("miniscapes_tiny", TINY)
    straight = Trainer(cfg, tmp_path / "a", progress=False)
    straight.fit()
    interrupted = Trainer(cfg, tmp_path / "b", progress=False)
    interrupted.fit(max_iters=2)  # checkpoint written at iteration 2
    del interrupted
    resumed = Trainer.resume(tmp_path / "b", progress=False)
    assert resumed.iter == 2
    resumed.fit()
    for (k, a), (_, b) in zip(straight.student.state_dict().items(),
                              resumed.student.state_dict().items()):
        assert torch.equal(a, b), k
    for (k, a), (_, b) in zip(straight.teacher.state_dict().items(),
                              resumed.teacher.state_dict().items()):
        assert torch.equal(a, b), k
    la = [r for r in straight.history if "loss" in r]
    lb = [r for r in resumed.history if "loss" in r]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


@pytest.mark.parametrize("preset", ["miniscapes_source_only", "miniscapes_source_only_aug",
                                    "miniscapes_oracle", "miniscapes_dacs",
                                    "miniscapes_daformer", "miniscapes_cluda"])
def test_every_miniscapes_family_trains(preset, tmp_path):
    tiny = load_config("miniscapes_tiny")
    shrink = [f"data.source.size={list(tiny.data.source.size)}", "data.source.length=8",
              f"data.target.size={list(tiny.data.target.size)}", "data.target.length=8",
              f"data.val.size={list(tiny.data.val.size)}", "data.val.length=2",
              f"data.crop_size={list(tiny.data.crop_size)}", "data.rcs.min_pixels=20",
              "model.embed_dim=16", "model.fused_dim=16", "loss.contrastive.grid=[16, 32]",
              "train.max_iters=2", "train.eval_every=0", "train.checkpoint_every=0",
              "train.log_every=1", "train.figure_every=0", "train.threads=1"]
    cfg = load_config(preset, shrink)
    trainer = Trainer(cfg, progress=False)
    summary = trainer.fit()
    losses = [r for r in trainer.history if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(r["loss"]) for r in losses)
    expected = {"ce_src"}
    if cfg.uda.mode == "self_training":
        expected |= {"ce_mix", "q"}
    if cfg.uda.fd.enabled:
        expected.add("fd")
    if cfg.loss.contrastive.enabled:
        expected |= {"cl_src", "cl_mix"}
    assert expected <= set(losses[0])
    assert 0 <= summary["miou"] <= 100


def test_resume_with_a_different_config_is_refused(tmp_path):
    cfg = load_config("miniscapes_tiny", TINY)
    Trainer(cfg, tmp_path / "run", progress=False).fit(max_iters=2)
    with pytest.raises(ConfigError, match="another run"):
        Trainer(load_config("miniscapes_tiny", TINY + ["train.seed=5"]), tmp_path / "run")
    with pytest.raises(ConfigError, match="'model' section"):
        Trainer.resume(tmp_path / "run", overrides=["model.fused_dim=8"])


def test_cli_errors_are_one_line(capsys, tmp_path):
    assert cli_main(["train", "miniscapes_tiny", "--set", "train.max_itres=3",
                     "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_itres" in err[0]
    assert cli_main(["train", "gta2cs_daformer", "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pretrained/mit_b5.pth" in err[0]
    assert cli_main(["train", "gta2cs_daformer", "--set", "data.source.root=/nonexistent/gta",
                     "--set", "model.pretrained=", "--set", "model.encoder=mit_b0",
                     "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/nonexistent/gta" in err[0]
    assert cli_main(["evaluate", str(tmp_path / "nothing")]) == 2


def test_cli_train_then_evaluate(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cluda_kit", "train", "miniscapes_tiny", "--out", str(run),
           "--set", "train.max_iters=2", "--set", "train.eval_every=2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "mIoU" in out.stdout and "road" in out.stdout
    out = subprocess.run([sys.executable, "-m", "cluda_kit", "evaluate", str(run)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert f"{summary['miou']:.2f}" in out.stdout


def test_frame_margins_move_with_the_crop():
    from cluda_kit.engine.data import FrameMarginMask, dataset_from_config, peek, train_stream

    cfg = load_config("miniscapes_tiny", ["data.frame_margins=[3, 10, 4, 5]",
                                          "data.crop_size=[32, 64]", "data.flip_prob=0.0"])
    frame = FrameMarginMask(dataset_from_config(cfg.data.target, "data.target"), (3, 10, 4, 5))
    full = frame[0]
    h, w = full["label"].shape
    assert int(full["label"].sum()) == (h - 13) * (w - 9)
    assert full["label"][3:h - 10, 4:w - 5].eq(1).all()
    stream = train_stream(cfg, "target")
    for k in range(4):
        batch = peek(stream, k)
        image, mask = batch["image"][0], batch["label"][0]
        source = frame[k % len(frame)]
        hits = [(y, x) for y in range(h - 32 + 1) for x in range(w - 64 + 1)
                if torch.equal(source["image"][:, y:y + 32, x:x + 64], image)]
        assert hits, "the crop is not a window of the frame"
        y, x = hits[0]
        assert torch.equal(mask, source["label"][y:y + 32, x:x + 64])


def test_training_with_frame_margins(tmp_path):
    cfg = load_config("miniscapes_tiny", ["data.frame_margins=[3, 10, 4, 5]",
                                          "train.max_iters=2", "train.eval_every=0",
                                          "train.checkpoint_every=0"])
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    assert trainer.iter == 2


def test_release_no_decay_rule_exempts_only_parameters_named_norm():
    """The release's optimiser keys exempt parameters whose name contains "norm" (the MiT
    LayerNorms) from weight decay; the BatchNorms of the heads (and of a ResNet) decay. The paper
    presets use that rule, miniscapes the kit's earlier one (every norm layer)."""
    from cluda_kit.models import build_segmentor

    assert load_config("gta2cs_daformer_cluda").optim.no_decay_rule == "release"
    assert load_config("miniscapes_cluda").optim.no_decay_rule == "norm_layers"
    for enc, dec in (("mit_nano", "daformer"), ("resnet18", "deeplabv2")):
        model = build_segmentor(load_config("miniscapes_tiny", [f"model.encoder={enc}", f"model.decoder={dec}",
                                                                "model.pretrained="]).model)
        groups = param_groups(model, lr=1.0, weight_decay=0.01, head_lr_mult=10.0, norm_decay=False,
                              no_decay_rule="release")
        decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
        bn = 0
        for name, p in model.named_parameters():
            assert decay[id(p)] == (0.0 if "norm" in name else 0.01), name
            bn += ".bn" in name or name.startswith("encoder.bn")
        assert bn > 0  # BatchNorm parameters exist and decay
    with pytest.raises(ValueError, match="optim.no_decay_rule: expected norm_layers or release, got 'x'"):
        param_groups(model, 1.0, 0.01, 10.0, False, "x")
