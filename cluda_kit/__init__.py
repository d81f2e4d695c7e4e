"""cluda_kit: contrastive UDA for semantic segmentation, as a notebook-first research kit.

The public Python API (README "Python API")::

    import cluda_kit

    cfg = cluda_kit.load_config("miniscapes_cluda", ["train.max_iters=100"])
    summary = cluda_kit.Trainer(cfg, "runs/mine").fit()          # train; the per-class IoU in summary
    model = cluda_kit.load_model("runs/mine")                    # a run, a checkpoint or an export
    masks = cluda_kit.predict(model, ["street.png"])             # (H, W) trainIds per image

The names load lazily, so ``import cluda_kit`` (and ``cluda-kit presets``) does not import torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Config", "SegmentationModel", "Trainer", "load_config", "load_model", "predict", "__version__"]

_WHERE = {  # public name -> the module that defines it
    "Config": "cluda_kit.config",
    "load_config": "cluda_kit.config",
    "Trainer": "cluda_kit.engine.trainer",
    "SegmentationModel": "cluda_kit.inference",
    "load_model": "cluda_kit.inference",
    "predict": "cluda_kit.inference",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from .config import Config, load_config
    from .engine.trainer import Trainer
    from .inference import SegmentationModel, load_model, predict


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cluda_kit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
