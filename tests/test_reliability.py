"""Reliability: crash safety (SIGKILL, a kill during the checkpoint write, a cut checkpoint),
non-finite losses, bad input giving one clear line without damage to what is written, and
deterministic runs."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from cluda_kit.cli import main as cli_main
from cluda_kit.config import ConfigError, load_config
from cluda_kit.data.datasets import DatasetError
from cluda_kit.data.prepare import prepare
from cluda_kit.uda.methods import cluda as cluda_module
from cluda_kit.engine.trainer import CheckpointError, NonFiniteLossError, Trainer, load_checkpoint
from cluda_kit.runtime import set_deterministic
from fake_data import make_gta_tree

FAST = ["train.eval_every=0", "train.log_every=1", "train.checkpoint_every=1"]


def _one_error_line(capsys) -> str:
    """The one error line on stderr (besides progress bars), without a traceback."""
    err = capsys.readouterr().err
    marker = "cluda-kit: error: "
    lines = [line[line.index(marker):] for line in err.replace("\r", "\n").splitlines()
             if marker in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and "tb" not in p.parts}


def _same_weights(a: dict, b: dict) -> None:
    for name in ("student", "teacher"):
        assert a[name].keys() == b[name].keys()
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)


# ------------------------------------------------------------------------- crash safety
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    sets = ["train.max_iters=6", *FAST]
    args = [x for s in sets for x in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "cluda_kit", "train", "miniscapes_tiny",
                             "--out", str(killed), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ckpt = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 180
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    at_kill = load_checkpoint(ckpt)["iter"]
    assert 1 <= at_kill < 6  # killed mid-run, with a complete checkpoint

    assert cli_main(["train", "--resume", str(killed)]) == 0
    assert cli_main(["train", "miniscapes_tiny", "--out", str(straight), *args]) == 0
    a, b = load_checkpoint(ckpt), load_checkpoint(straight / "checkpoints" / "last.pt")
    assert a["iter"] == b["iter"] == 6
    _same_weights(a, b)
    losses = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (killed, straight)]
    assert [r["iter"] for r in losses[0] if "loss" in r] == list(range(1, 7))
    assert losses[0] == losses[1]
    assert not list((killed / "checkpoints").glob(".*tmp*"))  # temps of the killed write removed


def test_kill_during_checkpoint_write_and_a_cut_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = Trainer(load_config("miniscapes_tiny", ["train.max_iters=3", *FAST]), run,
                      progress=False)
    trainer.fit(max_iters=1)  # last.pt at iteration 1
    trainer.step()
    real_save = torch.save

    def dies_mid_write(obj, f, *args, **kwargs):  # f: a path or an open file
        if hasattr(f, "write"):
            f.write(b"PK\x03\x04 half a checkpoint")
        else:
            Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(OSError, match="No space left"):
        trainer.save()
    ckpts = run / "checkpoints"
    assert load_checkpoint(ckpts / "last.pt")["iter"] == 1  # the previous complete checkpoint
    assert not list(ckpts.glob(".*tmp*"))
    # a writer killed outright leaves its temp file; the next save removes it
    (ckpts / ".last.pt.tmp999999").write_bytes(b"PK\x03\x04 cut")
    (ckpts / ".prev.pt.tmp999999").write_bytes(b"PK\x03\x04 cut")
    monkeypatch.setattr(torch, "save", real_save)
    trainer.save()
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.pt", "prev.pt"]
    assert load_checkpoint(ckpts / "last.pt")["iter"] == 2
    assert load_checkpoint(ckpts / "prev.pt")["iter"] == 1

    # last.pt cut short (full disk): resume falls back to prev.pt, with a warning
    data = (ckpts / "last.pt").read_bytes()
    (ckpts / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.warns(RuntimeWarning, match=r"last.pt is unreadable.*resuming from .*prev.pt"):
        resumed = Trainer.resume(run, progress=False)
    assert resumed.iter == 1
    # both unreadable: one line naming both files
    (ckpts / "prev.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"last.pt is unreadable.*prev.pt is unreadable"):
        Trainer.resume(run)


def _nan_at(iteration: int, *, mix_only: bool = False):
    """A pixel_contrastive_loss that returns NaN at ``iteration`` (mixed batch only: weights)."""
    real = cluda_module.pixel_contrastive_loss
    state = {"trainer": None}

    def loss(features, labels, weights=None, **kwargs):
        out = real(features, labels, weights, **kwargs)
        if state["trainer"].iter == iteration and (weights is not None or not mix_only):
            return out * float("nan")
        return out

    return loss, state


def test_nonfinite_loss_stops_naming_term_and_iteration(tmp_path, monkeypatch, capsys):
    loss, state = _nan_at(1)
    monkeypatch.setattr(cluda_module, "pixel_contrastive_loss", loss)
    real_init = Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        state["trainer"] = self

    monkeypatch.setattr(Trainer, "__init__", init)
    run = tmp_path / "run"
    assert cli_main(["train", "miniscapes_tiny", "--out", str(run), "--set",
                     "train.max_iters=3", *[x for s in FAST for x in ("--set", s)]]) == 1
    line = _one_error_line(capsys)
    assert re.search(r"non-finite loss .*cl_src(=nan)? at iteration 1\b", line), line
    assert "train.skip_nonfinite" in line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iter"] == 1  # intact
    with pytest.raises(NonFiniteLossError, match=r"cl_src(=nan)? at iteration 1\b"):
        Trainer.resume(run, progress=False).fit()


def test_skip_nonfinite_skips_the_step(monkeypatch):
    loss, state = _nan_at(1, mix_only=True)
    monkeypatch.setattr(cluda_module, "pixel_contrastive_loss", loss)
    trainer = Trainer(load_config("miniscapes_tiny", ["train.skip_nonfinite=true"]),
                      progress=False)
    state["trainer"] = trainer
    trainer.step()
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    adam = {k: v["exp_avg"].clone() for k, v in enumerate(trainer.optimizer.state.values())}
    res = trainer.step()  # iteration 1: the mixed loss is NaN after the source backward
    assert res.iter == trainer.iter == 2 and "loss" not in res.values
    for k, v in trainer.student.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in enumerate(trainer.optimizer.state.values()):
        assert torch.equal(v["exp_avg"], adam[k])
    skipped = [r for r in trainer.history if "skipped" in r]
    assert len(skipped) == 1 and skipped[0]["iter"] == 1
    assert "cl_mix at iteration 1" in skipped[0]["skipped"]
    trainer.step()  # the next step trains again
    assert any(not torch.equal(v, before[k]) for k, v in trainer.student.state_dict().items())


# ---------------------------------------------------------------------------- bad input
@pytest.fixture
def gta(tmp_path):
    root = tmp_path / "gta"
    make_gta_tree(root, n=4)
    assert prepare("gta", root, progress=False).ok
    return root


def _gta_sets(root: Path, *extra: str) -> list[str]:
    sets = ["data.source.name=gta", f"data.source.root={root}", "data.crop_size=[32, 64]",
            "data.target.size=[32, 64]", "data.val.size=[32, 64]", "data.val.length=1",
            "loss.contrastive.grid=[8, 16]", "train.max_iters=2", *FAST, *extra]
    return [x for s in sets for x in ("--set", s)]


def test_corrupt_image_mid_run_is_one_line_and_keeps_the_checkpoint(gta, tmp_path, capsys):
    run = tmp_path / "run"
    sets = _gta_sets(gta, "data.rcs.enabled=false")
    assert cli_main(["train", "miniscapes_tiny", "--out", str(run), *sets]) == 0
    before = _snapshot(run)
    data = (gta / "images" / "00002.png").read_bytes()
    (gta / "images" / "00002.png").write_bytes(data[: len(data) // 2])  # truncated
    assert cli_main(["train", "--resume", str(run), "--set", "train.max_iters=6"]) == 2
    line = _one_error_line(capsys)
    assert f"{gta / 'images' / '00002.png'}: not a readable image" in line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iter"] in (2, 3, 4, 5)
    after = _snapshot(run)
    assert after["checkpoints/prev.pt"] and after["summary.json"] == before["summary.json"]
    lines = after["metrics.jsonl"].decode().splitlines()
    assert lines[: len(before["metrics.jsonl"].decode().splitlines())] == \
        before["metrics.jsonl"].decode().splitlines()


def test_label_outside_the_table_and_size_mismatch(gta, tmp_path, capsys):
    label = gta / "labels" / "00002_labelTrainIds.png"
    Image.new("L", (64, 32), 40).save(label)
    sets = _gta_sets(gta, "data.rcs.enabled=false")
    assert cli_main(["train", "miniscapes_tiny", "--out", str(tmp_path / "a"), *sets]) == 2
    line = _one_error_line(capsys)
    assert str(label) in line and "[40]" in line and "trainIds 0..18 and 255" in line
    assert "prepare_gta.py" in line
    Image.new("L", (10, 10), 1).save(label)
    assert cli_main(["train", "miniscapes_tiny", "--out", str(tmp_path / "b"), *sets]) == 2
    line = _one_error_line(capsys)
    assert "(10, 10)" in line and "00002.png is (32, 64)" in line


def test_empty_dataset_folder(tmp_path, capsys):
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    assert cli_main(["train", "miniscapes_tiny", "--out", str(tmp_path / "r"),
                     *_gta_sets(root)]) == 2
    line = _one_error_line(capsys)
    assert "data.source" in line and f"no images found in {root / 'images'}" in line
    assert not (tmp_path / "r").exists()


def test_missing_or_stale_rare_class_statistics(gta, tmp_path, capsys):
    stats = gta / "sample_class_stats.json"
    entries = json.loads(stats.read_text())
    stats.write_text(json.dumps(entries[:3]))
    cfg = load_config("miniscapes_tiny", _gta_sets(gta)[1::2])
    with pytest.raises(DatasetError, match=r"data.rcs.enabled=true .*stale class statistics"):
        Trainer(cfg)
    assert cli_main(["train", "miniscapes_tiny", "--out", str(tmp_path / "r"),
                     *_gta_sets(gta)]) == 2
    line = _one_error_line(capsys)
    assert str(stats) in line and "lists 3 files but the dataset has 4" in line
    stats.unlink()
    assert cli_main(["train", "miniscapes_tiny", "--out", str(tmp_path / "r"),
                     *_gta_sets(gta)]) == 2
    line = _one_error_line(capsys)
    assert f"class statistics {stats} not found" in line and "prepare_gta.py" in line
    assert not (tmp_path / "r").exists()


def test_config_mistakes_on_the_command_line(tmp_path, capsys):
    assert cli_main(["train", "miniscapes_tiny", "--set", "train.max_iters=many"]) == 2
    line = _one_error_line(capsys)
    assert "train.max_iters" in line and "expected an integer" in line and "'many'" in line
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: miniscapes_tiny\ndata:\n  sorce: {domain: game}\n")
    assert cli_main(["train", str(bad), "--out", str(tmp_path / "r")]) == 2
    line = _one_error_line(capsys)
    assert str(bad) in line and "'sorce'" in line and "expected one of" in line


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished one-iteration runs: the tiny preset and one with another model width."""
    root = tmp_path_factory.mktemp("runs")
    sets = ["train.max_iters=1", *FAST]
    Trainer(load_config("miniscapes_tiny", sets), root / "a", progress=False).fit()
    Trainer(load_config("miniscapes_tiny", sets + ["model.fused_dim=16"]), root / "b",
            progress=False).fit()
    return root / "a", root / "b"


