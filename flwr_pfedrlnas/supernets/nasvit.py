"""NASViT supernet family: MBConv stages followed by transformer stages (ICLR 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flwr_pfedrlnas.core.search_space import Architecture, Dimension, SearchSpace
from flwr_pfedrlnas.supernets import register_supernet
from flwr_pfedrlnas.supernets._layers import (
    DIVISOR,
    ConvBNAct,
    InvertedResidual,
    PooledHeadNet,
    init_weights,
    make_divisible,
)
from flwr_pfedrlnas.supernets.base import SupernetFamily

__all__ = [
    "NASVIT_CONV_STAGES",
    "NASVIT_VIT_STAGES",
    "ConvStageSpec",
    "NASViTFamily",
    "ViTStageSpec",
]


@dataclass(frozen=True)
class ConvStageSpec:
    """One MBConv stage of the NASViT table (choices at ``width_mult=1``).

    Parameters
    ----------
    widths : tuple[int, ...]
        Output channel choices.
    depths : tuple[int, ...]
        Block count choices.
    kernels : tuple[int, ...]
        Depthwise kernel choices (odd).
    expands : tuple[float, ...]
        Expand ratio choices.
    stride : int
        Stride of the stage's first block.
    use_se : bool
        Whether every block has squeeze-excitation.
    """

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[float, ...]
    stride: int
    use_se: bool


@dataclass(frozen=True)
class ViTStageSpec:
    """One transformer stage of the NASViT table (choices at ``width_mult=1``).

    Parameters
    ----------
    widths : tuple[int, ...]
        Embedding width choices (multiples of the head dimension).
    depths : tuple[int, ...]
        Transformer block count choices (after the downsampling MBConv).
    expands : tuple[float, ...]
        MLP expand ratio choices.
    stride : int
        Stride of the stage's downsampling MBConv.
    use_se : bool
        Whether the downsampling MBConv has squeeze-excitation.
    """

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    expands: tuple[float, ...]
    stride: int
    use_se: bool


# NASViT's search space (paper Table 1 / the authors' supernet config). The
# paper counts the downsampling MBConv in a transformer stage's depth; here
# ``depths`` counts the transformer blocks only (paper depth - 1).
NASVIT_CONV_STAGES: tuple[ConvStageSpec, ...] = (
    ConvStageSpec((16, 24), (1, 2), (3, 5), (1,), 1, False),
    ConvStageSpec((24, 32), (3, 4, 5), (3, 5), (4, 5, 6), 2, False),
    ConvStageSpec((32, 40), (3, 4, 5, 6), (3, 5), (4, 5, 6), 2, True),
)
NASVIT_VIT_STAGES: tuple[ViTStageSpec, ...] = (
    ViTStageSpec((64, 72), (2, 3, 4, 5), (1, 2), 2, False),
    ViTStageSpec((112, 120, 128), (2, 3, 4, 5, 6, 7), (1, 2), 2, True),
    ViTStageSpec((160, 168, 176, 184), (2, 3, 4, 5, 6, 7), (1, 2), 1, True),
    ViTStageSpec((208, 216, 224), (2, 3, 4, 5), (1, 2), 2, True),
)

_RESOLUTIONS = (192, 224, 256, 288)
_STEM_WIDTHS = (16, 24)
_HEAD_WIDTHS = (1792, 1984)  # NASViT's "MBPool" (feature mix) widths
_HEAD_DIM = 8
_DOWNSAMPLE_EXPAND = 6
_FINAL_EXPAND_RATIO = 6  # final 1x1 conv: 6 x last stage width
_LOW_RES_THRESHOLD = 64  # at or below this (largest) resolution the stem has stride 1
_POS_KERNEL = 3  # depthwise positional-encoding conv
_DOWNSAMPLE_KERNEL = 3


def _is_int(value: Any) -> bool:
    """Whether ``value`` is an integral number (``bool`` excluded)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and float(value) == int(value)
    )


