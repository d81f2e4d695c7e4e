"""Mixed precision that fits the device (``train.amp``) and what the trainer writes to TensorBoard
(#16 items 6, 7).

``train.amp`` resolves to bf16 on a CUDA device with bfloat16, fp16 + GradScaler on one without,
float32 on the CPU; explicit values win. The fp16 + GradScaler path runs here on the CPU
(``torch.amp.GradScaler("cpu")``): a short run, an injected inf gradient that the scaler must skip
and count, and an exact resume that restores the loss scale. TensorBoard is read back with
tensorboard's EventAccumulator."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch

from cluda_kit.analysis.callbacks import DebugFigures
from cluda_kit.config import ConfigError, load_config
from cluda_kit.engine.trainer import Trainer
from cluda_kit.runtime import autocast_dtype, device_precision, resolve_precision

FP16 = ["train.amp=fp16", "train.max_iters=4", "train.eval_every=2", "train.checkpoint_every=2",
        "train.log_every=1", "train.figure_every=4", "train.threads=2"]


# ------------------------------------------------------------------------------ resolution
@pytest.mark.parametrize("requested, device, bf16, name", [
    ("auto", "cuda", True, "bf16"),
    ("auto", "cuda", False, "fp16"),
    ("auto", "cpu", True, "fp32"),
    ("auto", "cpu", False, "fp32"),
    ("auto", "cpu", None, "fp32"),
    ("auto", "mps", True, "fp32"),
    ("bf16", "cuda", True, "bf16"),
    ("bf16", "cuda", False, "bf16"),  # explicit: taken as given
    ("bf16", "cpu", None, "bf16"),
    ("fp16", "cuda", True, "fp16"),
    ("fp16", "cuda", False, "fp16"),
    ("fp16", "cpu", None, "fp16"),
    ("none", "cuda", True, "fp32"),
    ("none", "cuda", False, "fp32"),
    ("none", "cpu", None, "fp32"),
])
def test_resolve_precision_every_case(requested, device, bf16, name):
    p = resolve_precision(requested, device, bf16)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name]
    assert (p.name, p.dtype, p.grad_scaler, p.requested) == (name, dtype, name == "fp16", requested)
    assert f"train.amp={requested}" in str(p)


def test_unknown_amp_value_names_the_key():
    with pytest.raises(ValueError, match=r"train\.amp: expected one of auto, bf16, fp16, none, got 'fp8'"):
        resolve_precision("fp8", "cuda", True)
    with pytest.raises(ConfigError, match=r"train\.amp"):
        load_config("miniscapes_tiny", ["train.amp=fp8"])
    cfg = load_config("miniscapes_tiny")  # a config built in code, not validated
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp="half"))
    with pytest.raises(ConfigError, match=r"train\.amp: .*got 'half'"):
        Trainer(cfg, progress=False)


def test_cpu_defaults_to_fp32_and_presets_keep_their_choice():
    cpu = torch.device("cpu")
    assert load_config("miniscapes_tiny").train.amp == "auto"
    assert device_precision("auto", cpu).name == "fp32" and autocast_dtype("auto", cpu) is None
    assert load_config("gta2cs_hrda_cluda_reference").train.amp == "none"  # the release: fp32
    # "none" never asks CUDA (works on a machine without it)
    assert device_precision("none", torch.device("cuda")).dtype is None


# ------------------------------------------------------------------------------ fp16 on the CPU
@pytest.fixture(scope="module")
def fp16_run(tmp_path_factory):
    """4 fp16 iterations of miniscapes_tiny with TensorBoard, debug figures and checkpoints."""
    run = tmp_path_factory.mktemp("amp") / "run"

    class KeepIteration2:  # at the end of iteration 3, last.pt still holds iteration 2
        def on_step_end(self, trainer):
            if trainer.iter == 3:
                shutil.copy(run / "checkpoints" / "last.pt", run / "checkpoints" / "iter2.pt")

    trainer = Trainer(load_config("miniscapes_tiny", FP16), run, progress=False,
                      callbacks=[DebugFigures(), KeepIteration2()])
    summary = trainer.fit()
    return trainer, summary, run


def test_fp16_run_finishes_with_finite_losses(fp16_run):
    trainer, summary, run = fp16_run
    assert trainer.precision.name == "fp16" and trainer.scaler is not None
    steps = [r for r in trainer.history if "loss" in r]
    assert len(steps) == 4 and all(math.isfinite(r["loss"]) for r in steps)
    assert all(r["amp_skipped"] == int(r["amp_skipped"]) >= 0 and r["amp_scale"] > 0 for r in steps)
    assert summary["precision"] == "fp16" and summary["amp_skipped_steps"] == steps[-1]["amp_skipped"]
    assert json.loads((run / "summary.json").read_text())["amp_skipped_steps"] == summary["amp_skipped_steps"]
    meta = json.loads((run / "meta.json").read_text())
    assert (meta["precision"], meta["amp"]) == ("fp16", "fp16")
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["scaler"]["scale"] == steps[-1]["amp_scale"]
    assert ckpt["scaler"]["skipped"] == summary["amp_skipped_steps"]


def test_fp16_resume_is_exact(fp16_run):
    """Resuming iteration 2's checkpoint (scaler state included) reproduces iterations 3, 4."""
    trainer, _, run = fp16_run
    resumed = Trainer.resume(run / "checkpoints" / "iter2.pt", read_only=True, progress=False)
    assert resumed.iter == 2
    before = resumed.scaler.state_dict()
    assert before == torch.load(run / "checkpoints" / "iter2.pt", weights_only=True)["scaler"]
    resumed.fit()
    for (k, a), (_, b) in zip(trainer.student.state_dict().items(), resumed.student.state_dict().items()):
        assert torch.equal(a, b), k
    assert resumed.scaler.state_dict() == trainer.scaler.state_dict()
    want = [r["loss"] for r in trainer.history if "loss" in r and r["iter"] > 2]
    assert [r["loss"] for r in resumed.history if "loss" in r] == want


