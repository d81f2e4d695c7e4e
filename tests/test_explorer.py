"""The linked feature-space explorer, headless: pairing two models' points, projections cached on
disk, selection shared by the views, gallery crops at the right pixels, per-class counts, the
cluster measures of what is shown, CSV and PNG export, and the widget's wiring."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("jscatter")

from cluda_kit.analysis.explorer import COLOR_BY, LinkedExplorer  # noqa: E402
from cluda_kit.analysis.features import FeatureSet  # noqa: E402

N_IMG, H, W = 4, 32, 48


def images(domain: str, i: int) -> torch.Tensor:
    """Image i of a domain: red = x, green = y, blue = the image index (so a crop tells where it is from)."""
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    blue = torch.full((H, W), 40 * i + (100 if domain == "real" else 0))
    return torch.stack([xx * 5, yy * 7, blue]).to(torch.uint8)


def paired_sets(n: int = 60, seed: int = 0) -> dict[str, FeatureSet]:
    """Two models' features of the same n points (3 classes, 2 domains); 'b' separates the classes
    more than 'a' and predicts a different class on every 5th point."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    domain = rng.integers(0, 2, n)
    image = rng.integers(0, N_IMG, n)
    pixel = np.stack([rng.integers(0, H, n), rng.integers(0, W, n)], 1)
    centres = np.eye(8)[:3] * 4
    out = {}
    for name, spread in (("a", 3.0), ("b", 0.5)):
        feats = centres[labels] + rng.normal(0, spread, (n, 8))
        pred = labels.copy()
        if name == "b":
            pred[::5] = (pred[::5] + 1) % 3
        out[name] = FeatureSet(feats, labels, domain, ("game", "real"), name, image_index=image, pixel=pixel,
                               confidence=rng.uniform(0.3, 1.0, n), prediction=pred)
    return out


def test_the_views_must_hold_the_same_points():
    sets = paired_sets()
    moved = sets["b"]
    sets["b"] = FeatureSet(moved.features, moved.labels, moved.domain_index, moved.domain_names, "b",
                           image_index=moved.image_index, pixel=moved.pixel[::-1].copy(),
                           confidence=moved.confidence, prediction=moved.prediction)
    with pytest.raises(ValueError, match="do not hold the same points"):
        LinkedExplorer(sets, method="pca")
    plain = FeatureSet(moved.features, moved.labels, moved.domain_index, moved.domain_names, "b")
    with pytest.raises(ValueError, match="no provenance"):
        LinkedExplorer({"a": paired_sets()["a"], "b": plain}, method="pca")


def test_projections_are_cached_on_disk(tmp_path):
    ex = LinkedExplorer(paired_sets(), method="pca", cache_dir=tmp_path)
    a = ex.projection("a")
    assert a.shape == (60, 2) and ex.projection_calls == 1 and len(list(tmp_path.glob("a-pca-0-*.npy"))) == 1
    again = LinkedExplorer(paired_sets(), method="pca", cache_dir=tmp_path)
    assert np.array_equal(again.projection("a"), a) and again.projection_calls == 0  # reopening: from disk
    other_seed = LinkedExplorer(paired_sets(), method="pca", cache_dir=tmp_path, seed=1)
    other_seed.projection("a")
    assert other_seed.projection_calls == 1


def test_points_table_and_selection_state(tmp_path):
    sets = paired_sets()
    ex = LinkedExplorer(sets, images, method="pca")
    df = ex.points()
    assert len(df) == 60 and list(df["image"]) == sets["a"].image_index.tolist()
    assert (df["b_correct"] == "wrong").sum() == 12 and (df["a_correct"] == "wrong").sum() == 0
    ids = ex.select([7, 3, 3, 10])
    assert ids.tolist() == [3, 7, 10]
    counts = ex.selection_counts()
    fs = sets["a"]
    want: dict = {}
    for i in (3, 7, 10):
        want.setdefault(fs.domain[i], {}).setdefault(ex.class_names[fs.labels[i]], 0)
        want[fs.domain[i]][ex.class_names[fs.labels[i]]] += 1
    assert counts == want
    with pytest.raises(IndexError):
        ex.select([60])


def test_gallery_crops_are_centred_on_the_points_pixel():
    sets = paired_sets()
    ex = LinkedExplorer(sets, images, method="pca")
    ex.select([0, 5])
    items = ex.gallery(crop=16)
    fs = sets["a"]
    for it in items:
        i = it["point"]
        y, x = fs.pixel[i]
        image = images(fs.domain[i], fs.image_index[i]).permute(1, 2, 0).numpy()
        assert it["crop"].shape == (16, 16, 3)
        assert np.array_equal(it["crop"][8, 8], image[y, x])  # the centre is the point's pixel
        assert it["predictions"]["b"] == ex.class_names[sets["b"].prediction[i]]
    fig = ex.gallery_figure()
    assert len([ax for ax in fig.axes if ax.images]) == 2


def test_measures_follow_the_shown_classes_and_domains():
    ex = LinkedExplorer(paired_sets(), method="pca")
    both = ex.measures()
    assert both["b"]["silhouette"] > both["a"]["silhouette"]  # b separates the classes more
    assert "mixing" in both["a"]
    ex.shown_domains = ["real"]
    ex.shown_classes = [0, 1]
    one = ex.measures()
    assert set(one["a"]["per_class_silhouette"]) == {0, 1} and "mixing" not in one["a"]
    ex.shown_classes = [0]
    assert ex.measures() == {"a": {}, "b": {}}


