"""THE label table: the 19 Cityscapes training classes and the raw-id maps of every source.

Everything label-related in the kit goes through this module:

- ``CLASSES`` / ``NUM_CLASSES`` / ``PALETTE`` / ``IGNORE_INDEX``: the 19 Cityscapes trainIds
  (road=0 ... bicycle=18), their official colours and the ignore label 255, all read from
  ``cityscapesscripts.helpers.labels`` (nothing is retyped here).
- ``cityscapes_to_train_ids``: Cityscapes labelIds -> trainIds. GTA5 labels are Cityscapes
  labelIds, so the same map serves GTA5: 7,8,11,12,13,17,19,20,21,22,23,24,25,26,27,28,31,32,33
  -> 0..18, every other id (unlabeled 0, ego vehicle 1, ..., parking 9, caravan 29, trailer 30,
  license plate -1) -> 255.
- ``synthia_to_train_ids``: SYNTHIA-RAND-CITYSCAPES class ids (the R channel of its 16-bit label
  PNGs) -> trainIds (docs/method.md §3):

  ======  ==============  =======================
  SYNTHIA  SYNTHIA name    trainId
  ======  ==============  =======================
  1       sky             10 sky
  2       building        2 building
  3       road            0 road
  4       sidewalk        1 sidewalk
  5       fence           4 fence
  6       vegetation      8 vegetation
  7       pole            5 pole
  8       car             13 car
  9       traffic sign    7 traffic sign
  10      pedestrian      11 person
  11      bicycle         18 bicycle
  12      motorcycle      17 motorcycle
  15      traffic light   6 traffic light
  16      terrain         9 terrain   (never occurs)
  17      rider           12 rider
  18      truck           14 truck    (never occurs)
  19      bus             15 bus
  20      train           16 train    (never occurs)
  21      wall            3 wall
  ======  ==============  =======================

  The remaining SYNTHIA ids (0 void, 13 parking-slot, 14 road-work, 22 lane-marking) -> 255.
  Because terrain (9), truck (14) and train (16) never occur in SYNTHIA, Synthia->Cityscapes is
  reported on ``SYNTHIA16`` (all but 9, 14, 16) and ``SYNTHIA13`` (also without wall 3, fence 4,
  pole 5).

All maps are vectorised look-up tables: they accept numpy arrays (or anything ``np.asarray``
understands, e.g. CPU tensors) of any integer dtype and shape and return ``uint8`` arrays of the
same shape. Ids outside a map become 255; with ``strict=True`` they raise a ``ValueError`` that
lists them instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

IGNORE_INDEX = 255
NUM_CLASSES = 19

_TRAIN_LABELS = sorted(
    (lab for lab in _CS_LABELS if 0 <= lab.trainId < IGNORE_INDEX), key=lambda lab: lab.trainId
)
if [lab.trainId for lab in _TRAIN_LABELS] != list(range(NUM_CLASSES)):
    raise RuntimeError(
        "cityscapesscripts.helpers.labels: expected trainIds 0..18 exactly once each, got "
        f"{[lab.trainId for lab in _TRAIN_LABELS]}"
    )

#: The 19 class names in trainId order (road, sidewalk, ..., bicycle).
CLASSES: tuple[str, ...] = tuple(lab.name for lab in _TRAIN_LABELS)
#: (19, 3) uint8 official Cityscapes colours in trainId order.
PALETTE: np.ndarray = np.array([lab.color for lab in _TRAIN_LABELS], dtype=np.uint8)
PALETTE.setflags(write=False)
#: "Thing" classes (countable objects) used by the ImageNet feature distance (docs/method.md §4).
THING_CLASSES: tuple[int, ...] = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)
#: trainIds never present in SYNTHIA: terrain, truck, train.
SYNTHIA_MISSING: tuple[int, ...] = (9, 14, 16)
#: The 16 trainIds of the Synthia->Cityscapes protocol (drop terrain 9, truck 14, train 16).
SYNTHIA16: tuple[int, ...] = tuple(c for c in range(NUM_CLASSES) if c not in SYNTHIA_MISSING)
#: The 13 trainIds of the Synthia->Cityscapes protocol (also drop wall 3, fence 4, pole 5).
SYNTHIA13: tuple[int, ...] = tuple(c for c in SYNTHIA16 if c not in (3, 4, 5))

#: Cityscapes (and GTA5) labelId -> trainId for every labelId cityscapesscripts knows
#: (ignored classes map to 255; the license plate's trainId -1 is normalised to 255).
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    lab.id: (lab.trainId if 0 <= lab.trainId < IGNORE_INDEX else IGNORE_INDEX) for lab in _CS_LABELS
}
#: trainId -> Cityscapes labelId (for writing results in the official format).
TRAIN_ID_TO_CITYSCAPES_ID: dict[int, int] = {lab.trainId: lab.id for lab in _TRAIN_LABELS}

#: SYNTHIA-RAND-CITYSCAPES class id -> trainId, from the list in docs/method.md §3
#: 3,4,2,21,5,7,15,9,6,16,1,10,17,8,18,19,20,12,11 -> 0..18; ids 0..22 are the known SYNTHIA ids.
_SYNTHIA_ORDER = (3, 4, 2, 21, 5, 7, 15, 9, 6, 16, 1, 10, 17, 8, 18, 19, 20, 12, 11)
SYNTHIA_ID_TO_TRAIN_ID: dict[int, int] = {
    i: (_SYNTHIA_ORDER.index(i) if i in _SYNTHIA_ORDER else IGNORE_INDEX) for i in range(23)
}


class _LookUp:
    """A dense uint8 look-up table over integer ids with an explicit set of known ids.

    Ids in ``mapping`` map to their value, every other id to ``default``; ``strict`` calls raise on
    ids not in ``mapping``. uint8/uint16/int8/int16 inputs index a 2^8 / 2^16 table directly; other
    integer dtypes go through a masked gather over the table's id range.
    """

    def __init__(self, name: str, mapping: dict[int, int], default: int = IGNORE_INDEX) -> None:
        self.name = name
        self.default = default
        self.lo = min(mapping)
        self.hi = max(mapping)
        self.table = np.full(self.hi - self.lo + 1, default, dtype=np.uint8)
        self.known = np.zeros(self.hi - self.lo + 1, dtype=bool)
        for k, v in mapping.items():
            self.table[k - self.lo] = v
            self.known[k - self.lo] = True
        self._direct: dict[np.dtype, np.ndarray] = {}

    def _direct_table(self, dtype: np.dtype) -> np.ndarray:
        """Table indexed directly by the raw values of a <= 16-bit dtype (signed via a view)."""
        if dtype not in self._direct:
            info = np.iinfo(dtype)
            values = np.arange(info.min, info.max + 1, dtype=np.int64)
            inside = (values >= self.lo) & (values <= self.hi)
            table = np.full(values.size, self.default, dtype=np.uint8)
            table[inside] = self.table[values[inside] - self.lo]
            if info.min < 0:  # reorder so that the unsigned view of the input indexes it
                table = np.roll(table, info.min)
            self._direct[dtype] = table
        return self._direct[dtype]

    def __call__(self, a: Any, strict: bool = False) -> np.ndarray:
        arr = np.asarray(a)
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{self.name}: expected an integer id array, got dtype {arr.dtype}")
        if strict:
            ids = np.unique(arr)
            inside = (ids >= self.lo) & (ids <= self.hi)
            known = np.zeros(ids.shape, dtype=bool)
            known[inside] = self.known[ids[inside].astype(np.int64) - self.lo]
            if not known.all():
                raise ValueError(
                    f"{self.name}: unknown ids {ids[~known].tolist()}; expected ids among "
                    f"{(np.flatnonzero(self.known) + self.lo).tolist()}"
                )
        if arr.dtype.itemsize <= 2:
            unsigned = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
            return self._direct_table(arr.dtype)[unsigned]
        out = np.full(arr.shape, self.default, dtype=np.uint8)
        inside = (arr >= self.lo) & (arr <= self.hi)
        out[inside] = self.table[arr[inside].astype(np.int64) - self.lo]
        return out


_CS = _LookUp("cityscapes_to_train_ids", CITYSCAPES_ID_TO_TRAIN_ID)
_SYN = _LookUp("synthia_to_train_ids", SYNTHIA_ID_TO_TRAIN_ID)
_TO_CS = _LookUp(
    "train_ids_to_cityscapes",
    {**TRAIN_ID_TO_CITYSCAPES_ID, IGNORE_INDEX: 0},  # ignore -> 0 "unlabeled"
    default=0,
)


def cityscapes_to_train_ids(a: Any, strict: bool = False) -> np.ndarray:
    """Cityscapes / GTA5 labelIds (any shape, any integer dtype) -> uint8 trainIds, same shape.

    Known ignored ids (0..6, 9, 10, 14..16, 18, 29, 30, -1) and unknown ids give 255; with
    ``strict=True`` ids that cityscapesscripts does not know raise ``ValueError``.
    """
    return _CS(a, strict)


def synthia_to_train_ids(a: Any, strict: bool = False) -> np.ndarray:
    """SYNTHIA class ids (the R channel of its label PNGs) -> uint8 trainIds, same shape.

    Ids 0, 13, 14, 22 and unknown ids give 255; ``strict=True`` raises ``ValueError`` on ids
    outside SYNTHIA's 0..22.
    """
    return _SYN(a, strict)


def train_ids_to_cityscapes(a: Any, strict: bool = False) -> np.ndarray:
    """trainIds 0..18 -> uint8 Cityscapes labelIds (official result format), same shape.

    255 (ignore) and unknown values give 0 ("unlabeled"); ``strict=True`` raises ``ValueError``
    on values other than 0..18 and 255.
    """
    return _TO_CS(a, strict)


_COLOR_TABLE = np.zeros((256, 3), dtype=np.uint8)
_COLOR_TABLE[:NUM_CLASSES] = PALETTE


def colorize(label: Any) -> np.ndarray:
    """trainIds (..., H, W) of any integer dtype -> (..., H, W, 3) uint8 RGB in Cityscapes colours.

    255 (ignore) and any value outside 0..18 are black.
    """
    arr = np.asarray(label)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"colorize: expected an integer trainId array, got dtype {arr.dtype}")
    if arr.dtype == np.uint8:
        return _COLOR_TABLE[arr]
    out = np.zeros(arr.shape + (3,), dtype=np.uint8)
    inside = (arr >= 0) & (arr < NUM_CLASSES)
    out[inside] = PALETTE[arr[inside]]
    return out
