"""Multi-process resume: a 2-process torchrun job (CPU, gloo) killed by SIGKILL after a checkpoint
and resumed under torchrun equals the uninterrupted job bit for bit (student, teacher, optimiser,
the method's own state, every rank's random and data streams, the logged losses); a resume on
another number of processes is refused unless ``train.allow_world_size_change``."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cluda_kit.cli import main as cli_main
from cluda_kit.engine.trainer import load_checkpoint
from test_distributed import _free_port
from test_reliability import _one_error_line, _snapshot

ITERS = 4
# PiPa: a method with its own trained state (projection head), checkpointed under "method"
SETS = [f"train.max_iters={ITERS}", "train.eval_every=0", "train.log_every=1",
        "train.checkpoint_every=1", "train.threads=1", "uda.method=pipa",
        "uda.method_args={max_samples: 40, max_views: 4}"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "cluda_kit", "train",
            *args]


def _run(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (torchrun starts each worker in a session of its own, so a
    signal to the launcher's process group does not reach them)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def _alive(pid: int) -> bool:
    """Running (not exited, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _assert_equal(a, b, where: str = "checkpoint") -> None:
    """Bit-identical nested checkpoint content (tensors by torch.equal, the rest by ==)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def killed_and_straight(tmp_path_factory):
    """The job killed (all its processes) after a checkpoint and resumed under torchrun, and the
    same job uninterrupted."""
    root = tmp_path_factory.mktemp("ddp_resume")
    killed, straight = root / "killed", root / "straight"
    args = [x for s in SETS for x in ("--set", s)]
    proc = subprocess.Popen(_torchrun("miniscapes_tiny", "--out", str(killed), *args),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    ckpt = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    # the workers and then the launcher, as the loss of the node would stop them
    workers = _descendants(proc.pid)
    for pid in [*workers, proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # finished already: the assertions below say so
            pass
    assert proc.wait(timeout=30) == -signal.SIGKILL
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline + 30:
        time.sleep(0.01)
    at_kill = load_checkpoint(ckpt)["iter"]
    assert 1 <= at_kill < ITERS, "the job was not killed mid-run with a complete checkpoint"
    _run(_torchrun("--resume", str(killed)))
    _run(_torchrun("miniscapes_tiny", "--out", str(straight), *args))
    return killed, straight, at_kill


def test_sigkill_then_torchrun_resume_equals_an_uninterrupted_job(killed_and_straight):
    killed, straight, at_kill = killed_and_straight
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (killed, straight))
    assert a["iter"] == ITERS and a["world_size"] == 2 and len(a["rng_per_rank"]) == 2
    assert a["method"]  # the method's own state (PiPa's projection head) is part of it
    _assert_equal(a, b)  # student, teacher, optimiser, method, rng per rank, data streams, ...
    records = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
               for run in (killed, straight)]
    assert [r["iter"] for r in records[0] if "loss" in r] == list(range(1, ITERS + 1))
    assert records[0] == records[1]  # the losses after the resume are the uninterrupted ones
    for run in (killed, straight):
        assert json.loads((run / "summary.json").read_text())["world_size"] == 2
        assert json.loads((run / "meta.json").read_text())["world_size"] == 2


def test_resume_on_another_number_of_processes_is_refused_unless_allowed(
        killed_and_straight, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(killed_and_straight[1], run)
    before = _snapshot(run)
    assert cli_main(["train", "--resume", str(run), "--set", f"train.max_iters={ITERS + 1}"]) == 2
    line = _one_error_line(capsys)
    assert str(run / "checkpoints" / "last.pt") in line
    assert "saved by 2 process(es), resumed by 1" in line
    assert "train.allow_world_size_change=true" in line
    assert _snapshot(run) == before  # refused before anything was written
    with pytest.warns(RuntimeWarning, match="saved by 2 process.*resumed by 1"):
        assert cli_main(["train", "--resume", str(run), "--set", f"train.max_iters={ITERS + 1}",
                         "--set", "train.allow_world_size_change=true"]) == 0
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["iter"] == ITERS + 1 and ckpt["world_size"] == 1
    assert json.loads((run / "summary.json").read_text())["world_size"] == 1