def test_csv_and_png_export(tmp_path):
    sets = paired_sets()
    ex = LinkedExplorer(sets, method="pca")
    ex.select([2, 4])
    rows = list(csv.DictReader(open(ex.export_csv(tmp_path / "sel.csv"))))
    assert [int(r["point"]) for r in rows] == [2, 4]
    assert rows[0]["image"] == str(sets["a"].image_index[2]) and rows[0]["y"] == str(sets["a"].pixel[2, 0])
    assert rows[1]["b_prediction"] == ex.class_names[sets["b"].prediction[4]]
    for colour in COLOR_BY:
        ex.color_by = colour
        png = ex.export_png(tmp_path / f"{colour}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_widget_links_selection_and_filters():
    ex = LinkedExplorer(paired_sets(), images, method="pca")
    box = ex.widget()
    assert "cluda-linked-explorer" in box._dom_classes
    a, b = ex._scatters["a"], ex._scatters["b"]
    a.widget.selection = [1, 2, 9]  # a lasso in view a ...
    assert ex.selected.tolist() == [1, 2, 9]  # ... selects in the explorer ...
    assert sorted(np.asarray(b.selection()).tolist()) == [1, 2, 9]  # ... and highlights in view b
    assert "3</b> selected" in ex._status.value
    ex._classes.value = (0, 1)
    assert sorted(np.asarray(a.filter()).tolist()) == ex.visible().tolist()
    ex._color.value = "correct"
    assert b.color()["by"] == "b_correct"
    ex._method.value = "tsne" if ex.method != "tsne" else "pca"
    assert ex.projection_calls >= 3


def test_a_selection_in_a_notebook_run_by_nbclient_does_not_wait_for_the_timeout(tmp_path):
    """nbclient mirrors output captured by an ipywidgets.Output back to the kernel on the shell
    socket it is waiting on for the cell's reply; with a large capture (a gallery PNG) the reply
    went unseen until the cell timed out (jupyter/nbclient#312; notebook 06's build stalled 20
    minutes). The explorer's gallery is an HTML widget set from the kernel, so a selection made in
    a cell returns at once."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    import time

    setup = f"""import numpy as np, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from test_explorer import paired_sets
from cluda_kit.analysis.explorer import LinkedExplorer
noise = np.random.default_rng(0).integers(0, 256, (3, 96, 128), dtype=np.uint8)  # large PNGs
ex = LinkedExplorer(paired_sets(400), lambda domain, i: noise, method="pca")"""
    cells = [setup, "ex", "ex.select(np.arange(24)); print(len(ex.selected))", "ex.select(np.arange(5, 29))"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    seconds = []
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            start = time.perf_counter()
            client.execute_cell(cell, i)
            seconds.append(time.perf_counter() - start)
    assert max(seconds[1:]) < 30, f"cells took {[round(s, 1) for s in seconds]} s (timeout 60)"
    ex = LinkedExplorer(paired_sets(), images, method="pca")
    todo, found = [ex.widget()], []
    while todo:  # the cause itself: no Output widget anywhere in the explorer
        widget = todo.pop()
        found.append(type(widget).__name__)
        todo += list(getattr(widget, "children", ()))
    assert "Output" not in found and "HTML" in found, found
    out = nb.cells[1].outputs[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" in out and out["image/png"]  # the widget and its picture
    assert nb.cells[2].outputs[0]["text"].strip() == "24"


def test_build_leaves_out_large_widget_states_and_keeps_the_picture():
    """notebooks/build.py drops the megabyte scatter states, the boxes that show them and the
    models no stored output uses; the output keeps its static PNG, other widgets keep theirs."""
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location("nb_build", Path(__file__).resolve().parent.parent / "notebooks" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    ids = {k: k * 32 for k in "abcdef"}  # a: scatter (big), b: its box, c: the box's layout, d: another widget + e: its layout, f: a link
    state = {ids["a"]: {"state": {"_esm": "x" * 400_000}}, ids["b"]: {"state": {"children": [f"IPY_MODEL_{ids['a']}"],
                                                                                   "layout": f"IPY_MODEL_{ids['c']}"}},
             ids["c"]: {"state": {}}, ids["d"]: {"state": {"layout": f"IPY_MODEL_{ids['e']}"}}, ids["e"]: {"state": {}},
             ids["f"]: {"state": {"source": [f"IPY_MODEL_{ids['d']}", "value"]}}}
    view = "application/vnd.jupyter.widget-view+json"
    cells = [nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output("display_data", data={
                 view: {"version_major": 2, "version_minor": 0, "model_id": ids[m]}, "text/plain": "W", **extra})])
             for m, extra in (("b", {"image/png": "iVBOR"}), ("d", {}))]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": state}}
    assert build.drop_large_widget_states(nb) == 4
    assert set(nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]) == {ids["d"], ids["e"]}
    assert set(cells[0].outputs[0]["data"]) == {"image/png", "text/plain"}  # the picture stays, the widget goes
    assert cells[1].outputs[0]["data"][view]["model_id"] == ids["d"]
    assert build.drop_large_widget_states(nb) == 0
