"""Fixed models of the personalised-FL baselines: MobileNetV3-Large and a small ViT.

Every model splits into a *body* and a *head* by parameter-name prefix (the
head is ``classifier.*`` for MobileNetV3, ``head.*`` for the ViT), and the ViT
has separate ``q``, ``k``, ``v`` projections per block so that FedTP's
hypernetwork can generate them per client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "DEFAULT_KNOBS",
    "MODELS",
    "SmallViT",
    "attention_keys",
    "build_model",
    "head_prefix",
    "is_head_key",
    "mobilenet_v3_large_small_input",
    "parse_model_config",
]

MODELS = ("mobilenetv3-large", "vit")
# CPU-sized knobs used when a run config leaves ``model-config`` empty.
DEFAULT_KNOBS: dict[str, dict[str, Any]] = {
    "mobilenetv3-large": {"width_mult": 0.25},
    "vit": {"dim": 64, "depth": 2, "heads": 4, "patch_size": 4, "mlp_ratio": 2.0},
}


def mobilenet_v3_large_small_input(
    num_classes: int = 10,
    in_channels: int = 3,
    width_mult: float = 1.0,
    stem_stride: int = 2,
    dropout: float = 0.2,
) -> nn.Module:
    """torchvision's ``mobilenet_v3_large`` for small (e.g. 1x32x32) inputs.

    The definition is torchvision's unchanged except the stem: its first
    convolution is rebuilt with ``in_channels`` input channels (1 for
    Fashion-MNIST) and stride ``stem_stride`` (torchvision's 2 by default; 1
    keeps more resolution on 32x32 inputs at about four times the cost).
    ``width_mult`` is torchvision's width knob (channels rounded to multiples
    of 8).
    """
    from torchvision.models import mobilenet_v3_large

    model = mobilenet_v3_large(width_mult=width_mult, num_classes=num_classes, dropout=dropout)
    old = model.features[0][0]
    model.features[0][0] = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=stem_stride,
        padding=old.padding,
        bias=False,
    )
    nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    return model


class _Attention(nn.Module):
    """Multi-head self-attention with separate q, k, v projections."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = nn.functional.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(x)), split(self.v(x))
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    """A small fixed ViT: patch embedding, cls token, ``depth`` pre-norm blocks, head.

    Parameters
    ----------
    num_classes, in_channels : int (default: 10, 3)
    image_size, patch_size : int (default: 32, 4)
    dim, depth, heads : int (default: 64, 2, 4)
    mlp_ratio : float (default: 2.0)
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of {patch_size}")
        self.dim, self.depth = dim, depth
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        num_patches = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def parse_model_config(model_config: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Size knobs as a dict from JSON text, a mapping or ``None``."""
    if model_config is None or model_config == "":
        return {}
    if isinstance(model_config, str):
        try:
            return dict(json.loads(model_config))
        except json.JSONDecodeError as err:
            raise ValueError(f"model-config is not JSON: {model_config!r}") from err
    return dict(model_config)


def build_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    model_config: str | Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> nn.Module:
    """Build ``name`` ("mobilenetv3-large" or "vit") with its size knobs.

    With ``seed`` the initial weights are reproducible (the same on every
    client and on the server).
    """
    knobs = parse_model_config(model_config)
    if seed is not None:
        torch.manual_seed(int(seed))
    if name == "mobilenetv3-large":
        return mobilenet_v3_large_small_input(num_classes, in_channels, **knobs)
    if name == "vit":
        return SmallViT(num_classes, in_channels, **knobs)
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")


def head_prefix(name: str) -> str:
    """Parameter-name prefix of the head (the personal classifier)."""
    return {"mobilenetv3-large": "classifier.", "vit": "head."}[name]


def is_head_key(model_name: str, key: str) -> bool:
    return key.startswith(head_prefix(model_name))


def attention_keys(model: nn.Module) -> list[str]:
    """Names of the q, k, v projection weights of every ViT block (FedTP's personal part)."""
    return [
        f"blocks.{i}.attn.{p}.weight"
        for i in range(len(getattr(model, "blocks", [])))
        for p in ("q", "k", "v")
    ]
