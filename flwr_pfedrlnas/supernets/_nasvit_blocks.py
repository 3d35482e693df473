"""The modules of the NASViT family: attention, transformer block, stage, network.

Module attribute names are part of the family's state_dict keys: do not rename.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from flwr_pfedrlnas.supernets._layers import (
    ConvBNAct,
    InvertedResidual,
    PooledHeadNet,
    init_weights,
    make_activation,
)

__all__ = ["Attention", "NASViTNet", "TransformerBlock", "ViTStage", "relative_position_index"]

_VALUE_CONV_KERNEL = 3  # depthwise conv on the values (NASViT)
_REL_BIAS_STD = 0.02


@functools.lru_cache(maxsize=64)
def relative_position_index(height: int, width: int, side: int) -> torch.Tensor:
    """Row of the relative-position table for every (query, key) token pair.

    Tokens of a ``height`` x ``width`` map, in row-major order; the table has
    one row per offset ``(dy, dx)`` with ``|dy|, |dx| < side``, row
    ``(dy + side - 1) * (2 * side - 1) + dx + side - 1``. The row depends on the
    offset only, so one table serves every map up to ``side`` x ``side``.

    Returns
    -------
    torch.Tensor
        ``int64``, ``(height * width) x (height * width)``, on the CPU.
    """
    if height > side or width > side:
        raise ValueError(
            f"a {height}x{width} feature map exceeds the relative-position table's "
            f"{side}x{side} (set by the family's largest resolution)"
        )
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + side - 1
    dx = xs[:, None] - xs[None, :] + side - 1
    return dy * (2 * side - 1) + dx


class Attention(nn.Module):
    """NASViT's self-attention over all tokens of a feature map.

    Separate ``q``, ``k`` projections (``dim`` outputs) and a ``v`` projection
    widened ``value_expand`` times, a depthwise 3x3 convolution over the
    values laid out as a map (``v_conv``), a learned relative position bias per
    head (``rel_bias``, one row per offset, see :func:`relative_position_index`),
    talking heads before (``mix_logits``) and after (``mix_weights``) the
    softmax, the activation, and the output projection. Head ``h`` owns rows
    ``[h * head_dim, (h + 1) * head_dim)`` of ``q`` and ``k`` and rows
    ``[h * head_dim * value_expand, (h + 1) * head_dim * value_expand)`` of
    ``v``, so fewer heads are leading rows everywhere, and every head-axis
    tensor (bias table columns, mixers) is sliced by leading entries.
    """

    def __init__(
        self, dim: int, head_dim: int, value_expand: int, table_side: int, activation: str
    ) -> None:
        super().__init__()
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.value_expand = value_expand
        self.table_side = table_side
        self.scale = head_dim**-0.5
        value_dim = dim * value_expand
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, value_dim)
        self.v_conv = nn.Conv2d(
            value_dim,
            value_dim,
            _VALUE_CONV_KERNEL,
            padding=_VALUE_CONV_KERNEL // 2,
            groups=value_dim,
            bias=False,
        )
        self.rel_bias = nn.Parameter(torch.zeros((2 * table_side - 1) ** 2, self.num_heads))
        self.mix_logits = nn.Linear(self.num_heads, self.num_heads)
        self.mix_weights = nn.Linear(self.num_heads, self.num_heads)
        self.act = make_activation(activation)
        self.proj = nn.Linear(value_dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, n, heads * d)`` -> ``(b, heads, n, d)``."""
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)

    def _mix(self, mixer: nn.Linear, attn: torch.Tensor) -> torch.Tensor:
        """Apply a talking-heads mixer along the head axis of ``(b, heads, n, n)``."""
        return mixer(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, _ = tokens.shape
        q, k = self._heads(self.q(tokens)), self._heads(self.k(tokens))
        v = self.v(tokens).transpose(1, 2).reshape(b, -1, height, width)
        v = self._heads(self.v_conv(v).flatten(2).transpose(1, 2))
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (b, heads, n, n)
        index = relative_position_index(height, width, self.table_side).to(tokens.device)
        bias = self.rel_bias[index.flatten()].view(n, n, self.num_heads).permute(2, 0, 1)
        logits = self._mix(self.mix_logits, logits + bias)
        weights = self._mix(self.mix_weights, logits.softmax(dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(self.act(out))


class _MLP(nn.Module):
    """Linear, activation, linear (hidden = leading channels of the largest hidden)."""

    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_activation(activation)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm attention, then two pre-norm MLPs, each residual with a layer scale.

    Works on ``(batch, channels, height, width)`` maps. As in NASViT, the two
    MLPs share one layer scale (``scale_mlp``) and the attention has its own
    (``scale_attn``); both are per-channel vectors, sliced by leading channels.
    """

    def __init__(
        self,
        dim: int,
        head_dim: int,
        hidden: int,
        value_expand: int,
        table_side: int,
        layer_scale_init: float,
        activation: str,
    ) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim, head_dim, value_expand, table_side, activation)
        self.scale_attn = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        self.norm_mlp1 = nn.LayerNorm(dim)
        self.mlp1 = _MLP(dim, hidden, activation)
        self.norm_mlp2 = nn.LayerNorm(dim)
        self.mlp2 = _MLP(dim, hidden, activation)
        self.scale_mlp = nn.Parameter(torch.full((dim,), float(layer_scale_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.scale_attn * self.attn(self.norm_attn(t), h, w)
        t = t + self.scale_mlp * self.mlp1(self.norm_mlp1(t))
        t = t + self.scale_mlp * self.mlp2(self.norm_mlp2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class ViTStage(nn.Module):
    """A downsampling MBConv followed by transformer blocks."""

    def __init__(self, downsample: InvertedResidual, blocks: nn.Sequential) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class NASViTNet(PooledHeadNet):
    """A NASViT network of one architecture (the supernet is the largest one).

    The forward pass first resizes the input to ``resolution`` (``interpolation``,
    bicubic in NASViT); the resolution has no weights.
    """

    def __init__(
        self,
        resolution: int,
        interpolation: str,
        stem: ConvBNAct,
        conv_stages: nn.ModuleList,
        vit_stages: nn.ModuleList,
        final_expand: ConvBNAct,
        head_channels: int,
        num_classes: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.interpolation = interpolation
        self.stem = stem
        self.conv_stages = conv_stages
        self.vit_stages = vit_stages
        self.add_head(final_expand, head_channels, num_classes, dropout, "silu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.resolution, self.resolution)
        if tuple(x.shape[-2:]) != size:
            corners = None if self.interpolation == "nearest" else False
            x = F.interpolate(x, size=size, mode=self.interpolation, align_corners=corners)
        x = self.stem(x)
        for stage in self.conv_stages:
            x = stage(x)
        for stage in self.vit_stages:
            x = stage(x)
        return self.forward_head(x)


def init_nasvit(module: nn.Module) -> None:
    """Initialise a NASViT network as NASViT does, with identity talking heads.

    Kaiming (fan-out) convolutions, unit norms, truncated-normal (0.02) linears
    and relative position biases; the BatchNorm scale closing each residual
    MBConv starts at zero (the block starts as the identity). The talking-heads
    mixers start as the identity, so that attention starts as plain multi-head
    attention (ours). Layer scales keep their constructor value.
    """
    init_weights(module, lambda weight: nn.init.trunc_normal_(weight, std=0.02))
    for m in module.modules():
        if isinstance(m, Attention):
            nn.init.eye_(m.mix_logits.weight)
            nn.init.eye_(m.mix_weights.weight)
            nn.init.trunc_normal_(m.rel_bias, std=_REL_BIAS_STD)
        elif isinstance(m, InvertedResidual) and m.residual:
            nn.init.zeros_(m.project.bn.weight)
