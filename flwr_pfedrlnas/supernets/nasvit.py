"""NASViT supernet family: MBConv stages followed by transformer stages (ICLR 2022)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from flwr_pfedrlnas.core.search_space import Architecture, Dimension, SearchSpace
from flwr_pfedrlnas.supernets import register_supernet
from flwr_pfedrlnas.supernets._choices import (
    choice_list,
    is_int,
    positive_int,
    scaled_choices,
    stage_choice_lists,
)
from flwr_pfedrlnas.supernets._layers import (
    DIVISOR,
    ConvBNAct,
    InvertedResidual,
    make_divisible,
    pooled_head_shapes,
)
from flwr_pfedrlnas.supernets._nasvit_blocks import (
    NASViTNet,
    TransformerBlock,
    ViTStage,
    init_nasvit,
)
from flwr_pfedrlnas.supernets.base import LayoutFamily, block_shapes

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
        Expand ratio choices of the downsampling MBConv (NASViT's ``t``).
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


# NASViT's search space, stage by stage as its supernet config (``mb1`` to
# ``mb7``) lists it. NASViT counts the downsampling MBConv in a transformer
# stage's depth; here ``depths`` counts the transformer blocks only (its depth
# minus one: mb4 3-6, mb5 3-9, mb6 3-8, mb7 3-6).
NASVIT_CONV_STAGES: tuple[ConvStageSpec, ...] = (
    ConvStageSpec((16, 24), (1, 2), (3, 5), (1,), 1, False),
    ConvStageSpec((24, 32), (3, 4, 5), (3, 5), (4, 5, 6), 2, False),
    ConvStageSpec((32, 40), (3, 4, 5, 6), (3,), (4, 5, 6), 2, True),
)
NASVIT_VIT_STAGES: tuple[ViTStageSpec, ...] = (
    ViTStageSpec((64, 72), (2, 3, 4, 5), (4, 5, 6), 2, False),
    ViTStageSpec((112, 120, 128), (2, 3, 4, 5, 6, 7, 8), (4, 5, 6), 2, True),
    ViTStageSpec((160, 168, 176, 184), (2, 3, 4, 5, 6, 7), (6,), 1, True),
    ViTStageSpec((208, 216, 224), (2, 3, 4, 5), (6,), 2, True),
)

_RESOLUTIONS = (192, 224, 256, 288)
_STEM_WIDTHS = (16, 24)
_HEAD_WIDTHS = (1792, 1984)  # NASViT's "MBPool" (feature mix) widths
_HEAD_DIM = 8
_MLP_RATIO = 1  # NASViT's transformer MLPs keep the width (hidden = dim)
_VALUE_EXPAND = 4  # NASViT's values are 4x the width
_LAYER_SCALE_INIT = 1e-4
_FINAL_EXPAND_RATIO = 6  # final 1x1 conv: 6 x last stage width
_LOW_RES_THRESHOLD = 64  # at or below this (largest) resolution the stem has stride 1
_DOWNSAMPLE_KERNEL = 3
INTERPOLATION_MODES = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class _Layout:
    """The constructor arguments of every block of one architecture's network.

    ``stem``: the stem ``ConvBNAct``'s positional arguments (SiLU); ``conv_blocks``:
    per MBConv stage, each block's ``InvertedResidual`` keyword arguments;
    ``vit_blocks``: per transformer stage, the downsampling MBConv's keyword
    arguments and each ``TransformerBlock``'s positional arguments;
    ``final_in``: the final expansion's input channels; ``head_width``: the
    feature-mix width. Everything the shapes depend on.
    """

    stem: tuple[int, ...]
    conv_blocks: list[list[dict[str, Any]]]
    vit_blocks: list[tuple[dict[str, Any], list[tuple[Any, ...]]]]
    final_in: int
    head_width: int


@register_supernet
class NASViTFamily(LayoutFamily):
    """NASViT supernet: a conv stem, MBConv stages, transformer stages, a head.

    The network follows NASViT's supernet (its config and dynamic model): a
    3x3 stem conv (SiLU), the first ``num_conv_stages`` MBConv stages of
    :data:`NASVIT_CONV_STAGES`, the first ``num_vit_stages`` transformer stages
    of :data:`NASVIT_VIT_STAGES` (each a downsampling MBConv, kernel 3, expand
    ratio searched, then transformer blocks), a 1x1 expand conv to 6x the last
    width, global pooling, a linear "feature mix" layer (SiLU), dropout and the
    classifier. A transformer block is pre-norm attention and two pre-norm MLPs
    (hidden = ``mlp_ratio`` x width, 1 in NASViT), each residual scaled by a
    learned per-channel layer scale (``layer_scale_init``). Attention has
    ``width // head_dim`` heads, separate q, k, v projections, values
    ``value_expand`` times wider with a depthwise 3x3 conv on them, a relative
    position bias per head, talking heads before and after the softmax, and a
    SiLU before the output projection. The forward pass first resizes the
    input to the architecture's resolution (``interpolation``: bicubic, as
    NASViT). MBConv blocks after a stage's first are residual, and the
    BatchNorm closing each of them starts at zero.

    The relative position bias has one row per offset ``(dy, dx)`` of the
    largest map the stage can see (from the largest resolution and the
    strides), so it is the same tensor for every resolution and
    architecture, and fewer heads are its leading columns.

    Differences from NASViT kept, and why:

    - A stage's first MBConv has no shortcut (NASViT adds average pooling and
      a 1x1 conv where shapes change): whether that conv is used depends on
      the sampled widths, so a subnet would carry an unused weight, or the
      supernet a weight that its largest subnet lacks.
    - One layer-scale vector per residual (NASViT indexes a table by the
      stage's active depth and the token count modulo 8): a weight chosen by
      the token count would tie the weights to the resolution.
    - LayerNorm normalises each token (NASViT's dynamic code normalises over
      tokens and channels together).
    - The talking-heads mixers start as the identity (plain multi-head
      attention at the start). Training recipes (drop path, sandwich rule,
      distillation) are the training loop's, not the supernet's.

    Search dimensions (choices small to large; widths after ``width_mult`` and
    rounding): ``resolution``, ``stem.width``, ``conv{i}.width/depth/kernel/expand``,
    ``vit{j}.width/depth/expand`` (depth: transformer blocks after the
    downsampling MBConv, NASViT's depth minus one; expand: that MBConv's ratio)
    and ``head.width``. Every subnet tensor is the leading slice (centre crop
    for kernels) of the supernet tensor of the same key; the supernet is the
    largest architecture's network; the resolution has no weights. Keys use
    0-based stage indices, e.g. ``vit_stages.0.blocks.2.attn.q.weight``.

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
        counting transformer blocks only, expand ratios of the downsampling
        MBConv); the first ``num_vit_stages`` are used.
    head_width_choices : list[int] (default: [1792, 1984])
        Feature-mix width at ``width_mult=1``.
    mlp_ratio : float (default: 1)
        Hidden width of the transformer MLPs over the block width (fixed).
    value_expand : int (default: 4)
        Width of the attention values over the block width.
    layer_scale_init : float (default: 1e-4)
        Initial value of the layer scales (positive).
    interpolation : {"bicubic", "bilinear", "nearest"} (default: "bicubic")
        Resampling of the input to the architecture's resolution.
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
        mlp_ratio: float = _MLP_RATIO,
        value_expand: int = _VALUE_EXPAND,
        layer_scale_init: float = _LAYER_SCALE_INIT,
        interpolation: str = "bicubic",
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
            ("value_expand", value_expand),
        ):
            positive_int(knob, value)
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
        for knob, value in (("mlp_ratio", mlp_ratio), ("layer_scale_init", layer_scale_init)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{knob} must be a positive number, got {value!r}")
        if interpolation not in INTERPOLATION_MODES:
            raise ValueError(
                f"interpolation must be one of {list(INTERPOLATION_MODES)}, got {interpolation!r}"
            )

        def table(value: Any, field: str, stages: Sequence[Any]) -> Any:
            # ``None``: the NASViT table's choices for every stage.
            return [list(getattr(s, field)) for s in stages] if value is None else value

        conv_t, vit_t = NASVIT_CONV_STAGES, NASVIT_VIT_STAGES
        resolutions = choice_list("resolution_choices", resolution_choices, int, 1)
        stem_widths = choice_list("stem_width_choices", stem_width_choices, int, 1)
        head_widths = choice_list("head_width_choices", head_width_choices, int, 1)
        stage = {
            knob: stage_choice_lists(knob, table(value, field, specs), len_, kind, low)
            for knob, value, field, specs, len_, kind, low in (
                ("conv_width_choices", conv_width_choices, "widths", conv_t, n_conv, int, 1),
                ("conv_depth_choices", conv_depth_choices, "depths", conv_t, n_conv, int, 1),
                ("conv_kernel_choices", conv_kernel_choices, "kernels", conv_t, n_conv, int, 1),
                ("conv_expand_choices", conv_expand_choices, "expands", conv_t, n_conv, float, 1),
                ("vit_width_choices", vit_width_choices, "widths", vit_t, n_vit, int, 1),
                ("vit_depth_choices", vit_depth_choices, "depths", vit_t, n_vit, int, 1),
                ("vit_expand_choices", vit_expand_choices, "expands", vit_t, n_vit, float, 0),
            )
        }
        if any(k % 2 == 0 for choices in stage["conv_kernel_choices"] for k in choices):
            raise ValueError(f"conv_kernel_choices must be odd, got {stage['conv_kernel_choices']}")
        if any(e <= 0 for choices in stage["vit_expand_choices"] for e in choices):
            raise ValueError(
                f"vit_expand_choices must be positive, got {stage['vit_expand_choices']}"
            )
        ratio = int(mlp_ratio) if is_int(mlp_ratio) else float(mlp_ratio)

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
            **stage,
            head_width_choices=head_widths,
            mlp_ratio=ratio,
            value_expand=int(value_expand),
            layer_scale_init=float(layer_scale_init),
            interpolation=interpolation,
            dropout=float(dropout),
        )
        mult, div, hd = float(width_mult), int(channel_divisor), int(head_dim)
        dims = [
            Dimension("resolution", tuple(resolutions)),
            Dimension("stem.width", scaled_choices(stem_widths, mult, div)),
        ]
        for prefix, n, fields in (
            ("conv", n_conv, ("width", "depth", "kernel", "expand")),
            ("vit", n_vit, ("width", "depth", "expand")),
        ):
            # Widths are channel counts: MBConv ones multiples of the divisor,
            # transformer ones of the head dimension.
            for i in range(n):
                for field in fields:
                    choices = stage[f"{prefix}_{field}_choices"][i]
                    if field == "width":
                        choices = scaled_choices(choices, mult, div if prefix == "conv" else hd)
                    dims.append(Dimension(f"{prefix}{i + 1}.{field}", tuple(choices)))
        dims.append(Dimension("head.width", scaled_choices(head_widths, mult, div)))
        self._space = SearchSpace(dims)

    @property
    def search_space(self) -> SearchSpace:
        """``resolution``, ``stem.width``, per stage width/depth/(kernel)/expand, ``head.width``."""
        return self._space

    @property
    def stem_stride(self) -> int:
        """Stride of the stem: 1 if the largest resolution is 64 or less, else 2."""
        return 2 if max(self._config["resolution_choices"]) > _LOW_RES_THRESHOLD else 1

    def relative_table_sides(self) -> list[int]:
        """Per transformer stage, the side of the largest map its blocks see.

        From the largest resolution through the strides (a stride-2 conv with
        ``k // 2`` padding maps ``n`` to ``ceil(n / 2)``); each stage's relative
        position tables cover offsets up to this side (18 for the first
        stage of the paper-size space at 288, as NASViT's 18x18 window).
        """
        side = math.ceil(max(self._config["resolution_choices"]) / self.stem_stride)
        for spec in NASVIT_CONV_STAGES[: self._config["num_conv_stages"]]:
            side = math.ceil(side / spec.stride)
        sides = []
        for spec in NASVIT_VIT_STAGES[: self._config["num_vit_stages"]]:
            side = math.ceil(side / spec.stride)
            sides.append(side)
        return sides

    def keepable_blocks(self) -> dict[str, tuple[str, ...]]:
        """``classifier``, ``head`` (final expansion and feature mix), ``last-stage``."""
        n_vit = self._config["num_vit_stages"]
        last = (
            f"vit_stages.{n_vit - 1}."
            if n_vit
            else (f"conv_stages.{self._config['num_conv_stages'] - 1}.")
        )
        return {
            "classifier": ("classifier.",),
            "head": ("final_expand.", "feature_mix."),
            "last-stage": (last,),
        }

    def derive_subnet_shapes(self, arch: Architecture) -> dict[str, tuple[int, ...]]:
        """``arch``'s subnet shapes from cached per-block shapes (no subnet built).

        Exactly ``build_subnet(arch).state_dict()``'s keys, order and shapes: the
        blocks of :meth:`_layout`, in the order :meth:`_build` registers them.
        """
        layout = self._layout(arch)
        items = list(block_shapes("stem.", ConvBNAct, *layout.stem, activation="silu"))
        for i, blocks in enumerate(layout.conv_blocks):
            for b, kwargs in enumerate(blocks):
                items.extend(InvertedResidual.shapes(f"conv_stages.{i}.{b}.", **kwargs))
        for j, (down, blocks) in enumerate(layout.vit_blocks):
            items.extend(InvertedResidual.shapes(f"vit_stages.{j}.downsample.", **down))
            for b, args in enumerate(blocks):
                items.extend(block_shapes(f"vit_stages.{j}.blocks.{b}.", TransformerBlock, *args))
        in_ch = layout.final_in
        items.extend(
            pooled_head_shapes(
                in_ch,
                _FINAL_EXPAND_RATIO * in_ch,
                "silu",
                layout.head_width,
                self._config["num_classes"],
            )
        )
        return dict(items)

    def _layout(self, arch: Architecture) -> _Layout:
        """The blocks' constructor arguments of a validated ``arch`` (see :class:`_Layout`)."""
        cfg = self._config
        div = cfg["channel_divisor"]
        stem_ch = int(arch["stem.width"])
        in_ch = stem_ch
        conv_blocks = []
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
                    {
                        "in_channels": in_ch,
                        "out_channels": width,
                        "hidden_channels": make_divisible(in_ch * expand, div),
                        "kernel_size": kernel,
                        "stride": spec.stride if b == 0 else 1,
                        "activation": "silu",
                        "use_se": spec.use_se,
                        "residual": b > 0,
                        "has_expand": has_expand,
                        "divisor": div,
                    }
                )
                in_ch = width
            conv_blocks.append(blocks)

        vit_blocks = []
        for j, side in enumerate(self.relative_table_sides()):
            spec = NASVIT_VIT_STAGES[j]
            width = int(arch[f"vit{j + 1}.width"])
            hidden = make_divisible(width * cfg["mlp_ratio"], div)
            downsample = {
                "in_channels": in_ch,
                "out_channels": width,
                "hidden_channels": make_divisible(in_ch * arch[f"vit{j + 1}.expand"], div),
                "kernel_size": _DOWNSAMPLE_KERNEL,
                "stride": spec.stride,
                "activation": "silu",
                "use_se": spec.use_se,
                "residual": False,
                "divisor": div,
            }
            block = (
                width,
                cfg["head_dim"],
                hidden,
                cfg["value_expand"],
                side,
                cfg["layer_scale_init"],
                "silu",
            )
            vit_blocks.append((downsample, [block] * int(arch[f"vit{j + 1}.depth"])))
            in_ch = width
        return _Layout(
            (cfg["in_channels"], stem_ch, 3, self.stem_stride),
            conv_blocks,
            vit_blocks,
            in_ch,
            int(arch["head.width"]),
        )

    def _build(self, arch: Architecture) -> nn.Module:
        """Build the network of a validated ``arch`` (one code path for both)."""
        cfg = self._config
        layout = self._layout(arch)
        stem = ConvBNAct(*layout.stem, activation="silu")
        conv_stages = nn.ModuleList(
            nn.Sequential(*(InvertedResidual(**kwargs) for kwargs in blocks))
            for blocks in layout.conv_blocks
        )
        vit_stages = nn.ModuleList(
            ViTStage(
                InvertedResidual(**down),
                nn.Sequential(*(TransformerBlock(*args) for args in blocks)),
            )
            for down, blocks in layout.vit_blocks
        )
        in_ch = layout.final_in
        final_expand = ConvBNAct(in_ch, _FINAL_EXPAND_RATIO * in_ch, 1, activation="silu")
        net = NASViTNet(
            int(arch["resolution"]),
            cfg["interpolation"],
            stem,
            conv_stages,
            vit_stages,
            final_expand,
            layout.head_width,
            cfg["num_classes"],
            cfg["dropout"],
        )
        init_nasvit(net)
        return net
