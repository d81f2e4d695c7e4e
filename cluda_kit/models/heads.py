"""Segmentation decoders. Every decoder maps the encoder's stage maps to ``(logits, fused)``.

- ``logits``: (B, C, h, w) class scores before softmax.
- ``fused``: (B, D, h, w) the feature map the 1x1 classifier reads (before dropout), i.e. CLUDA's
  "multi-level fused feature" for the DAFormer decoder.

h x w is the size of the first stage map (stride 4) for the DAFormer and SegFormer decoders and of
the last stage map for DeepLabV2 (stride 8 on a dilated ResNet with output stride 8).

Parameter names mirror the mmsegmentation heads used by DAFormer/HRDA/CLUDA (``embed_layers``,
``fuse_layer.aspp_modules``, ``fuse_layer.bottleneck``, ``conv_seg``, ``aspp_modules``,
``linear_c``, ``linear_fuse``, ``linear_pred``; ``conv``/``bn`` inside conv-BN-ReLU units, and
``depthwise_conv``/``pointwise_conv`` inside separable convs) so that their checkpoints map
almost one to one (see :mod:`cluda_kit.models.weights`). The per-pixel linear embeddings are
1x1 convs here (mmseg stores them as ``nn.Linear``; the loader reshapes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["init_conv_modules", "ConvBNReLU", "DepthwiseSeparableConv", "SeparableASPP", "DAFormerHead",
           "DeepLabV2Head", "SegFormerHead", "StageProjection", "DEEPLAB_V2_DILATIONS"]

#: DeepLabV2's ASPP dilations. With ``dilation_quirk`` only the first two (6, 12) are used.
DEEPLAB_V2_DILATIONS = (6, 12, 18, 24)


class ConvBNReLU(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU; (B, C_in, h, w) -> (B, C_out, h', w')."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *,
                 stride: int = 1, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              padding=dilation * (kernel_size // 2), dilation=dilation,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class DepthwiseSeparableConv(nn.Module):
    """Depthwise k x k conv-BN-ReLU then pointwise 1x1 conv-BN-ReLU (mmcv's layout)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 dilation: int = 1) -> None:
        super().__init__()
        self.depthwise_conv = ConvBNReLU(in_channels, in_channels, kernel_size,
                                         dilation=dilation, groups=in_channels)
        self.pointwise_conv = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class SeparableASPP(nn.Module):
    """Depthwise-separable ASPP without image pooling, then a 3x3 conv-BN-ReLU bottleneck.

    Branch for dilation 1: 1x1 conv-BN-ReLU; other dilations: separable 3x3 convs with that
    dilation. The branch outputs (``channels`` each) are concatenated and fused to ``channels``.
    (B, C_in, h, w) -> (B, channels, h, w).
    """

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            ConvBNReLU(in_channels, channels, 1) if d == 1
            else DepthwiseSeparableConv(in_channels, channels, 3, dilation=d)
            for d in dilations)
        self.bottleneck = ConvBNReLU(len(dilations) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.bottleneck(torch.cat([m(x) for m in self.aspp_modules], dim=1))


def _embed_and_upsample(stages: Sequence[Tensor], embeds: nn.ModuleList) -> Tensor:
    """Per-level 1x1 embedding, bilinear upsampling (align_corners=False) to the first map's size,
    channel concatenation: -> (B, sum(E_i), h_1, w_1)."""
    size = stages[0].shape[-2:]
    outs = []
    for x, embed in zip(stages, embeds):
        y = embed(x)
        if y.shape[-2:] != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        outs.append(y)
    return torch.cat(outs, dim=1)


class DAFormerHead(nn.Module):
    """DAFormer's context-aware multi-level fusion decoder.

    stages (list of 4 maps (B, C_i, h_i, w_i)) -> each embedded by a per-pixel linear layer (1x1
    conv with bias) to ``embed_dim`` channels, upsampled to the first map's h x w, concatenated
    (4 * embed_dim channels) and fused into ``fused`` (B, D = fused_dim, h, w):

    - ``fusion="aspp"`` (DAFormer): depthwise-separable ASPP with ``dilations`` (1, 6, 12, 18),
      no image pooling, then 3x3 conv -> D, BN, ReLU;
    - ``fusion="conv1x1"``: a single 1x1 conv-BN-ReLU (the form HRDA uses for its scale-attention
      head and CLUDA for its ``feat_weighter``).

    ``logits = conv_seg(dropout2d(fused))`` (B, num_classes, h, w). Returns ``(logits, fused)``.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, embed_dim: int = 256,
                 fused_dim: int = 256, dilations: Sequence[int] = (1, 6, 12, 18),
                 dropout: float = 0.1, fusion: str = "aspp") -> None:
        super().__init__()
        self.embed_layers = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        cat_dim = embed_dim * len(in_channels)
        if fusion == "aspp":
            self.fuse_layer: nn.Module = SeparableASPP(cat_dim, fused_dim, dilations)
        elif fusion == "conv1x1":
            self.fuse_layer = ConvBNReLU(cat_dim, fused_dim, 1)
        else:
            raise ValueError(f"DAFormerHead: unknown fusion {fusion!r}; expected 'aspp' or 'conv1x1'")
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(fused_dim, num_classes, 1)
        self.fused_dim = fused_dim
        _init_classifier(self.conv_seg)

    def forward(self, stages: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        fused = self.fuse_layer(_embed_and_upsample(stages, self.embed_layers))
        return self.conv_seg(self.dropout(fused)), fused


class SegFormerHead(nn.Module):
    """SegFormer's all-MLP decoder (DAFormer's mmseg variant: levels concatenated 1, 2, 3, 4).

    Per-level 1x1 linear embedding to ``embed_dim``, upsampling to the first map's h x w,
    concatenation, ``linear_fuse`` 1x1 conv-BN-ReLU -> ``fused`` (B, fused_dim, h, w), dropout,
    ``linear_pred`` 1x1 -> logits. Returns ``(logits, fused)``. (SegFormer's original head
    concatenates levels in the order 4, 3, 2, 1, which only permutes ``linear_fuse``'s inputs.)
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, embed_dim: int = 256,
                 fused_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.linear_fuse = ConvBNReLU(embed_dim * len(in_channels), fused_dim, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(fused_dim, num_classes, 1)
        self.fused_dim = fused_dim
        _init_classifier(self.linear_pred)

    def forward(self, stages: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        fused = self.linear_fuse(_embed_and_upsample(stages, self.linear_c))
        return self.linear_pred(self.dropout(fused)), fused


class DeepLabV2Head(nn.Module):
    """DeepLabV2's ASPP classifier on the last encoder stage.

    logits = sum over dilations d of conv3x3_d(x) (each with bias, padding d, ``num_classes``
    outputs), x = last stage map (B, C_4, h, w) -> logits (B, num_classes, h, w). No BN, no
    dropout. ``fused`` is defined as x itself, the feature the classifier reads, at its native
    stride (h x w = H/8 x W/8 on a ResNet with output stride 8; not upsampled to stride 4, which
    would cost 4x the memory of a 2048-channel map for no new information). Consumers resize by
    shape (the contrastive loss resamples features to a fixed grid anyway).

    ``dilation_quirk``: DAFormer's DeepLabV2 baseline (mmseg config ``deeplabv2red_r50-d8.py``,
    architecture key ``dlv2red`` in DAFormer's ``experiments.py``, used with ResNet-101 for the
    DACS-style comparisons) keeps only dilations (6, 12). Its comment explains why: AdaptSegNet's
    ``Classifier_Module.forward`` (model/deeplab.py L116, inherited by DACS, ProDA, ...) has its
    ``return`` inside the loop over branches, so only the first two of (6, 12, 18, 24) are ever
    summed. With the switch on, only the first two ``dilations`` get (and have) parameters, which
    matches the layout of ``dlv2red`` checkpoints.
    """

    def __init__(self, in_channels: int, num_classes: int,
                 dilations: Sequence[int] = DEEPLAB_V2_DILATIONS,
                 dilation_quirk: bool = False) -> None:
        super().__init__()
        dilations = tuple(dilations)[:2] if dilation_quirk else tuple(dilations)
        self.dilations = dilations
        self.aspp_modules = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d) for d in dilations)
        self.fused_dim = in_channels
        for conv in self.aspp_modules:  # mmseg init_cfg: Normal(std=0.01) on aspp_modules
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, stages: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        x = stages[-1]
        logits = self.aspp_modules[0](x)
        for conv in self.aspp_modules[1:]:
            logits = logits + conv(x)
        return logits, x


def init_conv_modules(module: nn.Module) -> nn.Module:
    """mmcv's ConvModule initialisation (the release's heads) on every :class:`ConvBNReLU` inside
    ``module``: conv weights Kaiming-normal (fan_out, ReLU gain, i.e. std sqrt(2 / (C_out k²))),
    zero bias; BatchNorm weight 1, bias 0. Other layers keep theirs (the 1x1 embeddings are
    mmseg's ``nn.Linear`` MLPs with PyTorch's default init; the classifier is normal(0, 0.01))."""
    for m in module.modules():
        if isinstance(m, ConvBNReLU):
            nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu")
            if m.conv.bias is not None:
                nn.init.zeros_(m.conv.bias)
            nn.init.ones_(m.bn.weight)
            nn.init.zeros_(m.bn.bias)
    return module


def _init_classifier(conv: nn.Conv2d) -> None:
    """mmseg's BaseDecodeHead init of ``conv_seg``: normal(0, 0.01), zero bias."""
    nn.init.normal_(conv.weight, 0.0, 0.01)
    nn.init.zeros_(conv.bias)


class StageProjection(nn.Module):
    """A projection head on the encoder's concatenated stages (PiPa's and SePiCo's embedding):
    the 4 stage maps resized bilinearly to the first stage's size (stride 4) and concatenated,
    then two 1x1 convolutions, then L2-normalised per pixel: (B, sum C_s, h, w) -> (B, P, h, w).

    Args:
        in_channels: the encoder's stage widths (sum = the concatenated width).
        hidden: width of the first 1x1 convolution (followed by BN and ReLU).
        out_dim: P, the embedding width.
        out_bn_relu: BN + ReLU after the second convolution (SePiCo) or a plain convolution (PiPa).
        align_corners: of the bilinear resize (PiPa: True; SePiCo, mmseg's resize_concat: False).
    """

    def __init__(self, in_channels: Sequence[int], hidden: int, out_dim: int, *,
                 out_bn_relu: bool = False, align_corners: bool = False) -> None:
        super().__init__()
        total = int(sum(in_channels))
        self.align_corners = align_corners
        self.hidden = ConvBNReLU(total, hidden, 1)
        self.out = ConvBNReLU(hidden, out_dim, 1) if out_bn_relu else nn.Conv2d(hidden, out_dim, 1)

    def forward(self, stages: Sequence[Tensor]) -> Tensor:
        size = stages[0].shape[-2:]
        x = torch.cat([s if s.shape[-2:] == size else
                       F.interpolate(s, size=size, mode="bilinear", align_corners=self.align_corners)
                       for s in stages], dim=1)
        return F.normalize(self.out(self.hidden(x)).float(), dim=1)
