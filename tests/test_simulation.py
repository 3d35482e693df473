"""End-to-end runs through Flower's simulation engine on the embedded data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context
from flwr.client import ClientApp as LegacyClientApp
from flwr.server import ServerAppComponents, ServerConfig
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.core.search import SearchConfig
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders
from flwr_pfedrlnas.flower.client import client_id_from_context, make_client_app
from flwr_pfedrlnas.flower.legacy import PerFedRLNASLegacy
from flwr_pfedrlnas.flower.numpy_client import SubnetClient
from flwr_pfedrlnas.flower.strategy import PerFedRLNAS
from flwr_pfedrlnas.supernets import CPU_PRESETS, available_supernets, cpu_preset, get_supernet

pytestmark = pytest.mark.slow

NUM_CLIENTS = 4
ROUNDS = 2
# A CPU-sized instance of every built-in family (grayscale 32x32 input, 10 classes).
CPU_FAMILIES = {name: cpu_preset(name) for name in CPU_PRESETS}
# End-to-end runs train every round: a shallower MobileNetV3 than the preset
# (2 stages of 1 or 2 blocks instead of 3 stages of 2 to 4) keeps them short.
FAMILY_KNOBS = {**cpu_preset("mobilenetv3"), "num_stages": 2, "depth_choices": [1, 2]}
CPU_FAMILIES["mobilenetv3"] = FAMILY_KNOBS
BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}}


def _loaders(context: Context, batch_size: int):
    data = load_client_data(
        "embedded",
        partition_id=int(context.node_config["partition-id"]),
        num_partitions=int(context.node_config["num-partitions"]),
        alpha=0.5,
        seed=0,
    )
    return make_loaders(data, batch_size=batch_size, seed=0)


def _coverage(family, archs):
    """Per key, the union of entries covered by the given architectures."""
    shapes = family.supernet_shapes()
    covered = {k: np.zeros(s, dtype=bool) for k, s in shapes.items()}
    for arch in archs:
        for key, slices in family.subnet_slices(arch).items():
            covered[key][slices] = True
    return covered


def _check_run(strategy, initial, results_dir):
    search = strategy.search
    family = search.family
    # Every trained client's policy moved away from uniform.
    trained = [c for c, p in search.policies.items() if p.steps > 0]
    assert trained, "no policy was updated"
    for cid in trained:
        alpha = search.policies[cid].alpha
        assert any(np.any(a != 0) for a in alpha.values()), cid
    # The supernet changed, and only where some sampled subnet covered it.
    rounds = pd.read_csv(results_dir / "rounds.csv")
    assert list(rounds["round"]) == list(range(1, ROUNDS + 1))
    assert rounds["num-accepted"].sum() >= 2
    assert (rounds["accuracy-mean"] > 0.0).all()
    assert (rounds["num-evaluated"] == NUM_CLIENTS).all()
    changed = {k: initial[k] != v for k, v in search.supernet.items()}
    assert any(c.any() for c in changed.values())
    clients = pd.read_csv(results_dir / "clients.csv")
    assert sorted(clients["client-id"].astype(str)) == [str(i) for i in range(NUM_CLIENTS)]
    for arch_json in clients["arch"]:
        family.search_space.validate(json.loads(arch_json))
    assert (clients["accuracy"].between(0, 1)).all()
    assert (results_dir / "config.json").exists()
    assert (results_dir / "accuracy.png").stat().st_size > 0
    assert (results_dir / "checkpoint" / "state.json").exists()
    return changed


def _simulate(strategy, num_rounds):
    """Run ``strategy`` in Flower's simulation; every proposal it made, in order."""
    proposed = []
    propose = strategy.search.propose

    def recording_propose(cid, server_round=None):
        proposal = propose(cid, server_round)
        proposed.append(proposal)
        return proposal

    strategy.search.propose = recording_propose
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid, num_rounds=num_rounds)

    run_simulation(server_app, make_client_app(_loaders), NUM_CLIENTS, backend_config=BACKEND)
    return proposed


