"""Baselines driven message by message on the in-process grid."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from baseline_checks import NODES, embedded_loaders

from flwr_pfedrlnas.baselines import FedAvgFixedArch
from flwr_pfedrlnas.flower.client import evaluate_subnet, identify, train_subnet
from flwr_pfedrlnas.flower.messages import record_to_arrays
from flwr_pfedrlnas.supernets import get_supernet


def _loaders(ctx):
    return embedded_loaders(ctx.node_config["partition-id"], 20, batch_size=32, alpha=1.0)


HANDLERS = {
    "query": identify,
    "train": lambda msg, ctx: train_subnet(msg, ctx, *_loaders(ctx)),
    "evaluate": lambda msg, ctx: evaluate_subnet(msg, ctx, _loaders(ctx)[1]),
}


def test_fedavg_trains_the_largest_subnet_and_averages(local_grid, tmp_path):
    family = get_supernet("elastic-cnn", num_stages=2, base_width=4)
    seen = []
    grid = local_grid(NODES, HANDLERS, tamper=lambda msg, reply: seen.append((msg, reply)) or reply)
    strategy = FedAvgFixedArch(
        family, clients_per_round=2, min_available_nodes=3, results_dir=str(tmp_path)
    )
    initial = {k: v.copy() for k, v in strategy.weights.items()}
    strategy.start(grid, num_rounds=1)
    train = [(q, r) for q, r in seen if "train" in q.metadata.message_type]
    assert len(train) == 2
    for msg, _ in train:
        assert json.loads(msg.content["config"]["arch"]) == family.largest_architecture()
        sent = record_to_arrays(msg.content["arrays"])
        assert all(np.array_equal(sent[k], initial[k]) for k in initial)
    # Example-weighted mean of the two replies, key by key.
    states = [record_to_arrays(r.content["arrays"]) for _, r in train]
    weights = np.array([r.content["metrics"]["num-examples"] for _, r in train], dtype=float)
    key = "classifier.weight"
    expected = sum(w * s[key] for w, s in zip(weights, states)) / weights.sum()
    np.testing.assert_allclose(strategy.weights[key], expected, rtol=1e-6)
    again = FedAvgFixedArch(
        family, clients_per_round=2, min_available_nodes=3, results_dir=str(tmp_path)
    )
    again.start(local_grid(NODES, HANDLERS), num_rounds=2)
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    assert list(rounds["round"]) == [1, 2] and (rounds["num-evaluated"] == 3).all()
    assert (rounds["latency-round-s"] > 0).all()
    # Two clients each received and returned the whole subnet: bytes count both.
    nbytes = sum(v.nbytes for v in initial.values())
    assert (rounds["bytes-down"] >= 2 * nbytes).all() and (rounds["bytes-up"] >= 2 * nbytes).all()
    assert set(again.weights) == set(family.subnet_shapes(family.largest_architecture()))


def test_fedavg_evaluates_every_k_rounds_and_the_last(local_grid, tmp_path):
    family = get_supernet("elastic-cnn", num_stages=2, base_width=4)
    strategy = FedAvgFixedArch(
        family,
        clients_per_round=2,
        min_available_nodes=3,
        evaluate_every=2,
        results_dir=str(tmp_path),
    )
    grid = local_grid(NODES, HANDLERS)
    strategy.start(grid, num_rounds=3)
    evaluated = [
        m.content["config"]["server-round"]
        for m in grid.sent
        if "evaluate" in m.metadata.message_type
    ]
    assert evaluated == [2, 2, 2, 3, 3, 3]
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    assert list(rounds["num-evaluated"]) == [0, 3, 3]
    assert rounds["accuracy-mean"].isna().tolist() == [True, False, False]
    assert (rounds["wall-seconds"] > 0).all()
