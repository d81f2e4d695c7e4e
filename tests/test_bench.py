"""The benchmark suite runs end to end on tiny sizes and writes its JSON and markdown; the step
helpers compare loss trajectories and aggregate the trainer's phase ranges."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.step import compare_losses

REPO = Path(__file__).resolve().parent.parent


def test_compare_losses_flags_only_real_differences():
    old = [{"ce": 1.0, "cl": 2.0, "lr": 1e-3}, {"ce": 0.5, "cl": 1.5, "lr": 2e-3}]
    same = [{"ce": 1.0 + 5e-6, "cl": 2.0, "lr": 9.0}, {"ce": 0.5, "cl": 1.5 - 1e-5, "lr": 0.0}]
    assert compare_losses(old, same, rtol=1e-4) == []  # lr is not a loss; 5e-6 relative passes
    moved = [{"ce": 1.0, "cl": 2.001, "lr": 1e-3}, {"ce": 0.5, "lr": 2e-3}]
    problems = compare_losses(old, moved, rtol=1e-4)
    assert any("cl 2 -> 2.001" in p for p in problems)
    assert any("'cl' missing" in p for p in problems)
    assert compare_losses(old, old[:1]) == ["2 vs 1 steps"]


def test_index_collects_every_section_in_suite_order(tmp_path):
    """bench.md holds the latest table of every section in OUT, not only those of the last run."""
    from bench.__main__ import write_index

    (tmp_path / "analysis.md").write_text("## analysis\n\nA\n")
    (tmp_path / "step.md").write_text("## step\n\nS\n")
    (tmp_path / "notes.md").write_text("## not a section\n")
    write_index(tmp_path)
    md = (tmp_path / "bench.md").read_text()
    assert md.index("## step") < md.index("## analysis") and "not a section" not in md


@pytest.mark.slow
def test_quick_suite_writes_json_and_markdown(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    md = (tmp_path / "bench.md").read_text()
    for section in ("step", "contrastive", "data", "evaluation", "analysis"):
        record = json.loads((tmp_path / f"{section}.json").read_text())
        assert record["section"] == section and record["quick"] is True
        assert record["command"].startswith("python -m bench --quick")
        own = (tmp_path / f"{section}.md").read_text()
        assert own.startswith(f"## {section}\n") and own in md
    # --render rebuilds each section's markdown from its JSON alone, byte for byte
    written = {p.name: p.read_text() for p in tmp_path.glob("*.md")}
    for p in tmp_path.glob("*.md"):
        p.unlink()
    out = subprocess.run([sys.executable, "-m", "bench", "--render", "--out", str(tmp_path)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert {p.name: p.read_text() for p in tmp_path.glob("*.md")} == written
    step = json.loads((tmp_path / "step.json").read_text())["result"]["rows"]
    cluda = next(r for r in step if r["preset"] == "miniscapes_cluda")
    # the trainer's record_function ranges were found: every phase of a CLUDA step is there
    for phase in ("data", "ema", "student_source", "fd", "contrastive", "backward", "teacher",
                  "mix_augment", "student_mix", "optimizer"):
        assert cluda["phases_ms"][phase] > 0, phase
    source_only = next(r for r in step if r["preset"] == "miniscapes_source_only")
    assert "teacher" not in source_only["phases_ms"]
    assert "| miniscapes_cluda |" in md
    contrastive = json.loads((tmp_path / "contrastive.json").read_text())["result"]["rows"]
    assert [r["n"] for r in contrastive] == [500, 1000]
    analysis = json.loads((tmp_path / "analysis.json").read_text())["result"]
    assert all(r["seconds"] is not None and r["seconds"] > 0 for r in analysis["projection"])


def test_step_is_lazy_and_nonfinite_check_is_deferred(monkeypatch):
    """Trainer.step returns device tensors (floats only on demand) and, without skip_nonfinite,
    records a non-finite loss on the device; raise_if_nonfinite (called by fit on log steps)
    then names the term and the iteration."""
    import math

    import torch

    from cluda_kit.config import load_config
    from cluda_kit.engine import trainer as trainer_mod

    tr = trainer_mod.Trainer(load_config("miniscapes_tiny"), progress=False)
    res = tr.step()
    assert isinstance(res.tensors["loss"], torch.Tensor) and res.tensors["loss"].dim() == 0
    assert res.values["loss"] == pytest.approx(float(res.tensors["loss"]))
    parts = sum(res.values[k] for k in ("ce_src", "fd", "cl_src", "ce_mix", "cl_mix"))
    assert res.values["loss"] == pytest.approx(parts, rel=1e-6)
    tr.raise_if_nonfinite()  # all finite so far

    from cluda_kit.uda.methods import segmentation as seg_mod

    real_ce = seg_mod.cross_entropy

    def nan_ce(logits, labels, weights=None, **kw):
        out = real_ce(logits, labels, weights, **kw)
        return out * float("nan") if weights is not None else out  # the mixed CE only

    monkeypatch.setattr(seg_mod, "cross_entropy", nan_ce)
    res = tr.step()  # no exception inside the step: the check is deferred
    assert math.isnan(res.values["ce_mix"])
    with pytest.raises(trainer_mod.NonFiniteLossError, match=r"ce_mix=nan at iteration 1"):
        tr.raise_if_nonfinite()


def test_methods_table_means_and_curves():
    from bench.methods import table

    runs = [{"preset": "a", "seed": 0, "miou": 10.0, "wall_time_s": 5, "curve": [[5, 4.0], [10, 10.0]]},
            {"preset": "a", "seed": 1, "miou": 12.0, "wall_time_s": 7, "curve": [[5, 6.0], [10, 12.0]]},
            {"preset": "b", "seed": 0, "miou": 20.0, "wall_time_s": 9, "curve": [[10, 20.0]]}]
    md = table(runs, "python -m bench.methods")
    assert "| a | 2 | 11.0 ± 1.4 | 10.0, 12.0 | 6 |" in md
    assert "| b | 1 | 20.0 ± 0.0 | 20.0 | 9 |" in md
    assert "| a | 5.0 | 11.0 |" in md and "| b | – | 20.0 |" in md


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_rss_is_the_process_own_not_inherited_from_a_large_parent():
    """The bug this guards against: ru_maxrss in a subprocess reported the parent's peak (1.2 GB
    under ``python -m bench``), hiding every smaller peak of the contrastive benchmark."""
    from bench.memory import peak_rss_bytes, reset_peak_rss, rss_bytes

    big = bytearray(400 * 2**20)
    big[::4096] = b"\1" * len(big[::4096])  # touch every page: RSS >= 400 MB here
    code = "from bench.memory import peak_rss_bytes; print(peak_rss_bytes())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), check=True)
    assert int(out.stdout) < 150 * 2**20  # a bare interpreter, not this 400 MB process
    del big
    # the high-water mark follows allocations and resets to the current RSS
    reset_peak_rss()
    base = rss_bytes()
    block = bytearray(200 * 2**20)
    block[::4096] = b"\1" * len(block[::4096])
    grown = peak_rss_bytes() - base
    del block
    assert 190 * 2**20 < grown < 260 * 2**20
    assert reset_peak_rss() and peak_rss_bytes() - rss_bytes() < 50 * 2**20


def test_the_suite_is_python_m_bench_not_a_cluda_kit_command(tmp_path, capsys):
    """bench/ lives in the source checkout, not in the installed package: `python -m bench` runs
    it from there, and `cluda-kit` has no bench command reaching into it through sys.path."""
    from cluda_kit import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--only", "data"])
    assert exc.value.code == 2 and "invalid choice: 'bench'" in capsys.readouterr().err
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "data", "--quick", "--out", str(tmp_path / "out")],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "data.json").read_text())
    assert record["command"] == f"python -m bench --only data --quick --out {tmp_path / 'out'}"

def test_readme_paper_preset_table_is_what_bench_presets_prints():
    """README's paper-preset table is generated (python -m bench.presets), so it cannot drift from
    the presets or the measured GPU records."""
    from bench.presets import PAPER, table

    from cluda_kit.config import preset_names

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert table() in readme
    paper = {p for p in preset_names() if not p.startswith("miniscapes")}
    assert set(PAPER) == paper, "every paper preset has a row (PAPER in bench/presets.py)"


def test_step_worker_times_the_package_it_is_given_not_the_checkout(tmp_path):
    """``bench.step --baseline-src DIR`` must time DIR/cluda_kit: ``python -c`` puts the working
    directory (this checkout) first on sys.path, ahead of PYTHONPATH, which once made the "old"
    code of a same-run comparison the new code."""
    import shutil

    from bench.step import REPO, run_in_subprocess

    shutil.copytree(REPO / "cluda_kit", tmp_path / "cluda_kit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    marker = tmp_path / "cluda_kit" / "__init__.py"
    marker.write_text(marker.read_text() + "\nCOPY_MARKER = True\n")
    r = run_in_subprocess(tmp_path, {"OMP_WAIT_POLICY": "PASSIVE"}, ("train.overlap=false",),
                          loss_steps=1, time_steps=0, preset="miniscapes_tiny")
    assert Path(r["cluda_kit"]).resolve() == marker.resolve()
    assert len(r["losses"]) == 1
    here = run_in_subprocess(None, {"OMP_WAIT_POLICY": "PASSIVE"}, ("train.overlap=false",),
                             loss_steps=1, time_steps=0, preset="miniscapes_tiny")
    assert Path(here["cluda_kit"]).resolve() == (REPO / "cluda_kit" / "__init__.py").resolve()
    assert here["losses"] == r["losses"]  # the same code gives the same first step


def test_overlap_waits_times_every_task_kind_and_restores_submit():
    from bench.step import overlap_waits
    from cluda_kit.engine.overlap import Overlap

    submit = Overlap.submit
    res = overlap_waits("miniscapes_tiny", steps=2, warmup=1)
    assert Overlap.submit is submit
    waits = res["wait_ms_per_step"]
    # CLUDA's three kinds of task, each waited for once per step (0 when it had already ended)
    assert set(waits) == {"_frozen_features", "_teacher_pass", "_backward"}
    assert all(v >= 0 for v in waits.values())
    assert res["steps"] == 2 and res["mean_step_s"] > 0


def test_critical_path_profile_and_kernels_report_what_they_measure():
    import torch

    from bench.critical_path import kernels, profile

    res = profile(steps=1, warmup=1)
    phases = res["phase_ms_per_step"]
    assert {"step/backward", "step/student_source", "step/student_mix", "step/optimizer"} <= set(phases)
    assert 0 < res["main_thread_busy_ms_per_step"] <= res["wall_ms_per_step"] * 1.05
    threads = torch.get_num_threads()
    k = kernels()
    assert all(v > 0 for v in k.values()) and len(k) == 6
    assert torch.get_num_threads() == threads  # measured on one thread, the setting restored


def test_contrastive_diagnosis_floor_and_gradient_shares():
    from cluda_kit.analysis.contrastive import class_shares, loss_range, simplex_features

    labels = torch.tensor([[[0, 0, 1], [2, 255, 1]]])
    f = simplex_features(labels)
    u = torch.nn.functional.normalize(f.flatten(2)[0].T, dim=1)  # (pixels, K)
    cos = u @ u.T
    assert cos[0, 1].item() == pytest.approx(1.0)       # same class
    assert cos[0, 2].item() == pytest.approx(-0.5)      # K = 3 classes: -1/(K-1)
    assert not f[0, :, 1, 1].any()                       # ignore: a zero vector
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2, 6, 8), generator=g)
    features = torch.randn(2, 8, 6, 8, generator=g)
    for tau in (1.0, 0.1):
        r = loss_range(features, labels, tau, g)
        assert r["clustered"] < r["random"] and r["clustered"] < r["value"]
    # at tau = 1 the clustered floor lies close to a random embedding's value; at 0.1 far below
    assert loss_range(features, labels, 1.0, g)["clustered"] > 0.5 * loss_range(features, labels, 1.0, g)["random"]
    assert loss_range(features, labels, 0.1, g)["clustered"] < 0.05
    grad = torch.zeros(1, 2, 2, 2)
    grad[0, 0, 0, 0] = 3.0  # all the gradient on one pixel of class 1
    mass, pixels = class_shares(grad, torch.tensor([[[1, 0], [0, 255]]]), 3)
    assert mass == [0.0, 1.0, 0.0] and pixels == pytest.approx([2 / 3, 1 / 3, 0.0])
