"""miniscapes: procedural Cityscapes-like street scenes in three domains (DESIGN.md, "miniscapes").

Every sample is a perspective street scene in the 19 Cityscapes trainIds (255 = ignore): sky on
top, a road running to a vanishing point, sidewalks, verges of terrain or vegetation, facade
blocks (buildings, walls, fences, hedges, tree lines) along both sides, side streets with
crosswalks and traffic lights, street lamps and sign poles, avenue trees, pedestrians, cyclists
and motorcyclists (rider + bicycle / motorcycle), moving and parked cars, trucks, buses and
trams, all placed in metres on a ground plane and projected through a pinhole camera, so sizes
follow distance. Class frequencies are long-tailed: road, building, vegetation, sky and car cover
most pixels, while truck, bus, train, motorcycle and rider appear in a minority of images.

Domains (same generator, different statistics and appearance):

- ``game`` (GTA-like source): flat, saturated per-class colours with small per-instance jitter,
  hard edges, clean per-face lighting.
- ``sim`` (SYNTHIA-like source): a higher camera pitched down, its own palette, window patterns,
  a sky gradient; terrain (9), truck (14) and train (16) never occur.
- ``real`` (Cityscapes-like target): per-class palette changes relative to the sources (facades,
  cars, clothes and signs drawn from varied real-world palettes, greyer stuff classes),
  textures (facade windows, foliage clumps, asphalt grain, blotches, clouds), per-class shading
  gradients, cast shadows on the ground, illumination gradients, white balance, vignetting,
  blur and sensor noise; an ego-vehicle hood at the bottom labelled 255 (as in Cityscapes), more
  pedestrians, cyclists and buildings, less terrain and sky.

``gap`` (default ``GAP`` = 1.5, calibrated with the demo's training runs, below) scales how far ``real``
looks from ``game``. Every appearance parameter of ``real`` is a linear interpolation from the
game style towards a real-world style: textures, shading, lighting, blur and noise by ``gap``,
colours by ``COLOUR_PER_GAP * gap`` (0.5; the full real-world palette is reached at gap 2).
Colours are clipped to 0..255 and amplitudes to >= 0, so the effect is monotone and smooth in
``gap``; ``gap=0`` renders a ``real`` layout byte-identically to ``game``. Layouts never depend
on ``gap``. A proxy measurement (64x128 scenes, a 155 k-parameter dilated CNN trained 1500
steps of batch 8 on 800 game scenes; pixel accuracy / mIoU on 120 real val scenes; in-domain
game val: 0.957 / 0.729 plain, 0.941 / 0.608 with strong colour jitter)::

    gap                    0.0          0.5          1.0          1.5          2.0
    plain source-only      0.956/0.707  0.931/0.565  0.795/0.311  0.593/0.160  0.424/0.087
    colour-jitter source   0.940/0.580  0.931/0.529  0.879/0.393  0.736/0.235  0.549/0.129

Calibration with the demo itself (MiT-nano + DAFormer head, 128x256 crops, lr 1.5e-3, mIoU on
100 real val scenes, seed 0; README "Results"): at 600 iterations source-only / CLUDA / target
oracle reach 32.2 / 32.7 / ~38.5 at gap 1.0, 24.7 / 27.0 / 33.6 at gap 1.25 and 18.1 / 22.7 / 27.8
at gap 1.5. The adaptation gain grows with the gap while the target stays learnable (the oracle
falls because textures, noise and blur grow with the gap too), so the default is frozen at 1.5.

Determinism: sample ``i`` of ``(domain, split, seed)`` draws its layout and its appearance from
two numpy generators seeded by ``SeedSequence([domain, split, seed, i])`` (stable codes, no
Python ``hash``), so it is the same on every machine and run; train and val use different split
codes and therefore different scenes. The layout lives in normalised image coordinates (u across
the width, v down the height, both in [0, 1]) for an image of aspect 1:2 and is rasterised at
any ``size``; textures scale with the image height; thin parts (poles, lights, sign plates) are
drawn at least 1 pixel wide.

Speed (CPU time of one thread on a shared 2-core machine, numpy + PIL, mean over 200 scenes,
image + label): 256x512 -- game ~4 ms, sim ~6.5 ms, real ~8.5 ms; labels only (``label_only``,
used by ``class_stats``) ~3 ms, of which ~1.5 ms is the Python layout sampler. 128x256 -- game
~3 ms, sim ~3.8 ms, real ~4 ms.

Rare class sampling needs ``class_stats()``: the pixel counts of every sample (2000 label
renders for a train split, ~7 s on one core). They are computed once, in DataLoader workers when
the split is large, and kept in a JSON cache (``$CLUDA_KIT_CACHE``, else
``$XDG_CACHE_HOME/cluda_kit``, else ``~/.cache/cluda_kit``; ``CLUDA_KIT_CACHE=off`` disables it)
keyed by the dataset's parameters and a hash of this file, so a change of the generator can
never read stale counts -- the role of DAFormer's ``sample_class_stats.json`` for real datasets.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cluda_kit.data.labels import IGNORE_INDEX, NUM_CLASSES
from cluda_kit.fileio import atomic_write_text

__all__ = [
    "COLOUR_PER_GAP",
    "DOMAINS",
    "GAP",
    "Miniscapes",
    "Scene",
    "Style",
    "domain_style",
    "render_scene",
    "sample_scene",
    "scene_rngs",
]

DOMAINS = ("game", "sim", "real")
#: Default appearance gap of ``real`` (0 = looks like ``game``; see the module docstring).
GAP = 1.5
#: Fraction of the way from the game palette to the real-world palette per unit of ``gap``.
COLOUR_PER_GAP = 0.5
_SPLITS = {"train": 2000, "val": 200, "test": 200}

# trainIds, for readability
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTO, BIKE = range(11, 19)

# materials: what a surface is made of inside its class (appearance only; the label is the class)
M_BASE, M_GLASS, M_TYRE, M_MARK, M_LAMP, M_SKIN, M_PANTS, M_TRUNK, M_FACE, M_HOOD, M_DARK, M_TAIL = range(12)
_N_MAT = 12
# slot flags: which surfaces get facade windows
F_NONE, F_SIDE, F_FRONT = 0, 1, 2

# --------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Profile:
    """Layout statistics of one domain (metres, probabilities, Poisson rates)."""

    cam_height: tuple[float, float]
    horizon: tuple[float, float]  # image row of the horizon, normalised
    focal: tuple[float, float]  # horizontal focal length in image widths
    blocks: tuple[float, float, float, float, float]  # building, wall, fence, vegetation, open
    building_height: tuple[float, float]
    p_verge: float
    verge_terrain: float  # P(verge is terrain | verge), else vegetation (or sidewalk w/o terrain)
    beyond_terrain: float  # P(ground behind the facades is terrain)
    p_far_building: float
    p_intersection: float
    cars: float  # Poisson rate of moving cars
    p_parked: float  # P(a row of parked cars on a side)
    persons: float
    p_avenue: float  # P(avenue trees on a side)
    p_lamps: float
    signs: float
    p_truck: float
    p_bus: float
    p_train: float
    p_moto: float
    p_cyclist: float
    p_parked_bikes: float
    ego_hood: bool
    terrain: bool = True  # False: no terrain, truck or train (SYNTHIA-like)


_PROFILES = {
    "game": _Profile(
        cam_height=(1.3, 1.9), horizon=(0.40, 0.50), focal=(0.48, 0.60),
        blocks=(0.44, 0.12, 0.12, 0.20, 0.12), building_height=(6.0, 22.0),
        p_verge=0.55, verge_terrain=0.7, beyond_terrain=0.55, p_far_building=0.45,
        p_intersection=0.45, cars=4.5, p_parked=0.55, persons=4.0, p_avenue=0.35, p_lamps=0.75,
        signs=2.6, p_truck=0.22, p_bus=0.15, p_train=0.08, p_moto=0.18, p_cyclist=0.18,
        p_parked_bikes=0.15, ego_hood=False,
    ),
    "sim": _Profile(
        cam_height=(2.5, 6.5), horizon=(0.28, 0.40), focal=(0.45, 0.58),
        blocks=(0.55, 0.12, 0.10, 0.15, 0.08), building_height=(8.0, 28.0),
        p_verge=0.4, verge_terrain=0.0, beyond_terrain=0.0, p_far_building=0.6,
        p_intersection=0.55, cars=5.0, p_parked=0.6, persons=8.0, p_avenue=0.4, p_lamps=0.7,
        signs=2.6, p_truck=0.0, p_bus=0.18, p_train=0.0, p_moto=0.22, p_cyclist=0.3,
        p_parked_bikes=0.25, ego_hood=False, terrain=False,
    ),
    "real": _Profile(
        cam_height=(1.2, 1.6), horizon=(0.38, 0.46), focal=(0.48, 0.60),
        blocks=(0.60, 0.12, 0.10, 0.12, 0.06), building_height=(9.0, 28.0),
        p_verge=0.35, verge_terrain=0.5, beyond_terrain=0.3, p_far_building=0.6,
        p_intersection=0.5, cars=4.5, p_parked=0.75, persons=7.0, p_avenue=0.45, p_lamps=0.7,
        signs=3.0, p_truck=0.13, p_bus=0.1, p_train=0.07, p_moto=0.14, p_cyclist=0.28,
        p_parked_bikes=0.35, ego_hood=True,
    ),
}


@dataclass
class Scene:
    """A sampled layout: camera, painter-ordered primitives and surface slots.

    ``prims`` are ``(kind, slot, data)`` in drawing order (far to near): kind ``"poly"`` with
    ``data`` a list of normalised (u, v) points, ``"rect"`` with ``(u0, v0, u1, v1)`` drawn at
    least 1 px wide and high, ``"ellipse"`` with a bounding box ``(u0, v0, u1, v1)`` (at least
    1 px). Slot ``s`` is a surface with class ``slot_class[s]`` (trainId or 255), material,
    face shade, instance (for per-instance colours) and window flag. ``camera`` holds the
    projection and window geometry used by the appearance stage.
    """

    domain: str
    camera: dict[str, float]
    prims: list[tuple[str, int, Any]]
    slot_class: list[int]
    slot_material: list[int]
    slot_shade: list[float]
    slot_instance: list[int]
    slot_flag: list[int]
    n_instances: int


class _Builder:
    """Collects slots and primitives; objects go into depth-sorted groups."""

    def __init__(self, rng: np.random.Generator, cam: dict[str, float]) -> None:
        self.rng = rng
        self.cam = cam
        self.u_v, self.v_h = cam["u_v"], cam["v_h"]
        self.fx, self.fy, self.hc = cam["fx"], cam["fy"], cam["hc"]
        self.background: list[tuple[str, int, Any]] = []
        self.groups: list[tuple[float, int, list[tuple[str, int, Any]]]] = []
        self.current = self.background
        self.slots: dict[tuple[int, int, int, float, int], int] = {}
        self.slot_list: list[tuple[int, int, int, float, int]] = []
        self.n_inst = 0

    # random draws ------------------------------------------------------------------------
    def uni(self, a: float, b: float) -> float:
        return a + (b - a) * float(self.rng.random())

    def chance(self, p: float) -> bool:
        return float(self.rng.random()) < p

    def poisson(self, lam: float) -> int:
        return int(self.rng.poisson(lam))

    def pick(self, weights: tuple[float, ...]) -> int:
        x = float(self.rng.random()) * sum(weights)
        for k, w in enumerate(weights):
            x -= w
            if x < 0:
                return k
        return len(weights) - 1

    # slots and primitives ----------------------------------------------------------------
    def instance(self) -> int:
        self.n_inst += 1
        return self.n_inst - 1

    def slot(self, cls: int, inst: int, mat: int = M_BASE, shade: float = 1.0, flag: int = F_NONE) -> int:
        key = (cls, inst, mat, shade, flag)
        if key not in self.slots:
            self.slots[key] = len(self.slot_list)
            self.slot_list.append(key)
        return self.slots[key]

    def group(self, depth: float) -> None:
        """Start a new object group drawn in far-to-near order by ``depth``."""
        self.current = []
        self.groups.append((depth, len(self.groups), self.current))

    def P(self, X: float, Y: float, Z: float) -> tuple[float, float]:
        """Project a world point (X right, Y up, Z forward; metres) to normalised (u, v)."""
        return (self.u_v + self.fx * X / Z, self.v_h + self.fy * (self.hc - Y) / Z)

    def poly(self, slot: int, pts: list[tuple[float, float]]) -> None:
        self.current.append(("poly", slot, pts))

    def quad(self, slot: int, corners: list[tuple[float, float, float]]) -> None:
        self.current.append(("poly", slot, [self.P(*c) for c in corners]))

    def rect(self, slot: int, u0: float, v0: float, u1: float, v1: float) -> None:
        self.current.append(("rect", slot, (u0, v0, u1, v1)))

    def ellipse(self, slot: int, u0: float, v0: float, u1: float, v1: float) -> None:
        self.current.append(("ellipse", slot, (u0, v0, u1, v1)))

    def box(self, cls: int, inst: int, x0: float, x1: float, y0: float, y1: float, z0: float,
            z1: float, mat: int = M_BASE, side_mat: int | None = None, top_mat: int | None = None) -> None:
        """Visible faces of an axis-aligned box (camera at X=0, Y=hc, Z=0; needs z0 > 0)."""
        sun = self.cam["sun"]
        side_mat = mat if side_mat is None else side_mat
        top_mat = mat if top_mat is None else top_mat
        if x0 > 0:  # face at x0, normal -X
            s = self.slot(cls, inst, side_mat, 0.95 if sun < 0 else 0.72)
            self.quad(s, [(x0, y0, z0), (x0, y0, z1), (x0, y1, z1), (x0, y1, z0)])
        if x1 < 0:  # face at x1, normal +X
            s = self.slot(cls, inst, side_mat, 0.95 if sun > 0 else 0.72)
            self.quad(s, [(x1, y0, z0), (x1, y0, z1), (x1, y1, z1), (x1, y1, z0)])
        if y1 < self.hc:
            s = self.slot(cls, inst, top_mat, 1.12)
            self.quad(s, [(x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)])
        elif y0 > self.hc:
            s = self.slot(cls, inst, mat, 0.6)
            self.quad(s, [(x0, y0, z0), (x1, y0, z0), (x1, y0, z1), (x0, y0, z1)])
        s = self.slot(cls, inst, mat, 0.86)
        self.quad(s, [(x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0)])

    def front_rect(self, slot: int, x0: float, x1: float, y0: float, y1: float, z: float) -> None:
        """A camera-facing rectangle at depth z, at least 1 px in each direction."""
        u0, v1 = self.P(x0, y0, z)
        u1, v0 = self.P(x1, y1, z)
        self.rect(slot, u0, v0, u1, v1)

    def ground(self, slot: int, x0: float, x1: float, z0: float, z1: float) -> None:
        self.quad(slot, [(x0, 0.0, z0), (x1, 0.0, z0), (x1, 0.0, z1), (x0, 0.0, z1)])

    def scene(self, domain: str) -> Scene:
        prims = list(self.background)
        for _, _, group in sorted(self.groups, key=lambda g: (-g[0], g[1])):
            prims.extend(group)
        keys = self.slot_list
        return Scene(
            domain=domain,
            camera=dict(self.cam),
            prims=prims,
            slot_class=[k[0] for k in keys],
            slot_material=[k[2] for k in keys],
            slot_shade=[k[3] for k in keys],
            slot_instance=[k[1] for k in keys],
            slot_flag=[k[4] for k in keys],
            n_instances=self.n_inst,
        )


_Z_NEAR, _Z_FAR = 0.4, 2000.0


def _blob(b: _Builder, slot: int, X: float, Yc: float, Z: float, rx: float, ry: float, n: int = 14) -> None:
    """A noisy camera-facing blob (tree crown, bush) centred at (X, Yc, Z)."""
    radii = (0.78 + 0.44 * b.rng.random(n)).tolist()
    a0 = b.uni(0.0, 1.0)
    pts = []
    for k, rk in enumerate(radii):
        a = a0 + 2.0 * math.pi * k / n
        pts.append(b.P(X + rx * rk * math.cos(a), max(0.0, Yc + ry * rk * math.sin(a)), Z))
    b.poly(slot, pts)


def _tree(b: _Builder, X: float, Z: float, scale: float = 1.0) -> None:
    inst = b.instance()
    h = b.uni(2.2, 4.0) * scale
    rx, ry = b.uni(1.4, 3.0) * scale, b.uni(1.6, 3.2) * scale
    b.group(Z)
    b.front_rect(b.slot(VEG, inst, M_TRUNK), X - 0.15 * scale, X + 0.15 * scale, 0.0, h + 0.5 * ry, Z)
    _blob(b, b.slot(VEG, inst), X, h + ry * 0.8, Z, rx, ry)
    if b.chance(0.5):  # a second, darker lobe
        X2, Y2 = X + b.uni(-0.6, 0.6) * rx, h + ry * b.uni(1.2, 1.6)
        _blob(b, b.slot(VEG, inst, M_BASE, 0.88), X2, Y2, Z + 0.3, rx * 0.7, ry * 0.7, 10)


def _person(b: _Builder, X: float, Z: float, cls: int = PERSON, seated: bool = False, new_group: bool = True) -> None:
    """A camera-facing person billboard (head, torso, arms, legs) standing at (X, Z)."""
    inst = b.instance()
    if new_group:
        b.group(Z)
    h = b.uni(1.55, 1.95)
    w = 0.21 * h / 1.75
    y0 = 0.0
    if seated:  # riders sit at saddle height; legs hang down to the pedals
        y0 = 0.55
        h = h * 0.72
    body = b.slot(cls, inst)
    pants = b.slot(cls, inst, M_PANTS)
    skin = b.slot(cls, inst, M_SKIN)
    spread = b.uni(0.0, 0.12)
    leg_top = y0 + (0.0 if seated else 0.47 * h)
    leg_bot = 0.3 if seated else 0.0
    b.front_rect(pants, X - w * 0.85 - spread, X - w * 0.1, leg_bot, leg_top + 0.05, Z)
    b.front_rect(pants, X + w * 0.1, X + w * 0.85 + spread, leg_bot, leg_top + 0.05, Z)
    t0, t1 = leg_top, (y0 + 0.84 * h) if not seated else (y0 + 0.8 * h)
    b.quad(body, [(X - w * 0.9, t0, Z), (X + w * 0.9, t0, Z), (X + w * 1.1, t1, Z), (X - w * 1.1, t1, Z)])
    b.front_rect(body, X - w * 1.45, X - w * 1.05, t0 + 0.05 * h, t1 - 0.02, Z)
    b.front_rect(body, X + w * 1.05, X + w * 1.45, t0 + 0.05 * h, t1 - 0.02, Z)
    hr = 0.065 * (h if not seated else h / 0.72)
    cx, cy = b.P(X, t1 + hr * 1.1, Z)
    du, dv = b.fx * hr / Z, b.fy * hr * 1.15 / Z
    b.ellipse(skin, cx - du, cy - dv, cx + du, cy + dv)


def _bicycle_side(b: _Builder, X: float, Z: float, cls: int, along: bool) -> None:
    """A side-view two-wheeler. ``along``: parallel to the road (seen obliquely), else crossing."""
    inst = b.instance()
    r = 0.34 if cls == BIKE else 0.33
    length = 1.05 if cls == BIKE else 1.35
    tyre, frame = b.slot(cls, inst, M_TYRE), b.slot(cls, inst)
    spoke = b.slot(cls, inst, M_DARK)
    for k in (-0.5, 0.5):
        if along:
            zc = Z + k * length
            ua, _ = b.P(X, r, zc - r)
            ub, _ = b.P(X, r, zc + r)
            u0, u1 = min(ua, ub), max(ua, ub)
            cu, cv = b.P(X, r, zc)
            dv = b.fy * r / zc
            b.ellipse(tyre, u0, cv - dv, u1, cv + dv)
            b.ellipse(spoke, cu - (u1 - u0) * 0.32, cv - dv * 0.7, cu + (u1 - u0) * 0.32, cv + dv * 0.7)
        else:
            cu, cv = b.P(X + k * length, r, Z)
            du, dv = b.fx * r / Z, b.fy * r / Z
            b.ellipse(tyre, cu - du, cv - dv, cu + du, cv + dv)
            b.ellipse(spoke, cu - du * 0.7, cv - dv * 0.7, cu + du * 0.7, cv + dv * 0.7)
    # frame (and the motorcycle's body): a trapezoid in the bike's plane, (along-road offset, height)
    shapes = [((-0.5, 1.0), (0.5, 1.0), (0.45, 2.6), (-0.3, 2.6))]
    if cls == MOTO:
        shapes.append(((-0.4, 1.2), (0.4, 1.2), (0.35, 3.0), (-0.35, 3.0)))
    for shape in shapes:
        if along:
            b.quad(frame, [(X, y * r, Z + t * length) for t, y in shape])
        else:
            b.quad(frame, [(X + t * length, y * r, Z) for t, y in shape])


def _two_wheeler_rear(b: _Builder, X: float, Z: float, cls: int) -> None:
    """A two-wheeler seen from behind: wheel, mudguard / body, handlebar."""
    inst = b.instance()
    tyre, frame = b.slot(cls, inst, M_TYRE), b.slot(cls, inst)
    if cls == BIKE:
        b.front_rect(tyre, X - 0.05, X + 0.05, 0.0, 0.68, Z)
        b.front_rect(frame, X - 0.09, X + 0.09, 0.55, 0.95, Z + 0.2)
        b.front_rect(frame, X - 0.3, X + 0.3, 0.98, 1.05, Z + 0.9)
    else:
        b.box(cls, inst, X - 0.16, X + 0.16, 0.0, 0.62, Z, Z + 0.3, mat=M_TYRE)
        b.box(cls, inst, X - 0.27, X + 0.27, 0.35, 0.95, Z + 0.15, Z + 1.5)
        b.front_rect(frame, X - 0.42, X + 0.42, 1.0, 1.08, Z + 1.3)


def _car(b: _Builder, X: float, Z: float, oncoming: bool, w: float = 1.8, length: float = 4.3) -> None:
    inst = b.instance()
    b.group(Z)
    h = b.uni(1.4, 1.6)
    x0, x1 = X - w / 2, X + w / 2
    z0, z1 = Z, Z + length
    for xa in (x0 + 0.05, x1 - 0.3):
        b.box(CAR, inst, xa, xa + 0.25, 0.0, 0.62, z0 + 0.6, z0 + 1.0, mat=M_TYRE)
    b.box(CAR, inst, x0, x1, 0.28, 0.5 * h + 0.2, z0, z1)
    cz0, cz1 = (z0 + 1.1, z1 - 0.7) if not oncoming else (z0 + 0.8, z1 - 1.2)
    b.box(CAR, inst, x0 + 0.12, x1 - 0.12, 0.5 * h + 0.2, h, cz0, cz1, mat=M_GLASS, top_mat=M_BASE)
    lamp = b.slot(CAR, inst, M_FACE if oncoming else M_TAIL)
    b.front_rect(lamp, x0 + 0.08, x0 + 0.38, 0.62, 0.74, z0 - 0.01)
    b.front_rect(lamp, x1 - 0.38, x1 - 0.08, 0.62, 0.74, z0 - 0.01)


def _truck(b: _Builder, X: float, Z: float, oncoming: bool) -> None:
    inst = b.instance()
    b.group(Z)
    w, length, h = 2.5, b.uni(7.0, 10.0), b.uni(3.3, 3.9)
    x0, x1 = X - w / 2, X + w / 2
    for xa in (x0 + 0.05, x1 - 0.4):
        b.box(TRUCK, inst, xa, xa + 0.35, 0.0, 1.0, Z + 0.8, Z + 1.6, mat=M_TYRE)
    cab = 2.2
    if oncoming:
        b.box(TRUCK, inst, x0 + 0.05, x1 - 0.05, 0.5, h, Z + cab + 0.2, Z + length)
        b.box(TRUCK, inst, x0, x1, 0.45, 2.9, Z, Z + cab)
        b.front_rect(b.slot(TRUCK, inst, M_GLASS), x0 + 0.2, x1 - 0.2, 1.8, 2.7, Z - 0.01)
    else:
        b.box(TRUCK, inst, x0 + 0.05, x1 - 0.05, 0.45, 2.9, Z + length - cab, Z + length)
        b.box(TRUCK, inst, x0, x1, 0.9, h, Z, Z + length - cab - 0.2, side_mat=M_BASE)
        b.front_rect(b.slot(TRUCK, inst, M_DARK), x0 + 0.1, x1 - 0.1, 0.5, 0.9, Z)


def _long_vehicle(b: _Builder, cls: int, X: float, Z: float, length: float) -> None:
    """Bus or tram: a long box with a window band along its sides and front/rear."""
    inst = b.instance()
    b.group(Z)
    w = 2.55 if cls == BUS else 2.65
    y0 = 0.3 if cls == BUS else 0.25
    h = 3.2 if cls == BUS else 3.6
    x0, x1 = X - w / 2, X + w / 2
    if cls == BUS:
        for xa in (x0 + 0.05, x1 - 0.35):
            b.box(cls, inst, xa, xa + 0.3, 0.0, 1.0, Z + 1.5, Z + 2.5, mat=M_TYRE)
    else:
        b.box(cls, inst, X - 1.0, X + 1.0, 0.0, 0.3, Z + 0.5, Z + length - 0.5, mat=M_DARK)
    b.box(cls, inst, x0, x1, y0, h, Z, Z + length)
    glass = b.slot(cls, inst, M_GLASS, 0.9)
    if x0 > 0:
        b.quad(glass, [(x0, 1.3, Z + 0.6), (x0, 1.3, Z + length - 0.6), (x0, h - 0.45, Z + length - 0.6),
                       (x0, h - 0.45, Z + 0.6)])
    if x1 < 0:
        b.quad(glass, [(x1, 1.3, Z + 0.6), (x1, 1.3, Z + length - 0.6), (x1, h - 0.45, Z + length - 0.6),
                       (x1, h - 0.45, Z + 0.6)])
    b.front_rect(glass, x0 + 0.15, x1 - 0.15, 1.4, h - 0.4, Z - 0.01)
    if cls == TRAIN:  # pantograph
        pole = b.slot(cls, inst, M_DARK)
        b.front_rect(pole, X - 0.03, X + 0.03, h, h + 1.2, Z + length * 0.5)
        b.front_rect(pole, X - 0.8, X + 0.8, h + 1.1, h + 1.2, Z + length * 0.5)


def _lamp_post(b: _Builder, X: float, Z: float, toward: float) -> None:
    inst = b.instance()
    b.group(Z)
    h = b.uni(6.0, 9.0)
    s = b.slot(POLE, inst)
    b.front_rect(s, X - 0.1, X + 0.1, 0.0, h, Z)
    arm = b.uni(1.2, 2.4) * toward
    u0, va = b.P(X, h, Z)
    u1, vb = b.P(X + arm, h - 0.1, Z)
    b.rect(s, min(u0, u1), va, max(u0, u1), vb)
    b.front_rect(b.slot(POLE, inst, M_DARK), X + arm - 0.35, X + arm + 0.35, h - 0.3, h, Z)
    if b.chance(0.25):
        _sign_plate(b, X, 2.6, Z - 0.12)


def _sign_plate(b: _Builder, X: float, Y: float, Z: float) -> None:
    inst = b.instance()
    s, face = b.slot(SIGN, inst), b.slot(SIGN, inst, M_FACE)
    r = b.uni(0.35, 0.55)
    shape = b.pick((0.4, 0.25, 0.35))
    cu, cv = b.P(X, Y, Z)
    du, dv = b.fx * r / Z, b.fy * r / Z
    if shape == 0:
        b.ellipse(s, cu - du, cv - dv, cu + du, cv + dv)
        b.ellipse(face, cu - 0.6 * du, cv - 0.6 * dv, cu + 0.6 * du, cv + 0.6 * dv)
    elif shape == 1:
        b.poly(s, [(cu - du, cv + 0.8 * dv), (cu + du, cv + 0.8 * dv), (cu, cv - dv)])
        b.poly(face, [(cu - 0.55 * du, cv + 0.5 * dv), (cu + 0.55 * du, cv + 0.5 * dv), (cu, cv - 0.45 * dv)])
    else:
        b.rect(s, cu - 1.1 * du, cv - 0.75 * dv, cu + 1.1 * du, cv + 0.75 * dv)
        b.rect(face, cu - 0.8 * du, cv - 0.45 * dv, cu + 0.8 * du, cv + 0.45 * dv)


def _sign_post(b: _Builder, X: float, Z: float) -> None:
    inst = b.instance()
    b.group(Z)
    h = b.uni(2.0, 2.8)
    b.front_rect(b.slot(POLE, inst), X - 0.05, X + 0.05, 0.0, h, Z)
    _sign_plate(b, X, h + 0.2, Z - 0.06)
    if b.chance(0.3):
        _sign_plate(b, X, h - 0.6, Z - 0.06)


def _traffic_light(b: _Builder, X: float, Z: float, toward: float, overhead: bool) -> None:
    inst = b.instance()
    b.group(Z)
    pole = b.slot(POLE, inst)
    h = b.uni(2.8, 3.6) if not overhead else b.uni(5.0, 6.0)
    b.front_rect(pole, X - 0.08, X + 0.08, 0.0, h, Z)
    lx, ly = X, h - 1.1
    if overhead:
        arm = b.uni(3.0, 5.5) * toward
        u0, va = b.P(X, h, Z)
        u1, vb = b.P(X + arm, h - 0.12, Z)
        b.rect(pole, min(u0, u1), va, max(u0, u1), vb)
        lx, ly = X + arm * 0.8, h - 1.2
    for ox in ((0.0,) if not overhead or b.chance(0.5) else (0.0, -1.6 * toward)):
        box = b.slot(LIGHT, inst)
        b.front_rect(box, lx + ox - 0.23, lx + ox + 0.23, ly - 0.15, ly + 1.0, Z - 0.1)
        lamp = b.slot(LIGHT, inst, M_LAMP)
        k = int(b.rng.integers(3))
        cu, cv = b.P(lx + ox, ly + 0.78 - 0.3 * k, Z - 0.12)
        du, dv = b.fx * 0.13 / Z, b.fy * 0.13 / Z
        b.ellipse(lamp, cu - du, cv - dv, cu + du, cv + dv)
    if b.chance(0.35):
        _sign_plate(b, X, h * 0.55, Z - 0.1)


def _veg_mass(b: _Builder, slot: int, X: float, z0: float, z1: float, h0: float, h1: float) -> None:
    """A tree line / hedge on the plane X between depths z0..z1 with a noisy top."""
    n = max(4, min(16, int((z1 - z0) / 2.5)))
    tops = (h0 + (h1 - h0) * b.rng.random(n)).tolist()
    pts = [b.P(X, t, z0 + (z1 - z0) * k / (n - 1)) for k, t in enumerate(tops)]
    pts += [b.P(X, 0.0, z1), b.P(X, 0.0, z0)]
    b.poly(slot, pts)


def _tree_row(b: _Builder, X: float, z0: float, z1: float, height: tuple[float, float]) -> None:
    """Tree crowns (with trunks) on the plane X between depths z0..z1, drawn into the current list."""
    z = z0 + b.uni(0.0, 3.0)
    while z < z1:
        inst = b.instance()
        ry = b.uni(1.8, 3.5)
        yc = b.uni(*height)
        b.front_rect(b.slot(VEG, inst, M_TRUNK), X - 0.18, X + 0.18, 0.0, yc, z)
        _blob(b, b.slot(VEG, inst, M_BASE, b.uni(0.85, 1.05)), X, yc, z, b.uni(1.8, 3.6), ry)
        z += b.uni(3.5, 8.0)


def sample_scene(domain: str, rng: np.random.Generator) -> Scene:
    """Sample one layout of ``domain`` with ``rng`` (see the module docstring)."""
    if domain not in _PROFILES:
        raise ValueError(f"miniscapes: unknown domain {domain!r}; expected one of {DOMAINS}")
    p = _PROFILES[domain]
    r = rng
    fx = float(r.uniform(*p.focal))
    cam = {
        "hc": float(r.uniform(*p.cam_height)),
        "v_h": float(r.uniform(*p.horizon)),
        "u_v": 0.5 + float(r.normal(0.0, 0.04)),
        "fx": fx,
        "fy": 2.0 * fx,
        "sun": float(r.choice((-1.0, 1.0))),
    }
    b = _Builder(r, cam)
    sky = b.slot(SKY, b.instance())
    b.rect(sky, -0.1, -0.1, 1.1, 1.1)

    # --- cross-section of the street (metres, X right of the camera) -------------------------
    n_lanes = int(r.integers(2, 5))
    lane_w = b.uni(3.0, 3.6)
    cam_lane = int(r.integers(n_lanes))
    road_l = -(cam_lane + b.uni(0.3, 0.7)) * lane_w
    road_r = road_l + n_lanes * lane_w
    side = {}
    for s, edge in ((-1, road_l), (1, road_r)):
        walk = b.uni(2.0, 4.5) if b.chance(0.92) else 0.0
        verge = b.uni(1.0, 5.0) if b.chance(p.p_verge) else 0.0
        if p.terrain:
            verge_cls = TERRAIN if b.chance(p.verge_terrain) else VEG
            beyond = TERRAIN if b.chance(p.beyond_terrain) else (VEG if b.chance(0.3) else SIDEWALK)
        else:
            verge_cls = VEG if b.chance(0.5) else SIDEWALK
            beyond = VEG if b.chance(0.3) else SIDEWALK
        kerb = edge + s * walk
        side[s] = {"edge": edge, "kerb": kerb, "walk": walk, "verge": verge, "verge_cls": verge_cls,
                   "beyond": beyond, "facade": kerb + s * verge}
    cam["X_fl"], cam["X_fr"] = side[-1]["facade"], side[1]["facade"]
    z_end = b.uni(70.0, 220.0)
    cam["z_end"] = z_end
    cam["win_dx"] = b.uni(2.4, 4.0)
    cam["win_dy"] = b.uni(2.9, 3.6)
    cam["win_fx"] = b.uni(0.35, 0.6)
    cam["win_fy"] = b.uni(0.35, 0.55)
    cam["win_px"] = b.uni(0, 1)
    cam["win_py"] = b.uni(0, 1)

    inter = None
    if b.chance(p.p_intersection):
        zi = b.uni(9.0, 45.0)
        inter = (zi, zi + b.uni(9.0, 16.0))

    # --- ground: beyond, verges, sidewalks, road, markings ----------------------------------
    for s in (-1, 1):
        d = side[s]
        far = d["facade"] + s * 400.0
        b.ground(b.slot(d["beyond"], b.instance()), d["edge"], far, _Z_NEAR, _Z_FAR)
        if d["verge"] > 0:
            b.ground(b.slot(d["verge_cls"], b.instance()), d["kerb"], d["facade"], _Z_NEAR, _Z_FAR)
        if d["walk"] > 0:
            b.ground(b.slot(SIDEWALK, b.instance()), d["edge"], d["kerb"], _Z_NEAR, _Z_FAR)
    road = b.slot(ROAD, b.instance())
    b.ground(road, road_l, road_r, _Z_NEAR, _Z_FAR)
    if inter is not None:
        b.ground(road, road_l - 400.0, road_r + 400.0, inter[0], inter[1])
    mark_inst = b.instance()
    mark = b.slot(ROAD, mark_inst, M_MARK)
    dash, period = b.uni(2.0, 4.0), b.uni(7.0, 12.0)
    phase = b.uni(0.0, period)
    for k in range(1, n_lanes):
        x = road_l + k * lane_w
        z = 2.0 + phase
        while z < min(z_end, 120.0):
            if inter is None or not (inter[0] - 5.0 < z < inter[1]):
                b.ground(mark, x - 0.08, x + 0.08, z, z + dash)
            z += period
    if inter is not None and b.chance(0.7):  # zebra crossing before the junction
        zz = inter[0] - b.uni(1.0, 2.0)
        x = road_l + 0.3
        while x < road_r - 0.5:
            b.ground(mark, x, x + 0.5, zz - 3.0, zz)
            x += 1.0
    if p.p_train > 0 and b.chance(p.p_train * 2.0):  # tram tracks (a tram shows up in half of them)
        tx = road_l + lane_w * (n_lanes / 2.0)
        dark = b.slot(ROAD, mark_inst, M_DARK)
        for rail in (-0.72, 0.72):
            b.ground(dark, tx + rail - 0.05, tx + rail + 0.05, 1.0, z_end)
        if b.chance(0.5):
            _long_vehicle(b, TRAIN, tx, b.uni(7.0, 40.0), b.uni(22.0, 32.0))

    # --- far end of the street ---------------------------------------------------------------
    roll = float(r.random())
    if roll < p.p_far_building:
        x = -120.0
        while x < 120.0:
            wdt = b.uni(10.0, 30.0)
            hgt = b.uni(*p.building_height) * b.uni(0.6, 1.3)
            s = b.slot(BUILDING, b.instance(), M_BASE, 0.9, F_FRONT)
            b.quad(s, [(x, 0.0, z_end), (x + wdt, 0.0, z_end), (x + wdt, hgt, z_end), (x, hgt, z_end)])
            x += wdt
    elif roll < p.p_far_building + 0.35:  # a tree line closing the view
        xs = np.linspace(-150.0, 150.0, 24)
        tops = 5.0 + 9.0 * r.random(24)
        pts = [b.P(float(x), float(y), z_end) for x, y in zip(xs, tops)]
        b.poly(b.slot(VEG, b.instance()), pts + [b.P(150.0, 0.0, z_end), b.P(-150.0, 0.0, z_end)])

    # --- facade blocks along both sides (far to near) ------------------------------------------
    block_prims: list[tuple[float, list[tuple[str, int, Any]]]] = []
    for s in (-1, 1):
        d = side[s]
        Xf = d["facade"]
        z = b.uni(_Z_NEAR, 6.0)
        while z < z_end:
            if inter is not None and inter[0] - 1.0 < z < inter[1]:
                z = inter[1]
                continue
            kind = b.pick(p.blocks)
            length = b.uni(10.0, 35.0) if kind == 0 else b.uni(8.0, 30.0)
            z1 = min(z + length, z_end)
            if inter is not None and z < inter[0] < z1:
                z1 = inter[0]
            prims: list[tuple[str, int, Any]] = []
            b.current = prims
            inst = b.instance()
            if kind == 0:  # building
                hgt = b.uni(*p.building_height)
                depth = b.uni(8.0, 20.0)
                face = b.slot(BUILDING, inst, M_BASE, 0.95 if s * cam["sun"] < 0 else 0.75, F_SIDE)
                b.quad(face, [(Xf, 0.0, z), (Xf, 0.0, z1), (Xf, hgt, z1), (Xf, hgt, z)])
                end = b.slot(BUILDING, inst, M_BASE, 0.66)
                b.quad(end, [(Xf, 0.0, z), (Xf + s * depth, 0.0, z), (Xf + s * depth, hgt, z), (Xf, hgt, z)])
                if b.chance(0.3):  # ground-floor shop front band
                    shop = b.slot(BUILDING, inst, M_DARK, 0.9)
                    b.quad(shop, [(Xf, 0.3, z + 1), (Xf, 0.3, z1 - 1), (Xf, 2.6, z1 - 1), (Xf, 2.6, z + 1)])
            elif kind in (1, 2):  # wall or fence, with something behind
                behind = b.pick((0.5, 0.3, 0.2))
                if behind == 0:
                    _tree_row(b, Xf + s * b.uni(1.5, 4.0), z, z1, (3.5, 7.5))
                elif behind == 1:
                    hgt = b.uni(*p.building_height)
                    bs = b.slot(BUILDING, b.instance(), M_BASE, 0.8)
                    Xb = Xf + s * b.uni(4.0, 12.0)
                    b.quad(bs, [(Xb, 0.0, z), (Xb, 0.0, z1), (Xb, hgt, z1), (Xb, hgt, z)])
                cls = WALL if kind == 1 else FENCE
                hgt = b.uni(1.0, 2.6) if kind == 1 else b.uni(1.0, 2.0)
                ws = b.slot(cls, inst, M_BASE, 0.95 if s * cam["sun"] < 0 else 0.78)
                b.quad(ws, [(Xf, 0.0, z), (Xf, 0.0, z1), (Xf, hgt, z1), (Xf, hgt, z)])
                if kind == 2:  # posts
                    post = b.slot(FENCE, inst, M_DARK)
                    zp = z
                    while zp < z1:
                        u0, v0 = b.P(Xf, hgt + 0.1, zp)
                        _, v1 = b.P(Xf, 0.0, zp)
                        b.rect(post, u0, v0, u0, v1)
                        zp += 2.5
            elif kind == 3:  # vegetation: trees behind a hedge
                _tree_row(b, Xf + s * b.uni(1.0, 5.0), z, z1, (3.5, 8.0))
                top = b.uni(0.8, 2.5)
                _veg_mass(b, b.slot(VEG, inst), Xf, z, z1, top * 0.8, top * 1.2)
            block_prims.append((z, prims))
            z = z1 + (b.uni(0.0, 3.0) if b.chance(0.2) else 0.0)
    for _, prims in sorted(block_prims, key=lambda t: -t[0]):
        b.background.extend(prims)
    b.current = b.background

    # --- street furniture ------------------------------------------------------------------
    for s in (-1, 1):
        d = side[s]
        if d["walk"] <= 0:
            continue
        kerb_x = d["edge"] + s * 0.45
        if b.chance(p.p_lamps):
            z = b.uni(4.0, 20.0)
            spacing = b.uni(18.0, 35.0)
            while z < min(z_end, 110.0):
                _lamp_post(b, kerb_x, z, -s)
                z += spacing
        if b.chance(p.p_avenue):
            z = b.uni(3.0, 12.0)
            spacing = b.uni(7.0, 13.0)
            tx = d["edge"] + s * min(1.2, d["walk"] * 0.5)
            while z < min(z_end, 100.0):
                if inter is None or not (inter[0] - 1.0 < z < inter[1] + 1.0):
                    _tree(b, tx, z)
                z += spacing
        for _ in range(b.poisson(p.signs / 2.0)):
            _sign_post(b, kerb_x + s * 0.2, b.uni(5.0, 50.0))
    for s in (-1, 1):  # trees in verges and behind open blocks
        d = side[s]
        if d["verge"] > 2.0 and d["verge_cls"] == VEG or d["verge"] > 0 and b.chance(0.3):
            for _ in range(b.poisson(2.0)):
                _tree(b, d["kerb"] + s * d["verge"] * b.uni(0.3, 0.7), b.uni(6.0, 80.0), b.uni(0.9, 1.4))
    if inter is not None:
        for s in (-1, 1):
            kx = side[s]["edge"] + s * 0.5
            _traffic_light(b, kx, inter[0] - 1.5, -s, overhead=b.chance(0.4))
            if b.chance(0.8):
                _traffic_light(b, kx, inter[1] + 1.0, -s, overhead=False)
    elif b.chance(0.35):  # a pedestrian crossing with lights
        zz = b.uni(8.0, 35.0)
        x = road_l + 0.3
        while x < road_r - 0.5:
            b.ground(mark, x, x + 0.5, zz, zz + 3.0)
            x += 1.0
        for s in (-1, 1):
            if b.chance(0.8):
                _traffic_light(b, side[s]["edge"] + s * 0.5, zz - 0.5, -s, overhead=False)

    # --- vehicles and people ---------------------------------------------------------------
    lanes = [road_l + (k + 0.5) * lane_w for k in range(n_lanes)]
    occupied: list[tuple[float, float, float]] = []  # (x, z0, z1)

    def free(x: float, z0: float, z1: float, width: float) -> bool:
        return all(abs(x - ox) > width or z1 + 1.5 < oz0 or z0 - 1.5 > oz1 for ox, oz0, oz1 in occupied)

    def place(length: float, width: float, zmin: float, zmax: float, xs: list[float]) -> tuple[float, float] | None:
        """A free spot (x, z) near one of ``xs`` for an object of ``length`` x ``width``, or None."""
        for _ in range(8):
            x = xs[int(r.integers(len(xs)))] + b.uni(-0.3, 0.3)
            z = b.uni(zmin, zmax)
            if free(x, z, z + length, width):
                occupied.append((x, z, z + length))
                return x, z
        return None

    def oncoming(x: float) -> bool:
        return x < road_l + lane_w * (n_lanes // 2 if n_lanes > 2 else cam_lane)

    if b.chance(p.p_truck):
        spot = place(10.0, 2.6, 7.0, 45.0, lanes)
        if spot:
            _truck(b, spot[0], spot[1], oncoming(spot[0]))
    if b.chance(p.p_bus):
        spot = place(12.0, 2.6, 6.0, 45.0, lanes)
        if spot:
            _long_vehicle(b, BUS, spot[0], spot[1], 12.0)
    for _ in range(b.poisson(p.cars)):
        spot = place(4.5, 1.9, 5.0, min(z_end, 90.0), lanes)
        if spot:
            _car(b, spot[0], spot[1], oncoming(spot[0]))
    for s in (-1, 1):
        if b.chance(p.p_parked):
            z = b.uni(3.0, 12.0)
            x = side[s]["edge"] - s * 1.1
            while z < b.uni(25.0, 80.0):
                if free(x, z, z + 4.3, 1.9) and b.chance(0.8):
                    occupied.append((x, z, z + 4.3))
                    _car(b, x, z, oncoming=(s < 0))
                z += b.uni(5.0, 7.0)
    if b.chance(p.p_moto):
        for _ in range(1 + b.poisson(0.3)):
            spot = place(2.0, 1.0, 4.0, 28.0, lanes)
            if spot:  # seen from behind: the rider is partly hidden by the motorcycle
                b.group(spot[1])
                _person(b, spot[0], spot[1] + 0.6, RIDER, seated=True, new_group=False)
                _two_wheeler_rear(b, spot[0], spot[1], MOTO)
    if b.chance(p.p_cyclist):
        for _ in range(1 + b.poisson(0.5)):
            xs = [road_r - 1.0, road_l + 1.0]
            xs += [side[s]["edge"] + s * 1.0 for s in (-1, 1) if side[s]["walk"] > 2]  # cycle on the walk
            spot = place(1.8, 0.8, 3.5, 28.0, xs)
            if spot:
                b.group(spot[1])
                if b.chance(0.6):
                    _person(b, spot[0], spot[1] + 0.5, RIDER, seated=True, new_group=False)
                    _two_wheeler_rear(b, spot[0], spot[1], BIKE)
                else:
                    _bicycle_side(b, spot[0], spot[1] + 0.5, BIKE, along=True)
                    _person(b, spot[0], spot[1] + 0.5, RIDER, seated=True, new_group=False)
    if inter is not None and b.chance(0.4):  # crossing traffic in the junction
        zc = b.uni(inter[0] + 1.0, inter[1] - 1.0)
        x = b.uni(road_l - 10.0, road_r + 10.0)
        kind = b.pick((0.6, 0.25, 0.15))
        b.group(zc)
        if kind == 0:
            inst = b.instance()
            b.box(CAR, inst, x - 2.2, x + 2.2, 0.3, 1.0, zc, zc + 1.8)
            b.box(CAR, inst, x - 1.2, x + 1.0, 1.0, 1.45, zc + 0.1, zc + 1.7, mat=M_GLASS, top_mat=M_BASE)
        else:
            cls = BIKE if kind == 1 else MOTO
            _bicycle_side(b, x, zc, cls, along=False)
            _person(b, x, zc + 0.05, RIDER, seated=True, new_group=False)
    if b.chance(p.p_parked_bikes):
        s = 1 if b.chance(0.5) else -1
        if side[s]["walk"] > 0:
            z = b.uni(3.5, 20.0)
            for _ in range(1 + b.poisson(2.0)):
                b.group(z)
                _bicycle_side(b, side[s]["kerb"] - s * 0.5, z, BIKE, along=True)
                z += b.uni(0.7, 1.5)
    walk_sides = [s for s in (-1, 1) if side[s]["walk"] > 0]
    n_people = b.poisson(p.persons)
    for _ in range(n_people):
        if inter is not None and b.chance(0.15):
            x, z = b.uni(road_l, road_r), inter[0] - b.uni(1.0, 3.0)
        elif walk_sides:
            s = walk_sides[int(r.integers(len(walk_sides)))]
            x = side[s]["edge"] + s * b.uni(0.5, side[s]["walk"] - 0.3)
            z = b.uni(3.0, 35.0)
        else:
            continue
        _person(b, x, z)
        if b.chance(0.35):  # company
            _person(b, x + b.uni(-0.8, 0.8), z + b.uni(0.3, 1.5))

    # --- ego vehicle hood (Cityscapes-like: labelled ignore) -----------------------------------
    if p.ego_hood:
        b.current = []
        b.groups.append((-1.0, len(b.groups), b.current))
        top = b.uni(0.90, 0.94)
        pts = [(uu, top + 0.09 * (2 * uu - 1) ** 2) for uu in np.linspace(-0.05, 1.05, 12).tolist()]
        b.poly(b.slot(IGNORE_INDEX, b.instance(), M_HOOD), pts + [(1.1, 1.1), (-0.1, 1.1)])
    return b.scene(domain)


# --------------------------------------------------------------------------------------------
# appearance
# --------------------------------------------------------------------------------------------

_K = 6  # colours per class palette


def _pal(*colours: tuple[int, int, int]) -> np.ndarray:
    c = np.array(colours, dtype=np.float32)
    return np.concatenate([c] * (-(-_K // len(c))))[:_K]


def _per_class(default: float, **values: float) -> np.ndarray:
    names = {"road": ROAD, "sidewalk": SIDEWALK, "building": BUILDING, "wall": WALL, "fence": FENCE,
             "pole": POLE, "light": LIGHT, "sign": SIGN, "veg": VEG, "terrain": TERRAIN, "sky": SKY,
             "person": PERSON, "rider": RIDER, "car": CAR, "truck": TRUCK, "bus": BUS, "train": TRAIN,
             "moto": MOTO, "bike": BIKE, "hood": NUM_CLASSES}
    a = np.full(NUM_CLASSES + 1, default, dtype=np.float32)  # last entry: ignore (ego hood)
    for k, v in values.items():
        a[names[k]] = v
    return a


@dataclass(frozen=True)
class Style:
    """Appearance parameters of a domain. Every field is an array; styles interpolate linearly.

    Colours are RGB in 0..255. ``paint`` (20, K, 3): per-class palettes an instance draws from
    (index 19 = ignore / ego hood); ``jitter`` (20,): per-instance colour std; ``material``
    (12, 3): colours of glass, tyres, markings, ...; ``lamp`` / ``skin`` / ``pants`` (K, 3)
    palettes. Per-class luminance effects (20,): ``grain`` (pixel noise), ``blotch``
    (low-frequency stains), ``foliage`` (leaf clumps), ``vshade`` (vertical gradient per unit of
    image height). Scalars (0-d arrays): ``face`` (contrast of per-face lighting), ``windows``
    (facade window strength), ``shadow`` (cast shadow depth on the ground), ``illum``
    (illumination gradient), ``vignette``, ``white`` (white-balance spread), ``blur`` (binomial
    blur passes at 256 rows), ``noise`` (sensor noise std in 0..255).
    """

    paint: np.ndarray
    jitter: np.ndarray
    material: np.ndarray
    lamp: np.ndarray
    skin: np.ndarray
    pants: np.ndarray
    grain: np.ndarray
    blotch: np.ndarray
    foliage: np.ndarray
    vshade: np.ndarray
    face: np.ndarray
    windows: np.ndarray
    shadow: np.ndarray
    illum: np.ndarray
    vignette: np.ndarray
    white: np.ndarray
    blur: np.ndarray
    noise: np.ndarray

    def lerp(self, other: Style, t: float, t_colour: float | None = None) -> Style:
        """``self + t * (other - self)`` field by field (colour fields by ``t_colour``, default
        ``t``); colours clipped to 0..255, everything else to >= 0."""
        t_colour = t if t_colour is None else t_colour
        out = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            colour = f.name in _COLOUR_FIELDS
            v = a + np.float32(t_colour if colour else t) * (b - a)
            out[f.name] = np.clip(v, 0.0, 255.0) if colour else np.maximum(v, 0.0)
        return Style(**out)

    @property
    def flat(self) -> bool:
        """True when the style has no per-pixel effect (pure per-slot colours)."""
        return all(not np.any(getattr(self, n)) for n in _EFFECT_FIELDS)


_COLOUR_FIELDS = ("paint", "material", "lamp", "skin", "pants")
_EFFECT_FIELDS = ("grain", "blotch", "foliage", "vshade", "windows", "shadow", "illum", "vignette", "white", "blur",
                  "noise")


def _material(**c: tuple[int, int, int]) -> np.ndarray:
    names = ["base", "glass", "tyre", "mark", "lamp", "skin", "pants", "trunk", "face", "hood", "dark", "tail"]
    m = np.zeros((_N_MAT, 3), dtype=np.float32)
    for k, v in c.items():
        m[names.index(k)] = v
    return m


def _zeros() -> np.ndarray:
    return _per_class(0.0)


def _scalar(x: float) -> np.ndarray:
    return np.array(x, dtype=np.float32)


_GAME = Style(
    paint=np.stack([
        _pal((96, 88, 112)), _pal((200, 158, 182)), _pal((186, 110, 72)), _pal((214, 200, 118)),
        _pal((156, 112, 52)), _pal((132, 138, 166)), _pal((240, 184, 24)), _pal((246, 224, 18)),
        _pal((52, 156, 44)), _pal((156, 206, 88)), _pal((96, 168, 248)), _pal((214, 46, 70)),
        _pal((250, 96, 16)), _pal((36, 70, 206)), _pal((28, 132, 142)), _pal((30, 172, 116)),
        _pal((136, 56, 166)), _pal((102, 36, 224)), _pal((172, 36, 112)), _pal((20, 20, 20)),
    ]),
    jitter=_per_class(5.0, sky=3.0, road=3.0),
    material=_material(glass=(36, 48, 74), tyre=(24, 24, 26), mark=(236, 236, 236), trunk=(104, 70, 36),
                       face=(250, 250, 250), hood=(20, 20, 22), dark=(46, 46, 50), tail=(250, 30, 30)),
    lamp=_pal((255, 40, 30), (255, 200, 0), (40, 230, 60)),
    skin=_pal((232, 180, 150)),
    pants=_pal((56, 60, 112)),
    grain=_zeros(), blotch=_zeros(), foliage=_zeros(), vshade=_zeros(),
    face=_scalar(1.0), windows=_scalar(0.0), shadow=_scalar(0.0), illum=_scalar(0.0),
    vignette=_scalar(0.0), white=_scalar(0.0), blur=_scalar(0.0), noise=_scalar(0.0),
)

_SIM = Style(
    paint=np.stack([
        _pal((70, 70, 76)), _pal((178, 168, 148)),
        _pal((150, 152, 172), (172, 160, 138), (120, 132, 154), (190, 186, 176)),
        _pal((188, 176, 154)), _pal((118, 92, 68)), _pal((168, 168, 172)), _pal((62, 62, 60)),
        _pal((40, 92, 204)), _pal((96, 148, 62)), _pal((140, 160, 90)), _pal((150, 194, 236)),
        _pal((200, 60, 60), (60, 60, 200), (60, 160, 60), (200, 200, 60), (60, 60, 60), (220, 220, 220)),
        _pal((222, 122, 40)),
        _pal((200, 30, 30), (30, 30, 200), (230, 230, 230), (30, 30, 30), (220, 200, 30), (30, 150, 60)),
        _pal((90, 90, 140)), _pal((212, 182, 40)), _pal((90, 90, 140)), _pal((204, 40, 40)),
        _pal((40, 40, 144)), _pal((20, 20, 20)),
    ]),
    jitter=_per_class(6.0, sky=3.0, road=3.0),
    material=_material(glass=(70, 90, 110), tyre=(20, 20, 20), mark=(220, 220, 200), trunk=(90, 64, 40),
                       face=(240, 240, 240), hood=(20, 20, 22), dark=(54, 54, 58), tail=(230, 20, 20)),
    lamp=_pal((255, 30, 30), (255, 170, 0), (30, 255, 90)),
    skin=_pal((224, 172, 140), (150, 100, 70)),
    pants=_pal((40, 40, 60), (90, 70, 50), (60, 80, 120)),
    grain=_zeros(), blotch=_zeros(), foliage=_per_class(0.0, veg=0.12),
    vshade=_per_class(0.0, sky=0.5, road=0.15),
    face=_scalar(1.4), windows=_scalar(0.6), shadow=_scalar(0.0), illum=_scalar(0.0),
    vignette=_scalar(0.0), white=_scalar(0.0), blur=_scalar(0.0), noise=_scalar(0.0),
)

_REAL = Style(
    paint=np.stack([
        _pal((112, 110, 108)), _pal((158, 150, 144)),
        _pal((170, 158, 135), (125, 125, 128), (190, 180, 160), (150, 105, 90), (200, 198, 190), (95, 95, 100)),
        _pal((170, 166, 152)), _pal((110, 106, 94)), _pal((100, 100, 98)), _pal((44, 46, 42)),
        _pal((190, 40, 35), (30, 80, 170), (220, 220, 215), (220, 180, 40)),
        _pal((74, 98, 50)), _pal((128, 130, 82)), _pal((206, 212, 222)),
        _pal((40, 40, 45), (40, 50, 80), (120, 120, 120), (170, 150, 120), (160, 40, 40), (210, 210, 205)),
        _pal((60, 60, 60), (190, 180, 50), (30, 30, 34), (140, 60, 40)),
        _pal((215, 215, 212), (30, 30, 32), (160, 162, 165), (95, 97, 100), (150, 30, 30), (40, 60, 120)),
        _pal((210, 210, 205), (200, 120, 40), (140, 140, 140)),
        _pal((190, 190, 185), (170, 40, 40), (40, 80, 150)),
        _pal((200, 190, 170), (180, 40, 40)),
        _pal((30, 30, 30), (150, 20, 20), (80, 80, 90)),
        _pal((40, 40, 40), (90, 90, 95), (30, 50, 90)),
        _pal((28, 30, 34)),
    ]),
    jitter=_per_class(9.0, sky=5.0, road=4.0, building=12.0),
    material=_material(glass=(60, 70, 80), tyre=(26, 26, 28), mark=(200, 200, 190), trunk=(70, 60, 48),
                       face=(235, 235, 230), hood=(28, 30, 34), dark=(58, 56, 54), tail=(170, 40, 36)),
    lamp=_pal((230, 60, 50), (230, 170, 50), (70, 210, 120)),
    skin=_pal((224, 180, 150), (180, 130, 100), (110, 80, 60)),
    pants=_pal((30, 30, 36), (40, 50, 80), (90, 90, 90), (150, 130, 100)),
    grain=_per_class(0.03, road=0.09, sidewalk=0.08, building=0.05, wall=0.07, terrain=0.1, veg=0.06, sky=0.0),
    blotch=_per_class(0.0, road=0.05, sidewalk=0.05, building=0.07, wall=0.08, terrain=0.12, veg=0.08, sky=0.05),
    foliage=_per_class(0.0, veg=0.38, terrain=0.14),
    vshade=_per_class(-0.2, road=0.25, sidewalk=0.2, sky=0.35, building=-0.3, veg=-0.25, hood=0.4),
    face=_scalar(0.6), windows=_scalar(1.0), shadow=_scalar(0.35), illum=_scalar(0.18),
    vignette=_scalar(0.2), white=_scalar(0.05), blur=_scalar(1.0), noise=_scalar(4.0),
)


def domain_style(domain: str, gap: float = GAP) -> Style:
    """The appearance style of ``domain``.

    ``real`` is ``game.lerp(real_full, gap, COLOUR_PER_GAP * gap)``: textures, shading, lighting,
    blur and noise reach the real-world style at ``gap = 1``, colours at ``gap = 1 / COLOUR_PER_GAP``.
    """
    if domain == "game":
        return _GAME
    if domain == "sim":
        return _SIM
    if domain == "real":
        if not (isinstance(gap, (int, float)) and math.isfinite(gap) and gap >= 0):
            raise ValueError(f"miniscapes: gap must be a finite number >= 0, got {gap!r}")
        return _GAME.lerp(_REAL, float(gap), COLOUR_PER_GAP * float(gap))
    raise ValueError(f"miniscapes: unknown domain {domain!r}; expected one of {DOMAINS}")


@lru_cache(maxsize=8)
def _banks(H: int, W: int) -> dict[str, np.ndarray]:
    """Per-size texture banks (2H x 2W, fixed seed) that scenes crop at random offsets."""
    rng = np.random.default_rng(1234567)

    def smooth(cell: float) -> np.ndarray:
        h, w = max(2, int(round(2 * H / cell))), max(2, int(round(2 * W / cell)))
        small = Image.fromarray(rng.standard_normal((h, w)).astype(np.float32), mode="F")
        a = np.asarray(small.resize((2 * W, 2 * H), Image.BICUBIC), dtype=np.float32)
        return a / max(float(a.std()), 1e-6)

    grain = rng.standard_normal((2 * H, 2 * W)).astype(np.float32)
    foliage = smooth(max(1.5, H / 64.0)) * 0.7 + smooth(max(1.0, H / 160.0)) * 0.5
    blotch = smooth(H / 10.0) * 0.7 + smooth(H / 30.0) * 0.5
    noise = rng.standard_normal((2 * H, 2 * W)).astype(np.float32)
    v = (np.arange(H, dtype=np.float32) + 0.5) / H
    u = (np.arange(W, dtype=np.float32) + 0.5) / W
    r2 = ((u[None, :] - 0.5) ** 2 + ((v[:, None] - 0.5) * H / W) ** 2) / 0.3125  # 1 at the corners
    return {"grain": grain, "foliage": foliage, "blotch": blotch, "noise": noise, "u": u, "v": v, "r2": r2}


def _crop(a: np.ndarray, rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    oy, ox = int(rng.integers(H)), int(rng.integers(W))
    return a[oy:oy + H, ox:ox + W]


def _rasterise(scene: Scene, H: int, W: int) -> np.ndarray:
    """Slot-id map (H, W) of the scene's primitives (uint8 up to 256 slots, else uint16)."""
    im = Image.new("L" if len(scene.slot_class) <= 256 else "I;16", (W, H), 0)
    draw = ImageDraw.Draw(im)
    for kind, slot, data in scene.prims:
        if kind == "poly":
            draw.polygon([(u * W - 0.5, v * H - 0.5) for u, v in data], fill=slot)
        else:
            u0, v0, u1, v1 = data
            x0, x1 = sorted((u0 * W, u1 * W))
            y0, y1 = sorted((v0 * H, v1 * H))
            if x1 < 0 or y1 < 0 or x0 > W or y0 > H:
                continue
            ix0, iy0 = int(math.floor(x0 + 0.5)), int(math.floor(y0 + 0.5))
            ix1 = max(ix0, int(math.floor(x1 + 0.5)) - 1)
            iy1 = max(iy0, int(math.floor(y1 + 0.5)) - 1)
            if kind == "rect" or (ix1 - ix0 < 2 and iy1 - iy0 < 2):
                draw.rectangle((ix0, iy0, ix1, iy1), fill=slot)
            else:
                draw.ellipse((ix0, iy0, ix1, iy1), fill=slot)
    return np.asarray(im)


