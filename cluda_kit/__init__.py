"""cluda_kit: contrastive UDA for semantic segmentation, as a notebook-first research kit."""

__version__ = "0.1.0"
