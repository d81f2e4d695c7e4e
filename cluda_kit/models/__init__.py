"""Networks: MiT / ResNet encoders, DAFormer / DeepLabV2 / SegFormer decoders, weight loading.

``build_segmentor(cfg)`` turns a ``ModelConfig`` into a :class:`Segmentor` whose forward returns
a :class:`SegOutput` (logits and the fused feature the CLUDA contrastive loss works on).
"""

from __future__ import annotations

from .segmentor import SegOutput, Segmentor, build_segmentor
from .weights import load_pretrained

__all__ = ["SegOutput", "Segmentor", "build_segmentor", "load_pretrained"]
