"""Fault injection: failing, silent and hostile clients against both strategy faces.

Every case runs two rounds through ``LocalGrid`` (real Message objects, the
strategy's own ``configure_train`` / ``aggregate_train``) with a deterministic
fake trainer, tampers with client ``alice``'s reply in round 2, and checks

- the logged reason names the field and the value,
- the rest of the round goes on (bob and carol are merged and rewarded),
- the search state (supernet, every policy with its optimiser state, the
  accuracy history) equals bit for bit that of a control run in which alice's
  reply simply never arrived, and alice's policy is what it was before round 2.
"""

from __future__ import annotations

import copy
import io
import json
import logging

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common import (
    Code,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from named_clients import NODES, PARTITION, legacy_manager

from flwr_pfedrlnas.core.search import SearchConfig
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.client import identify
from flwr_pfedrlnas.flower.failures import NoUsableRepliesError
from flwr_pfedrlnas.flower.legacy import PerFedRLNASLegacy
from flwr_pfedrlnas.flower.strategy import PerFedRLNAS
from flwr_pfedrlnas.supernets import get_supernet

ALICE = 101


def _stamp():
    """Module-scoped fixtures run before conftest's per-test task identity."""
    from flwr.supercore.task_identity import TaskIdentity

    if TaskIdentity._run_id is None:
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _family():
    return get_supernet("elastic-cnn", num_stages=2, base_width=4)


def _fake_result(cid: str, server_round: int, state: dict[str, np.ndarray]):
    """A deterministic 'training': shift the floats, fixed metrics per client."""
    i = PARTITION[cid]
    shift = 0.01 * (i + 1) * server_round
    trained = {
        k: (v + shift).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in state.items()
    }
    metrics = {
        m.NUM_EXAMPLES: 50 + 10 * i,
        m.ACCURACY: 0.3 + 0.1 * i + 0.01 * server_round,
        m.TRAIN_LOSS: 1.0,
        m.COMPUTE_SECONDS: 1.0 + i,
        m.PEAK_MEMORY_BYTES: 1e6,
    }
    return trained, metrics


def fake_train(msg: Message, context) -> Message:
    cid = str(context.node_config["client-id"])
    config = msg.content["config"]
    state = {k: a.numpy() for k, a in msg.content["arrays"].items()}
    trained, metrics = _fake_result(cid, int(config[m.SERVER_ROUND]), state)
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in trained.items()}),
            "metrics": MetricRecord(metrics),
            "config": ConfigRecord({m.ARCH: config[m.ARCH], m.CLIENT_ID: cid}),
        }
    )
    return Message(content=content, reply_to=msg)


HANDLERS = {"query": identify, "train": fake_train}


def snapshot(search):
    """Everything that must not be corrupted, as comparable bytes / JSON."""
    return (
        {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in search.supernet.items()},
        json.dumps({c: p.state_dict() for c, p in search.policies.items()}, sort_keys=True),
        json.dumps(search.history.state_dict(), sort_keys=True),
        search.completed_rounds,
    )


def _strategy():
    return PerFedRLNAS(
        _family(),
        clients_per_round=3,
        min_available_nodes=3,
        fraction_evaluate=0.0,
        search_config=SearchConfig(seed=0, lambda_time=0.01),
    )


def _round(strategy, grid, server_round, mutate_replies=None):
    msgs = list(strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid))
    replies = list(grid.send_and_receive(msgs))
    if mutate_replies is not None:
        replies = mutate_replies(replies, msgs)
    strategy.aggregate_train(server_round, replies)
    return msgs, replies


def run_two_rounds(local_grid, tamper=None, mutate_replies=None):
    """Round 1 clean; round 2 with ``tamper`` (per reply) or ``mutate_replies`` (list)."""
    strategy = _strategy()
    state = {"round": 1, "round1": {}}

    def hook(msg, reply):
        if state["round"] == 1:
            state["round1"][msg.metadata.dst_node_id] = reply
            return reply
        if tamper is None or msg.metadata.message_type != "train":
            return reply
        return tamper(msg, reply, state["round1"])

    grid = local_grid(NODES, HANDLERS, tamper=hook)
    _round(strategy, grid, 1)
    before = snapshot(strategy.search)
    alice_before = copy.deepcopy(strategy.search.policies["alice"].state_dict())
    state["round"] = 2
    _round(strategy, grid, 2, mutate_replies)
    return strategy, before, alice_before


