"""Shapes of new architectures without building the subnet (issue 16).

Every built-in family derives a subnet's shapes from cached per-block shapes
(``derive_subnet_shapes``); the result must be exactly what
``build_subnet(arch).state_dict()`` gives: the same keys, in the same order, with
the same shapes. A family without the override keeps the generic meta-device build.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flwr_pfedrlnas.core.search_space import Dimension, SearchSpace
from flwr_pfedrlnas.supernets import CPU_PRESETS, SupernetFamily, cpu_preset, get_supernet
from flwr_pfedrlnas.supernets.base import block_shapes, module_shapes, skip_meta_init

BUILTIN = sorted(CPU_PRESETS)
NUM_RANDOM = 30


def _family(name: str, size: str) -> SupernetFamily:
    return get_supernet(name, **(cpu_preset(name) if size == "cpu" else {}))


def _built_items(family: SupernetFamily, arch, size: str) -> list[tuple[str, tuple[int, ...]]]:
    """``build_subnet(arch).state_dict()`` as (key, shape) pairs: real weights at
    CPU size, on the meta device at paper size (the same module, no memory)."""
    if size == "cpu":
        state = family.build_subnet(arch).state_dict()
    else:
        with skip_meta_init(), torch.device("meta"):
            state = family.build_subnet(arch).state_dict()
    return [(k, tuple(v.shape)) for k, v in state.items()]


def _architectures(family: SupernetFamily, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    space = family.search_space
    return [
        family.smallest_architecture(),
        family.largest_architecture(),
        *(space.sample(rng) for _ in range(NUM_RANDOM)),
    ]


def test_every_builtin_family_overrides_the_derivation():
    for name in BUILTIN:
        cls = type(get_supernet(name, **cpu_preset(name)))
        assert cls.derive_subnet_shapes is not SupernetFamily.derive_subnet_shapes, name
        # The cache and the slices stay the generic ones.
        assert cls.subnet_shapes is SupernetFamily.subnet_shapes, name


@pytest.mark.parametrize("size", ["cpu", "paper"])
@pytest.mark.parametrize("name", BUILTIN)
def test_fast_shapes_are_exactly_the_built_subnets(name, size):
    family = _family(name, size)
    archs = _architectures(family)
    assert len({tuple(sorted(a.items())) for a in archs}) > NUM_RANDOM // 2  # distinct ones
    for arch in archs:
        arch = family.search_space.validate(arch)
        expected = _built_items(family, arch, size)
        # The override itself, uncached; then the public, cached paths.
        assert list(family.derive_subnet_shapes(arch).items()) == expected, arch
        assert list(family.subnet_shapes(arch).items()) == expected, arch
        slices = family.subnet_slices(arch)
        assert list(slices) == [k for k, _ in expected]
        supernet = family.supernet_shapes()
        for key, shape in expected:
            assert tuple(s.stop - s.start for s in slices[key]) == shape
            assert len(shape) == len(supernet[key])


@pytest.mark.parametrize("name", BUILTIN)
def test_fast_shapes_match_the_generic_meta_build(name):
    family = _family(name, "paper")
    for arch in _architectures(family, seed=1)[:8]:
        arch = family.search_space.validate(arch)
        generic = SupernetFamily.derive_subnet_shapes(family, arch)
        assert list(family.derive_subnet_shapes(arch).items()) == list(generic.items())


@pytest.mark.parametrize("name", BUILTIN)
def test_fast_shapes_build_no_subnet(name, monkeypatch):
    family = _family(name, "cpu")
    archs = [family.search_space.validate(a) for a in _architectures(family, seed=2)[:5]]
    expected = [_built_items(family, a, "cpu") for a in archs]

    def refuse(*args, **kwargs):
        raise AssertionError("the subnet was built to derive its shapes")

    monkeypatch.setattr(family, "build_subnet", refuse)
    monkeypatch.setattr(family, "_build", refuse)
    for arch, items in zip(archs, expected):
        assert list(family.subnet_shapes(arch).items()) == items


def test_results_are_fresh_dicts_and_the_block_cache_is_not_shared_out():
    family = _family("mobilenetv3", "cpu")
    arch = family.largest_architecture()
    first = family.derive_subnet_shapes(arch)
    first.clear()
    assert family.derive_subnet_shapes(arch) == dict(_built_items(family, arch, "cpu"))
    shapes = family.subnet_shapes(arch)
    shapes.clear()
    assert family.subnet_shapes(arch) == dict(_built_items(family, arch, "cpu"))


def test_block_shapes_prefix_keys_in_the_modules_order():
    assert block_shapes("head.", nn.Linear, 3, 2) == (
        ("head.weight", (2, 3)),
        ("head.bias", (2,)),
    )
    assert block_shapes("", nn.BatchNorm2d, 4) == tuple(module_shapes(nn.BatchNorm2d(4)).items())


@pytest.mark.parametrize("name", BUILTIN)
def test_share_or_keep_delegates_to_the_fast_shapes(name):
    keep = ["classifier"]
    family = get_supernet(name, keep=keep, **cpu_preset(name))
    plain = _family(name, "cpu")
    rng = np.random.default_rng(3)
    for _ in range(5):
        arch = family.search_space.sample(rng)
        inner = family.inner_arch(arch)
        expected = _built_items(plain, plain.search_space.validate(inner), "cpu")
        assert list(family.subnet_shapes(arch).items()) == expected
        assert list(family.subnet_slices(arch)) == [k for k, _ in expected]


# --------------------------------------------------------------------------- user families
class _UserNet(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*(nn.Linear(4 if d == 0 else width, width) for d in range(depth)))
        self.head = nn.Linear(width, 2)


class _UserFamily(SupernetFamily):
    """A family written against the contract only: no shape derivation of its own."""

    name = "user-shapes-test"

    def __init__(self) -> None:
        super().__init__()
        self._space = SearchSpace([Dimension("width", (2, 4)), Dimension("depth", (1, 2))])
        self.devices: list[str] = []

    @property
    def search_space(self) -> SearchSpace:
        return self._space

    def build_supernet(self) -> nn.Module:
        return self.build_subnet(self._space.largest())

    def build_subnet(self, arch) -> nn.Module:
        arch = self._space.validate(arch)
        net = _UserNet(int(arch["width"]), int(arch["depth"]))
        self.devices.append(str(net.head.weight.device))
        return net


class _UserFamilyWithOwnShapes(_UserFamily):
    """A family that overrides ``subnet_shapes`` itself (the older way)."""

    name = "user-own-shapes-test"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def subnet_shapes(self, arch):
        self.calls += 1
        arch = self.search_space.validate(arch)
        return module_shapes(self.build_subnet(arch))


def test_a_user_family_without_an_override_gets_the_generic_meta_build():
    family = _UserFamily()
    assert type(family).derive_subnet_shapes is SupernetFamily.derive_subnet_shapes
    arch = {"width": 4, "depth": 2}
    shapes = family.subnet_shapes(arch)
    assert family.devices == ["meta"]  # built once, on the meta device
    assert list(shapes.items()) == list(module_shapes(_UserNet(4, 2)).items())
    assert family.subnet_shapes(arch) == shapes and family.devices == ["meta"]  # cached
    slices = family.subnet_slices({"width": 2, "depth": 1})
    assert list(slices) == ["body.0.weight", "body.0.bias", "head.weight", "head.bias"]
    assert slices["body.0.weight"] == (slice(0, 2), slice(0, 4))


def test_a_user_family_overriding_subnet_shapes_is_still_asked_for_its_slices():
    family = _UserFamilyWithOwnShapes()
    slices = family.subnet_slices({"width": 2, "depth": 2})
    assert family.calls == 1
    assert list(slices) == [
        "body.0.weight",
        "body.0.bias",
        "body.1.weight",
        "body.1.bias",
        "head.weight",
        "head.bias",
    ]
    assert slices["body.1.weight"] == (slice(0, 2), slice(0, 2))


def test_inverted_residual_shapes_are_its_modules():
    from flwr_pfedrlnas.supernets._layers import InvertedResidual

    rng = np.random.default_rng(4)
    for _ in range(20):
        args = (
            int(rng.integers(1, 40)),  # in
            int(rng.integers(1, 40)),  # out
            int(rng.integers(1, 120)),  # hidden
            int(rng.choice([1, 3, 5, 7])),
            int(rng.choice([1, 2])),
            str(rng.choice(["relu", "hardswish", "silu"])),
            bool(rng.integers(2)),  # use_se
        )
        kwargs = {
            "residual": bool(rng.integers(2)),
            "has_expand": bool(rng.integers(2)),
            "divisor": int(rng.choice([4, 8])),
        }
        built = list(module_shapes(InvertedResidual(*args, **kwargs)).items())
        assert list(InvertedResidual.shapes("", *args, **kwargs)) == built
        positional = (*args, kwargs["residual"], kwargs["has_expand"], kwargs["divisor"])
        prefixed = [("b." + k, s) for k, s in built]
        assert list(InvertedResidual.shapes("b.", *positional)) == prefixed
