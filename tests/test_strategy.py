"""PerFedRLNAS (Message API) driven message by message, without a simulation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message
from flwr.serverapp.strategy import Result

from flwr_pfedrlnas.core.search import SearchConfig
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders
from flwr_pfedrlnas.flower.client import evaluate_subnet, identify, train_subnet
from flwr_pfedrlnas.flower.strategy import PerFedRLNAS
from flwr_pfedrlnas.supernets import get_supernet

# Node ids are Flower's; client ids come from the node config and are what policies key on.
NODES = {101: {"client-id": "alice"}, 202: {"client-id": "bob"}, 303: {"client-id": "carol"}}
PARTITION = {"alice": 0, "bob": 1, "carol": 2}


def _family():
    return get_supernet("elastic-cnn", num_stages=2, base_width=4)


def _loaders(context):
    cid = context.node_config["client-id"]
    data = load_client_data(
        "embedded", partition_id=PARTITION[cid], num_partitions=20, alpha=1.0, seed=0
    )
    return make_loaders(data, batch_size=32, seed=0)


HANDLERS = {
    "query": identify,
    "train": lambda msg, ctx: train_subnet(msg, ctx, *_loaders(ctx)),
    "evaluate": lambda msg, ctx: evaluate_subnet(msg, ctx, _loaders(ctx)[1]),
}


def _strategy(tmp_path, **kw):
    return PerFedRLNAS(
        _family(),
        clients_per_round=2,
        search_config=SearchConfig(seed=0),
        results_dir=str(tmp_path / "results"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        **kw,
    )


def test_round_by_hand(local_grid, tmp_path):
    strategy = _strategy(tmp_path)
    grid = local_grid(NODES, HANDLERS)
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord({"custom": 7}), grid))
    assert len(messages) == 2
    # Identity learnt once, from the node config, not the node id.
    assert strategy.node_to_client == {101: "alice", 202: "bob", 303: "carol"}
    for msg in messages:
        cfg = msg.content["config"]
        cid = strategy.node_to_client[msg.metadata.dst_node_id]
        arch = json.loads(cfg["arch"])
        assert arch == strategy.search.pending[cid].arch
        assert cfg["supernet"] == "elastic-cnn"
        assert json.loads(cfg["supernet-config"]) == strategy.family.config
        assert cfg["server-round"] == 1 and cfg["local-epochs"] == 1 and cfg["custom"] == 7
        assert cfg["batch-size"] == 32 and cfg["lr"] == pytest.approx(0.05)
        shapes = {k: tuple(v.shape) for k, v in msg.content["arrays"].items()}
        assert shapes == strategy.family.subnet_shapes(arch)
    replies = grid.send_and_receive(messages)
    for reply in replies:
        metrics = reply.content["metrics"]
        assert set(metrics) >= {
            "num-examples",
            "accuracy",
            "train-loss",
            "compute-seconds",
            "peak-memory-bytes",
        }
        assert 0 <= metrics["accuracy"] <= 1 and metrics["peak-memory-bytes"] > 0
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["num-accepted"] == 2 and metrics["num-failed"] == 0
    assert set(arrays.keys()) == set(strategy.family.supernet_shapes())
    trained = {strategy.node_to_client[m.metadata.dst_node_id] for m in messages}
    assert {c for c, p in strategy.search.policies.items() if p.steps == 1} == trained

    evals = list(strategy.configure_evaluate(1, arrays, ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in evals) == [101, 202, 303]
    for msg in evals:
        cid = strategy.node_to_client[msg.metadata.dst_node_id]
        assert json.loads(msg.content["config"]["arch"]) == strategy.search.policy(cid).argmax()
    summary = strategy.aggregate_evaluate(1, grid.send_and_receive(evals))
    assert summary["num-clients"] == 3
    rows = strategy.session.recorder.rounds
    assert rows[-1]["round"] == 1 and rows[-1]["num-evaluated"] == 3
    # Bytes as Flower carries them, the measure of every baseline: serialised arrays.
    assert rows[-1]["bytes-down"] == sum(m.content["arrays"].count_bytes() for m in messages)
    assert rows[-1]["bytes-up"] == sum(r.content["arrays"].count_bytes() for r in replies)
    assert (tmp_path / "results" / "rounds.csv").exists()
    assert (tmp_path / "ckpt" / "state.json").exists()


def test_policies_follow_the_client_not_the_node(local_grid, tmp_path):
    strategy = _strategy(tmp_path, min_available_nodes=3)
    result = strategy.start(local_grid(NODES, HANDLERS), num_rounds=1)
    assert isinstance(result, Result)
    policies = {c: p.state_dict() for c, p in strategy.search.policies.items()}
    # The same clients reconnect on new nodes: identities are re-learnt, policies kept.
    moved = {node + 1000: cfg for node, cfg in NODES.items()}
    strategy.start(local_grid(moved, HANDLERS), num_rounds=2)
    assert strategy.client_to_node == {"alice": 1101, "bob": 1202, "carol": 1303}
    assert set(strategy.search.policies) == {"alice", "bob", "carol"}
    for cid, state in policies.items():
        assert strategy.search.policies[cid].steps >= state["steps"]


def test_failures_and_bad_replies_are_logged_and_harmless(local_grid, tmp_path, caplog):
    def tamper(msg, reply):
        if msg.metadata.message_type != "train":
            return reply
        node_id = msg.metadata.dst_node_id
        if node_id == 101:  # a client whose accuracy is out of range
            reply.content["metrics"]["accuracy"] = 7.0
        if node_id == 202:  # a client that crashed
            return Message(Error(code=0, reason="boom"), reply_to=msg)
        return reply

    strategy = _strategy(tmp_path, min_available_nodes=3)
    strategy.session.clients_per_round = 3
    before = {k: v.tobytes() for k, v in strategy.search.supernet.items()}
    grid = local_grid(NODES, HANDLERS, tamper=tamper)
    strategy.start(grid, num_rounds=1)
    row = strategy.session.recorder.rounds[-1]
    assert row["num-accepted"] == 1 and row["num-failed"] == 2
    assert "alice: rejected: accuracy is 7.0, out of range" in row["failures"]
    assert "bob: client error: boom" in row["failures"]
    assert strategy.search.policies["alice"].steps == 0
    assert strategy.search.policies["bob"].steps == 0
    assert strategy.search.policies["carol"].steps == 1
    assert any("accuracy is 7.0" in r.getMessage() for r in caplog.records)
    # Only carol's subnet moved the supernet.
    sent = [
        m for m in grid.sent if m.metadata.message_type == "train" and m.metadata.dst_node_id == 303
    ]
    carol = strategy.family.subnet_slices(json.loads(sent[0].content["config"]["arch"]))
    changed = [k for k, v in strategy.search.supernet.items() if v.tobytes() != before[k]]
    assert changed and set(changed) <= set(carol)


def test_initial_arrays_replace_the_supernet_and_are_checked(local_grid, tmp_path):
    strategy = _strategy(tmp_path, min_available_nodes=3)
    family = strategy.family
    pretrained = {
        k: np.full(v.shape, 0.5, dtype=v.dtype) for k, v in family.init_supernet_state(1).items()
    }
    from flwr_pfedrlnas.flower.messages import arrays_to_record

    grid = local_grid(NODES, HANDLERS)
    msgs = list(strategy.configure_train(1, arrays_to_record(pretrained), ConfigRecord(), grid))
    first = msgs[0].content["arrays"]
    assert all(np.all(a.numpy() == 0.5) for a in first.values() if a.numpy().dtype.kind == "f")
    bad = _strategy(tmp_path / "other")
    with pytest.raises(ValueError, match="supernet state does not fit"):
        bad.configure_train(1, arrays_to_record({"x": np.zeros(2)}), ConfigRecord(), grid)


def test_evaluation_asks_for_bn_recalibration(local_grid, tmp_path):
    strategy = _strategy(tmp_path, bn_recalibration_batches=2)
    grid = local_grid(NODES, HANDLERS)
    msgs = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid))
    assert {m.content["config"]["bn-recalibration-batches"] for m in msgs} == {2}
    assert {m.content["config"]["batch-size"] for m in msgs} == {32}


def test_final_evaluation_asks_for_fine_tuning_only_in_the_last_round(local_grid, tmp_path):
    strategy = _strategy(tmp_path, finetune_epochs=2, lr=0.03)
    evaluated = []

    def evaluate(msg, ctx):
        evaluated.append(dict(msg.content["config"]))
        return evaluate_subnet(msg, ctx, _loaders(ctx)[1], train_loader=_loaders(ctx)[0])

    grid = local_grid(NODES, {**HANDLERS, "evaluate": evaluate})
    strategy.start(grid, num_rounds=2)
    assert [c["server-round"] for c in evaluated] == [1, 1, 1, 2, 2, 2]
    assert all("finetune-epochs" not in c for c in evaluated[:3])
    assert all(c["finetune-epochs"] == 2 and c["lr"] == pytest.approx(0.03) for c in evaluated[3:])
    rounds = pd.read_csv(tmp_path / "results" / "rounds.csv")
    assert list(rounds["finetune-epochs"]) == [0, 2]


def test_no_fine_tuning_by_default(local_grid, tmp_path):
    strategy = _strategy(tmp_path)
    strategy.session.total_rounds = 1
    msgs = list(
        strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), local_grid(NODES, HANDLERS))
    )
    assert all("finetune-epochs" not in m.content["config"] for m in msgs)


def test_fine_tuning_client_tests_the_fine_tuned_subnet_and_uploads_nothing(local_grid, tmp_path):
    import torch
    from flwr.app import Context, MessageType, RecordDict

    from flwr_pfedrlnas.core.aggregation import extract_subnet
    from flwr_pfedrlnas.flower.messages import arrays_to_record, subnet_config
    from flwr_pfedrlnas.training import evaluate, recalibrate_batchnorm, train

    family = _family()
    arch = family.largest_architecture()
    state = extract_subnet(family, family.init_supernet_state(0), arch)
    from torch.utils.data import DataLoader, TensorDataset

    data = load_client_data("embedded", partition_id=0, num_partitions=20, alpha=1.0, seed=0)
    # No shuffling: the handler and the check below see the same batches in the same order.
    train_loader = DataLoader(
        TensorDataset(torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)), 32
    )
    test_loader = DataLoader(
        TensorDataset(torch.from_numpy(data.test_x), torch.from_numpy(data.test_y)), 32
    )
    ctx = Context(
        run_id=1, node_id=1, node_config={"client-id": "a"}, state=RecordDict(), run_config={}
    )

    def reply(epochs):
        config = {"bn-recalibration-batches": -1, "lr": 0.05}
        if epochs:
            config["finetune-epochs"] = epochs
        content = RecordDict(
            {
                "arrays": arrays_to_record(state),
                "config": ConfigRecord(subnet_config(family, arch, 3, config)),
            }
        )
        msg = Message(content=content, dst_node_id=1, message_type=MessageType.EVALUATE)
        return evaluate_subnet(msg, ctx, test_loader, train_loader=train_loader).content

    tuned, plain = reply(1), reply(0)
    model = family.build_subnet(arch)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    train(model, train_loader, epochs=1, lr=0.05, measure_memory=False)
    recalibrate_batchnorm(model, train_loader)
    loss, accuracy, _ = evaluate(model, test_loader)
    assert tuned["metrics"]["loss"] == pytest.approx(loss, rel=1e-6)
    assert tuned["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert tuned["metrics"]["finetune-epochs"] == 1 and plain["metrics"]["finetune-epochs"] == 0
    assert plain["metrics"]["loss"] != pytest.approx(loss, rel=1e-3)
    assert not tuned.array_records  # nothing uploaded

    content = RecordDict(
        {
            "arrays": arrays_to_record(state),
            "config": ConfigRecord(subnet_config(family, arch, 3, {"finetune-epochs": 1})),
        }
    )
    msg = Message(content=content, dst_node_id=1, message_type=MessageType.EVALUATE)
    with pytest.raises(ValueError, match="finetune-epochs=1 needs this client's training data"):
        evaluate_subnet(msg, ctx, test_loader)
