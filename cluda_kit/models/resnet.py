"""torchvision ResNet-18/50/101 encoders returning the four stage maps, optionally dilated.

image (B, 3, H, W) -> [layer1 .. layer4 outputs]; channels (64, 128, 256, 512) for ResNet-18 and
(256, 512, 1024, 2048) for ResNet-50/101. Strides: output_stride 32 -> 4/8/16/32,
16 -> 4/8/16/16, 8 -> 4/8/8/8 (DeepLab's dilated ResNet: the strides of layer3/layer4 become
dilations 2/4).

Dilation follows torchvision's ``replace_stride_with_dilation`` rule (identical to mmseg's
``contract_dilation=True`` used by DAFormer's ResNetV1c): the first block of a dilated layer
keeps the previous dilation, the remaining blocks use the new one. torchvision refuses dilation
for BasicBlock (ResNet-18), so the conversion is done here by editing the 3x3 convs of the built
network in place, the same way for every depth.

Parameter names equal torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1`` ...) minus the
classifier ``fc``, so torchvision ImageNet state dicts load as a straight copy. Weights are never
downloaded here (``weights=None``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
import torchvision
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ResNetEncoder", "resnet", "RESNET_DEPTHS"]

RESNET_DEPTHS = {"resnet18": 18, "resnet50": 50, "resnet101": 101}


def _dilate_layer(layer: nn.Sequential, previous: int, dilation: int) -> None:
    """Remove the stride of ``layer`` and dilate its 3x3 convs (block 0: ``previous``, rest: ``dilation``)."""
    for i, block in enumerate(layer):
        d = previous if i == 0 else dilation
        for conv in block.modules():
            if isinstance(conv, nn.Conv2d):
                conv.stride = (1, 1)
                if conv.kernel_size == (3, 3):
                    conv.dilation = (d, d)
                    conv.padding = (d, d)


@contextmanager
def _restored_bn_stats(module: nn.Module) -> Iterator[None]:
    """Restore the BatchNorm buffers (running mean/var, batch counter) of ``module`` on exit.

    Wraps the recomputation pass of activation checkpointing: the recomputed forward runs the
    same ops as the original one (so the saved tensors match), and the running statistics end up
    updated exactly once per training forward, as without checkpointing.
    """
    bns = [m for m in module.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [[b.clone() for b in m.buffers()] for m in bns]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, bufs in zip(bns, saved):
                for b, v in zip(m.buffers(), bufs):
                    b.copy_(v)


class ResNetEncoder(nn.Module):
    """ResNet stem + layer1..layer4; forward returns the four layer outputs.

    Args:
        depth: 18, 50 or 101.
        output_stride: 8, 16 or 32.
        activation_checkpointing: recompute each of layer1..layer4 in the backward pass
            (non-reentrant checkpointing; BN running stats are updated once) when grads are on.
    """

    def __init__(self, depth: int = 101, output_stride: int = 8,
                 activation_checkpointing: bool = False) -> None:
        super().__init__()
        builders = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50,
                    101: torchvision.models.resnet101}
        if depth not in builders:
            raise ValueError(f"ResNet depth {depth} not supported; expected one of {sorted(builders)}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"ResNet output_stride {output_stride} not supported; expected 8, 16 or 32")
        net = builders[depth](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4)
        if output_stride <= 16:
            _dilate_layer(self.layer4, 1 if output_stride == 16 else 2,
                          2 if output_stride == 16 else 4)
        if output_stride == 8:
            _dilate_layer(self.layer3, 1, 2)
        width = 1 if depth == 18 else 4
        self.out_channels: tuple[int, ...] = tuple(c * width for c in (64, 128, 256, 512))
        self.strides: tuple[int, ...] = {8: (4, 8, 8, 8), 16: (4, 8, 16, 16),
                                         32: (4, 8, 16, 32)}[output_stride]
        self.output_stride = output_stride
        self.activation_checkpointing = activation_checkpointing

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        use_ckpt = self.activation_checkpointing and torch.is_grad_enabled()
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            if use_ckpt:
                x = checkpoint(layer, x, use_reentrant=False,
                               context_fn=lambda layer=layer: (nullcontext(), _restored_bn_stats(layer)))
            else:
                x = layer(x)
            outs.append(x)
        return outs


def resnet(name: str, output_stride: int = 8,
           activation_checkpointing: bool = False) -> ResNetEncoder:
    """Build the encoder ``name`` ("resnet18", "resnet50", "resnet101"), randomly initialised."""
    if name not in RESNET_DEPTHS:
        raise ValueError(f"unknown ResNet encoder {name!r}; expected one of {sorted(RESNET_DEPTHS)}")
    return ResNetEncoder(RESNET_DEPTHS[name], output_stride, activation_checkpointing)
