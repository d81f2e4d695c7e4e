"""Class tables: a label set's names, colours, label-file values and ignore label.

The kit's default is the 19 Cityscapes training classes (:func:`cityscapes_table`, from
``cluda_kit.data.labels``). A user's own label set is a small YAML or CSV file, named by the config
field ``data.classes`` and read by :func:`load_class_table`:

.. code-block:: yaml

    # classes.yaml: one entry per class, in training-id order (0, 1, ...)
    ignore_index: 255          # the training label that means "no label" (default 255)
    ignore_values: [0]         # label-file values that mean "no label" (optional)
    classes:
      - {name: background, color: [0, 0, 0], value: 1}   # value: what label files hold (default: the index)
      - {name: crop, color: [0, 200, 0], value: 2}

.. code-block:: text

    name,r,g,b,value          # CSV: a header, then one row per class; the value column is optional
    background,0,0,0,1
    crop,0,200,0,2

Label files of a ``folder`` dataset hold the ``value`` of each class (or ``ignore_values``, or the
ignore index); :meth:`ClassTable.to_train_ids` maps them to training ids 0..C-1 and refuses any
other value, naming the file. Predictions map back with :meth:`ClassTable.to_values` (for the
Cityscapes table: labelIds, which the official evaluator reads) and are coloured with
:meth:`ClassTable.colorize`.
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = ["ClassTable", "ClassTableError", "cityscapes_table", "load_class_table", "class_table_of"]


class ClassTableError(ValueError):
    """A class table file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class ClassTable:
    """A label set. ``names[i]``, ``colors[i]`` (RGB uint8) and ``values[i]`` (the value label
    files hold) describe training id i; ``ignore_values`` are label-file values meaning "no label",
    mapped to ``ignore_index``."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    values: tuple[int, ...]
    ignore_index: int = 255
    ignore_values: tuple[int, ...] = ()
    source: str = "cityscapes"

    def __post_init__(self) -> None:
        n = len(self.names)
        where = self.source
        if n == 0:
            raise ClassTableError(f"class table {where}: no classes")
        if len(set(self.names)) != n:
            dup = next(x for x in self.names if self.names.count(x) > 1)
            raise ClassTableError(f"class table {where}: the class name {dup!r} occurs twice")
        if len(self.colors) != n or len(self.values) != n:
            raise ClassTableError(f"class table {where}: {n} names but {len(self.colors)} colours and "
                                  f"{len(self.values)} values")
        if not 0 <= self.ignore_index <= 255 or self.ignore_index < n:
            raise ClassTableError(f"class table {where}: ignore_index {self.ignore_index} must be in "
                                  f"[{n}, 255] (training ids are 0..{n - 1})")
        if n > 255:
            raise ClassTableError(f"class table {where}: {n} classes; at most 255 fit an 8-bit label")
        taken = list(self.values) + list(self.ignore_values)
        if len(set(taken)) != len(taken):
            dup = next(x for x in taken if taken.count(x) > 1)
            raise ClassTableError(f"class table {where}: the label value {dup} is used twice")
        for v in taken:
            if not 0 <= v <= 255:
                raise ClassTableError(f"class table {where}: label value {v} is outside 0..255 (8-bit labels)")
        for name, c in zip(self.names, self.colors):
            if len(c) != 3 or not all(0 <= x <= 255 for x in c):
                raise ClassTableError(f"class table {where}: colour {list(c)} of {name!r} is not 3 values in 0..255")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def palette(self) -> np.ndarray:
        """(C, 3) uint8 RGB colours."""
        return np.asarray(self.colors, dtype=np.uint8).reshape(-1, 3)

    @functools.cached_property
    def _to_train(self) -> np.ndarray:
        """(256,) int16 lookup: label-file value -> training id, ignore, or -1 (unknown)."""
        table = np.full(256, -1, dtype=np.int16)
        table[list(self.ignore_values)] = self.ignore_index
        table[self.ignore_index] = self.ignore_index
        table[list(self.values)] = np.arange(self.num_classes)
        return table

    def to_train_ids(self, label: np.ndarray, where: str = "label") -> np.ndarray:
        """Label-file values (H, W) uint8 -> training ids (H, W) uint8; a value the table does not
        know raises :class:`ClassTableError` naming ``where`` and the values."""
        label = np.asarray(label)
        if label.dtype != np.uint8:
            raise ClassTableError(f"{where}: expected 8-bit label values, got dtype {label.dtype}")
        out = self._to_train[label]
        if (out < 0).any():
            bad = np.unique(label[out < 0])[:5].tolist()
            raise ClassTableError(f"{where} holds the label values {bad}, which the class table "
                                  f"{self.source} does not know (values {list(self.values)}, ignore "
                                  f"{sorted({*self.ignore_values, self.ignore_index})})")
        return out.astype(np.uint8)

    def to_values(self, train_ids: np.ndarray) -> np.ndarray:
        """Training ids (..., H, W) -> label-file values uint8 (ignore and unknown ids -> the first
        ignore value, else the ignore index)."""
        arr = np.asarray(train_ids)
        fill = self.ignore_values[0] if self.ignore_values else self.ignore_index
        table = np.full(256, fill, dtype=np.uint8)
        table[: self.num_classes] = self.values
        inside = (arr >= 0) & (arr < 256)
        return np.where(inside, table[np.clip(arr, 0, 255)], fill).astype(np.uint8)

    def colorize(self, train_ids: np.ndarray) -> np.ndarray:
        """Training ids (..., H, W) -> (..., H, W, 3) uint8 RGB; ignore and unknown ids are black."""
        arr = np.asarray(train_ids)
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = self.palette
        inside = (arr >= 0) & (arr < self.num_classes)
        out = table[np.where(inside, arr, 255).astype(np.int64)]
        return out


@functools.lru_cache(maxsize=1)
def cityscapes_table() -> ClassTable:
    """The 19 Cityscapes training classes; label-file values are Cityscapes labelIds (what GTA5
    labels and the official evaluator use), every other labelId is ignore."""
    from cityscapesscripts.helpers.labels import labels as cs_labels

    from .labels import CLASSES, IGNORE_INDEX, PALETTE

    by_train = {lab.trainId: lab.id for lab in cs_labels if 0 <= lab.trainId < len(CLASSES)}
    values = tuple(by_train[i] for i in range(len(CLASSES)))
    ignore = tuple(sorted(lab.id for lab in cs_labels if 0 <= lab.id <= 255 and lab.id not in values))
    return ClassTable(names=CLASSES, colors=tuple(tuple(int(x) for x in c) for c in PALETTE), values=values,
                      ignore_index=IGNORE_INDEX, ignore_values=ignore, source="cityscapes")


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ClassTableError(f"{where}: expected an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ClassTableError(f"{where}: expected an integer, got {value!r}") from None


def _from_rows(rows: list[dict], path: Path, ignore_index: int, ignore_values: list) -> ClassTable:
    names, colors, values = [], [], []
    for i, row in enumerate(rows):
        where = f"class table {path}, class {i}"
        if not isinstance(row, dict) or not row.get("name"):
            raise ClassTableError(f"{where}: needs a name (got {row!r})")
        color = row.get("color")
        if color is None:
            raise ClassTableError(f"{where} ({row['name']}): needs a colour [r, g, b]")
        if not isinstance(color, (list, tuple)):
            raise ClassTableError(f"{where} ({row['name']}): colour {color!r} is not [r, g, b]")
        names.append(str(row["name"]))
        colors.append(tuple(_int(c, f"{where} colour") for c in color))
        values.append(_int(row.get("value", i), f"{where} value"))
    return ClassTable(names=tuple(names), colors=tuple(colors), values=tuple(values),
                      ignore_index=_int(ignore_index, f"class table {path}: ignore_index"),
                      ignore_values=tuple(_int(v, f"class table {path}: ignore_values") for v in ignore_values),
                      source=str(path))


def load_class_table(path: str | Path) -> ClassTable:
    """Read a class table from a ``.yaml``/``.yml`` or ``.csv`` file (format in the module doc).
    Errors name the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class table {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ClassTableError(f"class table {path}: not valid YAML ({err})") from None
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
            raise ClassTableError(f"class table {path}: expected a mapping with a 'classes' list")
        unknown = set(data) - {"classes", "ignore_index", "ignore_values"}
        if unknown:
            raise ClassTableError(f"class table {path}: unknown keys {sorted(unknown)}")
        return _from_rows(data["classes"], path, data.get("ignore_index", 255), data.get("ignore_values") or [])
    if suffix == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            need = {"name", "r", "g", "b"}
            if not reader.fieldnames or not need <= set(reader.fieldnames):
                raise ClassTableError(f"class table {path}: the header must hold name,r,g,b (and "
                                      f"optionally value); got {reader.fieldnames}")
            rows = [{"name": r["name"], "color": [r["r"], r["g"], r["b"]],
                     **({"value": r["value"]} if r.get("value") not in (None, "") else {})} for r in reader]
        return _from_rows(rows, path, 255, [])
    raise ClassTableError(f"class table {path}: expected a .yaml, .yml or .csv file")


def class_table_of(cfg: Any) -> ClassTable:
    """The class table of a config: ``data.classes`` (a file) or the Cityscapes 19; its size must
    equal ``model.num_classes``."""
    from ..config import ConfigError

    path = getattr(cfg.data, "classes", "")
    try:
        table = load_class_table(path) if path else cityscapes_table()
    except (ClassTableError, FileNotFoundError) as err:
        raise ConfigError(f"data.classes: {err}") from None
    if table.num_classes != cfg.model.num_classes:
        raise ConfigError(f"model.num_classes: {cfg.model.num_classes}, but the class table "
                          f"{table.source} has {table.num_classes} classes")
    return table