def test_inf_gradient_step_is_skipped_and_counted():
    trainer = Trainer(load_config("miniscapes_tiny", ["train.amp=fp16", "train.threads=2"]), progress=False)
    trainer.step()
    skipped, scale = trainer.scaler.skipped, float(trainer.scaler.scale_tensor)
    params = {k: p.detach().clone() for k, p in trainer.student.named_parameters()}
    weight = next(trainer.student.decoder.parameters())
    hook = weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    res = trainer.step()
    hook.remove()
    assert trainer.scaler.skipped == skipped + 1 and res.values["amp_skipped"] == skipped + 1
    assert float(trainer.scaler.scale_tensor) == scale / 2  # backed off
    assert all(math.isfinite(v) for k, v in res.values.items())  # the losses themselves were finite
    for k, p in trainer.student.named_parameters():  # no update, not even weight decay
        assert torch.equal(p, params[k]), k
    trainer.step()  # the next step updates again
    assert trainer.scaler.skipped == skipped + 1
    assert not torch.equal(weight.detach(), params[next(k for k, p in trainer.student.named_parameters()
                                                        if p is weight)])


def test_fp32_on_the_cpu_has_no_scaler_and_logs_no_amp_values():
    trainer = Trainer(load_config("miniscapes_tiny", ["train.threads=2"]), progress=False)
    assert trainer.precision.name == "fp32" and trainer.scaler is None and trainer.amp_dtype is None
    assert not {"amp_skipped", "amp_scale"} & set(trainer.step().values)
    assert trainer.state_dict()["scaler"] is None


# ------------------------------------------------------------------------------ TensorBoard
def test_tensorboard_holds_iou_losses_lrs_q_amp_and_figures(fp16_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, summary, run = fp16_run
    trainer.tensorboard.flush()
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}

    # evaluation (iterations 2 and 4): mIoU and every class's IoU as summary.json holds them
    assert scalars["val/mIoU"][4] == pytest.approx(summary["miou"], rel=1e-6)
    assert sorted(scalars["val/mIoU"]) == [2, 4]
    named = {name: v for name, v in summary["iou"].items() if v is not None}
    assert named and {f"val_iou/{n}" for n in named} <= set(scalars)
    for name, iou in named.items():
        assert scalars[f"val_iou/{name}"][4] == pytest.approx(iou, rel=1e-6, abs=1e-6)
    # a class without pixels at that evaluation (IoU nan, None in summary.json) has no point there
    assert {t[8:] for t, v in scalars.items() if t.startswith("val_iou/") and 4 in v} == set(named)

    # every log interval: each loss term, the total, q, the learning rates, the AMP counters
    steps = [r for r in trainer.history if "loss" in r]
    for term in ("ce_src", "fd", "cl_src", "ce_mix", "cl_mix"):
        assert [scalars[f"loss/{term}"][r["iter"]] for r in steps] == pytest.approx([r[term] for r in steps])
    assert scalars["loss/total"][4] == pytest.approx(steps[-1]["loss"])
    assert scalars["pseudo_label/q"][4] == pytest.approx(steps[-1]["q"]) and 0 <= steps[-1]["q"] <= 1
    assert scalars["amp/skipped_steps"][4] == summary["amp_skipped_steps"]
    assert scalars["amp/loss_scale"][4] == steps[-1]["amp_scale"]
    lr_tags = sorted(t for t in scalars if t.startswith("lr/") and t != "lr/base")
    assert lr_tags == sorted(f"lr/{n}" for n in ("encoder", "encoder_no_decay", "head", "head_no_decay"))
    cfg = trainer.cfg.optim
    assert scalars["lr/base"][4] == pytest.approx(steps[-1]["lr"])
    assert scalars["lr/encoder"][4] == pytest.approx(steps[-1]["lr"])
    assert scalars["lr/head"][4] == pytest.approx(steps[-1]["lr"] * cfg.head_lr_mult)
    assert len(scalars["loss/total"]) == 4

    # the debug figure of iteration 4 as an image, the same picture as figures/iter_000004.png
    images = acc.Images("debug/figure")
    assert [e.step for e in images] == [4]
    assert images[0].width > 100 and images[0].height > 100
    from PIL import Image

    png = Image.open(run / "figures" / "iter_000004.png")
    assert (images[0].width, images[0].height) == png.size
