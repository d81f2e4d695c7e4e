"""Looking at things: feature extraction, projections, cluster measures, explorers, plots.

Functions here return data or figures and never set global state. Heavy dependencies
(scikit-learn, umap-learn, ipywidgets, matplotlib) are imported only when used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cluda_kit.analysis.embedding import cluster_measures, distance_ratio, embed, measures_rows, measures_table
from cluda_kit.analysis.features import FeatureSet, extract_features, patch_labels

if TYPE_CHECKING:
    from cluda_kit.analysis.widgets import FeatureExplorer

__all__ = ["FeatureExplorer", "FeatureSet", "cluster_measures", "distance_ratio", "embed", "extract_features",
           "measures_rows", "measures_table", "patch_labels"]


def __getattr__(name: str) -> Any:
    if name == "FeatureExplorer":  # imports ipywidgets and matplotlib
        from cluda_kit.analysis.widgets import FeatureExplorer

        return FeatureExplorer
    raise AttributeError(f"module 'cluda_kit.analysis' has no attribute {name!r}")
