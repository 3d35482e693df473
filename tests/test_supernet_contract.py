"""The supernet contract, checked the same way for every registered family."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flwr_pfedrlnas.core.aggregation import check_subnet_state, extract_subnet, merge_subnets
from flwr_pfedrlnas.supernets import CPU_PRESETS, available_supernets, cpu_preset, get_supernet

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "elastic_mlp.py"


def _load_example():
    if "elastic_mlp" not in sys.modules:
        spec = importlib.util.spec_from_file_location("elastic_mlp", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["elastic_mlp"] = module
        spec.loader.exec_module(module)
    return sys.modules["elastic_mlp"]


_load_example()  # the bring-your-own example registers "elastic-mlp"

# CPU-sized knobs per family (grayscale 32x32 input, 10 classes): the built-in
# families' presets, and the bring-your-own example's.
CPU_KNOBS = {
    **{name: cpu_preset(name) for name in CPU_PRESETS},
    "elastic-mlp": {"in_features": 32 * 32},
}


def _archs(family, n=3):
    rng = np.random.default_rng(0)
    archs = [family.smallest_architecture(), family.largest_architecture()]
    return archs + [family.search_space.sample(rng) for _ in range(n)]


def test_every_family_has_cpu_knobs():
    assert set(available_supernets()) == set(CPU_KNOBS)


@pytest.fixture(scope="module", params=sorted(CPU_KNOBS))
def family_and_state(request):
    family = get_supernet(request.param, **CPU_KNOBS[request.param])
    return family, family.init_supernet_state(seed=0)


def test_subnets_build_run_and_are_supernet_slices(family_and_state):
    family, supernet = family_and_state
    for arch in _archs(family):
        model = family.build_subnet(arch)
        state = extract_subnet(family, supernet, arch)
        check_subnet_state(family, arch, state, supernet)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == family.subnet_shapes(
            arch
        )
        for key, slices in family.subnet_slices(arch).items():
            assert np.array_equal(state[key], supernet[key][slices])
        out = model(torch.randn(2, 1, 32, 32))
        assert out.shape == (2, 10)
        out.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_unchanged_weights_leave_the_supernet_bit_for_bit(family_and_state):
    family, supernet = family_and_state
    updates = [
        (a, extract_subnet(family, supernet, a), 5 + i) for i, a in enumerate(_archs(family))
    ]
    merged = merge_subnets(family, supernet, updates)
    assert all(merged[k].tobytes() == supernet[k].tobytes() for k in supernet)


def test_extract_after_merge_round_trips(family_and_state):
    family, supernet = family_and_state
    rng = np.random.default_rng(1)
    arch = family.search_space.sample(rng)
    new = {
        k: (rng.normal(size=v.shape).astype(v.dtype) if v.dtype.kind == "f" else v)
        for k, v in extract_subnet(family, supernet, arch).items()
    }
    merged = merge_subnets(family, supernet, [(arch, new, 3)])
    back = extract_subnet(family, merged, arch)
    assert all(back[k].tobytes() == new[k].tobytes() for k in new)
    covered = family.subnet_slices(arch)
    for key in supernet:
        if key not in covered:
            assert merged[key].tobytes() == supernet[key].tobytes()


def test_family_rebuilds_from_its_json_config(family_and_state):
    family, _ = family_and_state
    again = get_supernet(family.name, **json.loads(family.config_json()))
    assert again.supernet_shapes() == family.supernet_shapes()
    assert again.search_space.names == family.search_space.names


def test_a_user_family_runs_through_the_strategy_unchanged(local_grid, tmp_path):
    from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders
    from flwr_pfedrlnas.flower.client import evaluate_subnet, identify, train_subnet
    from flwr_pfedrlnas.flower.strategy import PerFedRLNAS

    def loaders(ctx):
        pid = ctx.node_config["partition-id"]
        data = load_client_data("embedded", partition_id=pid, num_partitions=10, alpha=1.0, seed=0)
        return make_loaders(data, batch_size=32, seed=0)

    handlers = {
        "query": identify,
        "train": lambda msg, ctx: train_subnet(msg, ctx, *loaders(ctx)),
        "evaluate": lambda msg, ctx: evaluate_subnet(msg, ctx, loaders(ctx)[1]),
    }
    family = get_supernet("elastic-mlp", **CPU_KNOBS["elastic-mlp"])
    strategy = PerFedRLNAS(
        family, clients_per_round=2, min_available_nodes=3, results_dir=str(tmp_path)
    )
    before = {k: v.copy() for k, v in strategy.search.supernet.items()}
    strategy.start(
        local_grid(
            {1: {"partition-id": 0}, 2: {"partition-id": 1}, 3: {"partition-id": 2}}, handlers
        ),
        num_rounds=2,
    )
    assert sum(p.steps for p in strategy.search.policies.values()) == 4
    assert any(not np.array_equal(before[k], v) for k, v in strategy.search.supernet.items())
    assert (tmp_path / "rounds.csv").exists()


def test_skip_meta_init_leaves_real_tensors_and_shapes_alone():
    from torch import nn

    from flwr_pfedrlnas.supernets.base import skip_meta_init

    original = nn.init.kaiming_normal_
    with skip_meta_init():
        assert nn.init.kaiming_normal_ is not original
        torch.manual_seed(0)
        real = nn.Conv2d(3, 4, 3)  # a real module built meanwhile is initialised as usual
        with torch.device("meta"):
            meta = nn.Conv2d(3, 4, 3)
    assert nn.init.kaiming_normal_ is original
    torch.manual_seed(0)
    assert torch.equal(real.weight, nn.Conv2d(3, 4, 3).weight)
    assert meta.weight.is_meta and meta.weight.shape == (4, 3, 3, 3)
    family = get_supernet("mobilenetv3", **cpu_preset("mobilenetv3"))
    arch = family.search_space.sample(np.random.default_rng(1))
    with torch.device("meta"):
        built = family.build_subnet(arch)
    assert family.subnet_shapes(arch) == {k: tuple(v.shape) for k, v in built.state_dict().items()}