def _choices(name: str, values: Any, kind: type, minimum: float) -> list[Any]:
    """Validate a choice list: numbers (integers for ``int``), >= ``minimum``, increasing.

    For ``kind=float`` integral values are returned as ``int`` (``[1, 2]`` stays
    ``[1, 2]``, ``1.5`` stays a float), so that JSON round trips are stable.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list, got {values!r}")
    if len(values) == 0:
        raise ValueError(f"{name} must not be empty")
    out: list[Any] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{name}: choice {v!r} is not a number")
        if kind is int and not _is_int(v):
            raise ValueError(f"{name}: choice {v!r} is not an integer")
        v = int(v) if _is_int(v) else float(v)
        if v < minimum:
            raise ValueError(f"{name}: choice {v!r} is below {minimum}")
        out.append(v)
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"{name} must be strictly increasing, got {out}")
    return out


def _stage_choices(
    name: str, values: Any, num_stages: int, kind: type, minimum: float
) -> list[list[Any]]:
    """Validate per-stage choice lists; keep the first ``num_stages`` of them."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list of per-stage lists, got {values!r}")
    if len(values) < num_stages:
        raise ValueError(f"{name} has choices for {len(values)} stage(s), {num_stages} needed")
    return [
        _choices(f"{name}[{i}]", stage, kind, minimum)
        for i, stage in enumerate(values[:num_stages])
    ]


def _scaled(values: Sequence[float], mult: float, divisor: int) -> tuple[int, ...]:
    """Channel choices scaled by ``mult`` and rounded; duplicates after rounding dropped."""
    return tuple(sorted({make_divisible(v * mult, divisor) for v in values}))


