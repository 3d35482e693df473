"""New clients: held out of training, then searched by evaluation only."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from flwr.app import MessageType

from flwr_pfedrlnas.core.search import PerFedRLNASSearch, SearchConfig
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.client import evaluate_subnet, identify, train_subnet
from flwr_pfedrlnas.flower.strategy import PerFedRLNAS
from flwr_pfedrlnas.supernets import get_supernet

NODES = {100 + i: {"client-id": str(i)} for i in range(4)}


def _family():
    return get_supernet("elastic-cnn", num_stages=2, base_width=4)


def _loaders(ctx):
    data = load_client_data(
        "embedded",
        partition_id=int(ctx.node_config["client-id"]),
        num_partitions=20,
        alpha=1.0,
        seed=0,
    )
    return make_loaders(data, batch_size=32, seed=0)


def _handlers(log):
    def train(msg, ctx):
        log.append(("train", ctx.node_config["client-id"]))
        return train_subnet(msg, ctx, *_loaders(ctx))

    def evaluate(msg, ctx):
        train_loader, test_loader = _loaders(ctx)
        return evaluate_subnet(msg, ctx, test_loader, train_loader=train_loader)

    return {"query": identify, "train": train, "evaluate": evaluate}


def _strategy(tmp_path, seed: int, **knobs) -> PerFedRLNAS:
    """PerFedRLNAS over the four nodes, a seeded search, results in ``tmp_path``."""
    return PerFedRLNAS(
        _family(),
        min_available_nodes=4,
        search_config=SearchConfig(seed=seed),
        results_dir=str(tmp_path / "results"),
        **knobs,
    )


def test_core_search_only_updates_policies_not_the_supernet():
    core = PerFedRLNASSearch(_family(), SearchConfig(seed=0))
    before = {k: v.tobytes() for k, v in core.supernet.items()}
    for step in range(3):
        props = [core.propose_search_only(c) for c in ("x", "y")]
        assert not core.pending  # training proposals untouched
        rewards = core.incorporate_search_only({"x": 0.9, "y": 0.1 + step * 0.1})
        assert set(rewards) == {"x", "y"}
        assert [p.client_id for p in props] == ["x", "y"]
    assert core.policies["x"].steps == 3 and core.policies["y"].steps == 3
    assert {k: v.tobytes() for k, v in core.supernet.items()} == before
    assert core.completed_rounds == 0
    # Reward = accuracy - the new clients' running mean (eq. 8 without time or merge).
    core.propose_search_only("x")
    mean = (0.5 + 0.3) / 2  # x's new 0.5 and y's latest 0.3
    assert core.incorporate_search_only({"x": 0.5}) == {"x": pytest.approx(0.5 - mean)}
    # Bad input is ignored, not raised.
    core.propose_search_only("x")
    assert core.incorporate_search_only({"x": 7.0, "z": 0.5}) == {}
    # The baseline survives a checkpoint.
    restored = PerFedRLNASSearch(_family(), SearchConfig(seed=0))
    restored.load_state_dict(core.state_dict())
    assert restored.search_history.latest == core.search_history.latest


def test_new_clients_never_train_and_search_only_changes_no_weight(local_grid, tmp_path):
    log = []
    # One new client, its search-only rounds run by hand below.
    strategy = _strategy(tmp_path, 0, clients_per_round=3, num_new_clients=1, new_client_rounds=0)
    grid = local_grid(NODES, _handlers(log))
    strategy.start(grid, num_rounds=2)
    assert strategy.session.new_clients == ["3"]
    assert log and all(cid != "3" for _, cid in log)  # never sampled for training
    evaluated = [r["num-evaluated"] for r in strategy.session.recorder.rounds]
    assert evaluated == [3, 3]  # personalised accuracy over the training clients
    supernet = copy.deepcopy(strategy.search.supernet)
    policies = {c: copy.deepcopy(p.state_dict()) for c, p in strategy.search.policies.items()}
    assert "3" not in policies or policies["3"]["steps"] == 0

    sent_before, log_before = len(grid.sent), len(log)
    rows = strategy.search_new_clients(grid, num_rounds=3)
    assert len(rows) == 3 and all(0 <= r["accuracy-mean"] <= 1 for r in rows)
    # No training, no upload: only evaluate messages flagged search-only went out.
    assert len(log) == log_before
    search_msgs = grid.sent[sent_before:]
    assert search_msgs
    assert all(msg.metadata.message_type == MessageType.EVALUATE for msg in search_msgs)
    assert all(msg.content["config"][m.SEARCH_ONLY] is True for msg in search_msgs)
    assert {NODES[msg.metadata.dst_node_id]["client-id"] for msg in search_msgs} == {"3"}
    for msg in search_msgs:
        reply = evaluate_subnet(
            msg, grid.contexts[msg.metadata.dst_node_id], _loaders(grid.contexts[103])[1]
        )
        assert len(reply.content.array_records) == 0  # nothing uploaded
    # The supernet is bit for bit the trained one; only the new client's policy moved.
    for key, value in supernet.items():
        assert strategy.search.supernet[key].tobytes() == value.tobytes()
    assert strategy.search.policies["3"].steps == 3
    for cid, state in policies.items():
        if cid != "3":
            got = strategy.search.policies[cid].state_dict()
            assert got["steps"] == state["steps"]
            for d, logits in state["alpha"].items():
                np.testing.assert_array_equal(got["alpha"][d], logits)
    csv = pd.read_csv(tmp_path / "results" / "new_clients.csv")
    assert list(csv["search-round"]) == [1, 2, 3]


def test_start_runs_the_search_only_rounds_after_training(local_grid, tmp_path):
    strategy = _strategy(tmp_path, 1, clients_per_round=2, num_new_clients=2, new_client_rounds=2)
    strategy.start(local_grid(NODES, _handlers([])), num_rounds=1)
    assert strategy.session.new_clients == ["2", "3"]
    assert [r["search-round"] for r in strategy.session.new_client_rows] == [1, 2]
    assert strategy.session.new_client_rows[-1]["num-evaluated"] == 2
    with pytest.raises(ValueError, match="num-new-clients"):
        PerFedRLNAS(_family(), num_new_clients=4).session.training_clients(["0", "1"])