def _slot_colours(scene: Scene, style: Style, draws: dict[str, np.ndarray]) -> np.ndarray:
    """(n_slots, 3) float32 colour of every slot under ``style`` with the scene's instance draws."""
    cls = np.asarray(scene.slot_class, dtype=np.int64)
    cls = np.where(cls == IGNORE_INDEX, NUM_CLASSES, cls)
    mat = np.asarray(scene.slot_material, dtype=np.int64)
    inst = np.asarray(scene.slot_instance, dtype=np.int64)
    shade = np.asarray(scene.slot_shade, dtype=np.float32)
    pick = (draws["u"][inst] * _K).astype(np.int64)
    pick2 = (draws["u2"][inst] * _K).astype(np.int64)
    base = style.paint[cls, pick] + style.jitter[cls, None] * draws["j"][inst]
    col = np.where((mat == M_BASE)[:, None], base, style.material[mat] + 4.0 * draws["j"][inst])
    col = np.where((mat == M_LAMP)[:, None], style.lamp[pick2], col)
    col = np.where((mat == M_SKIN)[:, None], style.skin[pick2], col)
    col = np.where((mat == M_PANTS)[:, None], style.pants[pick2], col)
    light = 1.0 + (shade - 1.0) * style.face
    lamp_like = (mat == M_LAMP) | (mat == M_FACE) | (mat == M_TAIL)
    light = np.where(lamp_like, 1.0, light)
    return np.clip(col * light[:, None], 0.0, 255.0).astype(np.float32)


