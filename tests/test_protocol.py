"""The one round protocol, for every baseline: bad replies change nothing, and every method resumes.

Each method runs on the in-process grid with tiny models and synthetic data.
A fault tampers with one sampled client's training reply; the method's state
after the round must equal, bit for bit, its state after the same round in
which that client did not answer at all, and the round's failures must name
the field and the value. Resume: a run stopped after round 1 and restarted
from its checkpoint ends where the uninterrupted run ends.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message
from torch.utils.data import DataLoader, TensorDataset

from flwr_pfedrlnas.baselines.app import _handle
from flwr_pfedrlnas.baselines.fedavg import FedAvgFixedArch
from flwr_pfedrlnas.baselines.nas import make_nas_baseline
from flwr_pfedrlnas.baselines.registry import make_baseline
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.client import identify
from flwr_pfedrlnas.protocol.rounds import RoundSchedule, seeded_sample
from flwr_pfedrlnas.supernets import get_supernet

NODES = {11: {"partition-id": 0}, 22: {"partition-id": 1}, 33: {"partition-id": 2}}
DARTS = {
    "init_channels": 4,
    "num_cells": 3,
    "steps": 1,
    "multiplier": 1,
    "in_channels": 1,
    "num_classes": 10,
    "operations": ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"],
}
VIT = {"dim": 16, "depth": 1, "heads": 2, "patch_size": 8, "mlp_ratio": 1.0}
METHODS = [
    "fedavg-largest",
    "fedavg-ft",
    "local",
    "fedrep",
    "fedbabu",
    "fedtp",
    "fednas",
    "fedrlnas",
    "spider",
    "fedoras",
]


def _synthetic(ctx: Context, batch_size: int = 16):
    """24 train and 16 test 32x32 images per client, labels tied to the client."""
    pid = int(ctx.node_config["partition-id"])
    gen = torch.Generator().manual_seed(pid)
    x = torch.randn(40, 1, 32, 32, generator=gen)
    y = (torch.arange(40) % 3 + 3 * pid) % 10
    x.view(40, -1)[:, :10] += torch.nn.functional.one_hot(y, 10).float() * 3
    train = DataLoader(TensorDataset(x[:24], y[:24]), batch_size=8, shuffle=True, generator=gen)
    return train, DataLoader(TensorDataset(x[24:], y[24:]), batch_size=8)


HANDLERS = {
    "query": identify,
    "train": lambda msg, ctx: _handle("train", msg, ctx, _synthetic, "cpu"),
    "evaluate": lambda msg, ctx: _handle("evaluate", msg, ctx, _synthetic, "cpu"),
}


def _method(name: str, tmp_path, **extra):
    common = dict(
        clients_per_round=2,
        min_available_nodes=len(NODES),
        batch_size=8,
        seed=3,
        results_dir=str(tmp_path / "results"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        **extra,
    )
    if name == "fedavg-largest":
        family = get_supernet("elastic-cnn", num_stages=2, base_width=4)
        return FedAvgFixedArch(family, **common)
    if name in ("fednas", "fedrlnas", "spider", "fedoras"):
        knobs = {"fedrlnas": {"warmup_rounds": 0}, "fedoras": {"num_tiers": 2}}.get(name, {})
        return make_nas_baseline(name, get_supernet("darts", **DARTS), **common, **knobs)
    model = {"model": "vit", "model_config": VIT, "num_clients": 3}
    return make_baseline(name, **model, finetune_epochs=1, **common)


def _kind(msg: Message) -> str:
    return msg.metadata.message_type.split(".")[0]


def _state(method) -> tuple[dict[str, bytes], str, str]:
    arrays, meta = method.state_dict()
    return (
        {k: np.asarray(v).tobytes() + str(np.asarray(v).dtype).encode() for k, v in arrays.items()},
        json.dumps(meta, sort_keys=True, default=str),
        json.dumps(method.rng.bit_generator.state, sort_keys=True),
    )


# ---------------------------------------------------------------------- faults
def _other_client(reply, msg):
    reply.content["config"][m.CLIENT_ID] = (
        "2" if reply.content["config"][m.CLIENT_ID] != "2" else "0"
    )
    return "client-id is"


def _stale(reply, msg):
    reply.metadata.__dict__["_reply_to_message_id"] = "an-earlier-message"
    return "reply-to-message-id is 'an-earlier-message'"


def _first_float(reply):
    record = reply.content.array_records.get("arrays")
    for key, array in (record or {}).items():
        if array.numpy().dtype.kind == "f":
            return record, key, array.numpy().copy()
    return None, None, None


def _wrong_shape(reply, msg):
    record, key, value = _first_float(reply)
    if record is None:
        reply.content["arrays"] = ArrayRecord({"extra": Array(np.zeros(3, np.float32))})
        return "unexpected tensor"
    record[key] = Array(np.zeros(value.size + 1, dtype=value.dtype))
    return f"tensor {key!r} has shape"


def _nan(reply, msg):
    record, key, value = _first_float(reply)
    if record is None:
        return None
    value.flat[0] = np.nan
    record[key] = Array(value)
    return f"tensor {key!r} has NaN"


def _accuracy(reply, msg):
    reply.content["metrics"][m.ACCURACY] = 1.5
    return "'accuracy' is 1.5"


def _missing(reply, msg):
    del reply.content["metrics"][m.NUM_EXAMPLES]
    return "lack 'num-examples'"


def _macs(reply, msg):
    reply.content["metrics"][m.COMPUTE_MACS] = -5
    return "'compute-macs' is -5"


FAULTS = {
    "other-client": _other_client,
    "stale": _stale,
    "wrong-shape": _wrong_shape,
    "nan": _nan,
    "accuracy": _accuracy,
    "missing-metric": _missing,
    "negative-macs": _macs,
}


def _round_one(method, local_grid, fault):
    """Round 1 (no evaluation) with ``fault`` on the first sampled client's training reply."""
    expected: list[str] = []

    def tamper(msg, reply):
        if _kind(msg) != "train" or expected:
            return reply
        if fault is None:
            expected.append("no reply")
            return None
        found = fault(reply, msg)
        expected.append(found)
        return reply

    method.schedule = RoundSchedule(5, evaluate_every=5)
    row = method.driver.run_round(local_grid(NODES, HANDLERS, tamper=tamper), 1)
    return row, expected[0] if expected else None


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", METHODS)
def test_a_bad_reply_changes_nothing_and_is_named(name, fault, local_grid, tmp_path):
    tampered = _method(name, tmp_path / "a")
    row, reason = _round_one(tampered, local_grid, FAULTS[fault])
    if reason is None:
        pytest.skip(f"{name} replies carry no float tensor to corrupt")
    assert row["num-accepted"] == 1 and row["num-failed"] == 1
    assert reason in row["failures"], row["failures"]
    dropped = _method(name, tmp_path / "b")
    other, _ = _round_one(dropped, local_grid, None)
    assert "no reply" in other["failures"]
    assert _state(tampered) == _state(dropped)


