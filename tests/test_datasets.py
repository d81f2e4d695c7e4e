"""Readers over prepared fake trees: samples, class statistics, error messages, build_dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from cluda_kit.data.datasets import GTA5, Cityscapes, DatasetError, Synthia, build_dataset
from cluda_kit.data.miniscapes import Miniscapes
from cluda_kit.data.prepare import prepare
from fake_data import (
    CS_TRAIN_LABEL_IDS,
    SYNTHIA_TRAIN_IDS,
    make_cityscapes_tree,
    make_gta_tree,
    make_synthia_tree,
    reference_map,
)


@pytest.fixture
def gta(tmp_path):
    maps = make_gta_tree(tmp_path, n=4)
    assert prepare("gta", tmp_path, progress=False).ok
    return tmp_path, maps


def _counts(train_ids):
    return {c: int((train_ids == c).sum()) for c in range(19) if (train_ids == c).any()}


def test_gta_samples_follow_the_common_dict(gta):
    root, maps = gta
    data = GTA5(root)
    assert len(data) == 4
    sample = data[2]
    assert set(sample) == {"image", "label", "name"} and sample["name"] == "00003"
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 32, 64)
    assert sample["label"].dtype == torch.int64 and sample["label"].shape == (32, 64)
    np.testing.assert_array_equal(sample["label"].numpy(), reference_map(maps[2], CS_TRAIN_LABEL_IDS))
    with Image.open(root / "images" / "00003.png") as img:
        np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), np.asarray(img))
    assert data.class_stats() == [_counts(reference_map(m, CS_TRAIN_LABEL_IDS)) for m in maps]


def test_transform_and_length(gta):
    root, _ = gta

    def halve(image, label):
        return image[:, ::2, ::2], label[::2, ::2]

    data = GTA5(root, transform=halve, length=2)
    assert len(data) == 2 and data[1]["image"].shape == (3, 16, 32)
    assert len(data.class_stats()) == 2 and data.class_stats() == GTA5(root).class_stats()[:2]


def test_synthia_reader(tmp_path):
    maps = make_synthia_tree(tmp_path, n=2)
    prepare("synthia", tmp_path, progress=False)
    data = Synthia(tmp_path)
    assert [data[i]["name"] for i in range(2)] == ["0000000", "0000001"]
    np.testing.assert_array_equal(data[1]["label"].numpy(), reference_map(maps[1], SYNTHIA_TRAIN_IDS))


def test_cityscapes_splits_and_unlabelled_test(tmp_path):
    make_cityscapes_tree(tmp_path, "train", n=2)
    val = make_cityscapes_tree(tmp_path, "val", n=1, city="lindau", seed=2)
    make_cityscapes_tree(tmp_path, "test", n=2, city="berlin", label_ids=False)
    prepare("cityscapes", tmp_path, progress=False)
    assert len(Cityscapes(tmp_path)) == 2
    v = Cityscapes(tmp_path, "val")
    assert v[0]["name"] == "lindau_000000_000019"
    np.testing.assert_array_equal(v[0]["label"].numpy(), reference_map(val[0], CS_TRAIN_LABEL_IDS))
    t = Cityscapes(tmp_path, "test")
    assert len(t) == 2 and (t[1]["label"] == 255).all() and t[1]["label"].shape == (32, 64)
    assert len(Cityscapes(tmp_path).class_stats()) == 2
    with pytest.raises(ValueError, match="train split only"):
        v.class_stats()
    with pytest.raises(ValueError, match="split must be one of"):
        Cityscapes(tmp_path, "extra")


def test_missing_folders_and_unprepared_data_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"dataset root {tmp_path / 'x'} does not exist"):
        GTA5(tmp_path / "x")
    make_gta_tree(tmp_path, n=2)
    with pytest.raises(FileNotFoundError, match=rf"no \*_labelTrainIds.png labels in {tmp_path / 'labels'}: run data_scripts/prepare_gta.py {tmp_path} first"):
        GTA5(tmp_path)
    prepare("gta", tmp_path, progress=False)
    Image.new("RGB", (64, 32)).save(tmp_path / "images" / "00007.png")
    with pytest.raises(FileNotFoundError, match=r"1 of 3 images have no trainIds label \(first: .*00007_labelTrainIds.png\)"):
        GTA5(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"folder {tmp_path / 'RGB'} not found"):
        Synthia(tmp_path)
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        Cityscapes(tmp_path)


def test_stale_or_missing_stats_are_reported(gta):
    root, _ = gta
    stats_path = root / "sample_class_stats.json"
    entries = json.loads(stats_path.read_text())
    stats_path.write_text(json.dumps(entries[:3]))
    with pytest.raises(DatasetError, match=r"stale class statistics .*lists 3 files but the dataset has 4 labelled samples; re-run data_scripts/prepare_gta.py"):
        GTA5(root).class_stats()
    entries[0]["file"] = "labels/99999_labelTrainIds.png"
    stats_path.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=r"1 labels are not listed \(first: labels/00001_labelTrainIds.png\)"):
        GTA5(root).class_stats()
    stats_path.write_text("{not json")
    with pytest.raises(DatasetError, match="cannot parse class statistics"):
        GTA5(root).class_stats()
    stats_path.unlink()
    with pytest.raises(FileNotFoundError, match=f"class statistics {stats_path} not found"):
        GTA5(root).class_stats()


def test_corrupt_files_at_load_time_are_named(gta):
    root, _ = gta
    (root / "labels" / "00002_labelTrainIds.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="cannot read label .*00002_labelTrainIds.png"):
        GTA5(root)[1]
    Image.new("L", (10, 10)).save(root / "labels" / "00003_labelTrainIds.png")
    with pytest.raises(DatasetError, match=r"label .*00003_labelTrainIds.png is \(10, 10\) .* but image .*00003.png is \(32, 64\)"):
        GTA5(root)[2]


@dataclass(frozen=True)
class _Spec:
    name: str
    domain: str | None = None
    root: str | None = None
    split: str = "train"
    size: tuple[int, int] | None = None
    length: int | None = None


def test_build_dataset_dispatch(gta):
    root, _ = gta
    data = build_dataset(_Spec("gta", root=str(root), size=(16, 64), length=3))
    assert len(data) == 3 and data[0]["image"].shape == (3, 16, 32) and data[0]["label"].shape == (16, 32)
    assert data.class_stats() == GTA5(root).class_stats()[:3]
    plain = build_dataset({"name": "gta", "root": root})
    assert isinstance(plain, GTA5) and len(plain) == 4
    mini = build_dataset(_Spec("miniscapes", domain="sim", split="val", size=(16, 32), length=5))
    assert isinstance(mini, Miniscapes) and len(mini) == 5 and mini[0]["image"].shape == (3, 16, 32)
    np.testing.assert_array_equal(mini[1]["label"].numpy(), Miniscapes("sim", "val", size=(16, 32), length=5).render(1)[1])
    with pytest.raises(ValueError, match="unknown dataset name 'kitti'"):
        build_dataset({"name": "kitti"})
    with pytest.raises(ValueError, match="needs a root"):
        build_dataset({"name": "cityscapes"})
    with pytest.raises(ValueError, match="needs a domain"):
        build_dataset({"name": "miniscapes"})


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".bmp", ".tif"])
def test_read_image_gives_pillows_pixels_for_every_format(tmp_path, suffix):
    """torchvision.io decodes PNG/JPEG/WebP (faster), Pillow the rest: the same RGB pixels,
    palette and alpha images included."""
    import numpy as np
    from PIL import Image

    from cluda_kit.data.datasets import read_image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (9, 13, 4), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (9, 13), dtype=np.uint8)).convert("P")]
    for i, image in enumerate(images):
        if suffix == ".jpg" and image.mode != "RGB":  # JPEG holds RGB only
            image = image.convert("RGB")
        path = tmp_path / f"{i}{suffix}"
        image.save(path)
        with Image.open(path) as im:
            want = np.asarray(im.convert("RGB"))
        got = read_image(path)
        assert got.dtype == torch.uint8 and np.array_equal(got.permute(1, 2, 0).numpy(), want), (suffix, image.mode)