def _drop_alice(msg, reply, _):
    return None if msg.metadata.dst_node_id == ALICE else reply


@pytest.fixture(scope="module")
def control():
    """Alice's round-2 reply never arrives; everything else identical."""
    from conftest import LocalGrid

    _stamp()
    strategy, _, _ = run_two_rounds(LocalGrid, _drop_alice)
    return snapshot(strategy.search)


@pytest.fixture(scope="module")
def clean():
    """No fault at all."""
    from conftest import LocalGrid

    _stamp()
    strategy, _, _ = run_two_rounds(LocalGrid)
    return snapshot(strategy.search)


# ---------------------------------------------------------------------- tampering
def _on_alice(change):
    def tamper(msg, reply, round1):
        if msg.metadata.dst_node_id != ALICE:
            return reply
        out = change(reply, msg, round1)
        return reply if out is None else out

    return tamper


def _metric(key, value):
    def change(reply, msg, _):
        reply.content["metrics"][key] = value

    return change


def _del_metric(key):
    def change(reply, msg, _):
        del reply.content["metrics"][key]

    return change


def _tensor(fn):
    """Replace alice's arrays by ``fn(dict of numpy arrays)``."""

    def change(reply, msg, _):
        state = {k: a.numpy() for k, a in reply.content["arrays"].items()}
        state = fn(state)
        reply.content["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in state.items()})

    return change


def _first_float_key(state):
    return next(k for k, v in state.items() if v.dtype.kind == "f" and v.size > 1)


def _nan(state):
    k = _first_float_key(state)
    state[k] = state[k].copy()
    state[k].flat[0] = np.nan
    return state


def _inf(state):
    k = _first_float_key(state)
    state[k] = state[k].copy()
    state[k].flat[-1] = -np.inf
    return state


def _reshape(state):
    k = _first_float_key(state)
    state[k] = np.zeros(state[k].size + 1, dtype=state[k].dtype)
    return state


def _float64(state):
    k = _first_float_key(state)
    state[k] = state[k].astype(np.float64)
    return state


def _drop_tensor(state):
    state.pop(_first_float_key(state))
    return state


def _extra_tensor(state):
    state["evil.weight"] = np.ones(3, np.float32)
    return state


def _other_arch(reply, msg, _):
    arch = json.loads(msg.content["config"][m.ARCH])
    arch["stage1.kernel"] = 1 if arch["stage1.kernel"] == 3 else 3
    reply.content["config"][m.ARCH] = json.dumps(arch, sort_keys=True)


def _no_arrays(reply, msg, _):
    content = RecordDict({k: v for k, v in reply.content.items() if k != "arrays"})
    return Message(content=content, reply_to=msg)


def _no_metrics(reply, msg, _):
    content = RecordDict({k: v for k, v in reply.content.items() if k != "metrics"})
    return Message(content=content, reply_to=msg)


def _error(reply, msg, _):
    return Message(Error(code=0, reason="CUDA out of memory"), reply_to=msg)


def _replay(reply, msg, round1):
    return round1[ALICE]  # alice's reply of round 1, sent again


def _arch_not_json(reply, msg, _):
    reply.content["config"][m.ARCH] = "{not json"


def _pickled_tensor(reply, msg, _):
    """A tensor whose bytes are a pickled object array (code execution if unpickled)."""
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    key = next(iter(reply.content["arrays"].keys()))
    reply.content["arrays"][key] = Array(
        dtype="object", shape=(1,), stype="numpy.ndarray", data=buf.getvalue()
    )


def _impostor_id(reply, msg, _):
    reply.content["config"][m.CLIENT_ID] = "bob"


BAD_REPLIES = {
    # name: (change, substring the logged reason must contain)
    "missing-metric-accuracy": (_del_metric(m.ACCURACY), "metrics lack 'accuracy'"),
    "missing-metric-num-examples": (_del_metric(m.NUM_EXAMPLES), "metrics lack 'num-examples'"),
    "missing-metric-compute-seconds": (
        _del_metric(m.COMPUTE_SECONDS),
        "metrics lack 'compute-seconds'",
    ),
    "missing-arrays": (_no_arrays, "reply has no ArrayRecord 'arrays'"),
    "missing-metrics": (_no_metrics, "reply has no MetricRecord 'metrics'"),
    "missing-tensor": (_tensor(_drop_tensor), "subnet state is missing tensor(s) ["),
    "extra-tensor": (_tensor(_extra_tensor), "unexpected tensor(s) ['evil.weight']"),
    "wrong-shape": (_tensor(_reshape), "has shape ("),
    "wrong-dtype": (_tensor(_float64), "has dtype float64, expected float32"),
    "nan-weight": (_tensor(_nan), "has 1 NaN or infinite value(s)"),
    "inf-weight": (_tensor(_inf), "has 1 NaN or infinite value(s)"),
    "accuracy-nan": (_metric(m.ACCURACY, float("nan")), "accuracy is nan, out of range"),
    "accuracy-inf": (_metric(m.ACCURACY, float("inf")), "accuracy is inf, out of range"),
    "accuracy-above-1": (_metric(m.ACCURACY, 1.5), "accuracy is 1.5, out of range"),
    "accuracy-negative": (_metric(m.ACCURACY, -0.1), "accuracy is -0.1, out of range"),
    "accuracy-list": (_metric(m.ACCURACY, [0.5, 0.6]), "metrics 'accuracy' is a list"),
    "num-examples-zero": (_metric(m.NUM_EXAMPLES, 0), "num-examples is 0, out of range"),
    "num-examples-negative": (_metric(m.NUM_EXAMPLES, -5), "num-examples is -5, out of range"),
    "num-examples-absurd": (
        _metric(m.NUM_EXAMPLES, 10**12),
        "num-examples is 1000000000000, out of range",
    ),
    "num-examples-fraction": (_metric(m.NUM_EXAMPLES, 2.5), "num-examples is 2.5, not a whole"),
    "num-examples-nan": (_metric(m.NUM_EXAMPLES, float("nan")), "num-examples is nan"),
    "compute-seconds-negative": (
        _metric(m.COMPUTE_SECONDS, -1.0),
        "compute-seconds is -1.0, out of range",
    ),
    "compute-seconds-inf": (
        _metric(m.COMPUTE_SECONDS, float("inf")),
        "compute-seconds is inf, out of range",
    ),
    "compute-macs-negative": (
        _metric(m.COMPUTE_MACS, -1.0),
        "compute-macs is -1.0, out of range",
    ),
    "compute-macs-nan": (_metric(m.COMPUTE_MACS, float("nan")), "compute-macs is nan"),
    "peak-memory-negative": (
        _metric(m.PEAK_MEMORY_BYTES, -1.0),
        "peak-memory-bytes is -1.0, out of range",
    ),
    "arch-differs": (_other_arch, "arch is {"),
    "arch-not-json": (_arch_not_json, "architecture is not valid JSON"),
    "client-error": (_error, "client error: CUDA out of memory"),
    "replayed-round-1-reply": (_replay, "reply-to-message-id is "),
    "pickled-tensor": (_pickled_tensor, "cannot be decoded: Object arrays cannot be loaded"),
    "impostor-client-id": (_impostor_id, "client-id is 'bob', but the reply came from client"),
}


def _logged(caplog, text):
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.mark.parametrize("name", sorted(BAD_REPLIES))
def test_bad_reply_is_rejected_with_reason_and_changes_nothing(name, local_grid, control, caplog):
    change, reason = BAD_REPLIES[name]
    caplog.set_level(logging.WARNING)
    strategy, before, alice_before = run_two_rounds(local_grid, _on_alice(change))
    # The log names alice, the field and the value.
    hits = _logged(caplog, reason)
    assert hits and any("alice" in h for h in hits), [r.getMessage() for r in caplog.records]
    assert reason in strategy.session.failures["alice"]
    # The rest of the round went on.
    outcome = strategy.session.outcome
    assert outcome.accepted == ["bob", "carol"]
    assert strategy.search.policies["bob"].steps == 2
    assert strategy.search.policies["carol"].steps == 2
    # Bit for bit: as if alice's reply had never arrived, and alice's policy untouched.
    assert snapshot(strategy.search) == control
    assert strategy.search.policies["alice"].state_dict() == alice_before
    assert snapshot(strategy.search) != before  # bob and carol did change it


def test_silent_client_is_a_timeout_not_an_invented_reward(local_grid, control, caplog):
    caplog.set_level(logging.WARNING)
    strategy, _, alice_before = run_two_rounds(local_grid, _drop_alice)
    assert strategy.session.failures == {"alice": "no reply (timeout or lost)"}
    assert _logged(caplog, "client alice: no reply (timeout or lost)")
    assert strategy.search.policies["alice"].state_dict() == alice_before
    assert "alice" not in strategy.session.outcome.rewards
    assert snapshot(strategy.search) == control


def test_everyone_fails_the_round_stops_the_run(local_grid, caplog):
    # No usable reply stops the run with the cause (tests/test_dropin.py checks the state).
    caplog.set_level(logging.WARNING)
    with pytest.raises(NoUsableRepliesError, match="round 2: 0 of 3 train replies usable") as err:
        run_two_rounds(local_grid, lambda msg, reply, _: None)
    for cid in ("alice", "bob", "carol"):
        assert f"client {cid}: no reply (timeout or lost)" in str(err.value)


def test_extra_metric_keys_are_fine(local_grid, clean):
    strategy, _, _ = run_two_rounds(local_grid, _on_alice(_metric("my-own-metric", 3.0)))
    assert strategy.session.outcome.accepted == ["alice", "bob", "carol"]
    assert snapshot(strategy.search) == clean


def test_duplicate_replies_reject_both(local_grid, control, caplog):
    caplog.set_level(logging.WARNING)

    def duplicate(replies, msgs):
        alice = next(r for r in replies if r.metadata.src_node_id == ALICE)
        forged = Message(content=copy.deepcopy(alice.content), reply_to=alice_msg(msgs))
        forged.content["metrics"][m.ACCURACY] = 1.0
        return replies + [forged]

    def alice_msg(msgs):
        return next(x for x in msgs if x.metadata.dst_node_id == ALICE)

    strategy, _, alice_before = run_two_rounds(local_grid, mutate_replies=duplicate)
    assert _logged(caplog, "duplicate reply from client 'alice'")
    assert strategy.search.policies["alice"].state_dict() == alice_before
    assert snapshot(strategy.search) == control


@pytest.mark.parametrize("node_id", [999, 0])
def test_reply_from_a_node_that_was_sent_nothing_is_ignored(local_grid, clean, caplog, node_id):
    caplog.set_level(logging.WARNING)

    def stranger(replies, msgs):
        forged = copy.deepcopy(replies[0])
        forged.metadata.__dict__["_src_node_id"] = node_id
        forged.content["metrics"][m.ACCURACY] = 1.0
        return replies + [forged]

    strategy, _, _ = run_two_rounds(local_grid, mutate_replies=stranger)
    assert _logged(caplog, f"reply from node {node_id}, which was sent nothing this round")
    assert strategy.session.outcome.accepted == ["alice", "bob", "carol"]
    assert snapshot(strategy.search) == clean


def test_reply_order_does_not_matter(local_grid, clean):
    strategy, _, _ = run_two_rounds(local_grid, mutate_replies=lambda r, _: list(reversed(r)))
    assert snapshot(strategy.search) == clean


def test_policies_and_architectures_go_only_to_their_own_node(local_grid):
    strategy = PerFedRLNAS(
        _family(), clients_per_round=2, min_available_nodes=3, search_config=SearchConfig(seed=4)
    )
    grid = local_grid(NODES, dict(HANDLERS, evaluate=_fake_evaluate))
    # By hand first: each train message carries the architecture drawn for the
    # client of its destination node, and no other client's.
    for rnd in (1, 2):
        msgs = list(strategy.configure_train(rnd, ArrayRecord(), ConfigRecord(), grid))
        pending = {
            c: json.dumps(p.arch, sort_keys=True) for c, p in strategy.search.pending.items()
        }
        assert len(msgs) == len(pending) == 2
        for msg in msgs:
            cid = strategy.node_to_client[msg.metadata.dst_node_id]
            sent = json.dumps(json.loads(msg.content["config"][m.ARCH]), sort_keys=True)
            assert sent == pending[cid]
        strategy.aggregate_train(rnd, grid.send_and_receive(msgs))
    grid.sent.clear()
    strategy.start(grid, num_rounds=3)
    secrets = {}
    for cid, policy in strategy.search.policies.items():
        secrets[cid] = [json.dumps(policy.state_dict()["alpha"])]
    for msg in grid.sent:
        dst = strategy.node_to_client.get(msg.metadata.dst_node_id)
        flat = json.dumps(
            {k: str(v) for rec in msg.content.config_records.values() for k, v in rec.items()}
        )
        # No message carries any policy (logits) at all...
        for texts in secrets.values():
            assert all(t not in flat for t in texts)
        assert "alpha" not in flat
        if msg.metadata.message_type == "query":
            assert set(msg.content["config"].keys()) == {"query"}
            continue
        # ...and the only architecture in it is one drawn for (or deployed to) dst.
        arch = json.loads(msg.content["config"][m.ARCH])
        assert dst is not None
        assert m.CLIENT_ID not in msg.content["config"]
        assert set(msg.content.config_records) == {"config"}
        shapes = {k: tuple(v.shape) for k, v in msg.content["arrays"].items()}
        assert shapes == strategy.family.subnet_shapes(arch)
    # The evaluation of the last round sends each client its own argmax.
    last = {
        strategy.node_to_client[x.metadata.dst_node_id]: json.loads(x.content["config"][m.ARCH])
        for x in grid.sent
        if x.metadata.message_type == "evaluate"
    }
    for cid, arch in last.items():
        assert arch == strategy.search.policy(cid).argmax()


def _fake_evaluate(msg, context):
    content = RecordDict(
        {
            "metrics": MetricRecord({m.NUM_EXAMPLES: 10, m.ACCURACY: 0.5}),
            "config": ConfigRecord({m.CLIENT_ID: str(context.node_config["client-id"])}),
        }
    )
    return Message(content=content, reply_to=msg)


def test_reward_clip_bounds_a_forged_compute_time(local_grid):
    """Alice claims 0 s of compute (min RT), making everyone else look slow."""

    def liar(msg, reply, _):
        if msg.metadata.dst_node_id == ALICE:
            reply.content["metrics"][m.COMPUTE_SECONDS] = 0.0
        else:
            reply.content["metrics"][m.COMPUTE_SECONDS] = 10_000.0
        return reply

    strategy, _, _ = run_two_rounds(local_grid, liar)
    rewards = strategy.session.outcome.rewards
    assert SearchConfig().reward_clip == 2.0
    assert all(-2.0 <= r <= 2.0 for r in rewards.values()), rewards
    assert rewards["bob"] == -2.0 and rewards["carol"] == -2.0
    for policy in strategy.search.policies.values():
        assert all(np.all(np.isfinite(a)) for a in policy.alpha.values())


# ---------------------------------------------------------------------- legacy API
def _legacy_round(strategy, manager, server_round, tamper=None):
    instructions = strategy.configure_fit(server_round, None, manager)
    results, failures = [], []
    for proxy, ins in instructions:
        arrays = parameters_to_ndarrays(ins.parameters)
        arch = json.loads(ins.config[m.ARCH])
        keys = list(strategy.family.subnet_shapes(arch))
        trained, metrics = _fake_result(
            proxy.client_id, int(ins.config[m.SERVER_ROUND]), dict(zip(keys, arrays))
        )
        metrics = dict(metrics, **{m.ARCH: ins.config[m.ARCH], m.CLIENT_ID: proxy.client_id})
        res = FitRes(
            Status(Code.OK, ""),
            ndarrays_to_parameters(list(trained.values())),
            int(metrics.pop(m.NUM_EXAMPLES)),
            metrics,
        )
        out = (proxy, res) if tamper is None else tamper(proxy, res)
        if isinstance(out, BaseException) or (isinstance(out, tuple) and out[1] is not res):
            failures.append(out)
        elif out is not None:
            results.append(out)
    strategy.aggregate_fit(server_round, results, failures)


def _legacy_strategy(**extra) -> PerFedRLNASLegacy:
    """Every client in every round, no evaluation round, a seeded search."""
    return PerFedRLNASLegacy(
        _family(),
        clients_per_round=3,
        min_available_clients=3,
        fraction_evaluate=0.0,
        search_config=SearchConfig(seed=0),
        query_timeout=1.0,
        **extra,
    )


def run_legacy(tamper=None):
    strategy = _legacy_strategy()
    manager = legacy_manager()
    _legacy_round(strategy, manager, 1)
    alice_before = copy.deepcopy(strategy.search.policies["alice"].state_dict())
    _legacy_round(strategy, manager, 2, tamper)
    return strategy, alice_before


def _legacy_on_alice(change):
    def tamper(proxy, res):
        if proxy.client_id != "alice":
            return proxy, res
        return change(proxy, res)

    return tamper


def _legacy_metric(key, value):
    def change(proxy, res):
        res.metrics[key] = value
        return proxy, res

    return change


def _legacy_drop_array(proxy, res):
    arrays = parameters_to_ndarrays(res.parameters)[:-1]
    res.parameters = ndarrays_to_parameters(arrays)
    return proxy, res


def _legacy_nan(proxy, res):
    arrays = parameters_to_ndarrays(res.parameters)
    arrays[0] = arrays[0].copy()
    arrays[0].flat[0] = np.nan
    res.parameters = ndarrays_to_parameters(arrays)
    return proxy, res


def _legacy_failure(proxy, res):
    return proxy, FitRes(Status(Code.FIT_NOT_IMPLEMENTED, "disk full"), res.parameters, 0, {})


LEGACY_BAD = {
    # in the order the tests run (sorted by name)
    "accuracy-above-1": (_legacy_metric(m.ACCURACY, 2.0), "accuracy is 2.0, out of range"),
    "accuracy-missing": (
        lambda p, r: (p, r) if r.metrics.pop(m.ACCURACY) else None,
        "metrics lack 'accuracy'",
    ),
    "array-count": (_legacy_drop_array, "arrays, the subnet has"),
    "compute-seconds-negative": (
        _legacy_metric(m.COMPUTE_SECONDS, -3.0),
        "compute-seconds is -3.0, out of range",
    ),
    "fit-status-failure": (_legacy_failure, "client error: disk full"),
    "impostor-client-id": (_legacy_metric(m.CLIENT_ID, "carol"), "client-id is 'carol'"),
    "nan-weight": (_legacy_nan, "NaN or infinite value(s)"),
    "vanished": (lambda p, r: None, "no reply (timeout or lost)"),
}


@pytest.fixture(scope="module")
def legacy_control():
    _stamp()
    strategy, _ = run_legacy(_legacy_on_alice(lambda p, r: None))
    return snapshot(strategy.search)


@pytest.mark.parametrize("name", sorted(LEGACY_BAD))
def test_legacy_bad_reply_is_rejected_and_changes_nothing(name, legacy_control, caplog):
    change, reason = LEGACY_BAD[name]
    caplog.set_level(logging.WARNING)
    strategy, alice_before = run_legacy(_legacy_on_alice(change))
    # Without evaluation the legacy face closes the round in aggregate_fit: the row has it.
    row = strategy.session.recorder.rounds[-1]
    assert row["round"] == 2 and row["num-accepted"] == 2 and row["num-failed"] == 1
    assert row["failures"].startswith("alice: ") and reason in row["failures"], row
    logged = [r.getMessage() for r in caplog.records]
    assert any("alice" in t and reason in t for t in logged), logged
    assert strategy.search.policies["bob"].steps == 2
    assert strategy.search.policies["alice"].state_dict() == alice_before
    assert snapshot(strategy.search) == legacy_control


def test_legacy_exception_failure_is_logged(legacy_control, caplog):
    caplog.set_level(logging.WARNING)
    strategy, alice_before = run_legacy(
        _legacy_on_alice(lambda p, r: TimeoutError("alice timed out"))
    )
    assert _logged(caplog, "alice timed out")
    assert strategy.session.recorder.rounds[-1]["failures"] == "alice: no reply (timeout or lost)"
    assert strategy.search.policies["alice"].state_dict() == alice_before
    assert snapshot(strategy.search) == legacy_control


# ---------------------------------------------------------------------- checkpoints
def _core_after_rounds(rounds):
    from flwr_pfedrlnas.core.search import ClientReply, PerFedRLNASSearch

    search = PerFedRLNASSearch(_family(), SearchConfig(seed=2))
    for rnd in range(1, rounds + 1):
        replies = []
        for cid in ("alice", "bob"):
            p = search.propose(cid)
            trained, metrics = _fake_result(cid, rnd, p.state)
            replies.append(
                ClientReply(
                    cid,
                    None,
                    trained,
                    metrics[m.NUM_EXAMPLES],
                    metrics[m.ACCURACY],
                    compute_seconds=metrics[m.COMPUTE_SECONDS],
                )
            )
        search.incorporate(rnd, replies)
    return search


@pytest.mark.parametrize("crash_on", ["npz", "json"])
def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch, crash_on):
    from flwr_pfedrlnas.core import search as search_module
    from flwr_pfedrlnas.core.search import PerFedRLNASSearch

    search = _core_after_rounds(1)
    search.save(tmp_path)
    saved = snapshot(PerFedRLNASSearch.from_checkpoint(tmp_path, SearchConfig(seed=2))[0])
    search = _core_after_rounds(2)
    real = search_module._atomic_write

    def dying(path, write):
        if path.name.endswith(crash_on):
            # Half the bytes reach the temporary file, then the "power goes out".
            def half(f):
                write(f)
                f.truncate(f.tell() // 2)
                raise KeyboardInterrupt("killed")

            return real(path, half)
        return real(path, write)

    monkeypatch.setattr(search_module, "_atomic_write", dying)
    with pytest.raises(KeyboardInterrupt):
        search.save(tmp_path)
    monkeypatch.undo()
    again = snapshot(PerFedRLNASSearch.from_checkpoint(tmp_path, SearchConfig(seed=2))[0])
    assert again == saved and again[3] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoint_never_unpickles(tmp_path):
    from flwr_pfedrlnas.core.search import PerFedRLNASSearch

    _core_after_rounds(1).save(tmp_path)
    meta = json.loads((tmp_path / "state.json").read_text())
    # Replace the supernet file by one holding a pickled object array.
    np.savez(tmp_path / meta["supernet_file"], evil=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        PerFedRLNASSearch.read_checkpoint(tmp_path)


def test_legacy_sends_each_client_its_simulated_device():
    from flwr_pfedrlnas.core.profiles import ProfileDistribution

    profiles = ProfileDistribution(seed=3, memory_budget_choices_mb=(64.0,))
    strategy = _legacy_strategy(profiles=profiles)
    manager = legacy_manager()
    instructions = strategy.configure_fit(1, strategy._supernet_parameters(), manager)
    assert len(instructions) == 3
    for proxy, ins in instructions:
        assert ins.config[m.MEMORY_BUDGET_BYTES] == 64.0 * 2**20, proxy.cid
    expected = profiles.profiles(["alice", "bob", "carol"])
    assert strategy.search.profiles == expected  # they enter the round time too
