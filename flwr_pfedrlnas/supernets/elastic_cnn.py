"""A small width/depth/kernel-elastic CNN: the bring-your-own-supernet example."""

from __future__ import annotations

from typing import Any

from torch import nn

from flwr_pfedrlnas.core.search_space import Architecture, Dimension, SearchSpace
from flwr_pfedrlnas.supernets import register_supernet
from flwr_pfedrlnas.supernets.base import LayoutFamily, block_shapes

__all__ = ["ElasticCNNFamily"]


class _Block(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _Net(nn.Module):
    def __init__(
        self, in_channels: int, stages: list[list[tuple[int, int, int, int]]], num_classes: int
    ):
        super().__init__()
        # stages[s] = [(in_ch, out_ch, kernel, stride), ...] for the blocks kept.
        self.stages = nn.ModuleList(
            nn.Sequential(*(_Block(*spec) for spec in blocks)) for blocks in stages
        )
        last = stages[-1][-1][1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return self.classifier(self.pool(x).flatten(1))


@register_supernet
class ElasticCNNFamily(LayoutFamily):
    """Stages of conv-BN-ReLU blocks; per stage: kernel, width and depth.

    Written only against the public contract: a search space and two builders
    that share one builder function (and the contract's optional
    ``derive_subnet_shapes``, which only makes new architectures' shapes
    cheaper). The supernet is the largest architecture; a subnet keeps leading
    channels, the centre of each kernel and the first blocks of each stage, so
    its tensors are slices of the supernet's.

    Parameters
    ----------
    base_width : int (default: 16)
        Channels of the first stage at width 1.0 (doubled per stage).
    num_stages : int (default: 2)
        Number of stages (each after the first halves the resolution).
    num_classes : int (default: 10)
        Output classes.
    in_channels : int (default: 1)
        Input channels.
    kernel_choices, width_choices, depth_choices : list (default: [1, 3], [0.5, 1.0], [1, 2])
        Choices of every stage.
    """

    name = "elastic-cnn"

    def __init__(
        self,
        base_width: int = 16,
        num_stages: int = 2,
        num_classes: int = 10,
        in_channels: int = 1,
        kernel_choices: list[int] | None = None,
        width_choices: list[float] | None = None,
        depth_choices: list[int] | None = None,
    ) -> None:
        knobs: dict[str, Any] = {
            "base_width": int(base_width),
            "num_stages": int(num_stages),
            "num_classes": int(num_classes),
            "in_channels": int(in_channels),
            "kernel_choices": list(kernel_choices or [1, 3]),
            "width_choices": list(width_choices or [0.5, 1.0]),
            "depth_choices": list(depth_choices or [1, 2]),
        }
        super().__init__(**knobs)
        self._space = SearchSpace(
            Dimension(f"stage{s}.{what}", tuple(sorted(knobs[f"{what}_choices"])))
            for s in range(1, knobs["num_stages"] + 1)
            for what in ("kernel", "width", "depth")
        )

    @property
    def search_space(self) -> SearchSpace:
        return self._space

    def _layout(self, arch: Architecture) -> list[list[tuple[int, int, int, int]]]:
        """Per stage, ``(in_ch, out_ch, kernel, stride)`` of every block kept."""
        c = self._config
        stages, in_ch = [], c["in_channels"]
        for s in range(1, c["num_stages"] + 1):
            out_ch = max(1, round(c["base_width"] * 2 ** (s - 1) * arch[f"stage{s}.width"]))
            blocks = []
            for b in range(int(arch[f"stage{s}.depth"])):
                stride = 2 if (b == 0 and s > 1) else 1
                blocks.append((in_ch, out_ch, int(arch[f"stage{s}.kernel"]), stride))
                in_ch = out_ch
            stages.append(blocks)
        return stages

    def _build(self, arch: Architecture) -> nn.Module:
        c = self._config
        return _Net(c["in_channels"], self._layout(arch), c["num_classes"])

    def derive_subnet_shapes(self, arch: Architecture) -> dict[str, tuple[int, ...]]:
        """Optional: ``arch``'s subnet shapes from cached per-block shapes.

        Exactly ``build_subnet(arch).state_dict()``'s: the blocks of every stage,
        then the classifier. Without this override the family works the same,
        its shapes derived by building the subnet on the meta device.
        """
        stages = self._layout(arch)
        items = [
            item
            for s, blocks in enumerate(stages)
            for b, spec in enumerate(blocks)
            for item in block_shapes(f"stages.{s}.{b}.", _Block, *spec)
        ]
        items.extend(
            block_shapes("classifier.", nn.Linear, stages[-1][-1][1], self._config["num_classes"])
        )
        return dict(items)

    def keepable_blocks(self) -> dict[str, tuple[str, ...]]:
        """``classifier`` and ``last-stage``."""
        return {
            "classifier": ("classifier.",),
            "last-stage": (f"stages.{self._config['num_stages'] - 1}.",),
        }
