"""Once-for-all style MobileNetV3 supernet family (kernel, expand, depth, width)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from flwr_pfedrlnas.core.search_space import Architecture, Dimension, SearchSpace
from flwr_pfedrlnas.supernets import register_supernet
from flwr_pfedrlnas.supernets._choices import choice_list, positive_int
from flwr_pfedrlnas.supernets._layers import (
    ConvBNAct,
    InvertedResidual,
    PooledHeadNet,
    init_weights,
    make_divisible,
    pooled_head_shapes,
)
from flwr_pfedrlnas.supernets.base import LayoutFamily, block_shapes

__all__ = ["MOBILENETV3_STAGES", "MobileNetV3Family", "StageSpec"]


@dataclass(frozen=True)
class StageSpec:
    """One searchable stage of the MobileNetV3 table.

    Parameters
    ----------
    out_channels : int
        Output channels at ``width_mult=1`` and width choice 1.0.
    stride : int
        Stride of the stage's first block (the other blocks have stride 1).
    activation : {"relu", "hardswish"}
        Activation of the expand and depthwise convolutions.
    use_se : bool
        Whether every block of the stage has squeeze-excitation.
    """

    out_channels: int
    stride: int
    activation: Literal["relu", "hardswish"]
    use_se: bool


# The searchable stages of OFA's MobileNetV3 (MobileNetV3-Large's bottlenecks
# after the first one, grouped by output width).
MOBILENETV3_STAGES: tuple[StageSpec, ...] = (
    StageSpec(24, 2, "relu", False),
    StageSpec(40, 2, "relu", True),
    StageSpec(80, 2, "hardswish", False),
    StageSpec(112, 1, "hardswish", True),
    StageSpec(160, 2, "hardswish", True),
)

_STEM_CHANNELS = 16  # stem conv 3x3 (hardswish) and the fixed first block
_FINAL_EXPAND_RATIO = 6  # final 1x1 conv: 6 x last stage width (960 for 160)
_HEAD_CHANNELS = 1280  # hidden width of the classifier head
_LOW_RES_THRESHOLD = 64  # at or below this input size, the stem has stride 1
INTERPOLATION_MODES = ("bilinear", "bicubic", "nearest")


class _FirstBlock(nn.Module):
    """MobileNetV3's fixed first bottleneck: depthwise 3x3 + ReLU, project, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = ConvBNAct(channels, channels, 3, groups=channels, activation="relu")
        self.project = ConvBNAct(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.dw(x))


