"""Regenerate every notebook ``NN_name.ipynb`` from its jupytext source ``NN_name.py`` and execute it.

    python notebooks/build.py                 # all notebooks, profile from CLUDA_PROFILE (default tiny)
    python notebooks/build.py 04 06           # only the notebooks whose name starts with 04 or 06

The ``.py`` files (percent format) are the reviewable sources; the ``.ipynb`` files are generated
with their outputs stored (kernel ``python3`` of the running interpreter, working directory
``notebooks/``). ``make notebooks`` runs this script.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import jupytext
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def sources(prefixes: list[str]) -> list[Path]:
    """The notebook sources ``NN_*.py`` (sorted), filtered by name prefixes."""
    files = sorted(p for p in HERE.glob("[0-9][0-9]_*.py"))
    if prefixes:
        files = [p for p in files if any(p.stem.startswith(x) for x in prefixes)]
    return files


def build(src: Path, timeout: int = 1200) -> float:
    """Convert ``src`` to a notebook, execute it in ``notebooks/`` and write ``src.ipynb``; seconds."""
    nb = jupytext.read(src)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(HERE)}}).execute()
    elapsed = time.perf_counter() - start
    jupytext.write(nb, src.with_suffix(".ipynb"))
    return elapsed


def main(argv: list[str]) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared CPUs: no busy-waiting OpenMP threads
    files = sources(argv)
    if not files:
        print(f"build.py: no notebook source matches {argv} in {HERE}", file=sys.stderr)
        return 1
    for src in files:
        print(f"{src.name}: executing ...", flush=True)
        seconds = build(src)
        size = src.with_suffix(".ipynb").stat().st_size / 1e6
        print(f"{src.name}: {seconds:.1f} s, {size:.2f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
