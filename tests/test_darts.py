"""Tests of the DARTS (path-wise, one operation per edge) supernet family: its own
checks; those every family passes alike are in test_families.py."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from family_checks import (
    RESOLUTION,
    arch_of,
    cases,
    family_fixtures,
    meta_parameter_counts,
    num_params,
    perturbed,
)

from flwr_pfedrlnas.core.aggregation import extract_subnet, merge_subnets
from flwr_pfedrlnas.supernets import get_supernet
from flwr_pfedrlnas.supernets.darts import DARTS_OPERATIONS, DARTSFamily

torch.set_num_threads(1)

families, supernet_states = family_fixtures("darts")
CASES = cases("darts")
EDGE_KEY = re.compile(r"^cells\.(\d+)\.edges\.(\d+)\.([a-z0-9_]+)\.")


def _uniform(family: DARTSFamily, op: str) -> dict:
    return {name: op for name in family.search_space.names}


def _cell_type(family: DARTSFamily, cell: int) -> str:
    return "reduce" if cell in family.reduction_cells() else "normal"


def test_smallest_subnet_is_stem_and_classifier(families) -> None:
    for family in families.values():
        torch.manual_seed(0)
        net = family.build_subnet(family.smallest_architecture())
        x = torch.randn(2, family.config["in_channels"], RESOLUTION, RESOLUTION)
        net(x).square().mean().backward()
        names = {n for n, _ in net.named_parameters()}
        assert names == {"stem.0.weight", "stem.1.weight", "stem.1.bias"} | {
            "classifier.weight",
            "classifier.bias",
        }
        for name, param in net.named_parameters():
            if name.startswith("stem."):
                # Every edge is 'none': the cells output zeros, the stem feeds nothing.
                assert param.grad is None, name


def test_mostly_none_subnet(families) -> None:
    """An input node whose edges are all 'none' is not preprocessed; zero nodes work."""
    family = families["c3-rgb"]
    arch = _uniform(family, "none")
    arch["normal.edge1"] = "sep_conv_3x3"  # node 2 <- input 1 (previous cell)
    arch["normal.edge13"] = "dil_conv_3x3"  # node 5 <- node 4, which is zero
    arch["reduce.edge0"] = "skip_connect"  # node 2 <- input 0: FactorizedReduce
    arch["reduce.edge1"] = "dil_conv_5x5"  # node 2 <- input 1 (previous cell)
    arch["reduce.edge4"] = "max_pool_3x3"  # node 3 <- node 2
    shapes = family.subnet_shapes(arch)
    assert "cells.0.preprocess1.op.1.weight" in shapes
    assert not any(k.startswith("cells.0.preprocess0.") for k in shapes)
    assert "cells.1.preprocess0.op.1.weight" in shapes  # ReLUConvBN
    assert "cells.2.preprocess0.conv_1.weight" in shapes  # FactorizedReduce
    assert "cells.2.preprocess1.op.1.weight" in shapes
    assert "cells.0.preprocess0.op.1.weight" in family.supernet_shapes()
    assert "cells.1.edges.0.skip_connect.conv_1.weight" in shapes
    assert "cells.1.edges.4.max_pool_3x3.1.running_mean" in shapes
    torch.manual_seed(0)
    net = family.build_subnet(arch)
    out = net(torch.randn(2, 3, RESOLUTION, RESOLUTION))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
    # The op on the zero node 4 sees zeros: its weights get a zero gradient.
    grad = dict(net.named_parameters())["cells.0.edges.13.dil_conv_3x3.op.1.weight"].grad
    assert torch.count_nonzero(grad) == 0
    net.eval()
    assert net(torch.randn(1, 3, RESOLUTION, RESOLUTION)).shape == (1, 10)


def test_supernet_forward(families) -> None:
    family = families["c3-grey"]
    torch.manual_seed(0)
    net = family.build_supernet()
    out = net(torch.randn(2, 1, RESOLUTION, RESOLUTION))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_odd_resolution(families) -> None:
    family = families["c3-rgb"]
    torch.manual_seed(0)
    for arch in (family.largest_architecture(), _uniform(family, "skip_connect")):
        net = family.build_subnet(arch)
        assert net(torch.randn(2, 3, 27, 27)).shape == (2, 10)


@pytest.mark.parametrize("config,kind", CASES)
def test_subnet_is_whole_supernet_tensors(
    families, supernet_states, config: str, kind: str
) -> None:
    # The slicing, extraction and strict loading every family passes are in
    # test_families.py; a DARTS subnet holds whole supernet tensors.
    family, super_state = families[config], supernet_states[config]
    arch = arch_of(family, kind)
    shapes = family.subnet_shapes(arch)
    slices = family.subnet_slices(arch)
    for key, shape in shapes.items():
        assert shape == super_state[key].shape, key
        assert slices[key] == tuple(slice(0, n) for n in shape), key
    sub_state = extract_subnet(family, super_state, arch)
    for key, value in sub_state.items():
        assert value.tobytes() == super_state[key].tobytes(), key


@pytest.mark.parametrize("config,kind", CASES)
def test_subnet_holds_only_chosen_ops(families, config: str, kind: str) -> None:
    family = families[config]
    arch = arch_of(family, kind)
    shapes = family.subnet_shapes(arch)
    super_shapes = family.supernet_shapes()
    for key in shapes:
        match = EDGE_KEY.match(key)
        if match:
            cell, edge, op = int(match[1]), int(match[2]), match[3]
            assert op == arch[f"{_cell_type(family, cell)}.edge{edge}"], key
    # Each chosen operation comes with all of its supernet keys.
    for key in super_shapes:
        match = EDGE_KEY.match(key)
        if match:
            cell, edge, op = int(match[1]), int(match[2]), match[3]
            chosen = arch[f"{_cell_type(family, cell)}.edge{edge}"] == op
            assert (key in shapes) == chosen, key


def test_operation_keys(families) -> None:
    family = families["c3-rgb"]
    super_shapes = family.supernet_shapes()
    # Cell 0 is normal, cells 1 and 2 reduce; edges 0, 1 of a reduce cell stride 2.
    assert family.reduction_cells() == [1, 2]
    assert family.cell_channels() == [8, 16, 32]
    assert super_shapes["cells.0.edges.5.sep_conv_3x3.op.1.weight"] == (8, 1, 3, 3)
    assert super_shapes["cells.0.edges.5.sep_conv_5x5.op.5.weight"] == (8, 1, 5, 5)
    assert super_shapes["cells.0.edges.5.sep_conv_5x5.op.6.weight"] == (8, 8, 1, 1)
    assert super_shapes["cells.1.edges.3.dil_conv_5x5.op.1.weight"] == (16, 1, 5, 5)
    assert super_shapes["cells.1.edges.0.skip_connect.conv_1.weight"] == (8, 16, 1, 1)
    assert super_shapes["cells.2.edges.9.avg_pool_3x3.1.running_var"] == (32,)
    # Parameter-free: skip_connect on stride-1 edges (edge 4: node 2 -> node 3).
    assert "cells.1.edges.2.skip_connect.conv_1.weight" in super_shapes
    assert not any(".edges.4.skip_connect." in k for k in super_shapes)
    assert not any(".none." in k for k in super_shapes)
    # Preprocessing: cell 2 follows a reduction cell, so its input 0 is halved.
    assert super_shapes["cells.2.preprocess0.conv_1.weight"] == (16, 32, 1, 1)
    assert super_shapes["cells.0.preprocess0.op.1.weight"] == (8, 24, 1, 1)
    assert super_shapes["classifier.weight"] == (10, 128)


def test_search_space_layout(families) -> None:
    for family in families.values():
        space = family.search_space
        assert family.num_edges == 14
        assert len(space) == 28
        assert space.names == [f"{t}.edge{k}" for t in ("normal", "reduce") for k in range(14)]
        for dim in space:
            assert dim.choices == DARTS_OPERATIONS
        assert space.num_architectures() == 8**28
    small = DARTSFamily(init_channels=4, steps=3, multiplier=3, operations=["none", "sep_conv_3x3"])
    assert small.num_edges == 9
    assert small.search_space.num_architectures() == 2**18


def test_largest_and_smallest(families) -> None:
    family = families["c3-rgb"]
    assert family.largest_architecture() == _uniform(family, "sep_conv_5x5")
    assert family.smallest_architecture() == _uniform(family, "none")
    n_large = num_params(family.build_subnet(family.largest_architecture()))
    n_small = num_params(family.build_subnet(family.smallest_architecture()))
    n_super = num_params(family.build_supernet())
    rng = np.random.default_rng(3)
    for _ in range(3):
        n = num_params(family.build_subnet(family.search_space.sample(rng)))
        assert n_small < n < n_large < n_super
    # A restricted space: no 'none', no separable convolutions.
    restricted = DARTSFamily(
        init_channels=8,
        num_cells=3,
        operations=["dil_conv_5x5", "skip_connect", "max_pool_3x3", "dil_conv_3x3"],
    )
    largest = restricted.largest_architecture()
    smallest = restricted.smallest_architecture()
    assert set(largest.values()) == {"dil_conv_5x5"}
    # skip_connect is an identity on stride-1 edges and a FactorizedReduce
    # (more weights than a pooling's BatchNorm statistics) on stride-2 edges.
    strided = {f"reduce.edge{k}" for k in (0, 1, 2, 3, 5, 6, 9, 10)}  # from inputs
    for name, op in smallest.items():
        assert op == ("max_pool_3x3" if name in strided else "skip_connect"), name


def test_two_clients_different_ops(families, supernet_states) -> None:
    family, super_state = families["c3-rgb"], supernet_states["c3-rgb"]
    base = family.search_space.sample(np.random.default_rng(0))
    arch_a, arch_b = dict(base), dict(base)
    arch_a["normal.edge5"] = "sep_conv_3x3"
    arch_b["normal.edge5"] = "dil_conv_5x5"
    arch_a["reduce.edge0"] = "skip_connect"
    arch_b["reduce.edge0"] = "avg_pool_3x3"
    rng = np.random.default_rng(7)
    new_a = perturbed(extract_subnet(family, super_state, arch_a), rng)
    new_b = perturbed(extract_subnet(family, super_state, arch_b), rng)
    n_a, n_b = 3, 9
    merged = merge_subnets(family, super_state, [(arch_a, new_a, n_a), (arch_b, new_b, n_b)])
    only_a = set(new_a) - set(new_b)
    only_b = set(new_b) - set(new_a)
    assert "cells.0.edges.5.sep_conv_3x3.op.1.weight" in only_a
    assert "cells.0.edges.5.dil_conv_5x5.op.1.weight" in only_b
    assert "cells.1.edges.0.skip_connect.conv_1.weight" in only_a
    assert "cells.1.edges.0.avg_pool_3x3.1.running_mean" in only_b
    for key in only_a:
        assert merged[key].tobytes() == new_a[key].tobytes(), key
    for key in only_b:
        assert merged[key].tobytes() == new_b[key].tobytes(), key
    for key in set(new_a) & set(new_b):
        if super_state[key].dtype.kind == "f":
            expected = (n_a * new_a[key].astype(np.float64) + n_b * new_b[key]) / (n_a + n_b)
            np.testing.assert_allclose(merged[key], expected, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(merged[key], super_state[key] + 5)
    for key, old in super_state.items():
        if key not in new_a and key not in new_b:
            assert merged[key].tobytes() == old.tobytes(), key


def test_config_names_the_operations(families) -> None:
    # The round trip of the config every family passes is in test_families.py.
    for family in families.values():
        assert json.loads(family.config_json())["operations"] == list(DARTS_OPERATIONS)


def test_operation_outside_a_restricted_space() -> None:
    restricted = DARTSFamily(init_channels=8, num_cells=3, operations=["none", "skip_connect"])
    with pytest.raises(ValueError, match="normal.edge0"):
        restricted.build_subnet(_uniform(restricted, "sep_conv_3x3"))


def test_paper_size_on_meta_device() -> None:
    family = get_supernet("darts")  # DARTS search: 16 channels, 8 cells, 10 classes
    n_super, n_large, n_small = meta_parameter_counts(
        family, family.largest_architecture(), family.smallest_architecture()
    )
    # DARTS's train_search.py reports "param size = 1.930618MB" for this network.
    assert n_super == 1_930_618
    assert 500_000 < n_large < n_super
    assert n_small < 10_000
    assert family.reduction_cells() == [2, 5]
    shapes = family.supernet_shapes()
    assert shapes["stem.0.weight"] == (48, 3, 3, 3)
    assert shapes["cells.7.edges.13.sep_conv_5x5.op.6.weight"] == (64, 64, 1, 1)
    assert shapes["classifier.weight"] == (10, 256)
    slices = family.subnet_slices(family.search_space.sample(np.random.default_rng(0)))
    assert set(slices) <= set(shapes)