@pytest.mark.parametrize("name", ["fedavg-largest", "fedrep", "fedrlnas"])
def test_a_round_without_any_usable_reply_fails_loudly(name, local_grid, tmp_path):
    method = _method(name, tmp_path)
    before = _state(method)
    method.schedule = RoundSchedule(5, evaluate_every=5)
    grid = local_grid(NODES, HANDLERS, tamper=lambda msg, r: None if _kind(msg) == "train" else r)
    with pytest.raises(RuntimeError, match="none of the 2 sampled clients sent a usable reply"):
        method.driver.run_round(grid, 1)
    assert _state(method)[:2] == before[:2]  # the sample was drawn; nothing else moved


@pytest.mark.parametrize("name", METHODS)
def test_every_method_records_a_modelled_latency(name, local_grid, tmp_path):
    row, _ = _round_one(_method(name, tmp_path), local_grid, lambda reply, msg: "")
    assert math.isfinite(row["modelled-latency-round-s"]) and row["modelled-latency-round-s"] > 0
    assert row["modelled-latency-total-s"] == row["modelled-latency-round-s"]
    # Transfers alone give a lower bound: the clients' MACs count on top of them.
    assert row["modelled-latency-round-s"] > 8 * row["bytes-up"] / 100e6 / 2


# ---------------------------------------------------------------------- resume
@pytest.mark.parametrize("name", METHODS)
def test_every_method_resumes_where_it_stopped(name, local_grid, tmp_path):
    grid = local_grid(NODES, HANDLERS)
    whole = _method(name, tmp_path / "whole", evaluate_every=2)
    whole.start(local_grid(NODES, HANDLERS), num_rounds=3)
    first = _method(name, tmp_path / "split", evaluate_every=2)
    first.schedule = RoundSchedule(3, evaluate_every=2)
    first.driver.run_round(grid, 1)  # checkpointed; then the server process dies
    # The server restarts (a new object); the clients, with their state, stay.
    resumed = _method(name, tmp_path / "split", evaluate_every=2, resume=True)
    resumed.start(grid, num_rounds=3)
    assert _state(resumed) == _state(whole)
    a = pd.read_csv(tmp_path / "whole" / "results" / "rounds.csv")
    b = pd.read_csv(tmp_path / "split" / "results" / "rounds.csv")
    assert list(b["round"]) == [1, 2, 3]
    # The modelled latency is deterministic (MACs and bytes), so it survives a resume exactly.
    columns = ("sampled", "num-accepted", "accuracy-mean", "bytes-down", "bytes-up")
    for column in (*columns, "modelled-latency-total-s"):
        assert a[column].tolist() == b[column].tolist() or all(
            (isinstance(x, float) and math.isnan(x) and math.isnan(y)) or x == y
            for x, y in zip(a[column], b[column])
        ), column


