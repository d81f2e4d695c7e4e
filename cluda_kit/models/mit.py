"""Mix Transformer (MiT) encoders B0..B5 of SegFormer, plus a small ``mit_nano`` demo variant.

The encoder maps an image (B, 3, H, W) to four stage maps (B, C_i, h_i, w_i) at strides 4, 8, 16
and 32, h_i = ceil(H / stride_i) (the overlapping patch embeddings pad by half their kernel).

Architecture (SegFormer, Xie et al. 2021):

- overlapping patch embedding per stage: conv 7x7 stride 4 (stage 1) / 3x3 stride 2 (stages 2-4),
  padding k // 2, then LayerNorm (eps 1e-5) over channels;
- transformer blocks ``x += drop_path(attn(norm1(x))); x += drop_path(mlp(norm2(x)))`` with
  LayerNorm eps 1e-6;
- efficient self-attention: queries from all N = h*w tokens, keys/values from the map reduced by a
  conv with kernel = stride = R (spatial-reduction ratios 8/4/2/1 per stage) followed by LayerNorm
  (eps 1e-5); computed with ``F.scaled_dot_product_attention`` (scale head_dim^-1/2);
- Mix-FFN: linear -> 3x3 depthwise conv (with bias) -> GELU -> linear, hidden = 4 * C;
- stochastic depth (``torchvision.ops.StochasticDepth``, mode "row" = per sample) with a rate that
  rises linearly over all blocks from 0 to ``drop_path_rate``;
- a LayerNorm (eps 1e-6) closes every stage.

Memory layout: the maps are the tokens' (B, N, C) memory seen as (B, C, h, w), strided views
without a copy, i.e. channels-last, so the decoder runs channels-last. Contiguous copies (SegFormer's
``nlc_to_nchw``) made the CPU demo step 12 % slower in a same-run comparison (bench/README.md,
"The encoder's maps in the tokens' layout").

Parameter names follow SegFormer's ``mit_b*.pth`` key layout (``patch_embed1.proj``,
``block1.0.attn.q``, ``.kv``, ``.sr``, ``.norm``, ``.proj``, ``mlp.fc1``, ``mlp.dwconv.dwconv``,
``mlp.fc2``, ``norm1`` ...), so loading those files is a straight copy (the ImageNet classifier
``head.*`` in the files is dropped by :mod:`cluda_kit.models.weights`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

__all__ = ["MIT_SPECS", "MiTSpec", "MixTransformer", "mit"]


@dataclass(frozen=True)
class MiTSpec:
    """Widths and depths of one MiT variant (four stages)."""

    embed_dims: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


_B1_DIMS = (64, 128, 320, 512)
_B1_HEADS = (1, 2, 5, 8)

MIT_SPECS: dict[str, MiTSpec] = {
    "mit_b0": MiTSpec((32, 64, 160, 256), _B1_HEADS, (2, 2, 2, 2)),
    "mit_b1": MiTSpec(_B1_DIMS, _B1_HEADS, (2, 2, 2, 2)),
    "mit_b2": MiTSpec(_B1_DIMS, _B1_HEADS, (3, 4, 6, 3)),
    "mit_b3": MiTSpec(_B1_DIMS, _B1_HEADS, (3, 4, 18, 3)),
    "mit_b4": MiTSpec(_B1_DIMS, _B1_HEADS, (3, 8, 27, 3)),
    "mit_b5": MiTSpec(_B1_DIMS, _B1_HEADS, (3, 6, 40, 3)),
    # Demo variant for a 2-core CPU at 128x256 crops (chosen by measurement, see bench/models.py):
    # B0's stage widths with one block per stage.
    "mit_nano": MiTSpec((32, 64, 160, 256), _B1_HEADS, (1, 1, 1, 1)),
}


class OverlapPatchEmbed(nn.Module):
    """Strided conv + LayerNorm: (B, C_in, H, W) -> tokens (B, h*w, D), h, w."""

    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a map reduced R times per side.

    Input/output tokens (B, N, D) with N = h*w; keys/values have N / R^2 tokens (floor per side).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MiT attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, d = x.shape
        head_dim = d // self.num_heads
        q = self.q(x).view(b, n, self.num_heads, head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            reduced = self.sr(x.transpose(1, 2).reshape(b, d, h, w))
            x = self.norm(reduced.flatten(2).transpose(1, 2))
        # kv output channels: first D are keys, last D values (SegFormer's layout)
        k, v = self.kv(x).view(b, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DWConv(nn.Module):
    """3x3 depthwise conv on tokens (B, N, C) laid out as an h x w map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """fc1 -> 3x3 depthwise conv -> GELU -> fc2 on tokens (B, N, C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class MiTBlock(nn.Module):
    """Pre-norm transformer block with efficient attention, Mix-FFN and stochastic depth."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int,
                 drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixTransformer(nn.Module):
    """MiT encoder: image (B, 3, H, W) -> [stage maps (B, C_i, ceil(H/s_i), ceil(W/s_i))], s = 4/8/16/32.

    Args:
        spec: widths/depths (see ``MIT_SPECS``).
        drop_path_rate: stochastic-depth rate of the last block (linear from 0 over all blocks).
        activation_checkpointing: recompute every transformer block in the backward pass
            (``torch.utils.checkpoint``, non-reentrant) when gradients are enabled.
    """

    def __init__(self, spec: MiTSpec, drop_path_rate: float = 0.1,
                 activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.out_channels: tuple[int, ...] = tuple(spec.embed_dims)
        self.strides: tuple[int, ...] = (4, 8, 16, 32)
        self.activation_checkpointing = activation_checkpointing
        rates = torch.linspace(0, drop_path_rate, sum(spec.depths)).tolist()
        in_ch, start = 3, 0
        for i, (dim, heads, depth, sr) in enumerate(
                zip(spec.embed_dims, spec.num_heads, spec.depths, spec.sr_ratios), start=1):
            kernel, stride = (7, 4) if i == 1 else (3, 2)
            setattr(self, f"patch_embed{i}", OverlapPatchEmbed(in_ch, dim, kernel, stride))
            setattr(self, f"block{i}", nn.ModuleList(
                MiTBlock(dim, heads, sr, spec.mlp_ratio, rates[start + j]) for j in range(depth)))
            setattr(self, f"norm{i}", nn.LayerNorm(dim, eps=1e-6))
            in_ch, start = dim, start + depth
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        b = x.shape[0]
        outs = []
        use_ckpt = self.activation_checkpointing and torch.is_grad_enabled()
        for i in range(1, 5):
            tokens, h, w = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                if use_ckpt:
                    tokens = checkpoint(blk, tokens, h, w, use_reentrant=False)
                else:
                    tokens = blk(tokens, h, w)
            tokens = getattr(self, f"norm{i}")(tokens)
            x = tokens.transpose(1, 2).reshape(b, -1, h, w)
            outs.append(x)
        return outs


def _init_weights(m: nn.Module) -> None:
    """SegFormer's initialisation: truncated normal (std 0.02) linears, He-normal (fan-out) convs."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def mit(name: str, drop_path_rate: float = 0.1,
        activation_checkpointing: bool = False) -> MixTransformer:
    """Build the MiT encoder ``name`` ("mit_b0".."mit_b5", "mit_nano"), randomly initialised."""
    if name not in MIT_SPECS:
        raise ValueError(f"unknown MiT encoder {name!r}; expected one of {sorted(MIT_SPECS)}")
    return MixTransformer(MIT_SPECS[name], drop_path_rate, activation_checkpointing)
