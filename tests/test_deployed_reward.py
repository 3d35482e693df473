"""The reward read on the deployed model (ours): the received subnet before training.

``reward-accuracy = "deployed"``: the client tests the subnet it received, with
BatchNorm statistics re-estimated on its training data as the evaluation does,
on its validation split, before its local training; the search reads that
number. The paper's reward reads the test split after training.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict
from named_clients import NODES, PARTITION

from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.core.search import SearchConfig
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders, make_val_loader
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.client import evaluate_subnet, identify, train_subnet
from flwr_pfedrlnas.flower.session import SearchSession
from flwr_pfedrlnas.flower.strategy import PerFedRLNAS
from flwr_pfedrlnas.supernets import get_supernet
from flwr_pfedrlnas.training import deployed_accuracy_of, evaluate, recalibrate_batchnorm


def _family():
    return get_supernet("elastic-cnn", num_stages=2, base_width=4)


def _loaders(partition_id: int = 0):
    data = load_client_data(
        "embedded", partition_id, num_partitions=20, alpha=1.0, seed=0, val_fraction=0.1
    )
    train, test = make_loaders(data, batch_size=32, seed=0)
    return train, test, make_val_loader(data, 32)


def _message(family, extra):
    arch = family.largest_architecture()
    sent = extract_subnet(family, family.init_supernet_state(seed=0), arch)
    config = m.subnet_config(family, arch, 1, {m.LOCAL_EPOCHS: 1, m.LR: 0.05, **extra})
    content = RecordDict({"arrays": m.arrays_to_record(sent), "config": config})
    msg = Message(content=content, message_type="train", dst_node_id=1)
    msg.metadata.__dict__["_message_id"] = "m-1"
    return msg, arch, sent


def _context():
    return Context(1, 1, {"client-id": "alice"}, RecordDict(), {})


def test_the_client_reports_the_received_subnet_as_deployed_before_training():
    family = _family()
    train, test, val = _loaders()
    msg, arch, sent = _message(family, {m.REWARD_DEPLOYED: 1, m.BN_RECALIBRATION_BATCHES: -1})
    torch.manual_seed(0)
    metrics = train_subnet(msg, _context(), train, test, "cpu", val_loader=val).content["metrics"]
    # By hand: the sent weights, statistics re-estimated on all training batches, on val.
    model = family.build_subnet(arch)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sent.items()})
    recalibrate_batchnorm(model, train, None, "cpu")
    expected = evaluate(model, val, "cpu")[1]
    assert metrics[m.DEPLOYED_VAL_ACCURACY] == expected
    # It is not the trained subnet's validation accuracy (that one moved with training).
    assert metrics[m.VAL_ACCURACY] != expected
    # Not asked for: not measured, whatever the split.
    msg, _, _ = _message(family, {})
    plain = train_subnet(msg, _context(), train, test, "cpu", val_loader=val).content["metrics"]
    assert m.DEPLOYED_VAL_ACCURACY not in plain and m.VAL_ACCURACY in plain


def test_deployed_accuracy_leaves_the_model_as_it_was():
    family = _family()
    train, _, val = _loaders()
    model = family.build_subnet(family.largest_architecture())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    no_recalibration = deployed_accuracy_of(model, train, val, 0, "cpu")
    assert no_recalibration == evaluate(model, val, "cpu")[1]
    deployed_accuracy_of(model, train, val, -1, "cpu")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("reads", ["test", "validation", "deployed"])
def test_the_server_asks_for_it_only_under_the_deployed_reward(reads):
    session = SearchSession(
        _family(), SearchConfig(reward_accuracy=reads), bn_recalibration_batches=3
    )
    config = session.client_config(server_round=1)
    if reads == "deployed":
        assert config[m.REWARD_DEPLOYED] == 1 and config[m.BN_RECALIBRATION_BATCHES] == 3
    else:
        assert m.REWARD_DEPLOYED not in config and m.BN_RECALIBRATION_BATCHES not in config


def _handlers(with_validation: bool):
    def loaders(ctx):
        train, test, val = _loaders(PARTITION[ctx.node_config["client-id"]])
        return train, test, (val if with_validation else None)

    return {
        "query": identify,
        "train": lambda msg, ctx: train_subnet(
            msg, ctx, *loaders(ctx)[:2], "cpu", val_loader=loaders(ctx)[2]
        ),
        "evaluate": lambda msg, ctx: evaluate_subnet(msg, ctx, loaders(ctx)[1], "cpu"),
    }


def _strategy(tmp_path):
    return PerFedRLNAS(
        _family(),
        clients_per_round=3,
        search_config=SearchConfig(seed=0, reward_accuracy="deployed"),
        results_dir=str(tmp_path / "results"),
    )


def test_a_run_with_the_deployed_reward_uses_every_reply(local_grid, tmp_path):
    strategy = _strategy(tmp_path)
    reported = {}  # client -> the deployed-val-accuracy of its latest training reply

    def keep(msg, reply):
        if msg.metadata.message_type == "train":
            metrics = reply.content["metrics"]
            cid = reply.content["config"][m.CLIENT_ID]
            reported[cid] = (metrics[m.DEPLOYED_VAL_ACCURACY], metrics[m.ACCURACY])
        return reply

    grid = local_grid(NODES, _handlers(with_validation=True), tamper=keep)
    strategy.start(grid, num_rounds=2)
    assert strategy.search.completed_rounds == 2
    sent = [msg for msg in grid.sent if msg.metadata.message_type == "train"]
    assert len(sent) == 6 and all(msg.content["config"][m.REWARD_DEPLOYED] == 1 for msg in sent)
    # The accuracy the rewards read is each client's deployed one, never its test one.
    read = strategy.search.history.state_dict()
    assert read == {cid: deployed for cid, (deployed, _) in reported.items()}
    assert any(deployed != test for deployed, test in reported.values())


def test_clients_without_a_validation_split_fail_loudly_and_change_nothing(local_grid, tmp_path):
    strategy = _strategy(tmp_path)
    before = {k: v.copy() for k, v in strategy.search.supernet.items()}
    with pytest.raises(Exception, match="deployed-val-accuracy is missing"):
        strategy.start(local_grid(NODES, _handlers(with_validation=False)), num_rounds=1)
    assert all(np.array_equal(before[k], strategy.search.supernet[k]) for k in before)


def test_the_numpy_client_reports_the_same_deployed_accuracy():
    from flwr_pfedrlnas.flower.numpy_client import SubnetClient

    family = _family()
    train, test, val = _loaders()
    msg, _, sent = _message(family, {m.REWARD_DEPLOYED: 1, m.BN_RECALIBRATION_BATCHES: -1})
    handler = train_subnet(msg, _context(), train, test, "cpu", val_loader=val)
    client = SubnetClient("alice", train, test, "cpu", val_loader=val)
    config = dict(msg.content["config"])
    _, _, metrics = client.fit(list(sent.values()), config)
    expected = handler.content["metrics"][m.DEPLOYED_VAL_ACCURACY]
    assert metrics[m.DEPLOYED_VAL_ACCURACY] == expected
