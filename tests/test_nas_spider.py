"""SPIDER baseline: FedAvg of the whole supernet, personal weights and local perturbation search.

Runs message by message on the in-process grid with a tiny ``darts`` family
(one node per cell, five operations) and tiny synthetic 8x8 data.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from baseline_checks import NODES, message_kind, nas_handlers, synthetic_loaders, tiny_darts
from flwr.app import Array, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from flwr_pfedrlnas.baselines.nas.darts_mixed import MixedDARTS, onehot_weights
from flwr_pfedrlnas.baselines.nas.spider import SPIDER
from flwr_pfedrlnas.baselines.nas.spider_client import spider_train
from flwr_pfedrlnas.baselines.nas.spider_search import (
    DECIDED_EDGES,
    EDGES_PER_STEP,
    LAMBDA,
    META_KEY,
    PERSONAL_KEY,
    WARMUP,
    candidate_operations,
    edge_order,
    masked_weights,
    parse_decided,
    proximal_train,
    select_operation,
)
from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.supernets import state_to_numpy
from flwr_pfedrlnas.training import train

OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
FAMILY = tiny_darts(OPS, steps=1, multiplier=1)
NUM_EDGES = len(FAMILY.search_space)


def load_data(ctx: Context, batch_size: int = 8):
    """8 + 8 * pid train and 8 test 8x8 images; labels tied to the client (non-iid)."""
    pid = int(ctx.node_config["partition-id"])
    return synthetic_loaders(pid, 8 + 8 * pid, 8, batch_size)


HANDLERS = nas_handlers(load_data, device=None)


def _strategy(**kw) -> SPIDER:
    args = dict(
        clients_per_round=2,
        min_available_nodes=len(NODES),
        batch_size=8,
        bn_recalibration_batches=1,
        val_batches=1,
        warmup=1,
        edges_per_step=2,
    )
    return SPIDER(FAMILY, **(args | kw))


def _grid(local_grid, tamper=None):
    """A LocalGrid that records every (message, reply) before ``tamper`` sees it."""
    seen: list[tuple[Message, Message]] = []

    def hook(msg, reply):
        seen.append((msg, reply))
        return reply if tamper is None else tamper(msg, reply)

    grid = local_grid(NODES, HANDLERS, tamper=hook)
    grid.seen = seen
    return grid


def _context(pid: int) -> Context:
    return Context(
        run_id=1, node_id=pid, node_config={"partition-id": pid}, state=RecordDict(), run_config={}
    )


def _train_msg(strategy: SPIDER, rnd: int, node: int, **config) -> Message:
    content = strategy.train_content(rnd, "0")
    for key, value in config.items():
        content["config"][key] = value
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)


def _personal(ctx: Context) -> dict[str, torch.Tensor]:
    return ctx.state.array_records[PERSONAL_KEY].to_torch_state_dict()


def _param_keys() -> list[str]:
    return [k for k, _ in FAMILY.build_supernet().named_parameters()]


# ---------------------------------------------------------------------- pure parts
def test_select_operation_picks_the_most_needed_operation():
    acc = {"a": 0.50, "b": 0.20, "c": 0.70}
    assert select_operation(["a", "b", "c"], acc.__getitem__) == "b"
    # Ties in accuracy: the larger loss wins, then the first candidate.
    tied = {"a": 0.2, "b": 0.2, "c": 0.9}
    assert select_operation(["a", "b", "c"], tied.__getitem__) == "a"
    loss = {"a": 1.0, "b": 2.0, "c": 0.1}
    assert select_operation(["a", "b", "c"], tied.__getitem__, loss.__getitem__) == "b"
    with pytest.raises(ValueError):
        select_operation([], acc.__getitem__)
    assert candidate_operations(FAMILY) == list(OPS[1:])


def test_masked_weights_renormalise_one_edge_only():
    base = onehot_weights(FAMILY, {"normal.edge0": "skip_connect"})
    out = masked_weights(base, OPS, "normal.edge1", "sep_conv_3x3")
    row = out["normal"][1]
    assert row[OPS.index("sep_conv_3x3")] == 0.0
    np.testing.assert_allclose(row[[0, 1, 2, 4]], 0.25, rtol=1e-6)
    assert np.isclose(row.sum(), 1.0)
    with pytest.raises(ValueError, match="normal.edge7"):
        masked_weights(base, OPS, "normal.edge7", "sep_conv_3x3")
    for t in ("normal", "reduce"):
        for k in range(FAMILY.num_edges):
            if (t, k) != ("normal", 1):
                assert np.array_equal(out[t][k], base[t][k])


def test_edge_order_is_seeded_per_client_and_round():
    names = FAMILY.search_space.names
    a = edge_order(names, 0, "0", 1)
    assert sorted(a) == sorted(names) and a == edge_order(names, 0, "0", 1)
    assert a != edge_order(names, 0, "1", 1) or a != edge_order(names, 0, "0", 2)


def test_parse_decided_names_a_bad_field():
    assert parse_decided(FAMILY, "{}") == {}
    assert parse_decided(FAMILY, '{"reduce.edge1":"skip_connect"}') == {
        "reduce.edge1": "skip_connect"
    }
    with pytest.raises(ValueError, match="normal.edge0.*conv_7x7"):
        parse_decided(FAMILY, '{"normal.edge0":"conv_7x7"}')
    with pytest.raises(ValueError, match="normal.edge99"):
        parse_decided(FAMILY, '{"normal.edge99":"skip_connect"}')
    with pytest.raises(ValueError, match="arch"):
        parse_decided(FAMILY, "[1, 2]")


# ---------------------------------------------------------------------- (a) FedAvg
def test_new_supernet_is_the_example_weighted_mean_of_the_replies(local_grid):
    strategy = _strategy(clients_per_round=2)
    before = {k: v.copy() for k, v in strategy.supernet.items()}
    grid = _grid(local_grid)
    strategy.start(grid, num_rounds=1)
    replies = [r for msg, r in grid.seen if message_kind(msg) == "train"]
    assert len(replies) == 2
    counts = [float(r.content["metrics"][m.NUM_EXAMPLES]) for r in replies]
    assert len(set(counts)) == 2 and set(counts) <= {8.0, 16.0, 24.0}  # unequal weights
    states = [m.record_to_arrays(r.content["arrays"]) for r in replies]
    total = sum(counts)
    for key, value in strategy.supernet.items():
        hand = sum(c / total * s[key].astype(np.float64) for c, s in zip(counts, states))
        assert set(states[0]) == set(before)
        if value.dtype.kind == "f":
            np.testing.assert_allclose(value, hand, rtol=1e-6, atol=1e-7)
        else:
            assert np.array_equal(value, np.rint(hand).astype(value.dtype))
    assert any(not np.array_equal(before[k], strategy.supernet[k]) for k in before)
    # The whole supernet goes down and comes back.
    for msg, reply in grid.seen:
        if message_kind(msg) == "train":
            assert set(msg.content["arrays"]) == set(before) == set(reply.content["arrays"])


# ---------------------------------------------------------------------- (b) personal state
def test_personal_weights_never_travel_and_clients_differ(local_grid):
    strategy = _strategy(clients_per_round=3, warmup=0, edges_per_step=1, evaluate_every=2)
    grid = _grid(local_grid)
    strategy.start(grid, num_rounds=2)
    params = _param_keys()
    personals = {n: _personal(ctx) for n, ctx in grid.contexts.items()}
    assert len(personals) == 3
    for msg, reply in grid.seen:
        if message_kind(msg) == "query":
            continue
        for record in (msg.content, reply.content):
            assert set(record.array_records) <= {"arrays"}
            arrays = record.array_records.get("arrays")
            if arrays is None or len(arrays) == 0:
                continue
            state = arrays.to_torch_state_dict()
            for personal in personals.values():
                assert not any(torch.equal(state[k], personal[k]) for k in params)
    # The reply's arrays are the global part: the received supernet, trained with uniform mixing.
    msg, reply = next((q, r) for q, r in grid.seen if message_kind(q) == "train")
    ctx = grid.contexts[msg.metadata.dst_node_id]
    model = MixedDARTS(FAMILY, weights=onehot_weights(FAMILY, {}))
    model.net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    train(model, load_data(ctx)[0], 1, strategy.lr, measure_memory=False)
    expected = model.net.state_dict()
    got = reply.content["arrays"].to_torch_state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # Two participations, one edge each: two decided edges per client, and the clients differ.
    archs = {n: ctx.state.config_records[META_KEY][m.ARCH] for n, ctx in grid.contexts.items()}
    assert all(len(json.loads(a)) == 2 for a in archs.values())
    assert len(set(archs.values())) > 1
    a, b = personals[11], personals[22]
    assert not all(torch.equal(a[k], b[k]) for k in params)
    # The server keeps what the clients reported.
    for node, cid in strategy.node_to_client.items():
        row = strategy.client_row(cid)
        assert row["arch"] == archs[node] and row[DECIDED_EDGES] == 2
    clients = strategy.recorder.clients_frame()
    assert set(clients["decided-edges"]) == {2}


# ---------------------------------------------------------------------- (c) selection to the end
def test_after_enough_participations_the_personal_model_is_a_plain_subnet():
    strategy = _strategy()
    ctx = _context(0)
    train_loader, test_loader = load_data(ctx)
    # First participation: warm-up, nothing decided.
    reply = spider_train(
        _train_msg(strategy, 1, 0), ctx, train_loader, test_loader, torch.device("cpu")
    )
    assert reply.content["config"][DECIDED_EDGES] == 0
    assert json.loads(reply.content["config"][m.ARCH]) == {}
    # Second: every edge decided at once.
    msg = _train_msg(strategy, 2, 0, **{EDGES_PER_STEP: NUM_EDGES})
    reply = spider_train(msg, ctx, train_loader, test_loader, torch.device("cpu"))
    assert reply.content["config"][DECIDED_EDGES] == NUM_EDGES
    arch = FAMILY.search_space.validate(json.loads(reply.content["config"][m.ARCH]))
    assert "none" not in arch.values()
    assert ctx.state.config_records[META_KEY][m.ARCH] == reply.content["config"][m.ARCH]

    personal = _personal(ctx)
    mixed = MixedDARTS(FAMILY, weights=onehot_weights(FAMILY, arch))
    mixed.net.load_state_dict(personal)
    subnet = FAMILY.build_subnet(arch)
    subnet.load_state_dict(
        {
            k: torch.from_numpy(v)
            for k, v in extract_subnet(FAMILY, state_to_numpy(personal), arch).items()
        }
    )
    mixed.eval()
    subnet.eval()
    x = next(iter(test_loader))[0]
    with torch.no_grad():
        torch.testing.assert_close(mixed(x), subnet(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- (d) proximal term
def test_proximal_term_pulls_personal_weights_to_the_global_ones():
    strategy = _strategy()
    received = {k: torch.from_numpy(v.copy()) for k, v in strategy.supernet.items()}
    params = _param_keys()
    moved = {}
    for lam in (1e7, 0.0):
        ctx = _context(1)
        train_loader, test_loader = load_data(ctx)
        msg = _train_msg(strategy, 1, 1, **{LAMBDA: lam, WARMUP: 5})
        spider_train(msg, ctx, train_loader, test_loader, torch.device("cpu"))
        personal = _personal(ctx)
        moved[lam] = max(float((personal[k] - received[k]).abs().max()) for k in params)
    assert moved[1e7] < 1e-5
    assert moved[0.0] > 1e-3

    # The same on the function itself: lambda 0 is plain SGD.
    model = MixedDARTS(FAMILY, weights=onehot_weights(FAMILY, {}))
    model.net.load_state_dict(received)
    anchor = {k: v.clone() for k, v in received.items()}
    loss, n = proximal_train(
        model, dict(model.net.named_parameters()), anchor, train_loader, 1, 0.05, 1e9
    )
    assert n == 16 and np.isfinite(loss)
    for k, p in model.net.named_parameters():
        torch.testing.assert_close(p.detach(), anchor[k], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=LAMBDA):
        proximal_train(model, {}, anchor, train_loader, 1, 0.05, -1.0)


# ---------------------------------------------------------------------- (e) bad replies
def _nan_tamper(msg, reply):
    if message_kind(msg) == "train" and msg.metadata.dst_node_id == 11:
        arrays = reply.content["arrays"]
        key = next(k for k in arrays if arrays[k].numpy().dtype.kind == "f")
        bad = arrays[key].numpy().copy()
        bad.flat[0] = np.nan
        arrays[key] = Array(bad)
    if message_kind(msg) == "train" and msg.metadata.dst_node_id == 22:
        metrics = dict(reply.content["metrics"])
        metrics[m.ACCURACY] = 1.5
        reply.content["metrics"] = MetricRecord(metrics)
    return reply


def _drop(msg, reply):
    if message_kind(msg) == "train" and msg.metadata.dst_node_id in (11, 22):
        return None
    return reply


def test_tampered_replies_are_refused_bit_for_bit(local_grid):
    runs = {}
    for name, tamper in (("tampered", _nan_tamper), ("dropped", _drop)):
        strategy = _strategy(clients_per_round=3)
        grid = _grid(local_grid, tamper)
        strategy.start(grid, num_rounds=1)
        runs[name] = strategy
    a, b = runs["tampered"], runs["dropped"]
    assert set(a.supernet) == set(b.supernet)
    for key in a.supernet:
        assert a.supernet[key].dtype == b.supernet[key].dtype
        assert a.supernet[key].tobytes() == b.supernet[key].tobytes()
    row = a.recorder.rounds[-1]
    assert row["num-failed"] == 2 and row["num-accepted"] == 1
    assert "NaN" in row["failures"] and "1.5" in row["failures"]
    assert set(a.decided) == set(b.decided) == {"2"}


def test_check_train_reply_names_the_field():
    strategy = _strategy()
    ctx = _context(0)
    reply = spider_train(_train_msg(strategy, 1, 0), ctx, *load_data(ctx), torch.device("cpu"))
    good = reply.content
    strategy.check_train_reply(1, "0", good)

    def variant(**changes) -> RecordDict:
        content = RecordDict(
            {
                "arrays": m.arrays_to_record(m.record_to_arrays(good["arrays"])),
                "metrics": MetricRecord(dict(good["metrics"])),
                "config": ConfigRecord(dict(good["config"])),
            }
        )
        for fn in changes.values():
            fn(content)
        return content

    key = next(iter(strategy.supernet))

    def wrong_shape(c):
        c["arrays"][key] = Array(np.zeros((1, 2, 3), dtype=strategy.supernet[key].dtype))

    def unknown_op(c):
        c["config"][m.ARCH] = '{"normal.edge0":"conv_9x9"}'
        c["config"][DECIDED_EDGES] = 1

    def wrong_count(c):
        c["config"][DECIDED_EDGES] = 3

    def accuracy(c):
        c["metrics"][m.ACCURACY] = 1.5

    for fn, pattern in (
        (wrong_shape, "shape"),
        (unknown_op, "normal.edge0.*conv_9x9"),
        (wrong_count, DECIDED_EDGES),
        (accuracy, "accuracy.*1.5"),
    ):
        with pytest.raises(ValueError, match=pattern):
            strategy.check_train_reply(1, "0", variant(x=fn))
