"""A user's own data: class tables (YAML/CSV), the `folder` dataset, and training, evaluation and
predict with a label set that is not Cityscapes'."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cluda_kit.cli import main
from cluda_kit.config import ConfigError, load_config
from cluda_kit.data import labels as L
from cluda_kit.data.classes import ClassTable, ClassTableError, cityscapes_table, class_table_of, load_class_table
from cluda_kit.data.datasets import DatasetError, ImageFolder, build_dataset

TABLE_YAML = """\
ignore_index: 255
ignore_values: [0]
classes:
  - {name: ground, color: [120, 80, 40], value: 10}
  - {name: plant, color: [0, 200, 0], value: 20}
  - {name: sky, color: [90, 160, 250], value: 30}
"""


def _table(tmp_path: Path) -> Path:
    path = tmp_path / "classes.yaml"
    path.write_text(TABLE_YAML)
    return path


# ----------------------------------------------------------------------------------- tables
def test_cityscapes_table_agrees_with_the_label_module():
    t = cityscapes_table()
    assert t.names == L.CLASSES and t.num_classes == 19 and t.ignore_index == 255
    ids = np.arange(256, dtype=np.int64)
    assert np.array_equal(t.to_values(ids), L.train_ids_to_cityscapes(ids))
    assert np.array_equal(t.colorize(ids), L.colorize(ids))
    raw = np.arange(34, dtype=np.uint8)  # every Cityscapes labelId maps as the label module maps it
    assert np.array_equal(t.to_train_ids(raw), L.cityscapes_to_train_ids(raw))


def test_yaml_and_csv_tables_read_the_same(tmp_path):
    y = load_class_table(_table(tmp_path))
    (tmp_path / "classes.csv").write_text("name,r,g,b,value\nground,120,80,40,10\nplant,0,200,0,20\n"
                                          "sky,90,160,250,30\n")
    c = load_class_table(tmp_path / "classes.csv")
    assert y.names == c.names == ("ground", "plant", "sky") and y.colors == c.colors and y.values == c.values
    label = np.array([[10, 20], [30, 0]], np.uint8)
    assert y.to_train_ids(label).tolist() == [[0, 1], [2, 255]]
    assert y.to_values(np.array([0, 1, 2, 255])).tolist() == [10, 20, 30, 0]
    assert y.colorize(np.array([[2]])).tolist() == [[[90, 160, 250]]]
    (tmp_path / "plain.csv").write_text("name,r,g,b\na,1,2,3\nb,4,5,6\n")  # values default to the index
    assert load_class_table(tmp_path / "plain.csv").to_train_ids(np.array([1, 0, 255], np.uint8)).tolist() == [1, 0, 255]


@pytest.mark.parametrize("text, needle", [
    ("classes: [{name: a, color: [1, 2, 3]}, {name: a, color: [1, 2, 3]}]", "'a' occurs twice"),
    ("classes: [{name: a, color: [1, 2]}]", "colour [1, 2] of 'a'"),
    ("classes: [{name: a, color: [1, 2, 3], value: 300}]", "label value 300"),
    ("classes: [{name: a}]", "needs a colour"),
    ("classes: [{name: a, color: [1, 2, 3], value: 1}, {name: b, color: [1, 2, 3], value: 1}]", "value 1 is used twice"),
    ("names: [a]", "a 'classes' list"),
    ("classes: [{name: a, color: [1, 2, 3]}]\ncolours: 1", "unknown keys ['colours']"),
    ("classes: [{name: a, color: [1, x, 3]}]", "expected an integer, got 'x'"),
])
def test_class_table_errors_name_the_file_and_entry(tmp_path, text, needle):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(ClassTableError) as err:
        load_class_table(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_config_class_table_must_fit_num_classes(tmp_path):
    cfg = load_config("miniscapes_tiny", [f"data.classes={_table(tmp_path)}"])
    with pytest.raises(ConfigError, match=r"model.num_classes: 19, but the class table .* has 3 classes"):
        class_table_of(cfg)
    assert class_table_of(load_config("miniscapes_tiny", [f"data.classes={_table(tmp_path)}", "model.num_classes=3",
                                                          "uda.fd.enabled=false"])).num_classes == 3
    with pytest.raises(ConfigError, match="data.classes: class table .*nope.yaml does not exist"):
        class_table_of(load_config("miniscapes_tiny", ["data.classes=nope.yaml"]))


# ----------------------------------------------------------------------------------- folder
def make_folder(root: Path, n: int, *, labels: bool, seed: int = 0, h: int = 64, w: int = 128,
                suffix: str = ".jpg") -> tuple[Path, Path | None]:
    """``n`` images in two subfolders (sky over plants over ground, jittered) and their labels
    holding the table's values 10/20/30 and 0 (ignore)."""
    rng = np.random.default_rng(seed)
    images, label_dir = root / "images", (root / "labels" if labels else None)
    for i in range(n):
        sub = f"part{i % 2}"
        (images / sub).mkdir(parents=True, exist_ok=True)
        a, b = int(h * rng.uniform(0.3, 0.45)), int(h * rng.uniform(0.6, 0.75))
        lab = np.full((h, w), 10, np.uint8)
        lab[:a], lab[a:b] = 30, 20
        lab[:2, :2] = 0
        colours = {10: (120, 80, 40), 20: (30, 170, 30), 30: (100, 160, 240), 0: (0, 0, 0)}
        img = np.zeros((h, w, 3), np.uint8)
        for v, c in colours.items():
            img[lab == v] = c
        img = np.clip(img.astype(int) + rng.integers(-25, 26, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(images / sub / f"{i:03d}{suffix}", quality=95)
        if labels:
            (label_dir / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(lab).save(label_dir / sub / f"{i:03d}.png")
    return images, label_dir


def test_folder_pairs_by_relative_stem_and_maps_values(tmp_path):
    images, labels = make_folder(tmp_path, 4, labels=True)
    table = load_class_table(_table(tmp_path))
    ds = ImageFolder(images, labels, table=table)
    assert [name for name, _, _ in ds.pairs] == ["part0/000", "part0/002", "part1/001", "part1/003"]
    s = ds[0]
    assert s["image"].dtype == torch.uint8 and tuple(s["image"].shape) == (3, 64, 128)
    raw = np.asarray(Image.open(labels / "part0" / "000.png"))
    assert torch.equal(s["label"], torch.from_numpy(table.to_train_ids(raw)).long())
    assert set(s["label"].unique().tolist()) == {0, 1, 2, 255}
    stats = ds.class_stats()
    assert stats[0] == {c: int((table.to_train_ids(raw) == c).sum()) for c in range(3)}
    unlabelled = ImageFolder(images)
    assert bool((unlabelled[1]["label"] == 255).all())
    spec = {"name": "folder", "root": str(images), "labels": str(labels), "table": table, "size": (32, 64)}
    assert tuple(build_dataset(spec)[0]["label"].shape) == (32, 64)


def test_folder_class_stats_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUDA_KIT_CACHE", str(tmp_path / "cache"))
    images, labels = make_folder(tmp_path, 3, labels=True)
    table = load_class_table(_table(tmp_path))
    first = ImageFolder(images, labels, table=table).class_stats()
    cached = list((tmp_path / "cache" / "folder_stats").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())[0] == {str(k): v for k, v in first[0].items()}
    calls = []
    monkeypatch.setattr(ImageFolder, "_train_ids", lambda self, p: calls.append(p))
    assert ImageFolder(images, labels, table=table).class_stats() == first and not calls


def test_folder_errors_name_the_file(tmp_path):
    table = load_class_table(_table(tmp_path))
    images, labels = make_folder(tmp_path / "a", 2, labels=True)
    (labels / "part1" / "001.png").unlink()
    with pytest.raises(DatasetError, match=r"image .*part1/001.jpg has no label: expected .*part1/001.png"):
        ImageFolder(images, labels, table=table)

    images, labels = make_folder(tmp_path / "b", 2, labels=True)
    Image.fromarray(np.full((10, 10), 10, np.uint8)).save(labels / "part0" / "000.png")
    with pytest.raises(DatasetError, match=r"label .*part0/000.png is \(10, 10\) .* image .*000.jpg is \(64, 128\)"):
        ImageFolder(images, labels, table=table)[0]

    images, labels = make_folder(tmp_path / "c", 2, labels=True)
    Image.fromarray(np.full((64, 128), 77, np.uint8)).save(labels / "part1" / "001.png")
    with pytest.raises(DatasetError, match=r"label .*part1/001.png holds the label values \[77\]"):
        ImageFolder(images, labels, table=table)[1]

    images, labels = make_folder(tmp_path / "d", 2, labels=True)
    (images / "part0" / "000.jpg").write_bytes(b"broken")
    with pytest.raises(DatasetError, match=r"part0/000.jpg: not a readable image"):
        ImageFolder(images, labels, table=table)[0]

    with pytest.raises(FileNotFoundError, match="no images"):
        (tmp_path / "empty").mkdir()
        ImageFolder(tmp_path / "empty")


def test_train_evaluate_and_predict_with_an_own_label_set(tmp_path, capsys):
    """Own folders, own 3-class table, an unlabelled target: training runs, evaluation names the
    classes of the table, predict colours with its colours and writes its label values."""
    table_path = _table(tmp_path)
    src_img, src_lab = make_folder(tmp_path / "src", 6, labels=True, seed=1)
    tgt_img, _ = make_folder(tmp_path / "tgt", 6, labels=False, seed=2)
    val_img, val_lab = make_folder(tmp_path / "val", 2, labels=True, seed=3, suffix=".png")
    run = tmp_path / "run"
    sets = [f"data.classes={table_path}", "model.num_classes=3", "uda.fd.enabled=false",
            "data.source.name=folder", f"data.source.root={src_img}", f"data.source.labels={src_lab}",
            "data.target.name=folder", f"data.target.root={tgt_img}",
            "data.val.name=folder", f"data.val.root={val_img}", f"data.val.labels={val_lab}",
            "train.max_iters=2", "train.eval_every=2", "data.rcs.min_pixels=1"]
    argv = ["train", "miniscapes_tiny", "--out", str(run)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"^sky\s+\d", out, re.M) and "road" not in out
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["iou"]) == {"ground", "plant", "sky"}

    assert main(["evaluate", str(run)]) == 0
    assert re.search(r"^plant\s+\d", capsys.readouterr().out, re.M)

    from cluda_kit.inference import load_model, predict

    assert main(["predict", str(run), str(val_img), "--out", str(tmp_path / "pred")]) == 0
    model = load_model(run)
    pred = predict(model, val_img / "part0" / "000.png").numpy()
    values = np.asarray(Image.open(tmp_path / "pred" / "part0" / "000_labelIds.png"))
    colours = np.asarray(Image.open(tmp_path / "pred" / "part0" / "000_color.png"))
    assert np.array_equal(values, np.array([10, 20, 30], np.uint8)[pred])
    assert np.array_equal(colours, np.array([[120, 80, 40], [0, 200, 0], [90, 160, 250]], np.uint8)[pred])


def test_fd_thing_classes_must_exist_in_the_table(tmp_path, capsys):
    argv = ["train", "miniscapes_tiny", "--out", str(tmp_path / "r"), "--set", f"data.classes={_table(tmp_path)}",
            "--set", "model.num_classes=3", "--set", "uda.fd.enabled=true"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "uda.fd.thing_classes" in err and len(err.strip().splitlines()) == 1


def test_notebook_legends_use_the_class_table(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from cluda_kit.analysis.plots import class_legend, present_classes

    table = load_class_table(_table(tmp_path))
    label = np.array([[0, 2], [255, 7]])
    classes = present_classes(label, num_classes=table.num_classes)
    assert classes == [0, 2, 255]
    handles = class_legend(Figure().add_subplot(), classes, table=table)
    assert [h.get_label() for h in handles] == ["ground", "sky", "ignore (255)"]
    assert tuple(round(x * 255) for x in handles[1].get_facecolor()[:3]) == (90, 160, 250)
