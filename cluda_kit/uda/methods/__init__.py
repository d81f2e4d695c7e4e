"""UDA methods: each one class that owns the losses of one training step (see ``base``).

    SourceOnly  (source_only.py)  CE on source crops; also the oracle (labelled target as source)
    DACS        (dacs.py)         + EMA teacher, pseudo-labels, ClassMix, strong augmentation
    DAFormer    (daformer.py)     + ImageNet feature distance (rare class sampling is data-side)
    CLUDA       (cluda.py)        + pixel contrastive loss on the fused feature, source and mixed
    PiPa        (pipa.py)         DAFormer + class-balanced hard/easy pixel contrast (source)
    SePiCo      (sepico.py)       DAFormer + pixels against class statistics (source and target)
    parts: HRDA's multi-resolution forward and loss (segmentation.py), MIC (mic.py)

``build_method(cfg)`` picks the method a config describes (``uda.method: auto``) or the one it
names: a registered name, or ``package.module:ClassName`` for a method in a file of your own
(docs/extending.md; :func:`register_method` gives it a short name).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ...config import ConfigError, method_of
from .base import LossGroup, Method, StepContext
from .cluda import CLUDA
from .dacs import DACS
from .daformer import DAFormer
from .mic import MaskedImageConsistency
from .pipa import PiPa
from .segmentation import HRDASegmentation, PlainSegmentation, cross_entropy, segmentation_for
from .sepico import SePiCo
from .source_only import SourceOnly

__all__ = ["Method", "StepContext", "LossGroup", "SourceOnly", "DACS", "DAFormer", "CLUDA", "PiPa", "SePiCo",
           "MaskedImageConsistency", "PlainSegmentation", "HRDASegmentation", "segmentation_for",
           "cross_entropy", "METHODS", "register_method", "build_method", "method_name"]

#: name -> factory ``f(cfg) -> Method``
METHODS: dict[str, Callable[[Any], Method]] = {
    "source_only": SourceOnly, "dacs": DACS, "daformer": DAFormer, "cluda": CLUDA,
    "pipa": PiPa, "sepico": SePiCo,
}


def register_method(name: str) -> Callable:
    """Class decorator: make a :class:`Method` subclass trainable as ``uda.method=<name>``."""
    def add(cls):
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"register_method: a method named {name!r} exists ({METHODS[name].__name__})")
        METHODS[name] = cls
        return cls
    return add


def method_name(cfg: Any) -> str:
    """The method a config trains (:func:`cluda_kit.config.method_of`)."""
    return method_of(cfg)


def _import_method(spec: str) -> Callable[[Any], Method]:
    """The class named by ``"package.module:ClassName"`` (a method outside the kit's registry)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"uda.method: {spec!r}: cannot import module {module_name!r} ({err}); "
                          "is it on PYTHONPATH?") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"uda.method: {spec!r}: module {module_name!r} has no Method subclass "
                          f"named {attr!r}")
    return cls


def build_method(cfg: Any) -> Method:
    """The :class:`Method` of a config (see :func:`method_name`): a registered name, or a class
    given by import path as ``"package.module:ClassName"`` (a method in a file of your own)."""
    name = method_name(cfg)
    if ":" in name:
        factory = _import_method(name)
    elif name in METHODS:
        factory = METHODS[name]
    else:
        raise ConfigError(f"uda.method: unknown method {name!r}; known: {', '.join(sorted(METHODS))}, "
                          "or a class of your own as 'package.module:ClassName'")
    if cfg.uda.mic.enabled and cfg.uda.mode != "self_training":
        raise ConfigError(f"uda.mic.enabled: MIC trains against the teacher's pseudo-labels, but "
                          f"uda.mode={cfg.uda.mode} has no teacher: set uda.mode=self_training")
    reads = Method.args_reads
    method = factory(cfg)
    given = sorted(getattr(cfg.uda, "method_args", {}) or {})
    if given and Method.args_reads == reads:  # settings nobody reads would silently do nothing
        raise ConfigError(f"uda.method_args.{given[0]}: method {name!r} takes no settings "
                          "(uda.method_args must be empty)")
    return method
