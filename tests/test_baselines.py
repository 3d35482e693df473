"""Baselines driven message by message on the in-process grid."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from flwr.app import ConfigRecord

from flwr_pfedrlnas.baselines import FedAvgFixedArch
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders
from flwr_pfedrlnas.flower.client import evaluate_subnet, identify, train_subnet
from flwr_pfedrlnas.flower.messages import record_to_arrays
from flwr_pfedrlnas.supernets import get_supernet

NODES = {11: {"partition-id": 0}, 22: {"partition-id": 1}, 33: {"partition-id": 2}}


def _loaders(ctx):
    data = load_client_data(
        "embedded",
        partition_id=ctx.node_config["partition-id"],
        num_partitions=20,
        alpha=1.0,
        seed=0,
    )
    return make_loaders(data, batch_size=32, seed=0)


HANDLERS = {
    "query": identify,
    "train": lambda msg, ctx: train_subnet(msg, ctx, *_loaders(ctx)),
    "evaluate": lambda msg, ctx: evaluate_subnet(msg, ctx, _loaders(ctx)[1]),
}


def test_fedavg_trains_the_largest_subnet_and_averages(local_grid, tmp_path):
    family = get_supernet("elastic-cnn", num_stages=2, base_width=4)
    strategy = FedAvgFixedArch(
        family, clients_per_round=2, min_available_nodes=3, results_dir=str(tmp_path)
    )
    grid = local_grid(NODES, HANDLERS)
    initial = strategy.initial_arrays()
    msgs = list(strategy.configure_train(1, initial, ConfigRecord(), grid))
    assert len(msgs) == 2
    assert json.loads(msgs[0].content["config"]["arch"]) == family.largest_architecture()
    replies = grid.send_and_receive(msgs)
    arrays, _ = strategy.aggregate_train(1, replies)
    # Example-weighted mean of the two replies, key by key.
    states = [record_to_arrays(r.content["arrays"]) for r in replies]
    weights = np.array([r.content["metrics"]["num-examples"] for r in replies], dtype=float)
    merged = record_to_arrays(arrays)
    key = "classifier.weight"
    expected = sum(w * s[key] for w, s in zip(weights, states)) / weights.sum()
    np.testing.assert_allclose(merged[key], expected, rtol=1e-5)
    result = strategy.start(grid, initial_arrays=initial, num_rounds=2)
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    assert list(rounds["round"]) == [1, 2] and (rounds["num-evaluated"] == 3).all()
    assert (rounds["latency-round-s"] > 0).all()
    assert len(result.arrays) == len(family.subnet_shapes(family.largest_architecture()))


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
