"""The first cell of every notebook: profile, threads, seeds, figure settings, and the trained runs.

    from cluda_kit.notebook import setup
    nb = setup()                      # prints: profile: demo | threads: 2 | runs: ...
    nb.profile                        # "tiny" | "demo" | "full" (CLUDA_PROFILE, default demo)
    nb.run("cluda")                   # runs/notebooks/cluda if it was trained (make notebook-runs), else None
    run = nb.run_or_train("cluda", train)  # that run, or train(out_dir) here into a temporary folder
    read_metrics(run)                 # its metrics.jsonl records

The runs are looked for in ``CLUDA_NOTEBOOK_RUNS`` if set, else ``<repo>/runs/notebooks``.

A student gets the ``demo`` profile by default (what the stored outputs show); the tests ask for
``tiny`` explicitly (``notebooks/conftest.py`` sets ``CLUDA_PROFILE=tiny`` for nbval).

Importing this module does not import torch, so ``setup()`` can still set ``OMP_WAIT_POLICY``
before torch loads its OpenMP runtime (spinning OpenMP threads slow a small shared CPU down many
times over).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PROFILES", "DEFAULT_PROFILE", "NOTEBOOK_RUNS", "RUNS_ENV", "STAND_IN_ITERS", "Setup", "setup", "choose_threads",
           "read_metrics", "repo_root", "stand_in_config", "train_stand_in"]

PROFILES = ("tiny", "demo", "full")
DEFAULT_PROFILE = "demo"
"""The profile without ``CLUDA_PROFILE``: the CPU demo over the trained runs (the stored outputs)."""
NOTEBOOK_RUNS = ("source_only", "daformer", "cluda", "hrda_cluda", "pipa", "sepico")
"""The runs ``make notebook-runs`` trains once (demo setting, seed 0) under ``runs/notebooks/``;
each is ``miniscapes_<name>``."""
RUNS_ENV = "CLUDA_NOTEBOOK_RUNS"
"""Environment variable naming another folder holding those runs (default ``<repo>/runs/notebooks``)."""
STAND_IN_ITERS = {"tiny": 40, "demo": 200, "full": 200}
"""Iterations of the short stand-in a notebook trains, per profile, when a run is missing."""
_TINY_SWITCHES = {  # miniscapes_tiny is CLUDA; these make it the method of miniscapes_<name>
    "source_only": ["uda.mode=source_only", "data.rcs.enabled=false", "uda.fd.enabled=false",
                    "loss.contrastive.enabled=false"],
    "daformer": ["loss.contrastive.enabled=false"],
    "cluda": [],
    # The variants' per-image pixel counts and start iteration scaled as their demo presets scale
    # them: the tiny 16x32 embedding holds 0.02 of the release's 160x160, the stand-in 40 of 40 000
    # iterations.
    "pipa": ["loss.contrastive.enabled=false", "uda.method=pipa", "uda.method_args.max_samples=20",
             "uda.method_args.max_views=2"],
    "sepico": ["loss.contrastive.enabled=false", "uda.method=sepico", "uda.method_args.variant=dist",
               "uda.method_args.start_iter=3"],
}


def repo_root(start: str | Path | None = None) -> Path:
    """The repository root: the first folder at or above ``start`` (default: the working
    directory) holding ``pyproject.toml`` and ``cluda_kit``; else, for a notebook opened outside
    the checkout, the checkout this package runs from (an editable install); else the working
    directory."""
    here = Path(start or Path.cwd()).resolve()
    package_repo = Path(__file__).resolve().parents[1]
    for p in (here, *here.parents, package_repo):
        if (p / "pyproject.toml").is_file() and (p / "cluda_kit").is_dir():
            return p
    return here


def choose_threads(limit: int = 4) -> int:
    """CPU threads for notebook work: the cores this process may use (its affinity mask, which
    respects container and taskset limits), at most ``limit`` (small ops stop scaling beyond)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, limit))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``RUN_DIR/metrics.jsonl`` in order (training records carry ``loss``, ``q``,
    ...; evaluations ``miou`` and ``iou``); a line cut short by a crash is skipped."""
    records = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def stand_in_config(name: str, profile: str, iters: int):
    """The config of a short stand-in for the run ``name`` (one of :data:`NOTEBOOK_RUNS`): in the
    ``tiny`` profile ``miniscapes_tiny`` switched to that method (and a 5-iteration lr warm-up),
    else the method's demo preset ``miniscapes_<name>``; ``iters`` iterations, evaluated and saved
    once at the end, no figures."""
    from cluda_kit.config import load_config

    if name not in _TINY_SWITCHES:  # hrda_cluda has none: notebook 07 shows an untrained model instead
        raise ValueError(f"stand-in {name!r}: expected one of {', '.join(_TINY_SWITCHES)}")
    preset = "miniscapes_tiny" if profile == "tiny" else f"miniscapes_{name}"
    extra = [*_TINY_SWITCHES[name], "optim.warmup_iters=5"] if profile == "tiny" else []
    return load_config(preset, [f"train.max_iters={iters}", "train.eval_every=0", "train.checkpoint_every=0",
                                "train.figure_every=0", *extra])


def train_stand_in(name: str, profile: str, iters: int, out_dir: str | Path) -> str:
    """Train :func:`stand_in_config` into ``out_dir`` (a run directory); returns what it trained,
    e.g. "40 iterations of miniscapes_tiny as source_only"."""
    from cluda_kit.engine.trainer import Trainer

    cfg = stand_in_config(name, profile, iters)
    Trainer(cfg, out_dir, progress=False).fit()
    return f"{iters} iterations of {cfg.name}" + (f" as {name}" if cfg.name == "miniscapes_tiny" else "")


@dataclass
class Setup:
    """What :func:`setup` chose."""

    profile: str
    threads: int
    seed: int
    root: Path
    runs: dict[str, Path] = field(default_factory=dict)
    runs_dir: Path | None = None
    trained_here: dict[str, float] = field(default_factory=dict)
    """Seconds spent by :meth:`run_or_train` training each missing run in this notebook."""
    origins: dict[str, str] = field(default_factory=dict)
    """Where each run of :meth:`run_or_train` came from, for figure titles: its folder
    (``runs/notebooks/cluda``) or ``trained here: <description>``."""
    _scratch: list = field(default_factory=list, repr=False)

    def run(self, name: str) -> Path | None:
        """The trained run ``name`` (e.g. "cluda") if its directory has a summary, else None."""
        return self.runs.get(name)

    def short(self, path: str | Path) -> str:
        """``path`` relative to the repository root where it lies inside it (for printing)."""
        path = Path(path)
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def run_or_train(self, name: str, train: Callable[[Path], str] | None = None, *,
                     iters: dict[str, int] | None = None) -> Path:
        """The trained run ``name`` if :meth:`run` finds it; else ``train(out_dir)`` trains a
        stand-in here, into a temporary folder kept while this object lives, and returns a short
        description. The default ``train`` is :func:`train_stand_in` of the same method for
        ``iters[profile]`` iterations (default :data:`STAND_IN_ITERS`). Prints one line saying which:
        ``cluda: read runs/notebooks/cluda (miniscapes_cluda, iteration 750)`` or
        ``cluda: no run at runs/notebooks/cluda, trained here: 40 iterations of miniscapes_tiny as
        cluda in 16 s``."""
        found = self.run(name)
        if found is not None:
            summary = json.loads((found / "summary.json").read_text())
            preset = f"{summary['preset']}, " if summary.get("preset") else ""
            print(f"{name}: read {self.short(found)} ({preset}iteration {summary.get('iter')})")
            self.origins[name] = self.short(found)
            return found
        if train is None:
            n = (iters or STAND_IN_ITERS)[self.profile]

            def train(out: Path) -> str:
                return train_stand_in(name, self.profile, n, out)
        scratch = tempfile.TemporaryDirectory(prefix=f"cluda_nb_{name}_")
        self._scratch.append(scratch)
        out = Path(scratch.name)
        start = time.perf_counter()
        what = train(out)
        self.trained_here[name] = time.perf_counter() - start
        self.origins[name] = f"trained here: {what}"
        missing = self.short(self.runs_dir / name) if self.runs_dir is not None else name
        print(f"{name}: no run at {missing}, trained here: {what} in {self.trained_here[name]:.0f} s")
        return out

    def describe(self) -> str:
        found = ", ".join(f"{k}={self.short(v)}" for k, v in self.runs.items())
        if not found:
            found = f"none in {self.short(self.runs_dir)}" if self.runs_dir is not None else "none"
        return (f"profile: {self.profile} | threads: {self.threads} | seed: {self.seed} | "
                f"trained runs: {found}")


def setup(profile: str | None = None, *, seed: int = 0, threads: int | None = None, dpi: int = 100,
          runs_dir: str | Path | None = None, verbose: bool = True) -> Setup:
    """Prepare a notebook: choose the profile, threads, seeds and figure settings; find the runs.

    Args:
        profile: "tiny" (seconds on a CPU, what the tests run), "demo" (the CPU demo setting,
            trained runs), "full" (paper presets on a GPU with prepared data); default the
            ``CLUDA_PROFILE`` environment variable, else :data:`DEFAULT_PROFILE` ("demo").
        seed: seeds Python's ``random``, NumPy's global generator and torch.
        threads: torch CPU threads; default :func:`choose_threads`.
        dpi: matplotlib figure resolution (inline PNGs).
        runs_dir: where ``make notebook-runs`` wrote its runs; default the ``CLUDA_NOTEBOOK_RUNS``
            environment variable, else ``<repo>/runs/notebooks``; a relative path is taken from
            the repository root (notebooks run in ``notebooks/``).
        verbose: print :meth:`Setup.describe` (the notebook's first output).

    Raises:
        ValueError: an unknown profile, naming it and the choices.
    """
    profile = profile or os.environ.get("CLUDA_PROFILE") or DEFAULT_PROFILE
    if profile not in PROFILES:
        raise ValueError(f"CLUDA_PROFILE={profile!r}: expected one of {', '.join(PROFILES)}")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import random

    import matplotlib
    import numpy as np
    import torch

    threads = threads or choose_threads()
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    matplotlib.rcParams["figure.dpi"] = dpi
    matplotlib.rcParams["savefig.dpi"] = dpi
    root = repo_root()
    base = Path(runs_dir if runs_dir is not None else os.environ.get(RUNS_ENV) or root / "runs" / "notebooks")
    base = base if base.is_absolute() else root / base
    found = {name: base / name for name in NOTEBOOK_RUNS if (base / name / "summary.json").is_file()}
    out = Setup(profile=profile, threads=threads, seed=seed, root=root, runs=found, runs_dir=base)
    if verbose:
        print(out.describe())
    return out
