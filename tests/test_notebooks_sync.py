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
            "05_full_training", "06_feature_space", "07_hrda", "08_contrastive_variants"]
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
         "06_feature_space": (("source_only", READ_LINE), ("daformer", READ_LINE), ("cluda", READ_LINE)),
         "08_contrastive_variants": tuple((run, READ_LINE) for run in ("daformer", "cluda", "pipa", "sepico"))}


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


# --- what a student reads: exercises at the end, and no number in the prose that no cell printed

def _hidden(cell) -> bool:
    return bool(cell.metadata.get("jupyter", {}).get("source_hidden"))


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_ends_with_what_to_remember_and_exercises_with_collapsed_solutions(src: Path):
    cells = jupytext.read(src).cells
    heads = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and "## What to remember" in c.source]
    assert heads, f"{src.name}: no '## What to remember' section"
    ex = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and "## Exercises" in c.source]
    assert ex and ex[0] >= heads[0], f"{src.name}: no '## Exercises' after 'What to remember'"
    asks = [i for i, c in enumerate(cells) if i >= ex[0] and c.cell_type == "markdown" and "<details>" in c.source]
    assert len(asks) >= 2, f"{src.name}: {len(asks)} exercises with a <details> solution, expected 2 or 3"
    for i in asks:  # the worked solution: a code cell right after, collapsed in JupyterLab
        nxt = cells[i + 1] if i + 1 < len(cells) else None
        assert nxt is not None and nxt.cell_type == "code" and _hidden(nxt), (
            f"{src.name}: exercise cell {i} must be followed by a solution code cell with metadata "
            '{"jupyter": {"source_hidden": true}}')
    assert not any(c.cell_type == "code" and not _hidden(c) for c in cells[ex[0]:]), (
        f"{src.name}: a code cell after '## Exercises' is not collapsed")


# Numbers a markdown cell may state without a cell printing them: published or measured elsewhere,
# each with where it comes from (docs/method.md, the papers). Everything else in the prose that is a
# decimal or has three or more digits must occur in the notebook's code or in the stored output of
# a code cell above it — or the prose must be written by a cell (Markdown(f"...")).
CITED = {
    # strong_augment's defaults, the DACS values (cluda_kit.uda.mixing, docs/method.md §2)
    "01_mixing": {"0.8", "0.2", "0.5", "0.15", "1.15", "0.1", "1.2"},
    # MiT-B5 and mit_nano stage widths (the SegFormer paper, cluda_kit.models); STAND_IN_ITERS["demo"]
    "03_fused_features": {"160", "320", "512", "200"},
    "04_contrastive_loss": {"24"},  # the GPU a user of the release ran out of memory on (its issue #4)
    "05_full_training": {"128", "256"},  # the demo preset's 128×256 crop (cluda_kit/configs)
    # HRDA and HRDA + CLUDA, GTA5 -> Cityscapes (the papers); the Cityscapes frame and the paper's crops
    "07_hrda": {"73.8", "74.4", "128", "512", "1024", "2048"},
    # SePiCo's τ and PiPa's base τ (their releases, docs/method.md §11); −1/(K−1) at K = 19, which an
    # exercise asks for and its solution prints
    "08_contrastive_variants": {"100", "0.07", "0.056"},
}
_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:[ \u202f\u2009]\d{3})+|\d+\.\d+|\d{3,})(?![\w])")


def _prose_numbers(text: str) -> set[str]:
    text = re.sub(r"`[^`]*`|\$\$.*?\$\$|\$[^$]*\$|<[^>]+>", " ", text, flags=re.S)  # code, maths, html tags
    return {re.sub(r"[ \u202f\u2009]", "", m) for m in _NUMBER.findall(text)}


def _outputs(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        parts.append(o.get("text", ""))
        for kind in ("text/plain", "text/markdown", "text/html"):
            parts.append(o.get("data", {}).get(kind, ""))
    return "".join(p if isinstance(p, str) else "".join(p) for p in parts)


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_prose_numbers_are_printed_above_or_cited(src: Path):
    nb = jupytext.read(src.with_suffix(".ipynb"))
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    seen, bad = re.sub(r"[ \u202f\u2009_]", "", code), []
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code":
            seen += re.sub(r"[ \u202f\u2009]", "", _outputs(c))
        elif c.cell_type == "markdown":
            bad += [(i, n) for n in _prose_numbers(c.source) if n not in seen and n not in CITED.get(src.stem, ())]
    assert not bad, (f"{src.name}: numbers in markdown that no cell above prints and no code states: {bad}; "
                     "write that sentence from the cell that computes it (Markdown(f'...')) or cite it in CITED")
