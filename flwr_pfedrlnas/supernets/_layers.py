"""Layers shared by the MobileNet-style supernet families (MobileNetV3, NASViT).

Module attribute names here are part of the families' state_dict keys
(``conv``, ``bn``, ``act``; ``expand``, ``dw``, ``se``, ``project``): do not rename.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from flwr_pfedrlnas.supernets.base import ShapeItems, block_shapes, shape_cache

__all__ = [
    "ConvBNAct",
    "InvertedResidual",
    "PooledHeadNet",
    "init_weights",
    "make_activation",
    "make_divisible",
    "pooled_head_shapes",
]

DIVISOR = 8
SE_REDUCTION = 4


def make_divisible(value: float, divisor: int = DIVISOR) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``).

    Never rounds down by more than 10 % (the MobileNet rule); non-decreasing in
    ``value``, so a larger choice never gives fewer channels.
    """
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "hardswish": nn.Hardswish,
    "silu": nn.SiLU,
}


def make_activation(name: str) -> nn.Module:
    """The activation module called ``name`` (``relu``, ``hardswish`` or ``silu``)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}")
    return _ACTIVATIONS[name]()


class ConvBNAct(nn.Module):
    """Convolution (no bias), BatchNorm and an optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = make_activation(activation) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """Expand 1x1 (optional), depthwise kxk, optional squeeze-excitation, project 1x1.

    The expand and depthwise convolutions use ``activation``; the projection has
    none. Without ``has_expand`` the hidden width is ``in_channels`` and
    ``expand`` is an identity. The squeeze-excitation squeezes to
    ``make_divisible(hidden / 4, divisor)`` channels, with a hard-sigmoid gate.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int,
        stride: int,
        activation: str,
        use_se: bool,
        residual: bool,
        has_expand: bool = True,
        divisor: int = DIVISOR,
    ) -> None:
        super().__init__()
        parts = self.parts(
            in_channels,
            out_channels,
            hidden_channels,
            kernel_size,
            stride,
            activation,
            use_se,
            has_expand,
            divisor,
        )
        for name, (factory, args, kwargs) in parts.items():
            setattr(self, name, factory(*args, **kwargs))
        self.residual = residual

    @staticmethod
    def parts(
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int,
        stride: int,
        activation: str,
        use_se: bool,
        has_expand: bool = True,
        divisor: int = DIVISOR,
    ) -> dict[str, tuple[Callable[..., nn.Module], tuple[Any, ...], dict[str, Any]]]:
        """``expand``, ``dw``, ``se``, ``project``: each ``(factory, args, kwargs)``.

        The block's modules in registration order (the order of its
        ``state_dict``), each what the factory builds from those arguments.
        """
        if not has_expand:
            hidden_channels = in_channels
        identity: tuple[Callable[..., nn.Module], tuple[Any, ...], dict[str, Any]] = (
            nn.Identity,
            (),
            {},
        )
        return {
            "expand": (
                (ConvBNAct, (in_channels, hidden_channels, 1), {"activation": activation})
                if has_expand
                else identity
            ),
            "dw": (
                ConvBNAct,
                (hidden_channels, hidden_channels, kernel_size),
                {"stride": stride, "groups": hidden_channels, "activation": activation},
            ),
            "se": (
                (
                    SqueezeExcitation,
                    (hidden_channels, make_divisible(hidden_channels / SE_REDUCTION, divisor)),
                    {"scale_activation": nn.Hardsigmoid},
                )
                if use_se
                else identity
            ),
            "project": (ConvBNAct, (hidden_channels, out_channels, 1), {}),
        }

    @classmethod
    def shapes(cls, prefix: str, *args: Any, **kwargs: Any) -> ShapeItems:
        """The block's ``state_dict`` shapes, keys after ``prefix``, without building it.

        The arguments are the constructor's; the shapes are those of its
        :meth:`parts`, each part's kept by :func:`block_shapes`.
        """
        return _inverted_residual_items(prefix, args, tuple(sorted(kwargs.items())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        return x + out if self.residual else out


_INVERTED_RESIDUAL_SIGNATURE = inspect.signature(InvertedResidual.__init__)


@shape_cache
def _inverted_residual_items(
    prefix: str, args: tuple[Any, ...], kwargs: tuple[tuple[str, Any], ...]
) -> ShapeItems:
    bound = _INVERTED_RESIDUAL_SIGNATURE.bind(None, *args, **dict(kwargs))
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    del arguments["self"], arguments["residual"]  # no weights: not a part's argument
    return tuple(
        item
        for name, (factory, part_args, part_kwargs) in InvertedResidual.parts(**arguments).items()
        for item in block_shapes(f"{prefix}{name}.", factory, *part_args, **part_kwargs)
    )


def init_weights(module: nn.Module, init_linear: Callable[[torch.Tensor], object]) -> None:
    """Kaiming (fan-out) convolutions, unit norms, ``init_linear`` linear weights.

    Biases start at zero. Modules are initialised in ``module.modules()`` order.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            init_linear(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class PooledHeadNet(nn.Module):
    """Base of the networks that end in a 1x1 expand conv, pooling and an MLP head.

    ``add_head`` registers ``final_expand``, ``pool``, ``feature_mix``,
    ``head_act``, ``dropout`` and ``classifier`` (in this order: call it after
    the body's modules, so that state_dict keys keep their order).
    """

    def add_head(
        self,
        final_expand: ConvBNAct,
        head_channels: int,
        num_classes: int,
        dropout: float,
        activation: str,
    ) -> None:
        self.final_expand = final_expand
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_mix = nn.Linear(final_expand.conv.out_channels, head_channels)
        self.head_act = make_activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head_channels, num_classes)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the body's output feature map ``x``."""
        x = self.pool(self.final_expand(x)).flatten(1)
        x = self.dropout(self.head_act(self.feature_mix(x)))
        return self.classifier(x)


def pooled_head_shapes(
    final_in: int, final_out: int, activation: str, head_channels: int, num_classes: int
) -> ShapeItems:
    """The ``state_dict`` shapes of :meth:`PooledHeadNet.add_head`'s modules, in order.

    For a ``final_expand`` of ``ConvBNAct(final_in, final_out, 1, activation=activation)``
    (the pooling, the head's activation and the dropout have no entries).
    """
    return (
        *block_shapes("final_expand.", ConvBNAct, final_in, final_out, 1, activation=activation),
        *block_shapes("feature_mix.", nn.Linear, final_out, head_channels),
        *block_shapes("classifier.", nn.Linear, head_channels, num_classes),
    )
