"""Checks every weight-sharing supernet family passes alike (MobileNetV3, NASViT, DARTS).

Each runs on the CPU-sized instances of ``family_checks.CPU_CONFIGS`` and on
the architectures of ``family_checks.ARCH_KINDS``; each family's own checks
are in ``test_<family>.py``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from family_checks import (
    ARCH_KINDS,
    BAD_CHOICES,
    BAD_KNOBS,
    CPU_CONFIGS,
    RESOLUTION,
    arch_of,
    cpu_family,
    cpu_supernet_state,
    perturbed,
)

from flwr_pfedrlnas.core.aggregation import check_subnet_state, extract_subnet, merge_subnets
from flwr_pfedrlnas.supernets import available_supernets, get_supernet, numpy_to_state
from flwr_pfedrlnas.supernets.darts import DARTSFamily
from flwr_pfedrlnas.supernets.mobilenetv3 import MobileNetV3Family
from flwr_pfedrlnas.supernets.nasvit import NASViTFamily

torch.set_num_threads(1)

FAMILY_CLASSES = {"mobilenetv3": MobileNetV3Family, "nasvit": NASViTFamily, "darts": DARTSFamily}
CONFIGS = [(name, config) for name in FAMILY_CLASSES for config in CPU_CONFIGS[name]]
CASES = [(name, config, kind) for name, config in CONFIGS for kind in ARCH_KINDS]
# Families whose largest subnet is the whole supernet: every dimension only slices
# (a DARTS subnet holds one of an edge's operations, the supernet all of them).
SLICING_FAMILIES = ["mobilenetv3", "nasvit"]


# The depthwise kernels of one MBConv stage: the dimension, its blocks' weight keys,
# (kernel, crop start) per choice, and a key of another stage with its full kernel.
KERNEL_STAGES = {
    "mobilenetv3": (
        "s5-rgb",
        "stage3.kernel",
        [f"stages.2.{block}.dw.conv.weight" for block in range(4)],
        [(3, 2), (5, 1), (7, 0)],
        ("stages.1.0.dw.conv.weight", 7),
    ),
    "nasvit": (
        "c2v2-rgb",
        "conv2.kernel",
        [f"conv_stages.1.{block}.dw.conv.weight" for block in range(5)],
        [(3, 1), (5, 0)],
        ("conv_stages.0.0.dw.conv.weight", 5),
    ),
}


def _case(name: str, config: str, kind: str):
    family = cpu_family(name, config)
    return family, cpu_supernet_state(name, config), arch_of(family, kind)


@pytest.mark.parametrize("name,cls", list(FAMILY_CLASSES.items()))
def test_registered(name: str, cls: type) -> None:
    assert name in available_supernets()
    assert isinstance(get_supernet(name), cls)


@pytest.mark.parametrize("name,config,kind", CASES)
def test_forward_backward(name: str, config: str, kind: str) -> None:
    family = cpu_family(name, config)
    cfg = family.config
    torch.manual_seed(0)
    net = family.build_subnet(arch_of(family, kind))
    net.train()
    res = cfg.get("input_resolution", RESOLUTION)
    x = torch.randn(2, cfg["in_channels"], res, res)
    out = net(x)
    assert out.shape == (2, cfg["num_classes"])
    out.square().mean().backward()
    for param_name, param in net.named_parameters():
        if (name, kind) == ("darts", "smallest") and param_name.startswith("stem."):
            continue  # every edge is 'none', the stem feeds nothing (see test_darts.py)
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, cfg["num_classes"])


@pytest.mark.parametrize("name,config,kind", CASES)
def test_subnet_is_slice_of_supernet(name: str, config: str, kind: str) -> None:
    family, super_state, arch = _case(name, config, kind)
    shapes = family.subnet_shapes(arch)
    assert set(shapes) <= set(super_state)
    slices = family.subnet_slices(arch)
    assert list(slices) == list(shapes)
    sub_state = {k: np.array(super_state[k][s]) for k, s in slices.items()}
    for key, value in sub_state.items():
        assert value.shape == shapes[key], key

    # A subnet built directly has exactly these shapes and loads them strictly.
    net = family.build_subnet(arch)
    direct = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert direct == shapes
    net.load_state_dict(numpy_to_state(sub_state), strict=True)
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), sub_state[key])


@pytest.mark.parametrize("name,config,kind", CASES)
def test_extract_subnet(name: str, config: str, kind: str) -> None:
    family, super_state, arch = _case(name, config, kind)
    shapes = family.subnet_shapes(arch)
    slices = family.subnet_slices(arch)
    sub_state = extract_subnet(family, super_state, arch)
    assert list(sub_state) == list(shapes)
    for key, value in sub_state.items():
        assert value.shape == shapes[key], key
        assert value.dtype == super_state[key].dtype, key
        np.testing.assert_array_equal(value, super_state[key][slices[key]])
    check_subnet_state(family, arch, sub_state, super_state)
    net = family.build_subnet(arch)
    net.load_state_dict(numpy_to_state(sub_state), strict=True)


@pytest.mark.parametrize("name,config", [c for c in CONFIGS if c[0] in SLICING_FAMILIES])
def test_largest_subnet_is_supernet(name: str, config: str) -> None:
    family = cpu_family(name, config)
    assert family.subnet_shapes(family.largest_architecture()) == family.supernet_shapes()


@pytest.mark.parametrize(
    "name,kernel,start",
    [(name, k, start) for name, stage in KERNEL_STAGES.items() for k, start in stage[3]],
)
def test_kernel_is_centre_crop(name: str, kernel: int, start: int) -> None:
    config, dimension, keys, _, (other_key, full) = KERNEL_STAGES[name]
    family, super_state = cpu_family(name, config), cpu_supernet_state(name, config)
    arch = family.largest_architecture()
    arch[dimension] = kernel
    sub = extract_subnet(family, super_state, arch)
    for key in keys:
        assert sub[key].shape[2:] == (kernel, kernel)
        crop = super_state[key][..., start : start + kernel, start : start + kernel]
        np.testing.assert_array_equal(sub[key], crop)
    # Other stages keep the full kernel.
    assert sub[other_key].shape[2:] == (full, full)


@pytest.mark.parametrize("name,config", CONFIGS)
def test_space_size_is_the_product_of_choices(name: str, config: str) -> None:
    space = cpu_family(name, config).search_space
    assert space.num_architectures() == math.prod(len(d) for d in space)
    if name in SLICING_FAMILIES:  # DARTS keeps its operations in DARTS's order
        for dim in space:
            assert list(dim.choices) == sorted(dim.choices)


@pytest.mark.parametrize("name,config", CONFIGS)
def test_merge_unchanged_is_identity(name: str, config: str) -> None:
    family, super_state = cpu_family(name, config), cpu_supernet_state(name, config)
    updates = [
        (arch, extract_subnet(family, super_state, arch), n)
        for arch, n in (
            (arch_of(family, "smallest"), 5),
            (arch_of(family, "seed0"), 3),
            (arch_of(family, "seed1"), 11),
            (arch_of(family, "largest"), 2),
        )
    ]
    merged = merge_subnets(family, super_state, updates)
    assert list(merged) == list(super_state)
    for key, old in super_state.items():
        assert merged[key].dtype == old.dtype, key
        assert merged[key].tobytes() == old.tobytes(), key


@pytest.mark.parametrize(
    "name,config,kind",
    [
        ("mobilenetv3", "s5-rgb", "seed0"),
        ("mobilenetv3", "s3-grey", "seed2"),
        ("nasvit", "c2v2-rgb", "seed0"),
        ("nasvit", "c3v1-grey", "seed2"),
    ],
)
def test_merge_one_client_then_extract(name: str, config: str, kind: str) -> None:
    family, super_state, arch = _case(name, config, kind)
    rng = np.random.default_rng(7)
    modified = perturbed(extract_subnet(family, super_state, arch), rng)
    other = arch_of(family, "smallest")
    other_sub = extract_subnet(family, super_state, other)
    merged = merge_subnets(family, super_state, [(arch, modified, 7)])
    again = extract_subnet(family, merged, arch)
    for key, value in modified.items():
        np.testing.assert_array_equal(again[key], value)
    # Entries outside the subnet keep their bits.
    slices = family.subnet_slices(arch)
    for key, old in super_state.items():
        mask = np.ones(old.shape, dtype=bool)
        if key in slices:
            mask[slices[key]] = False
        assert merged[key][mask].tobytes() == old[mask].tobytes(), key
    # A second, unchanged client pulls shared entries toward the old values.
    merged2 = merge_subnets(family, super_state, [(arch, modified, 7), (other, other_sub, 7)])
    key = "stem.conv.weight"
    both = tuple(slice(0, n) for n in other_sub[key].shape)
    expected = (modified[key][both].astype(np.float64) + other_sub[key]) / 2
    np.testing.assert_allclose(merged2[key][both], expected, rtol=1e-6)


@pytest.mark.parametrize("name,config", CONFIGS)
def test_config_round_trip(name: str, config: str) -> None:
    family = cpu_family(name, config)
    config_dict = json.loads(family.config_json())
    again = get_supernet(name, **config_dict)
    assert again.config == family.config
    assert again.config_json() == family.config_json()
    assert again.search_space.to_json() == family.search_space.to_json()
    assert again.supernet_shapes() == family.supernet_shapes()
    arch = arch_of(family, "seed1")
    assert again.subnet_shapes(arch) == family.subnet_shapes(arch)


@pytest.mark.parametrize(
    "name,knobs", [(name, knobs) for name in FAMILY_CLASSES for knobs in BAD_KNOBS[name]]
)
def test_bad_knobs(name: str, knobs: dict) -> None:
    with pytest.raises(ValueError):
        FAMILY_CLASSES[name](**knobs)


@pytest.mark.parametrize("name", list(FAMILY_CLASSES))
def test_bad_architecture(name: str) -> None:
    config, dimension, value = BAD_CHOICES[name]
    family = cpu_family(name, config)
    arch = family.largest_architecture()
    arch[dimension] = value
    with pytest.raises(ValueError, match=dimension):
        family.build_subnet(arch)