def render_scene(scene: Scene, size: tuple[int, int], style: Style, rng: np.random.Generator,
                 label_only: bool = False, channels_first: bool = False) -> tuple[np.ndarray | None, np.ndarray]:
    """Rasterise ``scene`` at ``size`` = (H, W) with ``style``.

    Returns ``(image, label)``: image uint8 RGB, (H, W, 3) or (3, H, W) with
    ``channels_first`` (None with ``label_only``); label (H, W) uint8 trainIds with 255 =
    ignore. ``rng`` draws the appearance (instance colours, texture offsets, lighting); its
    consumption does not depend on ``style``, so one scene rendered with two styles differs only
    where the styles do.
    """
    H, W = int(size[0]), int(size[1])
    slots = _rasterise(scene, H, W)
    label = np.take(np.asarray(scene.slot_class, dtype=np.uint8), slots)
    if label_only:
        return None, label
    n = scene.n_instances
    draws = {"u": rng.random(n), "u2": rng.random(n), "j": rng.standard_normal((n, 3)).astype(np.float32)}
    colours = _slot_colours(scene, style, draws)
    if style.flat:
        packed = np.zeros((len(colours), 4), dtype=np.uint8)
        packed[:, :3] = np.rint(colours)
        rgbx = np.take(packed.view(np.uint32)[:, 0], slots).view(np.uint8).reshape(H, W, 4)
        planes = [rgbx[:, :, k] for k in range(3)]
    else:
        planes = list(_effects(scene, style, rng, slots, colours, H, W))
    image = np.empty((3, H, W) if channels_first else (H, W, 3), dtype=np.uint8)
    for k in range(3):
        if channels_first:
            image[k] = planes[k]
        else:
            image[:, :, k] = planes[k]
    return image, label


