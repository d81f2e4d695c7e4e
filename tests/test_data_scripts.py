"""prepare_* and make_miniscapes: raw formats -> trainIds + statistics, idempotence, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cluda_kit.data.datasets import GTA5, Cityscapes, Synthia
from cluda_kit.data.miniscapes import Miniscapes
from cluda_kit.data.prepare import (
    PrepareError,
    _atomic_write,
    label_to_polygons,
    main,
    make_miniscapes_main,
    prepare,
    read_png16,
    write_miniscapes,
)
from fake_data import (
    CS_TRAIN_LABEL_IDS,
    SYNTHIA_TRAIN_IDS,
    cityscapes_base,
    make_cityscapes_tree,
    make_gta_tree,
    make_synthia_tree,
    random_ids,
    reference_map,
    save_palette_png,
    truncate,
    write_polygons,
)

REPO = Path(__file__).resolve().parents[1]


def _train_ids(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L"
        return np.array(img)


def _stats(root: Path) -> dict[str, dict[int, int]]:
    entries = json.loads((root / "sample_class_stats.json").read_text())
    return {e["file"]: {int(k): v for k, v in e.items() if k != "file"} for e in entries}


def _bincount(train_ids: np.ndarray) -> dict[int, int]:
    return {c: int((train_ids == c).sum()) for c in range(19) if (train_ids == c).any()}


def _no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_prepare_gta_maps_label_ids_and_writes_stats(tmp_path):
    maps = make_gta_tree(tmp_path, n=3)
    report = prepare("gta", tmp_path, progress=False)
    assert report.ok and report.converted == 3 and report.stats_files == 3
    stats = _stats(tmp_path)
    for i, ids in enumerate(maps, start=1):
        out = _train_ids(tmp_path / "labels" / f"{i:05d}_labelTrainIds.png")
        expected = reference_map(ids, CS_TRAIN_LABEL_IDS)
        np.testing.assert_array_equal(out, expected)
        assert stats[f"labels/{i:05d}_labelTrainIds.png"] == _bincount(expected)
    assert _no_temp_files(tmp_path)


def test_prepare_synthia_reads_the_red_channel_of_16_bit_labels(tmp_path):
    maps = make_synthia_tree(tmp_path, n=2)
    report = prepare("synthia", tmp_path, progress=False)
    assert report.ok, report.errors
    for i, ids in enumerate(maps):
        out = _train_ids(tmp_path / "GT" / "LABELS" / f"{i:07d}_labelTrainIds.png")
        np.testing.assert_array_equal(out, reference_map(ids, SYNTHIA_TRAIN_IDS))
    assert _stats(tmp_path)["GT/LABELS/0000001_labelTrainIds.png"] == _bincount(reference_map(maps[1], SYNTHIA_TRAIN_IDS))


def test_prepare_cityscapes_from_label_ids_all_splits_stats_for_train(tmp_path):
    train = make_cityscapes_tree(tmp_path, "train", n=2)
    val = make_cityscapes_tree(tmp_path, "val", n=1, seed=1, city="lindau")
    report = prepare("cityscapes", tmp_path, progress=False)
    assert report.ok and report.converted == 3
    for split, city, maps in (("train", "aachen", train), ("val", "lindau", val)):
        for i, ids in enumerate(maps):
            out = _train_ids(tmp_path / "gtFine" / split / city / f"{cityscapes_base(city, i)}_gtFine_labelTrainIds.png")
            np.testing.assert_array_equal(out, reference_map(ids, CS_TRAIN_LABEL_IDS))
    assert sorted(_stats(tmp_path)) == [
        f"gtFine/train/aachen/{cityscapes_base('aachen', i)}_gtFine_labelTrainIds.png" for i in range(2)
    ]


def test_prepare_cityscapes_from_polygons(tmp_path):
    make_cityscapes_tree(tmp_path, "train", n=1, h=10, w=12, label_ids=False)
    base = tmp_path / "gtFine" / "train" / "aachen" / cityscapes_base("aachen", 0)
    write_polygons(
        Path(f"{base}_gtFine_polygons.json"),
        10,
        12,
        [
            {"label": "road", "polygon": [[0, 5], [11, 5], [11, 9], [0, 9]]},  # rows 5..9
            {"label": "cargroup", "polygon": [[2, 6], [4, 6], [4, 8], [2, 8]]},  # car on top of the road
            {"label": "license plate", "polygon": [[3, 7], [3, 7], [3, 7], [3, 7]]},  # id -1: not drawn
            {"label": "sky", "polygon": [[0, 0], [11, 0], [11, 1], [0, 1]], "deleted": 1},  # deleted
            {"label": "sky", "polygon": [[0, 0], [5, 0], [5, 1], [0, 1]]},
            {"label": "ego vehicle", "polygon": [[8, 8], [11, 8], [11, 9], [8, 9]]},  # trainId 255
        ],
    )
    report = prepare("cityscapes", tmp_path, progress=False)
    assert report.ok, report.errors
    expected = np.full((10, 12), 255, dtype=np.uint8)
    expected[5:10, :] = 0
    expected[6:9, 2:5] = 13
    expected[0:2, 0:6] = 10
    expected[8:10, 8:12] = 255
    np.testing.assert_array_equal(_train_ids(Path(f"{base}_gtFine_labelTrainIds.png")), expected)


def test_prepare_is_idempotent_and_reconverts_changed_labels(tmp_path):
    make_gta_tree(tmp_path, n=3)
    prepare("gta", tmp_path, progress=False)
    outs = sorted((tmp_path / "labels").glob("*_labelTrainIds.png"))
    before = {p: p.stat().st_mtime_ns for p in outs}
    stats_before = _stats(tmp_path)
    report = prepare("gta", tmp_path, progress=False)
    assert (report.converted, report.up_to_date) == (0, 3)
    assert {p: p.stat().st_mtime_ns for p in outs} == before
    assert _stats(tmp_path) == stats_before
    # a new raw label for frame 2 is picked up, the others are kept
    new_ids = np.full((32, 64), 26, dtype=np.uint8)  # all car
    save_palette_png(tmp_path / "labels" / "00002.png", new_ids)
    future = before[outs[1]] / 1e9 + 10
    os.utime(tmp_path / "labels" / "00002.png", (future, future))
    report = prepare("gta", tmp_path, progress=False)
    assert (report.converted, report.up_to_date) == (1, 2)
    assert _stats(tmp_path)["labels/00002_labelTrainIds.png"] == {13: 32 * 64}
    # statistics are recounted from the outputs when the statistics file is gone
    (tmp_path / "sample_class_stats.json").unlink()
    prepare("gta", tmp_path, progress=False)
    assert _stats(tmp_path)["labels/00002_labelTrainIds.png"] == {13: 32 * 64}
    assert _stats(tmp_path)["labels/00001_labelTrainIds.png"] == stats_before["labels/00001_labelTrainIds.png"]


def test_prepare_in_worker_processes_gives_the_same_result(tmp_path):
    make_synthia_tree(tmp_path / "a", n=4)
    make_synthia_tree(tmp_path / "b", n=4)
    assert prepare("synthia", tmp_path / "a", workers=2, progress=True).ok
    assert prepare("synthia", tmp_path / "b", progress=False).ok
    assert _stats(tmp_path / "a") == _stats(tmp_path / "b")
    for p in (tmp_path / "a" / "GT" / "LABELS").glob("*_labelTrainIds.png"):
        np.testing.assert_array_equal(_train_ids(p), _train_ids(tmp_path / "b" / "GT" / "LABELS" / p.name))


# --------------------------------------------------------------------------------------- bad input


def _run_main(dataset, root, capsys, *extra):
    code = main(dataset, [str(root), "--workers", "1", *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out + captured.err


def test_missing_root_and_folders_are_fatal_with_the_path(tmp_path, capsys):
    code, text = _run_main("gta", tmp_path / "nope", capsys)
    assert code == 2 and f"ERROR: dataset root {tmp_path / 'nope'} does not exist" in text
    (tmp_path / "images").mkdir()
    code, text = _run_main("gta", tmp_path, capsys)
    assert code == 2 and f"folder {tmp_path / 'labels'} not found" in text
    (tmp_path / "labels").mkdir()
    code, text = _run_main("gta", tmp_path, capsys)
    assert code == 2 and f"no raw label PNGs found in {tmp_path / 'labels'}" in text
    code, text = _run_main("cityscapes", tmp_path, capsys)
    assert code == 2 and "leftImg8bit" in text
    with pytest.raises(PrepareError, match="GT/LABELS"):
        (tmp_path / "RGB").mkdir()
        prepare("synthia", tmp_path, progress=False)


def test_truncated_image_and_label_are_named_and_the_rest_converted(tmp_path, capsys):
    make_gta_tree(tmp_path, n=3)
    truncate(tmp_path / "images" / "00001.png")
    truncate(tmp_path / "labels" / "00002.png")
    code, text = _run_main("gta", tmp_path, capsys)
    assert code == 1
    assert f"failed: {tmp_path / 'images' / '00001.png'}: not a readable image" in text
    assert f"failed: {tmp_path / 'labels' / '00002.png'}: not a readable label" in text
    assert "1 written, 0 skipped (already done), 2 failed" in text
    assert sorted(p.name for p in (tmp_path / "labels").glob("*_labelTrainIds.png")) == ["00003_labelTrainIds.png"]
    assert list(_stats(tmp_path)) == ["labels/00003_labelTrainIds.png"]
    assert _no_temp_files(tmp_path)


def test_truncated_synthia_label_is_named(tmp_path):
    make_synthia_tree(tmp_path, n=2)
    truncate(tmp_path / "GT" / "LABELS" / "0000001.png", keep=0.5)
    report = prepare("synthia", tmp_path, progress=False)
    assert len(report.errors) == 1 and str(tmp_path / "GT" / "LABELS" / "0000001.png") in report.errors[0]


def test_ids_outside_the_table(tmp_path, capsys):
    make_gta_tree(tmp_path, n=2)
    ids = random_ids(np.random.default_rng(0), 32, 64, [7, 40, 200])
    save_palette_png(tmp_path / "labels" / "00002.png", ids)
    code, text = _run_main("gta", tmp_path, capsys)
    assert code == 1 and f"{tmp_path / 'labels' / '00002.png'}: label ids [40, 200] are outside" in text
    assert not (tmp_path / "labels" / "00002_labelTrainIds.png").exists()
    code, text = _run_main("gta", tmp_path, capsys, "--allow-unknown-ids")
    assert code == 0 and "WARNING" in text and "mapped to 255" in text
    out = _train_ids(tmp_path / "labels" / "00002_labelTrainIds.png")
    np.testing.assert_array_equal(out, np.where(ids == 7, 0, 255))


def test_synthia_instance_channel_mixup_is_caught(tmp_path):
    # a label written with instance ids in R (channels swapped) shows up as ids outside 0..22
    make_synthia_tree(tmp_path, n=1)
    raw = read_png16(tmp_path / "GT" / "LABELS" / "0000000.png")
    from fake_data import encode_png16_rgb

    (tmp_path / "GT" / "LABELS" / "0000000.png").write_bytes(encode_png16_rgb(np.ascontiguousarray(raw[..., [1, 0, 2]])))
    report = prepare("synthia", tmp_path, progress=False)
    assert len(report.errors) == 1 and "outside the SYNTHIA ids 0..22 table" in report.errors[0]


def test_size_mismatch_and_missing_pairs(tmp_path, capsys):
    make_gta_tree(tmp_path, n=3)
    Image.new("RGB", (60, 32)).save(tmp_path / "images" / "00001.png")
    (tmp_path / "images" / "00003.png").unlink()
    Image.new("RGB", (64, 32)).save(tmp_path / "images" / "00009.png")
    code, text = _run_main("gta", tmp_path, capsys)
    assert code == 1
    assert f"{tmp_path / 'labels' / '00001.png'}: label is 64x32 (WxH) but its image {tmp_path / 'images' / '00001.png'} is 60x32" in text
    assert f"{tmp_path / 'labels' / '00003.png'}: its image {tmp_path / 'images' / '00003.png'} does not exist" in text
    assert f"{tmp_path / 'images' / '00009.png'}: no label" in text


def test_unknown_polygon_label_is_named(tmp_path):
    make_cityscapes_tree(tmp_path, "train", n=1, h=8, w=8, label_ids=False)
    path = tmp_path / "gtFine" / "train" / "aachen" / f"{cityscapes_base('aachen', 0)}_gtFine_polygons.json"
    write_polygons(path, 8, 8, [{"label": "spaceship", "polygon": [[0, 0], [3, 0], [3, 3]]}])
    report = prepare("cityscapes", tmp_path, progress=False)
    assert report.errors == [f"{path}: polygon labels ['spaceship'] are not Cityscapes label names"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.png"

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        _atomic_write(target, boom)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        _atomic_write(target, boom)
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_script_runs_from_a_checkout(tmp_path):
    make_gta_tree(tmp_path, n=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "data_scripts" / "prepare_gta.py"), str(tmp_path), "--workers", "1"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "1 written" in done.stdout
    missing = subprocess.run(
        [sys.executable, str(REPO / "data_scripts" / "prepare_synthia.py"), str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "RGB" in missing.stderr


# ------------------------------------------------------------------------------- miniscapes round trip


def test_label_to_polygons_covers_the_map_exactly():
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2labelImg import createLabelImage
    from cityscapesscripts.helpers.labels import id2label

    ids = random_ids(np.random.default_rng(3), 20, 30, [0, 7, 8, 26], block=3)
    ids[5, 7] = 24  # single pixel
    doc = {"imgHeight": 20, "imgWidth": 30, "objects": [{"label": id2label[v].name, "polygon": p} for v, p in label_to_polygons(ids)]}
    annotation = Annotation()
    annotation.fromJsonText(json.dumps(doc))
    np.testing.assert_array_equal(np.array(createLabelImage(annotation, "ids")), ids)


@pytest.mark.parametrize(
    ("domain", "dataset", "reader"), [("game", "gta", GTA5), ("sim", "synthia", Synthia), ("real", "cityscapes", Cityscapes)]
)
def test_miniscapes_round_trip(tmp_path, domain, dataset, reader):
    size, n = (32, 64), 3
    assert make_miniscapes_main([str(tmp_path), "--domain", domain, "--num", str(n), "--size", "32", "64"]) == 0
    assert prepare(dataset, tmp_path, progress=False).ok
    mini = Miniscapes(domain, "train", size=size, length=n)
    data = reader(tmp_path)
    assert len(data) == n
    for i in range(n):
        image, label = mini.render(i)
        sample = data[i]
        np.testing.assert_array_equal(sample["label"].numpy(), label)
        np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), image)
    assert data.class_stats() == [_bincount(mini.render(i)[1]) for i in range(n)]
    if domain == "game":
        with Image.open(tmp_path / "labels" / "00001.png") as img:
            assert img.mode == "P" and img.getpalette()[3 * 7 : 3 * 8] == [128, 64, 128]  # road colour at id 7
    if domain == "sim":
        head = (tmp_path / "GT" / "LABELS" / "0000000.png").read_bytes()[16:26]
        assert head[8:10] == bytes([16, 2])  # IHDR: bit depth 16, colour type RGB
    if domain == "real":  # the polygons alone give the same labels
        for p in tmp_path.rglob("*_gtFine_labelIds.png"):
            p.unlink()
        assert prepare(dataset, tmp_path, force=True, progress=False).ok
        for i in range(n):
            np.testing.assert_array_equal(Cityscapes(tmp_path)[i]["label"].numpy(), mini.render(i)[1])


def test_write_miniscapes_in_workers_and_split(tmp_path):
    assert write_miniscapes(tmp_path, "real", split="val", num=2, size=(16, 32), workers=2, polygons=False, progress=False) == 2
    assert sorted(p.name for p in (tmp_path / "gtFine" / "val" / "miniscapes").iterdir()) == [
        "miniscapes_000000_000019_gtFine_labelIds.png",
        "miniscapes_000001_000019_gtFine_labelIds.png",
    ]
    with pytest.raises(ValueError, match="domain"):
        write_miniscapes(tmp_path, "cartoon", num=1)
