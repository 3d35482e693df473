"""Each client's deployed model: saved as .npz + JSON, reloaded as a plain nn.Module."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from named_clients import NODES, PARTITION

from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.core.search import SearchConfig
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders
from flwr_pfedrlnas.deployed import (
    DEPLOYED_FORMAT,
    DeployedModel,
    load_deployed,
    read_all_deployed,
    read_deployed,
    save_deployed,
)
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.client import (
    build_subnet_from_config,
    evaluate_subnet,
    identify,
    train_subnet,
)
from flwr_pfedrlnas.flower.strategy import PerFedRLNAS
from flwr_pfedrlnas.supernets import get_supernet
from flwr_pfedrlnas.training import recalibrate_batchnorm


def _family():
    return get_supernet("elastic-cnn", num_stages=2, base_width=4)


def _loaders(cid):
    data = load_client_data(
        "embedded", partition_id=PARTITION[cid], num_partitions=20, alpha=1.0, seed=0
    )
    return make_loaders(data, batch_size=32, seed=0)


def _cid(ctx):
    return str(ctx.node_config["client-id"])


HANDLERS = {
    "query": identify,
    "train": lambda msg, ctx: train_subnet(msg, ctx, *_loaders(_cid(ctx))),
    "evaluate": lambda msg, ctx: evaluate_subnet(
        msg, ctx, _loaders(_cid(ctx))[1], train_loader=_loaders(_cid(ctx))[0]
    ),
}


@torch.no_grad()
def _predict(model, loader):
    model.eval()
    return torch.cat([model(x) for x, _ in loader])


def _client_deployed_subnet(evaluate_msg, cid, recalibrate=True):
    """What the client itself tested: the evaluate message's subnet, BN re-estimated."""
    _, _, model = build_subnet_from_config(evaluate_msg.content["config"])
    model.load_state_dict(evaluate_msg.content["arrays"].to_torch_state_dict(), strict=True)
    if recalibrate:
        recalibrate_batchnorm(model, _loaders(cid)[0])
    return model


def _last_evaluate_messages(grid):
    last = {}
    for msg in grid.sent:
        if msg.metadata.message_type == "evaluate":
            last[NODES[msg.metadata.dst_node_id]["client-id"]] = msg
    return last


def test_save_and_read_round_trip(tmp_path):
    family = _family()
    arch = family.smallest_architecture()
    state = extract_subnet(family, family.init_supernet_state(seed=3), arch)
    models = {
        "alice": DeployedModel("alice", family, arch, state, 4, "client"),
        "a/b c": DeployedModel("a/b c", family, family.largest_architecture(), {}, 4),
    }
    models["a/b c"].state = extract_subnet(
        family, family.init_supernet_state(seed=1), family.largest_architecture()
    )
    save_deployed(tmp_path, models)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["format"] == DEPLOYED_FORMAT and sorted(index["clients"]) == ["a/b c", "alice"]
    meta = json.loads((tmp_path / "client-alice.json").read_text())
    assert meta["supernet"] == "elastic-cnn" and meta["supernet-config"] == family.config
    assert json.loads(meta["arch"]) == arch and meta["round"] == 4
    assert meta["batchnorm-statistics"] == "client" and meta["keys"] == list(state)
    assert meta["weights"] == "client-alice-r000004.npz"
    with np.load(tmp_path / meta["weights"], allow_pickle=False) as npz:  # no pickle inside
        assert sorted(npz.files) == sorted(state)
    back = read_deployed(tmp_path, "alice")
    assert back.arch == arch and back.round == 4 and back.batchnorm_statistics == "client"
    for key, value in state.items():
        assert back.state[key].dtype == value.dtype and np.array_equal(back.state[key], value)
    assert sorted(read_all_deployed(tmp_path)) == ["a/b c", "alice"]
    model = load_deployed(tmp_path, "a/b c")
    assert isinstance(model, torch.nn.Module) and not model.training
    # A later save replaces the weights file of that client and keeps the others listed.
    save_deployed(tmp_path, {"alice": DeployedModel("alice", family, arch, state, 5)})
    assert not (tmp_path / "client-alice-r000004.npz").exists()
    assert read_deployed(tmp_path, "alice").round == 5
    assert sorted(read_all_deployed(tmp_path)) == ["a/b c", "alice"]
    with pytest.raises(KeyError, match=r"no deployed model of client 'dave'; saved: \['a/b c'"):
        read_deployed(tmp_path, "dave")
    with pytest.raises(ValueError, match="batchnorm_statistics is 'mine'"):
        DeployedModel("x", family, arch, state, 1, "mine")