def test_a_checkpoint_of_another_method_is_refused(local_grid, tmp_path):
    _method("fedrep", tmp_path).start(local_grid(NODES, HANDLERS), num_rounds=1)
    other = _method("fedbabu", tmp_path, resume=True)
    with pytest.raises(ValueError, match="of method 'fedrep', not 'fedbabu'"):
        other.start(local_grid(NODES, HANDLERS), num_rounds=2)


# ---------------------------------------------------------------------- sampling
def test_sampling_follows_stable_client_ids_not_their_order():
    ids = ["10", "2", "1", "alice"]
    a = seeded_sample(np.random.default_rng(5), ids, 2)
    b = seeded_sample(np.random.default_rng(5), list(reversed(ids)), 2)
    assert a == b and len(set(a)) == 2
    assert seeded_sample(np.random.default_rng(5), ids, 9) == ["1", "2", "10", "alice"]
    with pytest.raises(ValueError, match="clients per round must be >= 1, got 0"):
        seeded_sample(np.random.default_rng(5), ids, 0)


def test_schedule_numbers_rounds_across_a_resume():
    schedule = RoundSchedule(num_rounds=7, evaluate_every=3, rounds_done=4)
    assert list(schedule.remaining()) == [5, 6, 7]
    assert [r for r in range(1, 8) if schedule.is_evaluation_round(r)] == [3, 6, 7]
    assert schedule.is_last_round(7) and not schedule.is_last_round(6)
    with pytest.raises(ValueError, match="evaluate_every must be an integer >= 1, got 0"):
        RoundSchedule(3, evaluate_every=0)


def test_a_resumed_run_keeps_the_column_order_of_rounds_csv():
    import json

    from flwr_pfedrlnas.protocol.results import RunRecorder

    recorder = RunRecorder()
    recorder.add_round({"round": 1, "phase": "train", "accuracy-mean": 0.5})
    recorder.add_round({"round": 2, "phase": "train", "accuracy-mean": 0.6, "extra": 1})
    recorder.set_client("3", {"round": 2, "accuracy": 0.7})
    # The checkpoint's JSON is written with sorted keys.
    state = json.loads(json.dumps(recorder.state_dict(), sort_keys=True))
    again = RunRecorder()
    again.load_state_dict(state)
    assert list(again.rounds_frame().columns) == ["round", "phase", "accuracy-mean", "extra"]
    assert list(again.clients_frame().columns) == ["round", "accuracy", "client-id"]
    assert again.rounds == recorder.rounds