def _seeded_run(tmp_path, seed: int) -> dict:
    """Strategy keywords: a seeded search, results and checkpoints under ``tmp_path``."""
    return dict(
        search_config=SearchConfig(seed=seed),
        results_dir=str(tmp_path),
        checkpoint_dir=str(tmp_path / "checkpoint"),
    )


def test_every_builtin_family_is_covered():
    # Families registered by user code (the bring-your-own example) are tested elsewhere.
    assert set(CPU_FAMILIES) == set(available_supernets()) - {"elastic-mlp"}


@pytest.mark.parametrize("name", sorted(CPU_FAMILIES))
def test_message_api_simulation(tmp_path, name):
    family = get_supernet(name, **CPU_FAMILIES[name])
    strategy = PerFedRLNAS(
        family, clients_per_round=3, min_available_nodes=NUM_CLIENTS, **_seeded_run(tmp_path, 1)
    )
    initial = {k: v.copy() for k, v in strategy.search.supernet.items()}
    proposed = [p.arch for p in _simulate(strategy, ROUNDS)]

    changed = _check_run(strategy, initial, tmp_path)
    covered = _coverage(family, proposed)
    for key, mask in changed.items():
        assert not (mask & ~covered[key]).any(), f"{key} changed outside every sampled subnet"
    # The deployed model of a client is the argmax subnet cut from the supernet.
    arch, state = strategy.search.deploy("0")
    expected = extract_subnet(family, strategy.search.supernet, arch)
    assert all(np.array_equal(state[k], expected[k]) for k in expected)


def test_legacy_api_simulation(tmp_path):
    family = get_supernet("mobilenetv3", **FAMILY_KNOBS)
    strategy = PerFedRLNASLegacy(
        family, clients_per_round=3, min_available_clients=NUM_CLIENTS, **_seeded_run(tmp_path, 2)
    )
    initial = {k: v.copy() for k, v in strategy.search.supernet.items()}

    def server_fn(context: Context) -> ServerAppComponents:
        return ServerAppComponents(
            strategy=strategy, config=ServerConfig(num_rounds=strategy.remaining_rounds(ROUNDS))
        )

    def client_fn(context: Context):
        train_loader, test_loader = _loaders(context, 32)
        return SubnetClient(client_id_from_context(context), train_loader, test_loader).to_client()

    run_simulation(
        ServerApp(server_fn=server_fn),
        LegacyClientApp(client_fn=client_fn),
        NUM_CLIENTS,
        backend_config=BACKEND,
    )
    _check_run(strategy, initial, tmp_path)


def test_share_or_keep_simulation(tmp_path):
    """Personal blocks survive from round to round in Flower's own node state (Ray)."""
    family = get_supernet("elastic-cnn", keep=["classifier", "last-stage"])
    strategy = PerFedRLNAS(
        family,
        clients_per_round=NUM_CLIENTS,
        min_available_nodes=NUM_CLIENTS,
        search_config=SearchConfig(seed=4),
        results_dir=str(tmp_path),
        checkpoint_dir=str(tmp_path / "checkpoint"),
    )
    initial = {k: v.copy() for k, v in strategy.search.supernet.items()}
    proposed = _simulate(strategy, 3)

    rounds = pd.read_csv(tmp_path / "rounds.csv")
    # Every reply usable: a client that had lost its personal copy would have failed.
    assert (rounds["num-accepted"] == NUM_CLIENTS).all(), rounds
    again = [p for p in proposed if p.arch["keep.classifier"] == "personal" and not p.init_state]
    assert again, "no client trained a personal classifier it already held"
    # The classifier moved only where some client trained it shared.
    shared = [p.arch for p in proposed if p.arch["keep.classifier"] == "shared"]
    covered = _coverage(family, shared)
    for key in ("classifier.weight", "classifier.bias"):
        changed = initial[key] != strategy.search.supernet[key]
        assert not (changed & ~covered[key]).any(), key
