"""Regenerate every notebook ``NN_name.ipynb`` from its jupytext source ``NN_name.py`` and execute it.

    python notebooks/build.py                 # all notebooks, profile from CLUDA_PROFILE (default demo)
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
    dropped = drop_large_widget_states(nb)
    if dropped:
        print(f"{src.name}: left out the stored state of {dropped} widget model(s) (scatter views over "
              f"{WIDGET_STATE_LIMIT // 1000} kB and what shows them; their outputs keep a static picture)", flush=True)
    jupytext.write(nb, src.with_suffix(".ipynb"))
    return elapsed


WIDGET_STATE_LIMIT = 300_000
"""Stored widget states larger than this (bytes of JSON) are dropped: a jupyter-scatter view
carries its 2 MB JavaScript bundle and every point, and notebooks stay under 2 MB."""

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def drop_large_widget_states(nb, limit: int = WIDGET_STATE_LIMIT) -> int:
    """Leave out of ``nb``'s stored widget state the models whose state exceeds ``limit`` bytes,
    every model that shows one of them (a box around a view), and the models then used by no
    stored output; outputs that showed a dropped model lose their widget part and keep the rest
    (a static ``image/png`` beside the widget, see ``LinkedExplorer``). Returns how many models
    were left out (0: ``nb`` unchanged)."""
    import json
    import re

    meta = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    state = meta.get("state", {})
    text = {k: json.dumps(v) for k, v in state.items()}
    gone = {k for k, t in text.items() if len(t) > limit}
    if not gone:
        return 0
    refs = {k: set(re.findall(r"IPY_MODEL_([0-9a-f]{32})", t)) | set(re.findall(r'"model_id": "([0-9a-f]{32})"', t))
            for k, t in text.items()}
    grew = True
    while grew:  # a container showing a dropped model cannot be drawn either
        more = {k for k in state if k not in gone and refs[k] & gone}
        grew, gone = bool(more), gone | more
    shown = set()
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                continue
            if view.get("model_id") in gone:
                rest = {k for k in out["data"] if k != WIDGET_VIEW}
                if rest - {"text/plain"}:  # a richer fallback than the widget's repr: keep just that
                    del out["data"][WIDGET_VIEW]
                else:
                    view["model_id"] = ""  # JupyterLab hides a view of no model
            else:
                shown.add(view.get("model_id"))
    keep, todo = set(), [k for k in shown if k in state]
    while todo:  # what the remaining outputs show, and what those models use (layouts, styles, children)
        k = todo.pop()
        if k not in keep:
            keep.add(k)
            todo += [r for r in refs[k] if r in state and r not in gone]
    left_out = [k for k in state if k not in keep]
    for k in left_out:
        del state[k]
    return len(left_out)


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