class _MobileNetV3(PooledHeadNet):
    """A MobileNetV3 of one architecture (the supernet is the largest one).

    With ``resize_to`` set, the forward pass first resizes inputs of another
    size to ``resize_to`` x ``resize_to`` (``interpolation``); it has no weights.
    """

    def __init__(
        self,
        resize_to: int | None,
        interpolation: str,
        stem: ConvBNAct,
        first_block: _FirstBlock,
        stages: nn.ModuleList,
        final_expand: ConvBNAct,
        head_channels: int,
        num_classes: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.resize_to = resize_to
        self.interpolation = interpolation
        self.stem = stem
        self.first_block = first_block
        self.stages = stages
        self.add_head(final_expand, head_channels, num_classes, dropout, "hardswish")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize_to is not None and tuple(x.shape[-2:]) != (self.resize_to,) * 2:
            # align_corners only exists for the interpolating modes
            corners = None if self.interpolation == "nearest" else False
            x = F.interpolate(
                x, size=(self.resize_to,) * 2, mode=self.interpolation, align_corners=corners
            )
        x = self.first_block(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        return self.forward_head(x)


@register_supernet
class MobileNetV3Family(LayoutFamily):
    """Once-for-all style MobileNetV3 supernet (MobileNetV3-Large backbone).

    The network is a stem (3x3 conv, 16 channels, hardswish), MobileNetV3's fixed
    first bottleneck (depthwise 3x3, 16 channels, residual), the first
    ``num_stages`` stages of :data:`MOBILENETV3_STAGES`, a 1x1 expand conv to 6x
    the last stage's width (960 for MobileNetV3-Large), global pooling, a linear
    layer to 1280 features with hardswish, dropout and the classifier.

    Each stage ``i`` (1-based) has four searched dimensions, choices ordered
    small to large: ``stage{i}.kernel`` (depthwise kernel of every block, the
    centre crop of the largest kernel), ``stage{i}.expand`` (hidden channels =
    ``make_divisible(in_channels * expand)``), ``stage{i}.depth`` (the first
    ``depth`` blocks) and ``stage{i}.width`` (output channels =
    ``make_divisible(max_out * width)``, where ``max_out`` is the stage's
    table width scaled by ``width_mult``). Every tensor of a subnet is the
    leading slice (centre crop for kernels) of the supernet tensor of the same
    key; the supernet is the network of the largest architecture. Module keys
    use 0-based stage indices: ``stages.{i-1}.{block}.expand.conv.weight``.

    Parameters
    ----------
    width_mult : float (default: 1.0)
        Multiplier of every channel count (stem, stages, final expand, head),
        rounded to a multiple of 8.
    num_stages : int (default: 5)
        How many stages of the table to use (1 to 5).
    input_resolution : int (default: 224)
        Input height and width. Above 64 the stem has stride 2 (MobileNetV3);
        at 64 or below it has stride 1, so that a 32x32 input with all five
        stages ends at 2x2 instead of 1x1 (total stride 16 instead of 32).
    resize_input : bool (default: True)
        Resize every input whose size differs from ``input_resolution`` to it
        first, as the authors feed 32x32 CIFAR images to the 224x224
        MobileNetV3 (7x7 before pooling rather than 1x1). A no-op when the
        data already has that size (the CPU presets: 32x32 data,
        ``input_resolution`` 32); ``False`` feeds inputs as they are.
    interpolation : {"bilinear", "bicubic", "nearest"} (default: "bilinear")
        Resampling of ``resize_input`` (bilinear: torchvision's ``Resize``).
    num_classes : int (default: 10)
        Classifier outputs.
    in_channels : int (default: 3)
        Input image channels.
    kernel_choices : list[int] (default: [3, 5, 7])
        Odd depthwise kernel sizes, increasing.
    expand_choices : list[float] (default: [3, 4, 6])
        Expand ratios, increasing.
    depth_choices : list[int] (default: [2, 3, 4])
        Blocks per stage, increasing.
    width_choices : list[float] (default: [0.65, 0.8, 1.0])
        Fractions of a stage's maximum output channels, increasing, at most 1.
    dropout : float (default: 0.2)
        Dropout before the classifier.
    zero_init_residual : bool (default: False)
        Start the BatchNorm scale that closes each residual block at zero, so
        that every residual block starts as the identity (once-for-all's
        supernet training practice; NASViT always does it). Off: the
        authors' initialisation. Only ``True`` is recorded among the knobs, so
        configurations and checkpoints without it stay what they were.
    """

    name = "mobilenetv3"

    def __init__(
        self,
        width_mult: float = 1.0,
        num_stages: int = 5,
        input_resolution: int = 224,
        num_classes: int = 10,
        in_channels: int = 3,
        kernel_choices: Sequence[int] = (3, 5, 7),
        expand_choices: Sequence[float] = (3, 4, 6),
        depth_choices: Sequence[int] = (2, 3, 4),
        width_choices: Sequence[float] = (0.65, 0.8, 1.0),
        dropout: float = 0.2,
        resize_input: bool = True,
        interpolation: str = "bilinear",
        zero_init_residual: bool = False,
    ) -> None:
        if isinstance(width_mult, bool) or not width_mult > 0:
            raise ValueError(f"width_mult must be positive, got {width_mult!r}")
        for knob, value in (
            ("num_stages", num_stages),
            ("input_resolution", input_resolution),
            ("num_classes", num_classes),
            ("in_channels", in_channels),
        ):
            positive_int(knob, value)
        if num_stages > len(MOBILENETV3_STAGES):
            raise ValueError(
                f"num_stages must be between 1 and {len(MOBILENETV3_STAGES)}, got {num_stages}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(resize_input, bool):
            raise ValueError(f"resize_input must be true or false, got {resize_input!r}")
        if not isinstance(zero_init_residual, bool):
            raise ValueError(
                f"zero_init_residual must be true or false, got {zero_init_residual!r}"
            )
        if interpolation not in INTERPOLATION_MODES:
            raise ValueError(
                f"interpolation must be one of {list(INTERPOLATION_MODES)}, got {interpolation!r}"
            )
        kernels = choice_list("kernel_choices", kernel_choices, int, 1)
        if any(k % 2 == 0 for k in kernels):
            raise ValueError(f"kernel_choices must be odd, got {kernels}")
        expands = choice_list("expand_choices", expand_choices, float, 0)
        if expands[0] <= 0:
            raise ValueError(f"expand_choices must be positive, got {expands}")
        depths = choice_list("depth_choices", depth_choices, int, 1)
        widths = choice_list("width_choices", width_choices, float, 0, all_float=True)
        if widths[0] <= 0 or widths[-1] > 1.0:
            raise ValueError(f"width_choices must be in (0, 1], got {widths}")
        super().__init__(
            width_mult=float(width_mult),
            num_stages=int(num_stages),
            input_resolution=int(input_resolution),
            num_classes=int(num_classes),
            in_channels=int(in_channels),
            kernel_choices=kernels,
            expand_choices=expands,
            depth_choices=depths,
            width_choices=widths,
            dropout=float(dropout),
            resize_input=resize_input,
            interpolation=interpolation,
            **({"zero_init_residual": True} if zero_init_residual else {}),
        )
        self._space = SearchSpace(
            Dimension(f"stage{i}.{field}", tuple(choices))
            for i in range(1, int(num_stages) + 1)
            for field, choices in (
                ("kernel", kernels),
                ("expand", expands),
                ("depth", depths),
                ("width", widths),
            )
        )

    @property
    def search_space(self) -> SearchSpace:
        """Per stage: ``kernel``, ``expand``, ``depth``, ``width``."""
        return self._space

    @property
    def stem_stride(self) -> int:
        """Stride of the stem: 2 above 64x64 inputs, 1 at or below."""
        return 2 if self._config["input_resolution"] > _LOW_RES_THRESHOLD else 1

    def stage_max_channels(self) -> list[int]:
        """Maximum output channels of every stage (width choice 1.0)."""
        w = self._config["width_mult"]
        stages = MOBILENETV3_STAGES[: self._config["num_stages"]]
        return [make_divisible(s.out_channels * w) for s in stages]

    def keepable_blocks(self) -> dict[str, tuple[str, ...]]:
        """``classifier``, ``head`` (final expansion and feature mix), ``last-stage``."""
        return {
            "classifier": ("classifier.",),
            "head": ("final_expand.", "feature_mix."),
            "last-stage": (f"stages.{self._config['num_stages'] - 1}.",),
        }

    def derive_subnet_shapes(self, arch: Architecture) -> dict[str, tuple[int, ...]]:
        """``arch``'s subnet shapes from cached per-block shapes (no subnet built).

        Exactly ``build_subnet(arch).state_dict()``'s keys, order and shapes: the
        blocks of :meth:`_layout`, in the order :meth:`_build` registers them.
        """
        stem_args, stem_ch, stage_args, final_args, head_ch = self._layout(arch)
        items = [
            *block_shapes("stem.", ConvBNAct, *stem_args, activation="hardswish"),
            *block_shapes("first_block.", _FirstBlock, stem_ch),
        ]
        for i, blocks in enumerate(stage_args):
            for b, args in enumerate(blocks):
                items.extend(InvertedResidual.shapes(f"stages.{i}.{b}.", *args))
        items.extend(
            pooled_head_shapes(*final_args, "hardswish", head_ch, self._config["num_classes"])
        )
        return dict(items)

    def _layout(
        self, arch: Architecture
    ) -> tuple[tuple[int, ...], int, list[list[tuple[Any, ...]]], tuple[int, int], int]:
        """The blocks' constructor arguments of a validated ``arch``.

        The stem's ``ConvBNAct`` arguments (hardswish), the stem width (the
        first block's channels), per stage the ``InvertedResidual`` arguments of
        every block, the final expansion's (input, output) channels and the
        head width: everything the shapes depend on.
        """
        cfg = self._config
        w = cfg["width_mult"]
        stem_ch = make_divisible(_STEM_CHANNELS * w)
        stem_args = (cfg["in_channels"], stem_ch, 3, self.stem_stride)
        stage_args = []
        in_ch = stem_ch
        max_outs = self.stage_max_channels()
        for i, (spec, max_out) in enumerate(
            zip(MOBILENETV3_STAGES[: cfg["num_stages"]], max_outs), start=1
        ):
            kernel = int(arch[f"stage{i}.kernel"])
            expand = arch[f"stage{i}.expand"]
            depth = int(arch[f"stage{i}.depth"])
            out_ch = min(max_out, make_divisible(max_out * arch[f"stage{i}.width"]))
            blocks = []
            for b in range(depth):
                # Blocks after the first keep stride 1 and the stage width: residual.
                blocks.append(
                    (
                        in_ch,
                        out_ch,
                        make_divisible(in_ch * expand),
                        kernel,
                        spec.stride if b == 0 else 1,
                        spec.activation,
                        spec.use_se,
                        b > 0,  # residual
                    )
                )
                in_ch = out_ch
            stage_args.append(blocks)
        final_ch = make_divisible(_FINAL_EXPAND_RATIO * max_outs[-1])
        return stem_args, stem_ch, stage_args, (in_ch, final_ch), make_divisible(_HEAD_CHANNELS * w)

    def _build(self, arch: Architecture) -> nn.Module:
        """Build the network of a validated ``arch`` (one code path for both)."""
        cfg = self._config
        stem_args, stem_ch, stage_args, final_args, head_ch = self._layout(arch)
        stem = ConvBNAct(*stem_args, activation="hardswish")
        first_block = _FirstBlock(stem_ch)
        stages = nn.ModuleList(
            nn.Sequential(*(InvertedResidual(*args) for args in blocks)) for blocks in stage_args
        )
        final_expand = ConvBNAct(*final_args, 1, activation="hardswish")
        net = _MobileNetV3(
            cfg["input_resolution"] if cfg["resize_input"] else None,
            cfg["interpolation"],
            stem,
            first_block,
            stages,
            final_expand,
            head_ch,
            cfg["num_classes"],
            cfg["dropout"],
        )
        # Small-normal linears (the classifier head).
        init_weights(net, lambda weight: nn.init.normal_(weight, 0.0, 0.01))
        if cfg.get("zero_init_residual", False):
            for module in net.modules():
                if isinstance(module, InvertedResidual) and module.residual:
                    nn.init.zeros_(module.project.bn.weight)
        return net
