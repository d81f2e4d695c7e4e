"""The notebooks' first-cell helper: profile choice, threads from the machine, seeds, runs found."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cluda_kit.notebook import NOTEBOOK_RUNS, choose_threads, repo_root, setup


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
    assert set(NOTEBOOK_RUNS) == {"source_only", "daformer", "cluda"}


def test_unknown_profile_is_named(monkeypatch):
    monkeypatch.setenv("CLUDA_PROFILE", "huge")
    with pytest.raises(ValueError, match="CLUDA_PROFILE='huge'"):
        setup(verbose=False)


def test_repo_root_from_a_subfolder():
    root = repo_root()
    assert repo_root(root / "notebooks") == root
