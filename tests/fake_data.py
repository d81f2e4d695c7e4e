"""Tiny raw dataset trees in the exact download formats, written without the code under test.

* GTA5: ``images/NNNNN.png`` RGB, ``labels/NNNNN.png`` palette ("P") PNG of Cityscapes labelIds;
* SYNTHIA-RAND-CITYSCAPES: ``RGB/NNNNNNN.png``, ``GT/LABELS/NNNNNNN.png`` 16-bit RGB with the class id
  in R and instance ids in G (encoded here by a hand-written PNG encoder, independent of pypng/OpenCV);
* Cityscapes: ``leftImg8bit/{split}/{city}/{city}_NNNNNN_000019_leftImg8bit.png`` and
  ``gtFine/{split}/{city}/..._gtFine_labelIds.png`` and/or ``..._gtFine_polygons.json``.

The reference maps below are typed in from docs/method.md §3, not taken from the library.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# docs/method.md §3: GTA5 / Cityscapes labelIds 7,8,11,... -> trainIds 0..18;
# SYNTHIA ids 3,4,2,... -> 0..18
CS_TRAIN_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
SYNTHIA_TRAIN_IDS = [3, 4, 2, 21, 5, 7, 15, 9, 6, 16, 1, 10, 17, 8, 18, 19, 20, 12, 11]


def reference_map(raw: np.ndarray, order: list[int]) -> np.ndarray:
    """Slow per-pixel reference: raw id -> trainId via ``order``, everything else 255."""
    out = np.full(raw.shape, 255, dtype=np.uint8)
    for (y, x), v in np.ndenumerate(raw):
        if int(v) in order:
            out[y, x] = order.index(int(v))
    return out


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def random_ids(rng: np.random.Generator, h: int, w: int, ids: list[int], block: int = 8) -> np.ndarray:
    """A blocky map of ids drawn from ``ids`` (blocks of block x block pixels)."""
    coarse = rng.choice(np.array(ids), size=(-(-h // block), -(-w // block)))
    return np.kron(coarse, np.ones((block, block), dtype=coarse.dtype))[:h, :w]


def save_png(path: Path, img: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def save_palette_png(path: Path, ids: np.ndarray) -> Path:
    img = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
    img.putpalette([(7 * i) % 256 for i in range(768)])
    return save_png(path, img)


def encode_png16_rgb(arr: np.ndarray) -> bytes:
    """A minimal PNG encoder: 16-bit RGB, no interlace, filter 0 on every row."""
    assert arr.dtype == np.uint16 and arr.ndim == 3 and arr.shape[2] == 3
    h, w, _ = arr.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = arr.astype(">u2").reshape(h, w * 3)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def make_gta_tree(root: Path, n: int = 3, h: int = 32, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """GTA5 tree with ``n`` frames; returns the raw labelId maps (all ids 0..33 can occur)."""
    rng = np.random.default_rng(seed)
    maps = []
    for i in range(1, n + 1):
        ids = random_ids(rng, h, w, list(range(34)))
        save_png(root / "images" / f"{i:05d}.png", Image.fromarray(random_image(rng, h, w)))
        save_palette_png(root / "labels" / f"{i:05d}.png", ids)
        maps.append(ids)
    return maps


def make_synthia_tree(root: Path, n: int = 3, h: int = 32, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """SYNTHIA tree; R = class id in 0..22, G = random instance ids (to catch channel mix-ups)."""
    rng = np.random.default_rng(seed)
    maps = []
    for i in range(n):
        ids = random_ids(rng, h, w, list(range(23)))
        raw = np.stack([ids, rng.integers(0, 3000, (h, w)), np.zeros((h, w))], axis=-1).astype(np.uint16)
        save_png(root / "RGB" / f"{i:07d}.png", Image.fromarray(random_image(rng, h, w)))
        path = root / "GT" / "LABELS" / f"{i:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png16_rgb(raw))
        maps.append(ids)
    return maps


def cityscapes_base(city: str, i: int) -> str:
    return f"{city}_{i:06d}_000019"


def make_cityscapes_tree(
    root: Path,
    split: str = "train",
    n: int = 3,
    h: int = 32,
    w: int = 64,
    seed: int = 0,
    city: str = "aachen",
    label_ids: bool = True,
) -> list[np.ndarray]:
    """Cityscapes split with ``n`` frames and ``_gtFine_labelIds.png`` (if ``label_ids``); returns the id maps."""
    rng = np.random.default_rng(seed)
    valid = list(range(34))
    maps = []
    for i in range(n):
        base = cityscapes_base(city, i)
        ids = random_ids(rng, h, w, valid)
        save_png(root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png", Image.fromarray(random_image(rng, h, w)))
        if label_ids:
            save_png(root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png", Image.fromarray(ids.astype(np.uint8)))
        maps.append(ids)
    return maps


def write_polygons(path: Path, h: int, w: int, objects: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"imgHeight": h, "imgWidth": w, "objects": objects}))
    return path


def truncate(path: Path, keep: float = 0.6) -> None:
    """Cut a file to ``keep`` of its bytes (a broken download)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