_CODE_GROUND = 4.0  # added to the window flag of ground slots in the slot table's code column


def _slot_table(scene: Scene, style: Style, colours: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """(n_slots, 8) float32: R, G, B (white-balanced), grain, blotch, foliage, vshade, code.

    ``code`` = window flag (1 side facade, 2 frontal facade) + 4 if the slot is ground.
    """
    cls = np.asarray(scene.slot_class, dtype=np.int64)
    cls = np.where(cls == IGNORE_INDEX, NUM_CLASSES, cls)
    tab = np.empty((len(cls), 8), dtype=np.float32)
    tab[:, :3] = colours * wb
    tab[:, 3] = style.grain[cls]
    tab[:, 4] = style.blotch[cls]
    tab[:, 5] = style.foliage[cls]
    tab[:, 6] = style.vshade[cls]
    tab[:, 7] = np.asarray(scene.slot_flag, dtype=np.float32) + _CODE_GROUND * np.isin(cls, (ROAD, SIDEWALK, TERRAIN))
    return tab


def _effects(scene: Scene, style: Style, rng: np.random.Generator, slots: np.ndarray,
             colours: np.ndarray, H: int, W: int) -> np.ndarray:
    """Per-pixel appearance (textures, windows, shading, shadows, lighting, blur, noise) -> (3, H, W) uint8."""
    bank = _banks(H, W)
    cam = scene.camera
    # draws happen in a fixed order whatever the style (smooth, monotone interpolation)
    offs = {k: _crop(bank[k], rng, H, W) for k in ("grain", "blotch", "foliage", "noise")}
    illum_dir = rng.uniform(-1.0, 1.0, 2).astype(np.float32)
    wb = (1.0 + style.white * rng.uniform(-1.0, 1.0, 3)).astype(np.float32)
    shadow_x = float(rng.uniform(0.2, 0.9))

    table = _slot_table(scene, style, colours, wb).T.copy()  # (8, n_slots)
    index = slots.reshape(-1).astype(np.intp)

    def plane(k: int) -> np.ndarray:  # per-pixel column k of the slot table, (H, W) contiguous
        return np.take(table[k], index).reshape(H, W)

    u, v = bank["u"], bank["v"]
    lum = np.ones((H, W), dtype=np.float32)
    if np.any(style.vshade):
        lum += plane(6) * (v - np.float32(cam["v_h"]))[:, None]
    for k, name in ((3, "grain"), (4, "blotch"), (5, "foliage")):
        if np.any(getattr(style, name)):
            lum += plane(k) * offs[name]
    if style.illum > 0:
        lum += style.illum * (illum_dir[0] * (u - 0.5)[None, :] + illum_dir[1] * (v - 0.5)[:, None])
    if style.vignette > 0:
        lum -= style.vignette * bank["r2"]
    if style.noise > 0:  # sensor noise, relative to mid grey
        lum += np.float32(style.noise / 128.0) * offs["noise"]
    code = plane(7)
    if style.shadow > 0:  # a building's shadow: ground beyond a line parallel to the road
        Xs = shadow_x * (cam["X_fr"] if cam["sun"] < 0 else cam["X_fl"])
        du = (u - cam["u_v"])[None, :]
        edge = (Xs * cam["fx"] / (cam["fy"] * cam["hc"])) * np.maximum(v - cam["v_h"], 0.0)[:, None]
        shade = ((du > edge) if Xs > 0 else (du < edge)) & (code >= _CODE_GROUND)
        lum *= 1.0 - float(style.shadow) * shade
    img = np.empty((3, H, W), dtype=np.float32)
    for k in range(3):
        np.take(table[k], index, out=img[k].reshape(-1))
    if style.windows > 0:
        win = _windows(scene, code, u, v)
        if win is not None:
            r0, mask = win
            a = min(float(style.windows), 1.5)
            rows = slice(r0, r0 + mask.shape[0])
            lum[rows] *= 1.0 - 0.45 * a * mask
            mix = 0.4 * a * mask
            for k in range(3):
                img[k, rows] += mix * (_GLASS[k] - img[k, rows])
    img *= lum[None]
    blur = float(style.blur) * H / 256.0
    buf = np.empty_like(img)
    while blur > 0:  # separable [w/4, 1 - w/2, w/4] passes (w = 1: binomial); smooth in w
        w = min(blur, 1.0)
        for a, b, mid, t in ((img[:, :-2], img[:, 2:], img[:, 1:-1], buf[:, 1:-1]),
                             (img[:, :, :-2], img[:, :, 2:], img[:, :, 1:-1], buf[:, :, 1:-1])):
            np.add(a, b, out=t)
            t *= np.float32(w / 4)
            mid *= np.float32(1 - w / 2)
            mid += t
        blur -= 1.0
    img += np.float32(0.5)
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)