def test_checkpoint_of_another_model_is_one_line(two_runs, tmp_path, capsys):
    run = tmp_path / "a"
    shutil.copytree(two_runs[0], run)
    shutil.copy(two_runs[1] / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    before = _snapshot(run)
    for argv in (["evaluate", str(run)], ["train", "--resume", str(run)]):
        assert cli_main(argv) == 2
        line = _one_error_line(capsys)
        assert "last.pt" in line and "model.fused_dim (16 vs 32)" in line
    assert _snapshot(run) == before


def test_resume_or_reuse_with_a_different_config_changes_nothing(two_runs, tmp_path, capsys):
    run = tmp_path / "a"
    shutil.copytree(two_runs[0], run)
    before = _snapshot(run)
    assert cli_main(["train", "--resume", str(run), "--set", "model.fused_dim=16"]) == 2
    assert "model.fused_dim (32 vs 16)" in _one_error_line(capsys)
    assert cli_main(["train", "miniscapes_tiny", "--set", "train.seed=5", "--out", str(run)]) == 2
    assert "holds another run" in _one_error_line(capsys)
    assert cli_main(["evaluate", str(run)]) == 0  # evaluation writes nothing into the run
    capsys.readouterr()
    assert _snapshot(run) == before


# -------------------------------------------------------------------------- determinism
def test_deterministic_runs_repeat_and_seeds_differ(tmp_path):
    sets = ["train.max_iters=3", "train.eval_every=3", "train.checkpoint_every=0",
            "train.log_every=1", "train.deterministic=true"]
    try:
        texts = []
        for name, seed in (("a", 0), ("b", 0), ("c", 1)):
            cfg = load_config("miniscapes_tiny", sets + [f"train.seed={seed}"])
            Trainer(cfg, tmp_path / name, progress=False).fit()
            assert torch.are_deterministic_algorithms_enabled()
            texts.append((tmp_path / name / "metrics.jsonl").read_text())
    finally:
        set_deterministic(False)
    records = [json.loads(line) for line in texts[0].splitlines()]
    assert len([r for r in records if "loss" in r]) == 3 and "miou" in records[-1]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


# ----------------------------------------------------------------------- model selection
def test_save_best_keeps_the_best_evaluation_beside_the_final(tmp_path):
    run = tmp_path / "run"
    sets = ["train.max_iters=6", "train.eval_every=2", "train.checkpoint_every=0",
            "train.log_every=1", "train.threads=1", "train.save_best=miou"]
    summary = Trainer(load_config("miniscapes_tiny", sets), run, progress=False).fit()
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if "miou" in r]
    assert [r["iter"] for r in evals] == [2, 4, 6]
    best = max(evals, key=lambda r: r["miou"])  # the first of equal ones: only improvements count
    assert load_checkpoint(run / "checkpoints" / "best.pt")["iter"] == best["iter"]
    assert json.loads((run / "summary.json").read_text()) == summary
    assert (summary["best_iter"], summary["best_miou"]) == (best["iter"], best["miou"])
    assert summary["miou"] == evals[-1]["miou"]  # the final model is still the one reported
    selected = Trainer.resume(run / "checkpoints" / "best.pt", read_only=True, progress=False)
    assert 100.0 * selected.evaluate(progress=False)["miou"] == pytest.approx(best["miou"], abs=1e-9)

    off = tmp_path / "off"  # the default: no selection
    summary = Trainer(load_config("miniscapes_tiny", ["train.max_iters=0"]), off, progress=False).fit()
    assert "best_miou" not in summary and not (off / "checkpoints" / "best.pt").exists()
    with pytest.raises(ConfigError, match=r'train.save_best: expected one of "", miou, got \'loss\''):
        load_config("miniscapes_tiny", ["train.save_best=loss"])
