"""The first cell of every notebook: profile, threads, seeds, figure settings, and the trained runs.

    from cluda_kit.notebook import setup
    nb = setup()                      # prints: profile: demo | threads: 2 | runs: ...
    nb.profile                        # "tiny" | "demo" | "full" (CLUDA_PROFILE, default tiny)
    nb.run("cluda")                   # runs/notebooks/cluda if it was trained (make notebook-runs), else None

Importing this module does not import torch, so ``setup()`` can still set ``OMP_WAIT_POLICY``
before torch loads its OpenMP runtime (spinning OpenMP threads slow a small shared CPU down many
times over).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PROFILES", "NOTEBOOK_RUNS", "Setup", "setup", "choose_threads", "repo_root"]

PROFILES = ("tiny", "demo", "full")
NOTEBOOK_RUNS = ("source_only", "daformer", "cluda")
"""The runs ``make notebook-runs`` trains once (demo setting, seed 0) under ``runs/notebooks/``."""


def repo_root(start: str | Path | None = None) -> Path:
    """The repository root: the first folder at or above ``start`` (default: the working
    directory) holding ``pyproject.toml``; the working directory if there is none."""
    here = Path(start or Path.cwd()).resolve()
    for p in (here, *here.parents):
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


@dataclass
class Setup:
    """What :func:`setup` chose."""

    profile: str
    threads: int
    seed: int
    root: Path
    runs: dict[str, Path] = field(default_factory=dict)

    def run(self, name: str) -> Path | None:
        """The trained run ``name`` (e.g. "cluda") if its directory has a summary, else None."""
        return self.runs.get(name)

    def describe(self) -> str:
        def short(p: Path) -> str:
            return str(p.relative_to(self.root)) if p.is_relative_to(self.root) else str(p)

        found = ", ".join(f"{k}={short(v)}" for k, v in self.runs.items()) or "none"
        return (f"profile: {self.profile} | threads: {self.threads} | seed: {self.seed} | "
                f"trained runs: {found}")


def setup(profile: str | None = None, *, seed: int = 0, threads: int | None = None, dpi: int = 100,
          runs_dir: str | Path | None = None, verbose: bool = True) -> Setup:
    """Prepare a notebook: choose the profile, threads, seeds and figure settings; find the runs.

    Args:
        profile: "tiny" (seconds on a CPU, what the tests run), "demo" (the CPU demo setting,
            trained runs), "full" (paper presets on a GPU with prepared data); default the
            ``CLUDA_PROFILE`` environment variable, else "tiny".
        seed: seeds Python's ``random``, NumPy's global generator and torch.
        threads: torch CPU threads; default :func:`choose_threads`.
        dpi: matplotlib figure resolution (inline PNGs).
        runs_dir: where ``make notebook-runs`` wrote its runs; default ``<repo>/runs/notebooks``.
        verbose: print :meth:`Setup.describe` (the notebook's first output).

    Raises:
        ValueError: an unknown profile, naming it and the choices.
    """
    profile = profile or os.environ.get("CLUDA_PROFILE", "tiny")
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
    base = Path(runs_dir) if runs_dir is not None else root / "runs" / "notebooks"
    found = {name: base / name for name in NOTEBOOK_RUNS if (base / name / "summary.json").is_file()}
    out = Setup(profile=profile, threads=threads, seed=seed, root=root, runs=found)
    if verbose:
        print(out.describe())
    return out
