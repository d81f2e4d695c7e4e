"""Encoder + decoder -> :class:`SegOutput` (logits and the fused feature); ``build_segmentor(cfg)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ConfigError
from .heads import DAFormerHead, DeepLabV2Head, SegFormerHead, init_conv_modules
from .mit import MIT_SPECS, mit
from .resnet import RESNET_DEPTHS, resnet

__all__ = ["SegOutput", "Segmentor", "ProjectionHead", "build_segmentor", "build_encoder",
           "build_decoder", "ENCODERS", "DECODERS"]

ENCODERS = tuple(MIT_SPECS) + tuple(RESNET_DEPTHS)
DECODERS = ("daformer", "deeplabv2", "segformer")


@dataclass
class SegOutput:
    """What a segmentor returns.

    Attributes:
        logits: (B, C, h, w) class scores before softmax. h x w = ceil(H/4) x ceil(W/4) for the
            DAFormer and SegFormer decoders; ceil(H/s) x ceil(W/s) with s = the stride of the
            last encoder stage for DeepLabV2 (8 on a ResNet with output stride 8, 32 on MiT).
            ``Segmentor.output_stride`` gives the stride.
        fused: (B, D, h, w) the fused feature before dropout and the classifier (DAFormer: the
            ASPP-fused multi-level map; DeepLabV2: the last encoder stage).
        stages: the encoder's 4 stage maps when called with ``return_stages=True``, else None.
        embedding: (B, P, h, w) projection-head output of ``fused`` (projection_dim P > 0),
            else None.
    """

    logits: Tensor
    fused: Tensor
    stages: list[Tensor] | None = None
    embedding: Tensor | None = None


class ProjectionHead(nn.Module):
    """2-layer per-pixel MLP (1x1 conv D->D, ReLU, 1x1 conv D->P): (B, D, h, w) -> (B, P, h, w)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(in_dim, in_dim, 1)
        self.fc2 = nn.Conv2d(in_dim, out_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class Segmentor(nn.Module):
    """``encoder`` (image -> 4 stage maps) + ``decoder`` (maps -> (logits, fused)).

    Args:
        encoder: module with ``out_channels`` and ``strides`` tuples; ``forward(x)`` returns
            the list of 4 stage maps.
        decoder: module whose ``forward(stages)`` returns ``(logits, fused)`` and which has a
            ``fused_dim`` attribute.
        projection_dim: P > 0 adds :class:`ProjectionHead` (``self.projection``) on ``fused``.
        channels_last: feed the encoder channels-last inputs (call ``.to(memory_format=
            torch.channels_last)`` on the module too; ``build_segmentor`` does).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, projection_dim: int = 0, *,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.projection = ProjectionHead(decoder.fused_dim, projection_dim) if projection_dim > 0 else None
        self.channels_last = channels_last
        self.output_stride: int = (encoder.strides[-1] if isinstance(decoder, DeepLabV2Head)
                                   else encoder.strides[0])

    def forward(self, x: Tensor, return_stages: bool = False) -> SegOutput:
        """x: (B, 3, H, W) normalised images -> :class:`SegOutput`."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        stages = self.encoder(x)
        logits, fused = self.decoder(stages)
        embedding = self.projection(fused) if self.projection is not None else None
        return SegOutput(logits, fused, stages if return_stages else None, embedding)


def build_encoder(name: str, *, drop_path_rate: float = 0.1, output_stride: int = 8,
                  activation_checkpointing: bool = False) -> nn.Module:
    """MiT ("mit_b0".."mit_b5", "mit_nano") or ResNet ("resnet18/50/101") encoder by name."""
    if name in MIT_SPECS:
        return mit(name, drop_path_rate, activation_checkpointing)
    if name in RESNET_DEPTHS:
        return resnet(name, output_stride, activation_checkpointing)
    raise ConfigError(f"model.encoder: expected one of {', '.join(ENCODERS)}, got {name!r}")


def build_decoder(name: str, in_channels: tuple[int, ...], num_classes: int, *,
                  embed_dim: int = 256, fused_dim: int = 256,
                  aspp_dilations: tuple[int, ...] = (1, 6, 12, 18), dropout: float = 0.1,
                  deeplab_dilation_quirk: bool = False) -> nn.Module:
    """DAFormer / DeepLabV2 / SegFormer decoder by name for an encoder with ``in_channels``."""
    if name == "daformer":
        return DAFormerHead(in_channels, num_classes, embed_dim, fused_dim, aspp_dilations, dropout)
    if name == "segformer":
        return SegFormerHead(in_channels, num_classes, embed_dim, fused_dim, dropout)
    if name == "deeplabv2":
        return DeepLabV2Head(in_channels[-1], num_classes, dilation_quirk=deeplab_dilation_quirk)
    raise ConfigError(f"model.decoder: expected one of {', '.join(DECODERS)}, got {name!r}")


def build_segmentor(cfg: Any) -> Segmentor:
    """Build a randomly initialised :class:`Segmentor` from a ``ModelConfig``-like object.

    Reads ``encoder``, ``decoder``, ``num_classes``, ``embed_dim``, ``fused_dim``,
    ``aspp_dilations`` (DAFormer head; DeepLabV2 always uses 6/12/18/24, or 6/12 with the quirk),
    ``dropout``, ``drop_path_rate``, ``output_stride``,
    ``deeplab_dilation_quirk``, ``decoder_init`` ("mmcv": :func:`~cluda_kit.models.heads.init_conv_modules`
    on the decoder; "torch": PyTorch's defaults), ``pretrained`` ("" or a local path / hub name, loaded with
    :func:`cluda_kit.models.weights.load_pretrained`: encoder-only files go into the encoder,
    full checkpoints into the whole segmentor), ``channels_last``, ``activation_checkpointing``
    and ``projection_dim``. Parameters are created on the CPU in float32; seed with
    ``torch.manual_seed`` beforehand for a reproducible initialisation.
    """
    encoder = build_encoder(cfg.encoder, drop_path_rate=cfg.drop_path_rate,
                            output_stride=cfg.output_stride,
                            activation_checkpointing=cfg.activation_checkpointing)
    decoder = build_decoder(cfg.decoder, encoder.out_channels, cfg.num_classes,
                            embed_dim=cfg.embed_dim, fused_dim=cfg.fused_dim,
                            aspp_dilations=tuple(cfg.aspp_dilations), dropout=cfg.dropout,
                            deeplab_dilation_quirk=cfg.deeplab_dilation_quirk)
    if getattr(cfg, "decoder_init", "torch") == "mmcv":
        init_conv_modules(decoder)
    model = Segmentor(encoder, decoder, cfg.projection_dim, channels_last=cfg.channels_last)
    if cfg.pretrained:
        from .weights import WeightsMismatchError, load_pretrained

        try:
            load_pretrained(model, cfg.pretrained)
        except WeightsMismatchError as err:  # name the key: the file alone does not say which
            raise WeightsMismatchError(f"model.pretrained (for model.encoder={cfg.encoder}): {err}") from None
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
