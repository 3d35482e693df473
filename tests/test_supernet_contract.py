"""The supernet contract, checked by the shipped flwr_pfedrlnas.testing for every family."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.supernets import CPU_PRESETS, available_supernets, cpu_preset, get_supernet
from flwr_pfedrlnas.testing import (
    CONTRACT_CHECKS,
    SupernetContractError,
    check_supernet_family,
    contract_architectures,
    supernet_contract_test,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "elastic_mlp.py"


def _load_example():
    if "elastic_mlp" not in sys.modules:
        spec = importlib.util.spec_from_file_location("elastic_mlp", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["elastic_mlp"] = module
        spec.loader.exec_module(module)
    return sys.modules["elastic_mlp"]


ElasticMLP = _load_example().ElasticMLPFamily  # the bring-your-own example, registered

# CPU-sized knobs per family (grayscale 32x32 input, 10 classes): the built-in
# families' presets, and the bring-your-own example's.
CPU_KNOBS = {
    **{name: cpu_preset(name) for name in CPU_PRESETS},
    "elastic-mlp": {"in_features": 32 * 32},
}


def test_every_family_has_cpu_knobs():
    assert set(available_supernets()) == set(CPU_KNOBS)


@pytest.fixture(scope="module")
def families():
    """Each family built once per module (the checks do not change a family)."""
    return {name: get_supernet(name, **knobs) for name, knobs in CPU_KNOBS.items()}


@pytest.mark.parametrize("check", CONTRACT_CHECKS)
@pytest.mark.parametrize("name", sorted(CPU_KNOBS))
def test_family_honours_the_contract(families, name, check):
    # The same shipped checks a user runs on their own family.
    check_supernet_family(families[name], num_archs=3, seed=0, checks=(check,))


# The pytest helper, as a user writes it: one test per check.
test_elastic_mlp_with_the_pytest_helper = supernet_contract_test(
    lambda: get_supernet("elastic-mlp", in_features=32 * 32, width_choices=[8, 16]), seed=1
)


def test_the_shipped_checks_import_no_flower():
    code = (
        "import sys, flwr_pfedrlnas.testing;"
        "bad = [m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_contract_architectures_are_smallest_largest_then_sampled():
    family = get_supernet("elastic-mlp", **CPU_KNOBS["elastic-mlp"])
    archs = contract_architectures(family, num_archs=4, seed=3)
    assert archs[0] == family.smallest_architecture()
    assert archs[1] == family.largest_architecture()
    rng = np.random.default_rng(3)
    sampled = [family.search_space.sample(rng) for _ in range(4)]
    assert archs[2:] == [a for i, a in enumerate(sampled) if a not in archs[:2] + sampled[:i]]
    assert contract_architectures(family, num_archs=0) == archs[:2]
    with pytest.raises(ValueError, match="num_archs=-1"):
        contract_architectures(family, num_archs=-1)
    with pytest.raises(ValueError, match="checks=.*'nonsense'"):
        check_supernet_family(family, checks=("slices", "nonsense"))


# ------------------------------------------------ families that break the contract
class _TrailingRows(ElasticMLP):
    """Subnet rows taken from the END of each supernet tensor: not a leading slice."""

    name = "broken-trailing-rows"

    def tensor_slices(self, key, sub_shape, super_shape):
        if not sub_shape:  # a scalar (BatchNorm's num_batches_tracked)
            return ()
        rows = slice(super_shape[0] - sub_shape[0], super_shape[0])
        return (rows, *(slice(0, s) for s in sub_shape[1:]))


class _ExtraKey(ElasticMLP):
    """The subnet has a buffer the supernet lacks."""

    name = "broken-extra-key"

    def build_subnet(self, arch):
        model = super().build_subnet(arch)
        model.register_buffer("stray", torch.zeros(3))
        return model


class _WiderHead(ElasticMLP):
    """The subnet's head has more classes than the supernet's: no slice can hold it."""

    name = "broken-wider-head"

    def build_subnet(self, arch):
        model = super().build_subnet(arch)
        if arch == self.largest_architecture():
            return model
        model.head = torch.nn.Linear(model.head.in_features, self.config["num_classes"] + 1)
        return model


class _ForgetsKnob(ElasticMLP):
    """A knob (``wide``) that the family does not record: a client rebuilds another net."""

    name = "broken-forgets-knob"

    def __init__(self, wide=False, **ignored):
        super().__init__(width_choices=[16, 64] if wide else [16, 32])


class _CrashesWhenSmall(ElasticMLP):
    """The smallest subnet's forward fails (it expects another input size)."""

    name = "broken-crashes-when-small"

    def build_subnet(self, arch):
        model = super().build_subnet(arch)
        if arch == self.smallest_architecture():
            model.forward = lambda x: model.head(x.flatten(1))
        return model


@pytest.mark.parametrize(
    ("family", "check", "pattern"),
    [
        (_TrailingRows(width_choices=[8, 16]), "slices", r"key 'layers\.0\.0\.weight'.*leading"),
        (_ExtraKey(width_choices=[8, 16]), "slices", "key 'stray' is not in the supernet"),
        (_WiderHead(width_choices=[8, 16]), "slices", "'head.weight'.*larger than"),
        (_ForgetsKnob(wide=True), "rebuild", "differs after a rebuild from JSON"),
        (_CrashesWhenSmall(width_choices=[8, 16]), "forward-backward", "forward.*raised"),
    ],
    ids=lambda v: v.name if isinstance(v, ElasticMLP) else None,
)
def test_checks_fail_on_a_broken_family_naming_architecture_and_key(family, check, pattern):
    with pytest.raises(SupernetContractError, match=pattern) as info:
        check_supernet_family(family, checks=(check,))
    assert isinstance(info.value, AssertionError)  # pytest reports it as a failed check
    assert f"{family.name} [{check}] architecture " in str(info.value) or check == "rebuild"
    # Every other family passes the same check: the finding is the break, not the check.
    check_supernet_family(get_supernet("elastic-mlp", width_choices=[8, 16]), checks=(check,))


def test_custom_slices_pass_only_when_declared_and_then_merge_consistently():
    family = _TrailingRows(width_choices=[8, 16])
    with pytest.raises(SupernetContractError, match="allow_custom_slices=True"):
        check_supernet_family(family)
    check_supernet_family(family, allow_custom_slices=True)  # shapes and merges still hold
    arch = family.smallest_architecture()
    supernet = family.init_supernet_state(seed=0)
    state = extract_subnet(family, supernet, arch)
    rows = state["layers.0.0.weight"].shape[0]
    assert np.array_equal(state["layers.0.0.weight"], supernet["layers.0.0.weight"][-rows:])


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
