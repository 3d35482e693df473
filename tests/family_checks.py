"""The CPU-sized supernet families and the helpers of the family tests.

Imported as a sibling module (pytest puts ``tests/``, a directory without
``__init__.py``, on ``sys.path``) by ``test_families.py``, the checks every
family passes alike, and by ``test_mobilenetv3.py``, ``test_nasvit.py`` and
``test_darts.py``, each family's own checks.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from flwr_pfedrlnas.supernets import SupernetFamily, get_supernet

# CPU-sized instances of each family, for 32x32 data.
CPU_CONFIGS: dict[str, dict[str, dict]] = {
    # All five stages on RGB, three stages on greyscale.
    "mobilenetv3": {
        "s5-rgb": dict(width_mult=0.35, num_stages=5, input_resolution=32, in_channels=3),
        "s3-grey": dict(width_mult=0.35, num_stages=3, input_resolution=32, in_channels=1),
    },
    # Two conv + two transformer stages on RGB (upsampled to 40 at the larger
    # resolution), three conv + one transformer stage on greyscale (downsampled to
    # 24 at the smaller resolution).
    "nasvit": {
        "c2v2-rgb": dict(
            width_mult=0.5,
            channel_divisor=4,
            num_conv_stages=2,
            num_vit_stages=2,
            resolution_choices=[32, 40],
            in_channels=3,
        ),
        "c3v1-grey": dict(
            width_mult=0.25,
            channel_divisor=4,
            head_width_choices=[256, 320],
            num_conv_stages=3,
            num_vit_stages=1,
            vit_depth_choices=[[1, 2]],
            resolution_choices=[24, 32],
            in_channels=1,
        ),
    },
    # 3 cells (normal, reduce, reduce) on RGB and greyscale.
    "darts": {
        "c3-rgb": dict(init_channels=8, num_cells=3, in_channels=3),
        "c3-grey": dict(init_channels=8, num_cells=3, in_channels=1),
    },
}
# Knobs each family refuses (ValueError).
BAD_KNOBS: dict[str, list[dict]] = {
    "mobilenetv3": [
        dict(num_stages=0),
        dict(num_stages=6),
        dict(width_mult=0),
        dict(kernel_choices=[3, 4]),
        dict(kernel_choices=[7, 5, 3]),
        dict(width_choices=[0.5, 1.5]),
        dict(depth_choices=[]),
        dict(dropout=1.0),
        dict(resize_input="yes"),
        dict(interpolation="area"),
    ],
    "nasvit": [
        dict(num_conv_stages=0),
        dict(num_conv_stages=4),
        dict(num_vit_stages=0),
        dict(num_vit_stages=5),
        dict(width_mult=0),
        dict(head_dim=0),
        dict(resolution_choices=[224, 192]),
        dict(resolution_choices=[]),
        dict(conv_kernel_choices=[[3, 4], [3, 5], [3, 5]]),
        dict(conv_width_choices=[[16, 24]]),  # three stages need three lists
        dict(conv_depth_choices=[[], [3], [3]]),
        dict(vit_expand_choices=[[2, 1]] * 4),
        dict(vit_depth_choices=[[0, 1]] * 4),
        dict(dropout=1.0),
        dict(mlp_ratio=0),
        dict(value_expand=0),
        dict(layer_scale_init=0),
        dict(interpolation="area"),
    ],
    "darts": [
        dict(num_cells=2),
        dict(init_channels=0),
        dict(steps=2, multiplier=3),
        dict(in_channels=1.5),
        dict(operations=[]),
        dict(operations=["none", "conv_7x1_1x7"]),
        dict(operations=["none", "none"]),
        dict(operations="sep_conv_3x3"),
        dict(affine=1),
    ],
}
# A choice outside its dimension, per family: (config, dimension, value).
BAD_CHOICES = {
    "mobilenetv3": ("s3-grey", "stage1.kernel", 9),
    "nasvit": ("c3v1-grey", "vit1.width", 20),
    "darts": ("c3-grey", "reduce.edge7", "sep_conv_7x7"),
}
RESOLUTION = 32  # the data's height and width
ARCH_KINDS = ["smallest", "largest", "seed0", "seed1", "seed2"]


def cases(name: str) -> list[tuple[str, str]]:
    """Every (config, architecture kind) of the family ``name``."""
    return [(config, kind) for config in CPU_CONFIGS[name] for kind in ARCH_KINDS]


@functools.cache
def cpu_family(name: str, config: str) -> SupernetFamily:
    """The CPU instance ``config`` of the family ``name`` (10 classes), built once."""
    return get_supernet(name, num_classes=10, **CPU_CONFIGS[name][config])


@functools.cache
def cpu_supernet_state(name: str, config: str) -> dict[str, np.ndarray]:
    """Its seed-0 supernet state, built once (the tests only read it)."""
    return cpu_family(name, config).init_supernet_state(seed=0)


def family_fixtures(name: str):
    """The ``families`` and ``supernet_states`` fixtures (config -> ...) of one family's tests."""

    @pytest.fixture(scope="module")
    def families() -> dict[str, SupernetFamily]:
        return {config: cpu_family(name, config) for config in CPU_CONFIGS[name]}

    @pytest.fixture(scope="module")
    def supernet_states() -> dict[str, dict[str, np.ndarray]]:
        return {config: cpu_supernet_state(name, config) for config in CPU_CONFIGS[name]}

    return families, supernet_states


def arch_of(family: SupernetFamily, kind: str) -> dict:
    """The smallest, the largest, or the architecture sampled with seed ``kind[4:]``."""
    if kind == "smallest":
        return family.smallest_architecture()
    if kind == "largest":
        return family.largest_architecture()
    return family.search_space.sample(np.random.default_rng(int(kind[4:])))


def perturbed(sub: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A client's update: float entries plus N(0, 0.05) noise, integer entries plus 5."""
    out = {}
    for key, value in sub.items():
        if value.dtype.kind == "f":
            out[key] = value + rng.normal(0.0, 0.05, value.shape).astype(value.dtype)
        else:
            out[key] = value + 5
    return out


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_parameter_counts(family: SupernetFamily, *archs: dict) -> list[int]:
    """Parameters of the supernet, then of each subnet of ``archs``, built on the meta device."""
    with torch.device("meta"):
        supernet = family.build_supernet()
        subnets = [family.build_subnet(arch) for arch in archs]
    assert all(p.is_meta for p in supernet.parameters())
    return [num_params(supernet), *(num_params(net) for net in subnets)]


def paper_size_shapes(
    name: str, supernet_params: tuple[int, int], smallest_params: int
) -> tuple[SupernetFamily, dict[str, tuple[int, ...]]]:
    """The family ``name`` at its defaults (paper size), checked on the meta device.

    Asserts that the supernet has between ``supernet_params[0]`` and
    ``supernet_params[1]`` parameters, that its smallest subnet has more than
    ``smallest_params`` and fewer than the supernet, and that the smallest
    subnet's slices name supernet tensors only. Returns the family and its
    supernet's tensor shapes, for the family's own checks.
    """
    family = get_supernet(name)
    n_super, n_small = meta_parameter_counts(family, family.smallest_architecture())
    low, high = supernet_params
    assert low < n_super < high
    assert smallest_params < n_small < n_super
    shapes = family.supernet_shapes()
    slices = family.subnet_slices(family.smallest_architecture())
    assert set(slices) <= set(shapes)
    return family, shapes
