from __future__ import annotations

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import labels as cs_labels

from cluda_kit.data import labels as L

# docs/method.md §3: the numbers the maps must reproduce
GTA_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
SYNTHIA_IDS = [3, 4, 2, 21, 5, 7, 15, 9, 6, 16, 1, 10, 17, 8, 18, 19, 20, 12, 11]
NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
         "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
         "bicycle"]
INT_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


def test_constants():
    assert list(L.CLASSES) == NAMES
    assert L.NUM_CLASSES == 19 and L.IGNORE_INDEX == 255
    assert list(L.THING_CLASSES) == [6, 7, 11, 12, 13, 14, 15, 16, 17, 18]
    assert list(L.SYNTHIA16) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
    assert list(L.SYNTHIA13) == [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]


def test_palette_matches_cityscapesscripts():
    assert L.PALETTE.shape == (19, 3) and L.PALETTE.dtype == np.uint8
    seen = 0
    for lab in cs_labels:
        if 0 <= lab.trainId < 255:
            assert tuple(L.PALETTE[lab.trainId]) == lab.color, lab.name
            assert L.CLASSES[lab.trainId] == lab.name
            seen += 1
    assert seen == 19


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_cityscapes_map_against_cityscapesscripts(dtype):
    ids = np.array([lab.id for lab in cs_labels], dtype=dtype)  # includes license plate -1
    got = L.cityscapes_to_train_ids(ids)
    assert got.dtype == np.uint8 and got.shape == ids.shape
    for lab, g in zip(cs_labels, got):
        want = lab.trainId if 0 <= lab.trainId < 255 else 255
        assert g == want, (lab.name, lab.id, g)
    assert L.cityscapes_to_train_ids(np.array([-1]))[0] == 255  # license plate


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_cityscapes_map_golden_numbers(dtype):
    ids = np.arange(0, 120).astype(dtype)
    got = L.cityscapes_to_train_ids(ids)
    want = np.full(120, 255)
    want[GTA_IDS] = np.arange(19)
    np.testing.assert_array_equal(got, want)


def test_maps_keep_shape_and_accept_views_and_tensors():
    rng = np.random.default_rng(0)
    raw = rng.integers(-3, 40, size=(4, 5, 6)).astype(np.int32)
    ref = np.vectorize(lambda i: L.CITYSCAPES_ID_TO_TRAIN_ID.get(int(i), 255))(raw)
    np.testing.assert_array_equal(L.cityscapes_to_train_ids(raw), ref)
    view = raw[:, ::2, ::-1]
    np.testing.assert_array_equal(L.cityscapes_to_train_ids(view), ref[:, ::2, ::-1])
    np.testing.assert_array_equal(L.cityscapes_to_train_ids(torch.from_numpy(raw)), ref)
    u16 = rng.integers(0, 30, size=(7, 3)).astype(np.uint16)
    ref16 = np.vectorize(lambda i: L.SYNTHIA_ID_TO_TRAIN_ID.get(int(i), 255))(u16)
    np.testing.assert_array_equal(L.synthia_to_train_ids(u16), ref16)


def test_unknown_ids_map_to_ignore_or_raise_when_strict():
    bad = np.array([7, 34, 1000, -5, 2**40], dtype=np.int64)
    np.testing.assert_array_equal(L.cityscapes_to_train_ids(bad), [0, 255, 255, 255, 255])
    with pytest.raises(ValueError, match=r"\[-5, 34, 1000, 1099511627776\]"):
        L.cityscapes_to_train_ids(bad, strict=True)
    known = np.array([lab.id for lab in cs_labels])
    assert L.cityscapes_to_train_ids(known, strict=True).shape == known.shape
    with pytest.raises(ValueError, match=r"\[23, 60000\]"):
        L.synthia_to_train_ids(np.array([1, 23, 60000], dtype=np.uint16), strict=True)
    with pytest.raises(ValueError, match=r"\[19\]"):
        L.train_ids_to_cityscapes(np.array([0, 19, 255]), strict=True)
    with pytest.raises(TypeError, match="dtype float"):
        L.cityscapes_to_train_ids(np.array([7.0]))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_synthia_map_golden_numbers(dtype):
    ids = np.arange(0, 40).astype(dtype)
    got = L.synthia_to_train_ids(ids)
    want = np.full(40, 255)
    want[SYNTHIA_IDS] = np.arange(19)
    np.testing.assert_array_equal(got, want)
    # named spot checks: SYNTHIA 3 road, 1 sky, 10 pedestrian -> person, 21 wall, 22 lane marking ignored
    assert list(L.synthia_to_train_ids(np.array([3, 1, 10, 21, 22, 0]))) == [0, 10, 11, 3, 255, 255]
    # the SYNTHIA ids of the classes SYNTHIA never contains: terrain 16, truck 18, train 20
    assert list(L.synthia_to_train_ids(np.array([16, 18, 20]))) == list(L.SYNTHIA_MISSING) == [9, 14, 16]


def test_train_ids_to_cityscapes_roundtrip():
    t = np.arange(19, dtype=np.uint8)
    cs = L.train_ids_to_cityscapes(t)
    np.testing.assert_array_equal(cs, GTA_IDS)
    np.testing.assert_array_equal(L.cityscapes_to_train_ids(cs), t)
    assert list(L.train_ids_to_cityscapes(np.array([255, 19, 200]))) == [0, 0, 0]


def test_colorize():
    lab = np.array([[0, 13, 255], [18, 19, 5]], dtype=np.uint8)
    rgb = L.colorize(lab)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (128, 64, 128)  # road
    assert tuple(rgb[0, 1]) == (0, 0, 142)  # car
    assert tuple(rgb[0, 2]) == (0, 0, 0) and tuple(rgb[1, 1]) == (0, 0, 0)  # ignore / out of range
    np.testing.assert_array_equal(L.colorize(torch.from_numpy(lab.astype(np.int64))), rgb)
    np.testing.assert_array_equal(L.colorize(lab.astype(np.int16) - 300)[0, 0], (0, 0, 0))
    batch = np.stack([lab, lab])
    assert L.colorize(batch).shape == (2, 2, 3, 3)
