"""The notebooks' first-cell helper: profile choice, threads from the machine, seeds, runs found."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluda_kit.notebook import (NOTEBOOK_RUNS, RUNS_ENV, choose_threads, read_metrics, repo_root, setup,
                                stand_in_config)


def test_importing_the_helper_does_not_load_torch():
    code = "import sys; import cluda_kit.notebook; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_threads_follow_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert choose_threads() == 3
    assert choose_threads(limit=2) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert choose_threads() == 1


def test_setup_profile_seeds_and_runs(tmp_path, monkeypatch, capsys):
    import numpy as np
    import torch

    monkeypatch.setenv("CLUDA_PROFILE", "demo")
    (tmp_path / "cluda").mkdir()
    (tmp_path / "cluda" / "summary.json").write_text(json.dumps({"miou": 1.0}))
    (tmp_path / "daformer").mkdir()  # no summary: not a finished run
    threads = torch.get_num_threads()
    try:
        nb = setup(runs_dir=tmp_path, seed=3, threads=1)
        a = (torch.rand(2), np.random.rand())
        setup(runs_dir=tmp_path, seed=3, threads=1, verbose=False)
        b = (torch.rand(2), np.random.rand())
    finally:
        torch.set_num_threads(threads)
    assert nb.profile == "demo" and nb.threads == 1
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert nb.run("cluda") == tmp_path / "cluda"
    assert nb.run("daformer") is None and nb.run("source_only") is None
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("profile: demo | threads: 1") and "cluda=" in first
    assert set(NOTEBOOK_RUNS) == {"source_only", "daformer", "cluda", "hrda_cluda", "pipa", "sepico"}


@pytest.fixture
def keep_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_runs_folder_from_the_environment(tmp_path, monkeypatch, capsys, keep_threads):
    (tmp_path / "source_only").mkdir()
    (tmp_path / "source_only" / "summary.json").write_text(json.dumps({"iter": 400, "preset": "miniscapes_source_only"}))
    monkeypatch.setenv(RUNS_ENV, str(tmp_path))
    nb = setup("tiny", threads=1)
    assert nb.runs_dir == tmp_path and nb.run("source_only") == tmp_path / "source_only"
    assert "source_only=" in capsys.readouterr().out
    monkeypatch.setenv(RUNS_ENV, "runs/elsewhere")  # relative: from the repository root
    nb = setup("tiny", threads=1)
    assert nb.runs_dir == repo_root() / "runs" / "elsewhere" and nb.runs == {}
    assert "trained runs: none in runs/elsewhere" in capsys.readouterr().out


def test_run_or_train_reads_a_run_and_trains_a_missing_one(tmp_path, capsys, keep_threads):
    (tmp_path / "cluda").mkdir()
    (tmp_path / "cluda" / "summary.json").write_text(json.dumps({"iter": 400, "preset": "miniscapes_cluda"}))
    nb = setup("tiny", runs_dir=tmp_path, threads=1, verbose=False)
    calls = []

    def train(out):
        calls.append(out)
        (out / "metrics.jsonl").write_text('{"iter": 1, "q": 0.0}\n{"iter": 2, "q": 0.5}\n{"iter": 3, "q"')
        return "2 iterations of a fake"

    assert nb.run_or_train("cluda", train) == tmp_path / "cluda" and not calls
    out = nb.run_or_train("daformer", train)
    assert calls == [out] and out.is_dir() and not out.is_relative_to(tmp_path)
    assert [r["q"] for r in read_metrics(out)] == [0.0, 0.5]  # the cut last line is skipped
    assert set(nb.trained_here) == {"daformer"} and nb.trained_here["daformer"] >= 0
    assert nb.origins == {"cluda": str(tmp_path / "cluda"), "daformer": "trained here: 2 iterations of a fake"}
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"cluda: read {tmp_path / 'cluda'} (miniscapes_cluda, iteration 400)"
    assert lines[1].startswith(f"daformer: no run at {tmp_path / 'daformer'}, trained here: 2 iterations of a fake in ")
    del nb  # the temporary run folder goes with the Setup
    import gc

    gc.collect()
    assert not out.exists()


@pytest.mark.parametrize("name", [n for n in NOTEBOOK_RUNS if n != "hrda_cluda"])
def test_a_tiny_stand_in_is_the_method_of_its_preset(name):
    from cluda_kit.config import load_config

    tiny, preset = stand_in_config(name, "tiny", 7), load_config(f"miniscapes_{name}")
    assert tiny.name == "miniscapes_tiny" and tiny.train.max_iters == 7
    assert tiny.uda.mode == preset.uda.mode and tiny.uda.method == preset.uda.method
    assert set(tiny.uda.method_args) == set(preset.uda.method_args)
    assert (tiny.data.rcs.enabled, tiny.uda.fd.enabled, tiny.loss.contrastive.enabled) == (
        preset.data.rcs.enabled, preset.uda.fd.enabled, preset.loss.contrastive.enabled)
    demo = stand_in_config(name, "demo", 200)
    assert demo.name == f"miniscapes_{name}" and demo.train.max_iters == 200 and demo.model == preset.model
    with pytest.raises(ValueError, match="expected one of source_only"):
        stand_in_config("hrda", "tiny", 1)


def test_unknown_profile_is_named(monkeypatch):
    monkeypatch.setenv("CLUDA_PROFILE", "huge")
    with pytest.raises(ValueError, match="CLUDA_PROFILE='huge'"):
        setup(verbose=False)


def test_repo_root_from_a_subfolder():
    root = repo_root()
    assert repo_root(root / "notebooks") == root


def test_make_notebook_runs_trains_every_notebook_run():
    """`make notebook-runs` trains exactly the runs setup() looks for, each from its own preset."""
    import re

    from cluda_kit.config import load_config

    makefile = (repo_root(Path(__file__).parent) / "Makefile").read_text()
    loop = re.search(r"notebook-runs:.*?for m in ([^;]+);", makefile, re.S)
    assert loop is not None, "Makefile: no `for m in ...;` loop in notebook-runs"
    assert tuple(loop.group(1).split()) == NOTEBOOK_RUNS
    for name in NOTEBOOK_RUNS:
        assert load_config(f"miniscapes_{name}").name == f"miniscapes_{name}"


def test_a_student_gets_the_demo_profile_and_the_tests_ask_for_tiny(monkeypatch, keep_threads):
    """Without CLUDA_PROFILE a notebook runs the demo profile (what the stored outputs show); nbval
    runs the notebooks in tiny because notebooks/conftest.py sets it for the kernels it starts."""
    from cluda_kit.notebook import DEFAULT_PROFILE

    monkeypatch.delenv("CLUDA_PROFILE", raising=False)
    assert DEFAULT_PROFILE == "demo" and setup(threads=1, verbose=False).profile == "demo"
    conftest = repo_root(Path(__file__).parent) / "notebooks" / "conftest.py"
    code = (f"import os, runpy; os.environ.pop('CLUDA_PROFILE', None); runpy.run_path({str(conftest)!r}); "
            "print(os.environ['CLUDA_PROFILE'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "tiny"


def test_make_lab_trains_the_missing_runs_then_opens_jupyterlab_in_demo():
    import re

    makefile = (repo_root(Path(__file__).parent) / "Makefile").read_text()
    lab = re.search(r"^lab:.*?(?=^\S|\Z)", makefile, re.S | re.M)
    assert lab is not None, "Makefile: no lab target"
    recipe = lab.group(0)
    assert "NOTEBOOK_RUNS" in recipe and "notebook-runs" in recipe and "jupyter lab notebooks/" in recipe
    assert "CLUDA_PROFILE:-demo" in recipe
    assert re.search(r"^\.PHONY:.*\blab\b", makefile, re.M)
