"""The notebooks' jupytext sources (.py) and stored notebooks (.ipynb) agree and follow the conventions.

Every ``notebooks/NN_*.py`` has an ``.ipynb`` twin with the same code and markdown cells (jupytext reads
both); each stored notebook is under 2 MB, has at least two ``# NBVAL_CHECK_OUTPUT`` cells, no
``!pip``, and its first code cell calls ``cluda_kit.notebook.setup()`` and its stored output names the profile.
The stored outputs come from the ``demo`` profile over the runs of ``make notebook-runs`` at the presets'
current budget (``train.max_iters``), so that a budget change without a rebuild fails.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXPECTED = ["01_mixing", "02_pseudo_labels", "03_fused_features", "04_contrastive_loss",
            "05_full_training", "06_feature_space", "07_hrda"]
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells if c.cell_type in ("code", "markdown")]


def _stream_text(cells) -> str:
    """The stored stdout/stderr text of the code cells, in order."""
    return "".join(o.get("text", "") for c in cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


def test_every_notebook_exists():
    assert [p.stem for p in SOURCES] == EXPECTED
    for src in SOURCES:
        assert src.with_suffix(".ipynb").is_file(), f"{src.with_suffix('.ipynb')} missing: run make notebooks"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_py_and_ipynb_cells_identical(src: Path):
    py_cells = _cells(jupytext.read(src))
    nb_cells = _cells(jupytext.read(src.with_suffix(".ipynb")))
    assert len(py_cells) == len(nb_cells), f"{src.name}: {len(py_cells)} cells vs {len(nb_cells)} in the .ipynb"
    for i, (a, b) in enumerate(zip(py_cells, nb_cells)):
        assert a == b, f"{src.name}: cell {i} differs from the .ipynb; rebuild with `make notebooks`"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_conventions(src: Path):
    ipynb = src.with_suffix(".ipynb")
    assert ipynb.stat().st_size < 2_000_000, f"{ipynb.name} is {ipynb.stat().st_size / 1e6:.2f} MB (limit 2 MB)"
    nb = jupytext.read(ipynb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    checked = [c for c in code if c.source.lstrip().startswith("# NBVAL_CHECK_OUTPUT")]
    assert len(checked) >= 2, f"{ipynb.name}: {len(checked)} cells marked # NBVAL_CHECK_OUTPUT, expected >= 2"
    for c in checked:
        assert c.get("outputs"), f"{ipynb.name}: a # NBVAL_CHECK_OUTPUT cell has no stored output"
    assert not any(re.search(r"^\s*[!%]pip\b", c.source, re.M) for c in code), f"{ipynb.name}: uses !pip"
    first = code[0]
    # the one setup helper (profile, threads from the machine, seeds, dpi, trained runs), no copies
    assert "from cluda_kit.notebook import setup" in first.source and "setup(" in first.source, (
        f"{ipynb.name}: the first code cell must call cluda_kit.notebook.setup()")
    assert "set_num_threads" not in first.source, f"{ipynb.name}: threads come from setup()"
    text = _stream_text([first])
    assert re.search(r"profile: (tiny|demo|full)\b", text), f"{ipynb.name}: first cell output {text!r} names no profile"


# The stored notebooks show trained models: built with the `demo` profile over the runs of
# `make notebook-runs` at the presets' current budget. A budget change without a rebuild (the
# stored outputs then show runs of the old budget) fails here.
READ_LINE = "{run}: read runs/notebooks/{run} (miniscapes_{run}, iteration {budget})"
SHOWN_LINE = "shown: runs/notebooks/{run} (miniscapes_{run}, read), iteration {budget}"  # 05: the run it shows
READS = {"02_pseudo_labels": (("cluda", READ_LINE),), "03_fused_features": (("cluda", READ_LINE),),
         "05_full_training": (("cluda", SHOWN_LINE),),
         "06_feature_space": (("source_only", READ_LINE), ("daformer", READ_LINE), ("cluda", READ_LINE))}


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_stored_outputs_are_the_demo_profile_over_the_trained_runs(src: Path):
    from cluda_kit.config import load_config

    nb = jupytext.read(src.with_suffix(".ipynb"))
    text = _stream_text(nb.cells)
    assert text.startswith("profile: demo |"), (
        f"{src.stem}.ipynb: stored outputs must come from the demo profile "
        f"(CLUDA_PROFILE=demo python notebooks/build.py), found {text[:40]!r}")
    for run, form in READS.get(src.stem, ()):
        budget = load_config(f"miniscapes_{run}").train.max_iters
        line = form.format(run=run, budget=budget)
        assert line in text, (f"{src.stem}.ipynb: no stored line {line!r}: "
                              "rebuild after `make notebook-runs` at the presets' budget")
    if src.stem == "07_hrda":
        assert "model: TRAINED runs/notebooks/hrda_cluda" in text, (
            f"{src.stem}.ipynb: stored outputs of an untrained model")
