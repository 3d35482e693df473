"""Dropping PerFedRLNAS into a Flower app: batch forms, the handler call, failing loudly."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import Code, EvaluateRes, FitRes, Status
from named_clients import NODES, PARTITION, legacy_manager
from torch.utils.data import DataLoader, TensorDataset

from flwr_pfedrlnas.core.search import SearchConfig
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.client import (
    evaluate_subnet,
    identify,
    register_handlers,
    train_subnet,
)
from flwr_pfedrlnas.flower.failures import (
    NoUsableRepliesError,
    UnidentifiedNodesError,
    min_usable_count,
)
from flwr_pfedrlnas.flower.legacy import PerFedRLNASLegacy
from flwr_pfedrlnas.flower.runconfig import strategy_kwargs
from flwr_pfedrlnas.flower.strategy import PerFedRLNAS
from flwr_pfedrlnas.supernets import get_supernet
from flwr_pfedrlnas.training import evaluate, recalibrate_batchnorm, split_batch, train

REPO = Path(__file__).resolve().parents[1]


def _family():
    return get_supernet("elastic-cnn", num_stages=2, base_width=4)


def _client_data(partition_id: int = 0):
    return load_client_data(
        "embedded", partition_id=partition_id, num_partitions=20, alpha=1.0, seed=0
    )


def _tuple_loaders(data, batch_size=32):
    train_set = TensorDataset(torch.from_numpy(data.train_x), torch.from_numpy(data.train_y))
    test_set = TensorDataset(torch.from_numpy(data.test_x), torch.from_numpy(data.test_y))
    return DataLoader(train_set, batch_size=batch_size), DataLoader(test_set, batch_size=batch_size)


def _dict_loaders(data, batch_size=32, image_key="img", label_key="label"):
    """As flwr-datasets apps build them: a ``datasets.Dataset`` in torch format."""

    def dataset(x, y):
        ds = datasets.Dataset.from_dict({image_key: x, label_key: y.astype(np.int64)})
        return ds.with_format("torch")

    return (
        DataLoader(dataset(data.train_x, data.train_y), batch_size=batch_size),
        DataLoader(dataset(data.test_x, data.test_y), batch_size=batch_size),
    )


def _context(cid="alice", run_config=None):
    return Context(
        run_id=1,
        node_id=1,
        node_config={"client-id": cid},
        state=RecordDict(),
        run_config=dict(run_config or {}),
    )


def _train_message(family, config_extra=None, drop=()):
    arch = family.largest_architecture()
    state = family.init_supernet_state(seed=0)
    from flwr_pfedrlnas.core.aggregation import extract_subnet

    sub = extract_subnet(family, state, arch)
    config = m.subnet_config(
        family, arch, 1, {m.LOCAL_EPOCHS: 1, m.LR: 0.05, m.BATCH_SIZE: 32, **(config_extra or {})}
    )
    for key in drop:
        del config[key]
    content = RecordDict({"arrays": m.arrays_to_record(sub), "config": config})
    msg = Message(content=content, message_type="train", dst_node_id=1)
    msg.metadata.__dict__["_message_id"] = "m-1"
    return msg, sub


# ---------------------------------------------------------------------- batches
def test_split_batch_finds_the_common_names_and_names_the_keys_it_found():
    x, y = torch.zeros(2, 1), torch.ones(2)
    for image_key in ("img", "image", "pixel_values", "x"):
        for label_key in ("label", "labels", "fine_label", "y"):
            got = split_batch({image_key: x, label_key: y, "extra": 3})
            assert got[0] is x and got[1] is y
    # "img" comes before "image": the first known name in IMAGE_KEYS order wins.
    assert split_batch({"image": y, "img": x, "label": y})[0] is x
    assert split_batch({"pixels": x, "target": y}, "pixels", "target") == (x, y)
    assert split_batch((x, y)) == (x, y) and split_batch([x, y, "path"]) == (x, y)
    with pytest.raises(KeyError, match=r"batch has keys \['pixels', 'target'\]; none is a known"):
        split_batch({"pixels": x, "target": y})
    with pytest.raises(KeyError, match=r"not the label key 'fine'"):
        split_batch({"img": x, "label": y}, label_key="fine")
    with pytest.raises(TypeError, match="got Tensor"):
        split_batch(x)
    with pytest.raises(TypeError, match="tuple of length 1"):
        split_batch((x,))


def test_dict_batches_train_exactly_as_tuple_batches():
    data = _client_data()
    family = _family()
    results = []
    for loaders in (_tuple_loaders(data), _dict_loaders(data)):
        torch.manual_seed(0)
        msg, sent = _train_message(family)
        reply = train_subnet(msg, _context(), *loaders)
        results.append((reply.content["arrays"], reply.content["metrics"], sent))
    (arrays_t, metrics_t, sent), (arrays_d, metrics_d, _) = results
    for key in sent:
        assert np.array_equal(arrays_t[key].numpy(), arrays_d[key].numpy()), key
    floats = [k for k, v in sent.items() if v.dtype.kind == "f"]
    assert any(not np.array_equal(arrays_d[k].numpy(), sent[k]) for k in floats)
    for key in (m.NUM_EXAMPLES, m.ACCURACY, m.TRAIN_LOSS, m.PEAK_MEMORY_BYTES):
        assert metrics_t[key] == metrics_d[key], key
    assert metrics_d[m.NUM_EXAMPLES] == len(data.train_y)


def test_dict_loader_loss_falls_and_every_loop_reads_dicts():
    data = _client_data()
    family = _family()
    train_loader, test_loader = _dict_loaders(data, image_key="image", label_key="labels")
    model = family.build_subnet(family.largest_architecture())
    torch.manual_seed(0)
    first = train(model, train_loader, epochs=1, lr=0.05, measure_memory=True)
    later = train(model, train_loader, epochs=3, lr=0.05, measure_memory=False)
    assert first.peak_memory_bytes > 0
    assert later.loss < first.loss
    assert recalibrate_batchnorm(model, train_loader) == len(data.train_y)
    _, accuracy, n = evaluate(model, test_loader)
    assert n == len(data.test_y) and 0.0 <= accuracy <= 1.0


def test_unknown_keys_fail_with_the_keys_named_and_custom_keys_work():
    data = _client_data()
    family = _family()
    loaders = _dict_loaders(data, image_key="pixels", label_key="target")
    msg, _ = _train_message(family)
    with pytest.raises(KeyError, match=r"\['pixels', 'target'\]"):
        train_subnet(msg, _context(), *loaders)
    msg, _ = _train_message(family)
    reply = train_subnet(msg, _context(), *loaders, image_key="pixels", label_key="target")
    assert reply.content["metrics"][m.NUM_EXAMPLES] == len(data.train_y)


# ---------------------------------------------------------------------- register
def _recording_load_data(calls):
    def load_data(context: Context, batch_size: int):
        calls.append(batch_size)
        cid = str(context.node_config["client-id"])
        return _dict_loaders(_client_data(PARTITION[cid]), batch_size)

    return load_data


def test_register_handlers_on_a_users_client_app_runs_the_strategy(local_grid, tmp_path):
    app = ClientApp()
    calls: list[int] = []
    assert register_handlers(app, _recording_load_data(calls)) is app
    grid = local_grid(NODES, {"train": app, "evaluate": app, "query": app})
    strategy = PerFedRLNAS(
        _family(),
        clients_per_round=2,
        search_config=SearchConfig(seed=0),
        results_dir=str(tmp_path / "results"),
        batch_size=16,
    )
    strategy.start(grid, num_rounds=1)
    rounds = pd.read_csv(tmp_path / "results" / "rounds.csv")
    assert list(rounds["num-accepted"]) == [2] and list(rounds["num-evaluated"]) == [3]
    assert set(calls) == {16}  # the strategy's batch-size reached load_data
    with pytest.raises(ValueError, match="already registered"):
        register_handlers(app, _recording_load_data(calls))


def test_message_config_wins_over_the_run_config_which_fills_gaps():
    app = ClientApp()
    calls: list[int] = []
    register_handlers(app, _recording_load_data(calls))
    family = _family()
    run_config = {"local-epochs": 0, "lr": 0.5, "batch-size": 8}
    # The message carries local-epochs 1 and batch-size 32: they win.
    msg, sent = _train_message(family)
    reply = app(msg, _context(run_config=run_config))
    assert calls == [32]
    assert any(not np.array_equal(reply.content["arrays"][k].numpy(), v) for k, v in sent.items())
    # Without them in the message, the run config's (0 epochs: nothing trains, batch 8).
    msg, sent = _train_message(family, drop=(m.LOCAL_EPOCHS, m.BATCH_SIZE))
    reply = app(msg, _context(run_config=run_config))
    assert calls[-1] == 8
    for key, value in sent.items():
        assert np.array_equal(reply.content["arrays"][key].numpy(), value), key
    # Neither: the defaults (1 epoch, batch 32).
    msg, sent = _train_message(family, drop=(m.LOCAL_EPOCHS, m.BATCH_SIZE))
    reply = app(msg, _context())
    assert calls[-1] == 32
    assert any(not np.array_equal(reply.content["arrays"][k].numpy(), v) for k, v in sent.items())


# ---------------------------------------------------------------------- failing loudly
def _loaders(context):
    cid = context.node_config["client-id"]
    return make_loaders(_client_data(PARTITION[cid]), batch_size=32, seed=0)


HANDLERS = {
    "query": identify,
    "train": lambda msg, ctx: train_subnet(msg, ctx, *_loaders(ctx)),
    "evaluate": lambda msg, ctx: evaluate_subnet(msg, ctx, _loaders(ctx)[1]),
}


def _error_reply(msg, reason="RuntimeError: disk full"):
    return Message(Error(code=0, reason=reason), reply_to=msg)


def _failing(kind, who=("alice", "bob", "carol")):
    def tamper(msg, reply):
        cid = NODES[msg.metadata.dst_node_id]["client-id"]
        if msg.metadata.message_type == kind and cid in who:
            return _error_reply(msg)
        return reply

    return tamper


def _strategy(tmp_path, **kw):
    kw.setdefault("clients_per_round", 3)
    return PerFedRLNAS(
        _family(), search_config=SearchConfig(seed=0), results_dir=str(tmp_path / "r"), **kw
    )


def test_every_client_failing_stops_the_run_and_changes_nothing(local_grid, tmp_path):
    strategy = _strategy(tmp_path)
    before = {k: v.copy() for k, v in strategy.search.supernet.items()}
    grid = local_grid(NODES, HANDLERS, tamper=_failing("train"))
    with pytest.raises(NoUsableRepliesError) as err:
        strategy.start(grid, num_rounds=2)
    text = str(err.value)
    assert text.startswith("round 1: 0 of 3 train replies usable, 1 needed")
    for cid in ("alice", "bob", "carol"):
        assert f"client {cid}: client error: RuntimeError: disk full" in text
    assert all(np.array_equal(before[k], v) for k, v in strategy.search.supernet.items())
    assert all(p.steps == 0 for p in strategy.search.policies.values())
    rounds = pd.read_csv(tmp_path / "r" / "rounds.csv")  # the failed round is on record
    assert list(rounds["num-failed"]) == [3] and list(rounds["num-accepted"]) == [0]
    # No evaluation was sent after the failed round.
    assert not [msg for msg in grid.sent if msg.metadata.message_type == "evaluate"]


def test_min_usable_fraction_sets_how_many_must_be_usable(local_grid, tmp_path):
    assert [min_usable_count(4, f) for f in (0.0, 0.25, 0.5, 0.51, 1.0)] == [1, 1, 2, 3, 4]
    one_fails = _failing("train", who=("alice",))
    # Default: some failures go on (today's behaviour).
    strategy = _strategy(tmp_path / "a")
    strategy.start(local_grid(NODES, HANDLERS, tamper=one_fails), num_rounds=1)
    assert strategy.search.completed_rounds == 1
    # 2 of 3 usable meets 0.6 (2 needed), not 0.7 (3 needed).
    strategy = _strategy(tmp_path / "b", min_usable_fraction=0.6)
    strategy.start(local_grid(NODES, HANDLERS, tamper=one_fails), num_rounds=1)
    strategy = _strategy(tmp_path / "c", min_usable_fraction=0.7)
    with pytest.raises(NoUsableRepliesError, match="2 of 3 train replies usable, 3 needed"):
        strategy.start(local_grid(NODES, HANDLERS, tamper=one_fails), num_rounds=1)


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, "0.5", True, None])
def test_min_usable_fraction_is_validated_naming_field_and_value(value):
    with pytest.raises(ValueError, match=rf"min_usable_fraction is {value!r}".replace("(", "")):
        PerFedRLNAS(_family(), min_usable_fraction=value)
    with pytest.raises(ValueError, match="min_usable_fraction is"):
        PerFedRLNASLegacy(_family(), min_usable_fraction=value)


def test_no_node_saying_who_it_is_stops_the_run(local_grid):
    def no_query(msg, context):  # what Flower answers without @app.query()
        return _error_reply(msg, "No query function registered with name 'default'")

    strategy = PerFedRLNAS(_family(), min_available_nodes=3, query_timeout=5)
    grid = local_grid(NODES, {**HANDLERS, "query": no_query})
    with pytest.raises(UnidentifiedNodesError) as err:
        strategy.start(grid, num_rounds=1)
    text = str(err.value)
    assert "no node said who it is (client-id) within query_timeout=5 s: 3 connected" in text
    assert "node 101: No query function registered with name 'default'" in text
    assert "register_handlers(app, load_data)" in text


def test_every_evaluation_failing_stops_the_run(local_grid, tmp_path):
    strategy = _strategy(tmp_path, clients_per_round=2)
    grid = local_grid(NODES, HANDLERS, tamper=_failing("evaluate"))
    with pytest.raises(NoUsableRepliesError, match="round 1: 0 of 3 evaluate replies usable"):
        strategy.start(grid, num_rounds=2)
    assert strategy.search.completed_rounds == 1


def test_evaluation_with_only_invalid_accuracies_stops_the_run_naming_them(local_grid, tmp_path):
    def bad_accuracy(msg, reply):
        if msg.metadata.message_type == "evaluate":
            reply.content["metrics"][m.ACCURACY] = 2.0
        return reply

    strategy = _strategy(tmp_path, clients_per_round=2)
    with pytest.raises(NoUsableRepliesError) as err:
        strategy.start(local_grid(NODES, HANDLERS, tamper=bad_accuracy), num_rounds=1)
    assert "client bob: accuracy is 2.0, not a number in [0, 1]" in str(err.value)


# ---------------------------------------------------------------------- evaluate_fn
def test_evaluate_fn_gets_the_supernet_from_round_zero_on(local_grid, tmp_path):
    family = _family()
    strategy = _strategy(tmp_path, clients_per_round=2)
    seen = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord):
        model = family.build_supernet()
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)  # the quickstart's way
        deployed = strategy.deployed_models()
        seen.append((server_round, {k: a.numpy().copy() for k, a in arrays.items()}, deployed))
        return None

    initial = {k: v.copy() for k, v in strategy.search.supernet.items()}
    result = strategy.start(local_grid(NODES, HANDLERS), num_rounds=1, evaluate_fn=evaluate_fn)
    assert [r for r, _, _ in seen] == [0, 1]
    assert all(np.array_equal(seen[0][1][k], v) for k, v in initial.items())
    final = {k: a.numpy() for k, a in result.arrays.items()}  # result.arrays: the supernet
    assert all(np.array_equal(final[k], v) for k, v in strategy.search.supernet.items())
    assert all(np.array_equal(seen[1][1][k], v) for k, v in final.items())
    assert sorted(seen[1][2]) == ["alice", "bob", "carol"]
    for cid, model in seen[1][2].items():
        assert json.loads(json.dumps(model.arch)) == strategy.search.policy(cid).argmax()


def test_start_with_initial_arrays_replaces_the_supernet(local_grid, tmp_path):
    family = _family()
    strategy = _strategy(tmp_path, clients_per_round=1)
    pretrained = family.init_supernet_state(seed=7)
    seen = []
    strategy.start(
        local_grid(NODES, HANDLERS),
        initial_arrays=m.arrays_to_record(pretrained),
        num_rounds=1,
        evaluate_fn=lambda r, arrays: seen.append({k: a.numpy() for k, a in arrays.items()}),
    )
    assert all(np.array_equal(seen[0][k], v) for k, v in pretrained.items())


# ---------------------------------------------------------------------- legacy API


def test_legacy_every_client_failing_stops_the_run(tmp_path):
    strategy = PerFedRLNASLegacy(
        _family(), clients_per_round=3, min_available_clients=3, query_timeout=1.0
    )
    before = {k: v.copy() for k, v in strategy.search.supernet.items()}
    instructions = strategy.configure_fit(1, None, legacy_manager(["alice", "bob", "carol"]))
    failures = [
        (proxy, FitRes(Status(Code.FIT_NOT_IMPLEMENTED, "disk full"), ins.parameters, 0, {}))
        for proxy, ins in instructions
    ]
    with pytest.raises(NoUsableRepliesError) as err:
        strategy.aggregate_fit(1, [], failures)
    assert str(err.value).startswith("round 1: 0 of 3 train replies usable, 1 needed")
    assert "client bob: client error: disk full" in str(err.value)
    assert all(np.array_equal(before[k], v) for k, v in strategy.search.supernet.items())


def test_legacy_no_client_saying_who_it_is_stops_the_run():
    strategy = PerFedRLNASLegacy(_family(), min_available_clients=3, query_timeout=1.0)
    with pytest.raises(UnidentifiedNodesError, match="3 connected, 3 answered with an error"):
        strategy.configure_fit(1, None, legacy_manager([None, None, None]))


def test_run_config_min_usable_fraction_is_validated_by_name():
    app_config = REPO / "apps" / "pfedrlnas" / "pyproject.toml"
    cfg = tomllib.loads(app_config.read_text())["tool"]["flwr"]["app"]["config"]
    assert strategy_kwargs(cfg)["min_usable_fraction"] == 0.0
    cfg["min-usable-fraction"] = 1.5
    with pytest.raises(ValueError, match=r"min-usable-fraction is 1.5, out of range \[0, 1\]"):
        strategy_kwargs(cfg)


def test_legacy_every_evaluation_failing_stops_the_run():
    strategy = PerFedRLNASLegacy(_family(), min_available_clients=3, query_timeout=1.0)
    instructions = strategy.configure_evaluate(1, None, legacy_manager(["alice", "bob", "carol"]))
    assert len(instructions) == 3
    failures = [
        (proxy, EvaluateRes(Status(Code.EVALUATE_NOT_IMPLEMENTED, "no data"), 0.0, 0, {}))
        for proxy, _ in instructions[:2]
    ] + [TimeoutError("carol timed out")]
    with pytest.raises(NoUsableRepliesError) as err:
        strategy.aggregate_evaluate(1, [], failures)
    text = str(err.value)
    assert text.startswith("round 1: 0 of 3 evaluate replies usable")
    assert "client alice: client error: no data" in text and "carol timed out" in text