def test_saved_deployed_models_predict_as_the_clients_deployed_subnets(local_grid, tmp_path):
    strategy = PerFedRLNAS(
        _family(),
        clients_per_round=2,
        search_config=SearchConfig(seed=0),
        results_dir=str(tmp_path / "results"),
        bn_recalibration_batches=-1,
    )
    grid = local_grid(NODES, HANDLERS)
    strategy.start(grid, num_rounds=2)
    directory = tmp_path / "results" / "deployed"  # the default deployed_dir
    last = _last_evaluate_messages(grid)
    assert sorted(last) == ["alice", "bob", "carol"]
    for cid, msg in last.items():
        saved = read_deployed(directory, cid)
        assert saved.batchnorm_statistics == "client" and saved.round == 2
        assert json.dumps(saved.arch, sort_keys=True) == json.dumps(
            json.loads(msg.content["config"][m.ARCH]), sort_keys=True
        )
        test_loader = _loaders(cid)[1]
        expected = _predict(_client_deployed_subnet(msg, cid), test_loader)
        got = _predict(load_deployed(directory, cid), test_loader)
        assert torch.equal(got, expected), cid  # bit for bit
        # The supernet's merged statistics alone would predict differently.
        plain = _predict(_client_deployed_subnet(msg, cid, recalibrate=False), test_loader)
        assert not torch.equal(plain, expected)


def test_without_client_statistics_the_supernets_are_saved(local_grid, tmp_path):
    strategy = PerFedRLNAS(
        _family(),
        clients_per_round=2,
        search_config=SearchConfig(seed=0),
        bn_recalibration_batches=0,
    )
    grid = local_grid(NODES, HANDLERS)
    strategy.start(grid, num_rounds=1)
    assert strategy.deployed_dir is None
    path = strategy.save_deployed(str(tmp_path / "on-request"))
    for cid, msg in _last_evaluate_messages(grid).items():
        saved = read_deployed(path, cid)
        assert saved.batchnorm_statistics == "supernet"
        expected = _predict(_client_deployed_subnet(msg, cid, recalibrate=False), _loaders(cid)[1])
        assert torch.equal(_predict(saved.build(), _loaders(cid)[1]), expected)
    with pytest.raises(ValueError, match="deployed_dir is not set"):
        strategy.save_deployed()


def test_unusable_client_statistics_are_ignored(local_grid, tmp_path, caplog):
    caplog.set_level(logging.WARNING)

    def bad_statistics(msg, reply):
        if msg.metadata.message_type == "evaluate" and "arrays" in reply.content.array_records:
            record = reply.content["arrays"]
            key = next(k for k in record if k.endswith("running_mean"))
            record[key] = m.arrays_to_record({key: np.zeros(999, np.float32)})[key]
        return reply

    strategy = PerFedRLNAS(
        _family(), clients_per_round=2, search_config=SearchConfig(seed=0), deployed_dir=None
    )
    strategy.start(local_grid(NODES, HANDLERS, tamper=bad_statistics), num_rounds=1)
    assert "has shape (999,)" in caplog.text
    models = strategy.deployed_models()
    assert {m_.batchnorm_statistics for m_ in models.values()} == {"supernet"}


def test_evaluate_reply_carries_only_batchnorm_buffers_and_not_after_finetuning(local_grid):
    family = _family()
    arch = family.largest_architecture()
    state = extract_subnet(family, family.init_supernet_state(seed=0), arch)
    from flwr.app import Context, Message, RecordDict

    ctx = Context(
        run_id=1, node_id=1, node_config={"client-id": "alice"}, state=RecordDict(), run_config={}
    )
    for finetune, expect in ((0, True), (1, False)):
        config = m.subnet_config(
            family, arch, 1, {m.BN_RECALIBRATION_BATCHES: -1, m.FINETUNE_EPOCHS: finetune}
        )
        msg = Message(
            content=RecordDict({"arrays": m.arrays_to_record(state), "config": config}),
            message_type="evaluate",
            dst_node_id=1,
        )
        train_loader, test_loader = _loaders("alice")
        reply = evaluate_subnet(msg, ctx, test_loader, train_loader=train_loader)
        assert ("arrays" in reply.content.array_records) is expect
        if expect:
            keys = set(reply.content["arrays"])
            assert keys and all(
                k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in keys
            )
            assert keys < set(state)
    assert isinstance(config, ConfigRecord)


def test_every_identified_client_gets_a_model_without_touching_the_search(local_grid):
    strategy = PerFedRLNAS(
        _family(), clients_per_round=1, fraction_evaluate=0.0, search_config=SearchConfig(seed=0)
    )
    strategy.start(local_grid(NODES, HANDLERS), num_rounds=1)
    trained = sorted(strategy.search.policies)
    assert len(trained) == 1
    models = strategy.deployed_models()
    assert sorted(models) == ["alice", "bob", "carol"]
    assert sorted(strategy.search.policies) == trained  # no policy was added
    uniform_argmax = _family().smallest_architecture()  # argmax of all-zero logits: first choices
    for cid, model in models.items():
        if cid not in trained:
            assert model.arch == uniform_argmax
            expected = extract_subnet(model.family, strategy.search.supernet, model.arch)
            assert all(np.array_equal(model.state[k], v) for k, v in expected.items())
