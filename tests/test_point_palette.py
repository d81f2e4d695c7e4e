"""Scatter plots colour classes so that a reader can tell every pair apart."""
import itertools

import numpy as np

from cluda_kit.analysis.plots import POINT_PALETTE
from cluda_kit.data.labels import NUM_CLASSES, PALETTE


def _closest_pair(palette) -> float:
    rgb = np.asarray(palette, dtype=float)
    return min(float(np.linalg.norm(a - b)) for a, b in itertools.combinations(rgb, 2))


def test_every_class_gets_a_colour_far_from_every_other():
    assert POINT_PALETTE.shape == (NUM_CLASSES, 3) and POINT_PALETTE.dtype == np.uint8
    # the Cityscapes palette puts bus (0, 60, 100) and train (0, 80, 100) 20 RGB units apart
    assert _closest_pair(PALETTE) < 25
    assert _closest_pair(POINT_PALETTE) > 60


def test_the_feature_explorer_defaults_to_the_point_palette():
    from cluda_kit.analysis import FeatureExplorer, FeatureSet

    rng = np.random.default_rng(0)
    points = FeatureSet(rng.normal(size=(12, 4)).astype(np.float32), np.arange(12) % 3, np.arange(12) % 2,
                        ("game", "real"), "m")
    explorer = FeatureExplorer({"m": points}, methods=("pca",), cache=False)
    np.testing.assert_allclose(explorer.palette, POINT_PALETTE / 255.0)