class _Attention(nn.Module):
    """Multi-head self-attention with talking heads (NASViT).

    ``q``, ``k`` and ``v`` are separate projections, so head ``h`` owns rows
    ``[h * head_dim, (h + 1) * head_dim)`` of each: fewer heads are the leading
    rows, and ``proj`` reads the leading input columns. The talking-heads
    mixers (``mix_logits`` before the softmax, ``mix_weights`` after it) act on
    the head axis, so fewer heads are their leading rows and columns.
    """

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.mix_logits = nn.Linear(self.num_heads, self.num_heads, bias=False)
        self.mix_weights = nn.Linear(self.num_heads, self.num_heads, bias=False)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (b, heads, n, n)
        logits = self.mix_logits(logits.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        weights = logits.softmax(dim=-1)
        weights = self.mix_weights(weights.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        out = (weights @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class _MLP(nn.Module):
    """Linear, SiLU, linear (hidden = leading channels of the largest hidden)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _TransformerBlock(nn.Module):
    """Depthwise-conv positional encoding, then pre-norm attention and MLP.

    Works on ``(batch, channels, height, width)`` feature maps; the positional
    encoding is a residual depthwise 3x3 convolution (conditional positional
    encoding), so no weight depends on the input resolution.
    """

    def __init__(self, dim: int, head_dim: int, hidden: int) -> None:
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, _POS_KERNEL, padding=_POS_KERNEL // 2, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _MLP(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class _ViTStage(nn.Module):
    """A downsampling MBConv followed by transformer blocks."""

    def __init__(self, downsample: InvertedResidual, blocks: nn.Sequential) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class _NASViT(PooledHeadNet):
    """A NASViT network of one architecture (the supernet is the largest one).

    The forward pass first resizes the input to ``resolution`` (bilinear), as
    NASViT does for every sampled resolution; the resolution has no weights.
    """

    def __init__(
        self,
        resolution: int,
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
        self.stem = stem
        self.conv_stages = conv_stages
        self.vit_stages = vit_stages
        self.add_head(final_expand, head_channels, num_classes, dropout, "silu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.resolution, self.resolution)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = self.stem(x)
        for stage in self.conv_stages:
            x = stage(x)
        for stage in self.vit_stages:
            x = stage(x)
        return self.forward_head(x)


def _init_weights(module: nn.Module) -> None:
    """Kaiming (fan-out) convolutions, unit norms, truncated-normal linears.

    The talking-heads mixers start as the identity (plain multi-head attention).
    """
    init_weights(module, lambda weight: nn.init.trunc_normal_(weight, std=0.02))
    for m in module.modules():
        if isinstance(m, _Attention):
            nn.init.eye_(m.mix_logits.weight)
            nn.init.eye_(m.mix_weights.weight)


@register_supernet
class NASViTFamily(SupernetFamily):
    """NASViT supernet: a conv stem, MBConv stages, transformer stages, a head.

    The network is a 3x3 stem conv (SiLU), the first ``num_conv_stages`` MBConv
    stages of :data:`NASVIT_CONV_STAGES`, the first ``num_vit_stages``
    transformer stages of :data:`NASVIT_VIT_STAGES` (each a downsampling MBConv,
    kernel 3, expand ``downsample_expand``, then transformer blocks), a 1x1
    expand conv to 6x the last width, global pooling, a linear "feature mix"
    layer (SiLU), dropout and the classifier. A transformer block is a residual
    depthwise 3x3 positional-encoding conv, pre-norm multi-head self-attention
    with talking heads (``width // head_dim`` heads; separate q, k, v
    projections) and a pre-norm MLP (hidden = ``width * expand``). The forward
    pass first resizes the input to the architecture's resolution (bilinear).

    Search dimensions (choices ordered small to large; widths are channel
    counts after ``width_mult`` and rounding, duplicates dropped):
    ``resolution``; ``stem.width``; per MBConv stage ``i`` (1-based)
    ``conv{i}.width``, ``conv{i}.depth``, ``conv{i}.kernel`` (centre crop of
    the largest depthwise kernel), ``conv{i}.expand``; per transformer stage
    ``j`` ``vit{j}.width``, ``vit{j}.depth`` (transformer blocks after the
    downsampling MBConv: the paper's depth minus one), ``vit{j}.expand`` (MLP
    ratio); ``head.width`` (feature-mix width). Every subnet tensor is the
    leading slice (centre crop for kernels) of the supernet tensor of the same
    key, and the supernet is the network of the largest architecture; the
    resolution has no weights. Keys use 0-based stage indices, e.g.
    ``conv_stages.1.0.dw.conv.weight``, ``vit_stages.0.downsample.project.conv.weight``,
    ``vit_stages.0.blocks.2.attn.q.weight``.

    Parameters
    ----------
    width_mult : float (default: 1.0)
        Multiplier of every channel choice (stem, stages, head); MBConv widths
        are rounded to multiples of ``channel_divisor``, transformer widths to
        multiples of ``head_dim``.
    num_conv_stages : int (default: 3)
        How many MBConv stages of the table to use (1 to 3).
    num_vit_stages : int (default: 4)
        How many transformer stages of the table to use (1 to 4).
    resolution_choices : list[int] (default: [192, 224, 256, 288])
        Input resolutions, increasing. If the largest is 64 or less, the stem
        has stride 1 (a CPU-sized instance for 32x32 data), otherwise 2.
    num_classes : int (default: 10)
        Classifier outputs.
    in_channels : int (default: 3)
        Input image channels.
    head_dim : int (default: 8)
        Channels per attention head (NASViT uses 8).
    channel_divisor : int (default: 8)
        MBConv, SE and head channel counts are multiples of this.
    stem_width_choices : list[int] (default: [16, 24])
        Stem output channels at ``width_mult=1``.
    conv_width_choices, conv_depth_choices, conv_kernel_choices, conv_expand_choices : list[list]
        Per MBConv stage choice lists (default: the NASViT table); the first
        ``num_conv_stages`` entries are used. A stage whose expand choices are
        all 1 has no expand conv.
    vit_width_choices, vit_depth_choices, vit_expand_choices : list[list]
        Per transformer stage choice lists (default: the NASViT table, depths
        counting transformer blocks only); the first ``num_vit_stages`` are used.
    head_width_choices : list[int] (default: [1792, 1984])
        Feature-mix width at ``width_mult=1``.
    downsample_expand : float (default: 6)
        Expand ratio of each transformer stage's downsampling MBConv.
    dropout : float (default: 0.2)
        Dropout before the classifier.
    """

    name = "nasvit"

    def __init__(
        self,
        width_mult: float = 1.0,
        num_conv_stages: int = len(NASVIT_CONV_STAGES),
        num_vit_stages: int = len(NASVIT_VIT_STAGES),
        resolution_choices: Sequence[int] = _RESOLUTIONS,
        num_classes: int = 10,
        in_channels: int = 3,
        head_dim: int = _HEAD_DIM,
        channel_divisor: int = DIVISOR,
        stem_width_choices: Sequence[int] = _STEM_WIDTHS,
        conv_width_choices: Sequence[Sequence[int]] | None = None,
        conv_depth_choices: Sequence[Sequence[int]] | None = None,
        conv_kernel_choices: Sequence[Sequence[int]] | None = None,
        conv_expand_choices: Sequence[Sequence[float]] | None = None,
        vit_width_choices: Sequence[Sequence[int]] | None = None,
        vit_depth_choices: Sequence[Sequence[int]] | None = None,
        vit_expand_choices: Sequence[Sequence[float]] | None = None,
        head_width_choices: Sequence[int] = _HEAD_WIDTHS,
        downsample_expand: float = _DOWNSAMPLE_EXPAND,
        dropout: float = 0.2,
    ) -> None:
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)):
            raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
        if not width_mult > 0:
            raise ValueError(f"width_mult must be positive, got {width_mult!r}")
        for knob, value in (
            ("num_conv_stages", num_conv_stages),
            ("num_vit_stages", num_vit_stages),
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("head_dim", head_dim),
            ("channel_divisor", channel_divisor),
        ):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{knob} must be a positive integer, got {value!r}")
        n_conv, n_vit = int(num_conv_stages), int(num_vit_stages)
        if n_conv > len(NASVIT_CONV_STAGES):
            raise ValueError(
                f"num_conv_stages must be between 1 and {len(NASVIT_CONV_STAGES)}, got {n_conv}"
            )
        if n_vit > len(NASVIT_VIT_STAGES):
            raise ValueError(
                f"num_vit_stages must be between 1 and {len(NASVIT_VIT_STAGES)}, got {n_vit}"
            )
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if isinstance(downsample_expand, bool) or not isinstance(downsample_expand, (int, float)):
            raise ValueError(f"downsample_expand must be a number, got {downsample_expand!r}")
        if not downsample_expand > 0:
            raise ValueError(f"downsample_expand must be positive, got {downsample_expand!r}")

        def table(value: Any, field: str, stages: Sequence[Any]) -> Any:
            # ``None``: the NASViT table's choices for every stage.
            return [list(getattr(s, field)) for s in stages] if value is None else value

        conv_t, vit_t = NASVIT_CONV_STAGES, NASVIT_VIT_STAGES
        resolutions = _choices("resolution_choices", resolution_choices, int, 1)
        stem_widths = _choices("stem_width_choices", stem_width_choices, int, 1)
        head_widths = _choices("head_width_choices", head_width_choices, int, 1)
        conv_widths = _stage_choices(
            "conv_width_choices", table(conv_width_choices, "widths", conv_t), n_conv, int, 1
        )
        conv_depths = _stage_choices(
            "conv_depth_choices", table(conv_depth_choices, "depths", conv_t), n_conv, int, 1
        )
        conv_kernels = _stage_choices(
            "conv_kernel_choices",
            table(conv_kernel_choices, "kernels", conv_t),
            n_conv,
            int,
            1,
        )
        if any(k % 2 == 0 for stage in conv_kernels for k in stage):
            raise ValueError(f"conv_kernel_choices must be odd, got {conv_kernels}")
        conv_expands = _stage_choices(
            "conv_expand_choices",
            table(conv_expand_choices, "expands", conv_t),
            n_conv,
            float,
            1,
        )
        vit_widths = _stage_choices(
            "vit_width_choices", table(vit_width_choices, "widths", vit_t), n_vit, int, 1
        )
        vit_depths = _stage_choices(
            "vit_depth_choices", table(vit_depth_choices, "depths", vit_t), n_vit, int, 1
        )
        vit_expands = _stage_choices(
            "vit_expand_choices", table(vit_expand_choices, "expands", vit_t), n_vit, float, 0
        )
        if any(e <= 0 for stage in vit_expands for e in stage):
            raise ValueError(f"vit_expand_choices must be positive, got {vit_expands}")

        super().__init__(
            width_mult=float(width_mult),
            num_conv_stages=n_conv,
            num_vit_stages=n_vit,
            resolution_choices=resolutions,
            num_classes=int(num_classes),
            in_channels=int(in_channels),
            head_dim=int(head_dim),
            channel_divisor=int(channel_divisor),
            stem_width_choices=stem_widths,
            conv_width_choices=conv_widths,
            conv_depth_choices=conv_depths,
            conv_kernel_choices=conv_kernels,
            conv_expand_choices=conv_expands,
            vit_width_choices=vit_widths,
            vit_depth_choices=vit_depths,
            vit_expand_choices=vit_expands,
            head_width_choices=head_widths,
            downsample_expand=int(downsample_expand)
            if _is_int(downsample_expand)
            else float(downsample_expand),
            dropout=float(dropout),
        )
        mult, div, hd = float(width_mult), int(channel_divisor), int(head_dim)
        dims = [
            Dimension("resolution", tuple(resolutions)),
            Dimension("stem.width", _scaled(stem_widths, mult, div)),
        ]
        for i in range(n_conv):
            dims += [
                Dimension(f"conv{i + 1}.width", _scaled(conv_widths[i], mult, div)),
                Dimension(f"conv{i + 1}.depth", tuple(conv_depths[i])),
                Dimension(f"conv{i + 1}.kernel", tuple(conv_kernels[i])),
                Dimension(f"conv{i + 1}.expand", tuple(conv_expands[i])),
            ]
        for j in range(n_vit):
            dims += [
                Dimension(f"vit{j + 1}.width", _scaled(vit_widths[j], mult, hd)),
                Dimension(f"vit{j + 1}.depth", tuple(vit_depths[j])),
                Dimension(f"vit{j + 1}.expand", tuple(vit_expands[j])),
            ]
        dims.append(Dimension("head.width", _scaled(head_widths, mult, div)))
        self._space = SearchSpace(dims)

    @property
    def search_space(self) -> SearchSpace:
        """``resolution``, ``stem.width``, per stage width/depth/(kernel)/expand, ``head.width``."""
        return self._space

    @property
    def stem_stride(self) -> int:
        """Stride of the stem: 1 if the largest resolution is 64 or less, else 2."""
        return 2 if max(self._config["resolution_choices"]) > _LOW_RES_THRESHOLD else 1

    def build_supernet(self) -> nn.Module:
        """The network of the largest architecture (holds every shared weight)."""
        return self._build(self.search_space.largest())

    def build_subnet(self, arch: Architecture) -> nn.Module:
        """Standalone network of ``arch`` (built from ``arch`` alone)."""
        return self._build(self.search_space.validate(arch))

    def _build(self, arch: Architecture) -> nn.Module:
        """Build the network of a validated ``arch`` (one code path for both)."""
        cfg = self._config
        div = cfg["channel_divisor"]
        stem_ch = int(arch["stem.width"])
        stem = ConvBNAct(cfg["in_channels"], stem_ch, 3, stride=self.stem_stride, activation="silu")
        in_ch = stem_ch

        conv_stages = nn.ModuleList()
        for i in range(cfg["num_conv_stages"]):
            spec = NASVIT_CONV_STAGES[i]
            width = int(arch[f"conv{i + 1}.width"])
            kernel = int(arch[f"conv{i + 1}.kernel"])
            expand = arch[f"conv{i + 1}.expand"]
            # Whether the stage has an expand conv depends on its choices, not on
            # the chosen value, so every subnet has the supernet's modules.
            has_expand = max(cfg["conv_expand_choices"][i]) > 1
            blocks = []
            for b in range(int(arch[f"conv{i + 1}.depth"])):
                # Blocks after the first keep stride 1 and the stage width: residual.
                blocks.append(
                    InvertedResidual(
                        in_ch,
                        width,
                        make_divisible(in_ch * expand, div),
                        kernel,
                        spec.stride if b == 0 else 1,
                        "silu",
                        spec.use_se,
                        residual=b > 0,
                        has_expand=has_expand,
                        divisor=div,
                    )
                )
                in_ch = width
            conv_stages.append(nn.Sequential(*blocks))

        vit_stages = nn.ModuleList()
        for j in range(cfg["num_vit_stages"]):
            spec = NASVIT_VIT_STAGES[j]
            width = int(arch[f"vit{j + 1}.width"])
            hidden = make_divisible(width * arch[f"vit{j + 1}.expand"], div)
            downsample = InvertedResidual(
                in_ch,
                width,
                make_divisible(in_ch * cfg["downsample_expand"], div),
                _DOWNSAMPLE_KERNEL,
                spec.stride,
                "silu",
                spec.use_se,
                residual=False,
                divisor=div,
            )
            blocks = nn.Sequential(
                *(
                    _TransformerBlock(width, cfg["head_dim"], hidden)
                    for _ in range(int(arch[f"vit{j + 1}.depth"]))
                )
            )
            vit_stages.append(_ViTStage(downsample, blocks))
            in_ch = width

        final_expand = ConvBNAct(in_ch, _FINAL_EXPAND_RATIO * in_ch, 1, activation="silu")
        net = _NASViT(
            int(arch["resolution"]),
            stem,
            conv_stages,
            vit_stages,
            final_expand,
            int(arch["head.width"]),
            cfg["num_classes"],
            cfg["dropout"],
        )
        _init_weights(net)
        return net