_GLASS = (70.0, 90.0, 110.0)


def _windows(scene: Scene, code: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[int, np.ndarray] | None:
    """Facade windows in world coordinates (resolution-free): (first row, float32 0/1 mask rows).

    Side facades lie on the planes X = X_fl / X_fr, so each image column sees one facade depth;
    frontal facades lie on Z = z_end. Windows form a grid of win_dx x win_dy metre cells.
    """
    if not any(scene.slot_flag):
        return None
    fmap = (code > 0) & (code < _CODE_GROUND)  # window flags; ground slots never carry one
    rows = np.flatnonzero(fmap.any(axis=1))
    if rows.size == 0:
        return None
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    cam = scene.camera
    du = u - np.float32(cam["u_v"])
    du = np.where(np.abs(du) < 1e-4, np.float32(1e-4), du)
    z_side = cam["fx"] * np.where(du < 0, cam["X_fl"], cam["X_fr"]).astype(np.float32) / du

    def column_mask(h: np.ndarray) -> np.ndarray:
        h = h / cam["win_dx"] + cam["win_px"]
        return (h - np.floor(h)) < cam["win_fx"]

    front = code[r0:r1] == F_FRONT  # (a broadcast np.where is slow; use arithmetic)
    side_cols = column_mask(z_side)
    cols = side_cols[None, :] ^ (front & (side_cols ^ column_mask(du * (cam["z_end"] / cam["fx"])))[None, :])
    depth = z_side[None, :] + front * (np.float32(cam["z_end"]) - z_side)[None, :]
    Y = np.float32(cam["hc"]) - ((v[r0:r1] - np.float32(cam["v_h"])) / np.float32(cam["fy"]))[:, None] * depth
    vpar = Y * np.float32(1.0 / cam["win_dy"]) + np.float32(cam["win_py"])
    win = (vpar - np.floor(vpar)) < cam["win_fy"]
    win &= cols
    win &= Y > 3.0
    win &= fmap[r0:r1]
    return r0, win.astype(np.float32)


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------


def scene_rngs(domain: str, split: str, seed: int, i: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(layout, appearance) generators of sample ``i`` of ``(domain, split, seed)``."""
    entropy = [zlib.crc32(domain.encode()), zlib.crc32(split.encode()), int(seed) & 0xFFFFFFFF, int(i)]
    ss = np.random.SeedSequence(entropy)
    a, b = ss.spawn(2)
    return np.random.Generator(np.random.PCG64(a)), np.random.Generator(np.random.PCG64(b))


class Miniscapes(Dataset):
    """Procedural street scenes of one domain as a map-style dataset (see the module docstring).

    Args:
        domain: "game" (GTA-like source), "sim" (SYNTHIA-like source) or "real" (target).
        split: "train" (default length 2000), "val" or "test" (200); splits never share scenes.
        size: (H, W) of the rendered images; the layout is defined for aspect 1:2.
        length: number of samples (default by split).
        seed: dataset seed; (domain, split, seed, i) fixes sample i.
        transform: optional ``transform(image, label) -> (image, label)`` on the tensors.
        gap: appearance gap of ``real`` (ignored by the sources); 0 looks like ``game``.

    ``self[i]`` is ``{"image": uint8 (3, H, W) RGB, "label": int64 (H, W) trainIds (255 =
    ignore), "name": "<domain>_<split>_<i:06d>"}``.
    """

    def __init__(self, domain: str, split: str = "train", *, size: tuple[int, int] = (256, 512),
                 length: int | None = None, seed: int = 0,
                 transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 gap: float = GAP) -> None:
        if domain not in DOMAINS:
            raise ValueError(f"Miniscapes: unknown domain {domain!r}; expected one of {DOMAINS}")
        if split not in _SPLITS:
            raise ValueError(f"Miniscapes: unknown split {split!r}; expected one of {tuple(_SPLITS)}")
        if len(size) != 2 or min(int(size[0]), int(size[1])) < 8:
            raise ValueError(f"Miniscapes: size must be (H, W) with both >= 8, got {size!r}")
        self.domain = domain
        self.split = split
        self.size = (int(size[0]), int(size[1]))
        self.length = _SPLITS[split] if length is None else int(length)
        if self.length < 0:
            raise ValueError(f"Miniscapes: length must be >= 0, got {length!r}")
        self.seed = int(seed)
        self.transform = transform
        self.gap = float(gap)
        self.style = domain_style(domain, self.gap)
        self._stats: list[dict[int, int]] | None = None

    def __len__(self) -> int:
        return self.length

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(
                f"Miniscapes({self.domain!r}, {self.split!r}): index {i} out of range 0..{self.length - 1}"
            )
        return i

    def scene(self, i: int) -> Scene:
        """The layout of sample ``i``."""
        return sample_scene(self.domain, scene_rngs(self.domain, self.split, self.seed, self._index(i))[0])

    def render(self, i: int, label_only: bool = False) -> tuple[np.ndarray | None, np.ndarray]:
        """(image (H, W, 3) uint8 RGB or None with ``label_only``, label (H, W) uint8 trainIds)."""
        return self._render(i, label_only, channels_first=False)

    def _render(self, i: int, label_only: bool, channels_first: bool) -> tuple[np.ndarray | None, np.ndarray]:
        layout_rng, look_rng = scene_rngs(self.domain, self.split, self.seed, self._index(i))
        scene = sample_scene(self.domain, layout_rng)
        return render_scene(scene, self.size, self.style, look_rng, label_only, channels_first)

    def name(self, i: int) -> str:
        return f"{self.domain}_{self.split}_{self._index(i):06d}"

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, label = self._render(i, label_only=False, channels_first=True)
        img_t = torch.from_numpy(image)
        lab_t = torch.from_numpy(label.astype(np.int64))
        if self.transform is not None:
            img_t, lab_t = self.transform(img_t, lab_t)
        return {"image": img_t, "label": lab_t, "name": self.name(i)}

    def class_stats(self, progress: bool = True, workers: int | None = None) -> list[dict[int, int]]:
        """Per-sample pixel counts ``{trainId: count}`` (classes present only, 255 excluded).

        Renders labels only (no appearance), at the dataset's size; computed once per dataset and
        cached on disk (module docstring). ``workers``: DataLoader worker processes for the
        renders (default: up to 4 of the usable cores for 200 samples or more, else none); the
        result does not depend on it.
        """
        if self._stats is None:
            path = self._stats_cache_path()
            stats = _read_stats(path, self.length) if path is not None else None
            if stats is None:
                stats = self._count_classes(progress, workers)
                if path is not None:
                    _write_stats(path, stats)
            self._stats = stats
        return [dict(s) for s in self._stats]

    def _count_classes(self, progress: bool, workers: int | None) -> list[dict[int, int]]:
        if workers is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            workers = min(4, cores) if self.length >= 200 and cores > 1 else 0
        # its own generator: starting the iterator draws a seed, which must not come from the
        # global RNG (a cache hit and a miss must leave the training's random draws alike)
        loader = DataLoader(_LabelCounts(self), batch_size=None, num_workers=workers,
                            collate_fn=_identity, prefetch_factor=16 if workers else None,
                            generator=torch.Generator().manual_seed(0))
        it = loader
        if progress:
            it = tqdm(loader, total=self.length, desc=f"miniscapes {self.domain}/{self.split} class stats",
                      leave=False)
        return [{int(c): int(counts[c]) for c in np.flatnonzero(counts)} for counts in it]

    def _stats_cache_path(self) -> Path | None:
        root = stats_cache_dir()
        if root is None:
            return None
        key = json.dumps([self.domain, self.split, self.seed, self.length, list(self.size),
                          repr(self.gap), _generator_hash()])
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        h, w = self.size
        return root / f"miniscapes_stats_{self.domain}_{self.split}_{h}x{w}_{digest}.json"


class _LabelCounts(Dataset):
    """Item i: the pixel count of every trainId in the label of ``ds[i]`` (NUM_CLASSES,) int64."""

    def __init__(self, ds: Miniscapes) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> np.ndarray:
        _, label = self.ds.render(i, label_only=True)
        return np.bincount(label.ravel(), minlength=256)[:NUM_CLASSES]


def _identity(x: Any) -> Any:
    return x


def stats_cache_dir() -> Path | None:
    """Where ``class_stats`` caches its counts (None: caching off)."""
    env = os.environ.get("CLUDA_KIT_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cluda_kit"


@lru_cache(maxsize=1)
def _generator_hash() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _read_stats(path: Path, length: int) -> list[dict[int, int]] | None:
    """The cached counts, or None if absent or unreadable (then they are recomputed)."""
    try:
        raw = json.loads(path.read_text())
        stats = [{int(c): int(n) for c, n in d.items()} for d in raw]
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if len(stats) != length or any(c < 0 or c >= NUM_CLASSES or n <= 0 for d in stats for c, n in d.items()):
        return None
    return stats


def _write_stats(path: Path, stats: list[dict[int, int]]) -> None:
    """Atomic write (:mod:`cluda_kit.fileio`); a read-only cache is skipped silently."""
    try:
        atomic_write_text(path, json.dumps([{str(c): n for c, n in d.items()} for d in stats]))
    except OSError:
        pass
