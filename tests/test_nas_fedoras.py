"""FedorAS: tiers and budgets, the per-tier search, per-tier fine-tuning, tiers.csv, bad replies.

Everything runs message by message on the in-process grid with a tiny DARTS
family (2 steps per cell, 4 operations) and tiny synthetic data.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from baseline_checks import message_kind, nas_handlers, synthetic_loaders, tiny_darts
from flwr.app import Array, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from flwr_pfedrlnas.baselines.nas.base import NAS_STEP, content_bytes
from flwr_pfedrlnas.baselines.nas.client import handle
from flwr_pfedrlnas.baselines.nas.fedoras import FedorAS
from flwr_pfedrlnas.baselines.nas.fedoras_client import (
    ACCURACIES,
    CANDIDATES,
    candidate_key,
    evaluate_candidates,
)
from flwr_pfedrlnas.baselines.nas.fedoras_tiers import _parameter_count
from flwr_pfedrlnas.core.profiles import ProfileDistribution
from flwr_pfedrlnas.core.search_space import architecture_from_json, architecture_to_json
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.protocol.rounds import RoundSchedule

FAMILY = tiny_darts(["none", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"])
NUM_NODES = 8
NODES = {100 + i: {"partition-id": i} for i in range(NUM_NODES)}
CLIENTS = [str(i) for i in range(NUM_NODES)]


def _synthetic(ctx: Context, batch_size: int = 16):
    """24-40 train and 16 test 8x8 images per client, labels tied to the client."""
    pid = int(ctx.node_config["partition-id"])
    return synthetic_loaders(pid, 24 + 8 * (pid % 3), 16, batch_size)


class _NoTestSplit:
    """A test loader that fails when read (the candidate search must not use it)."""

    def __iter__(self):
        raise AssertionError("the candidate search read the test split")


def _evaluate(msg: Message, ctx: Context) -> Message:
    if msg.content["config"].get(NAS_STEP) == "candidates":
        train_loader, _ = _synthetic(ctx)
        return evaluate_candidates(msg, ctx, train_loader, _NoTestSplit(), torch.device("cpu"))
    return handle("evaluate", msg, ctx, _synthetic, device="cpu")


HANDLERS = {**nas_handlers(_synthetic), "evaluate": _evaluate}


def _strategy(**extra) -> FedorAS:
    kw = dict(
        num_tiers=4,
        supernet_rounds=1,
        num_candidates=3,
        candidate_batches=1,
        clients_per_round=4,
        min_available_nodes=NUM_NODES,
        batch_size=16,
        lr=0.05,
        budget_samples=100,
        evaluate_every=100,
        seed=0,
    )
    kw.update(extra)
    return FedorAS(FAMILY, **kw)


def _step(msg: Message) -> str:
    return str(msg.content["config"].get(NAS_STEP, ""))


def _round(msg: Message) -> int:
    return int(msg.content["config"][m.SERVER_ROUND])


def _run(local_grid, strategy: FedorAS, rounds: int, tamper=None, between=None, planned=None):
    """Run ``rounds`` of ``planned`` (default: ``rounds``) rounds; ``between(strategy,
    rnd)`` after each; the grid. With ``evaluate_every`` large, only round ``planned``
    evaluates (none when ``planned > rounds``)."""
    replies: list[tuple[Message, Message]] = []

    def keep(msg, reply):
        if tamper is not None:
            reply = tamper(msg, reply)
        if reply is not None:
            replies.append((msg, reply))
        return reply

    grid = local_grid(NODES, HANDLERS, tamper=keep)
    grid.replies = replies
    strategy.schedule = RoundSchedule(planned or rounds, strategy.evaluate_every)
    for rnd in range(1, rounds + 1):
        strategy.driver.run_round(grid, rnd)
        if between is not None:
            between(strategy, rnd)
    return grid


def _client_of(grid, msg: Message) -> str:
    return str(grid.contexts[msg.metadata.dst_node_id].node_config["partition-id"])


def _copy(state):
    return {k: np.array(v, copy=True) for k, v in state.items()}


def _bit_equal(a, b) -> bool:
    return (
        list(a) == list(b)
        and all(a[k].dtype == b[k].dtype for k in a)
        and all(np.array_equal(a[k], b[k]) for k in a)
    )


# ---------------------------------------------------------------------- (a) tiers and budgets
def _check_tiers(strategy: FedorAS, profiles: ProfileDistribution | None) -> None:
    tier_of = strategy.tier_of
    # Every client in exactly one tier, tiers of equal size.
    assert sorted(tier_of) == sorted(CLIENTS)
    assert all(0 <= t < 4 for t in tier_of.values())
    assert [len(strategy.tier_members(t)) for t in range(4)] == [2, 2, 2, 2]
    # Capability order: a weaker client is never in a higher tier than a stronger one.
    if profiles is not None:
        speed = {c: profiles.profile(c).speed_factor for c in CLIENTS}  # higher = slower
        for a in CLIENTS:
            for b in CLIENTS:
                if speed[a] > speed[b]:
                    assert tier_of[a] <= tier_of[b]
    scores = {c: strategy.capability(c) for c in CLIENTS}
    assert len(set(scores.values())) == NUM_NODES
    for a in CLIENTS:
        for b in CLIENTS:
            if scores[a] < scores[b]:
                assert tier_of[a] <= tier_of[b]
    # The score is a pure function of the seed and the id.
    assert scores == {c: _strategy(profiles=profiles).capability(c) for c in CLIENTS}


def test_tiers_without_profiles_and_late_clients():
    strategy = _strategy()
    strategy.assign_tiers(CLIENTS)
    _check_tiers(strategy, None)
    # A client that connects later joins the tiers without breaking the order.
    late = [str(i) for i in range(NUM_NODES, NUM_NODES + 6)]
    strategy.assign_tiers(CLIENTS + late)
    assert sorted(strategy.tier_of) == sorted(CLIENTS + late)
    assert all(strategy.tier_of[c] == t for c, t in _tiers_again(CLIENTS).items())
    everyone = CLIENTS + late
    for a in everyone:
        for b in everyone:
            if strategy.capability(a) < strategy.capability(b):
                assert strategy.tier_of[a] <= strategy.tier_of[b]
    # Fewer clients than tiers: spread out, weakest in tier 0.
    few = _strategy()
    few.assign_tiers(["0", "1"])
    order = sorted(["0", "1"], key=few.capability)
    assert [few.tier_of[c] for c in order] == [0, 2]


def _tiers_again(clients):
    again = _strategy()
    again.assign_tiers(clients)
    return again.tier_of


def test_tiers_follow_profiles_and_phase1_archs_fit_budgets(local_grid):
    profiles = ProfileDistribution(seed=3)
    strategy = _strategy(profiles=profiles, supernet_rounds=2)
    grid = _run(local_grid, strategy, rounds=2)
    _check_tiers(strategy, profiles)
    tier_of = strategy.tier_of
    # Budgets increase; the top tier may train the largest architecture.
    budgets = strategy.budgets
    assert all(x < y for x, y in zip(budgets, budgets[1:]))
    assert budgets[-1] == strategy.model_size(FAMILY.largest_architecture())
    # Every architecture sent for training fits the receiving client's tier.
    train_msgs = [msg for msg in grid.sent if message_kind(msg) == MessageType.TRAIN]
    assert len(train_msgs) == 2 * 4
    for msg in train_msgs:
        assert _step(msg) == "subnet"
        arch = architecture_from_json(msg.content["config"][m.ARCH], FAMILY.search_space)
        budget = budgets[tier_of[_client_of(grid, msg)]]
        assert strategy.model_size(arch) <= budget
        assert _parameter_count(FAMILY, arch) <= strategy.model_size(arch)
        # The weights sent are the subnet cut from the supernet of that round.
        assert set(msg.content["arrays"]) == set(FAMILY.subnet_shapes(arch))
    # Phase 1: every client tests its tier's reference architecture.
    for msg in grid.sent:
        if message_kind(msg) == MessageType.EVALUATE:
            ref = strategy.reference_archs[tier_of[_client_of(grid, msg)]]
            assert msg.content["config"][m.ARCH] == architecture_to_json(ref)
    for t, ref in enumerate(strategy.reference_archs):
        assert strategy.model_size(ref) <= budgets[t]
    assert list(strategy.recorder.rounds_frame()["phase"]) == ["supernet", "supernet"]
    assert not strategy.searched


# ---------------------------------------------------------------------- (b) search
def test_search_picks_best_example_weighted_candidate_per_tier(local_grid):
    rng = np.random.default_rng(7)
    forced: dict[str, tuple[list[float], int]] = {}
    original: dict[str, list[float]] = {}

    def tamper(msg, reply):
        if message_kind(msg) == MessageType.EVALUATE and _step(msg) == "candidates":
            cid = str(reply.content["config"][m.CLIENT_ID])
            metrics = reply.content["metrics"]
            original[cid] = list(metrics[ACCURACIES])
            accs = [float(a) for a in np.round(rng.uniform(size=3), 3)]
            n = int(rng.integers(1, 50))
            metrics[ACCURACIES] = accs
            metrics[m.NUM_EXAMPLES] = n
            forced[cid] = (accs, n)
        return reply

    strategy = _strategy(supernet_rounds=1)
    grid = _run(local_grid, strategy, rounds=2, tamper=tamper)

    cand_msgs = [msg for msg in grid.sent if _step(msg) == "candidates"]
    # The search happens once (round 2), with every client, before its training.
    assert sorted(_client_of(grid, msg) for msg in cand_msgs) == sorted(CLIENTS)
    assert {_round(msg) for msg in cand_msgs} == {2}
    # The clients' own replies: one accuracy in 0..1 per candidate.
    assert all(len(a) == 3 and all(0 <= x <= 1 for x in a) for a in original.values())
    assert len(strategy.tier_archs) == 4 and len(strategy.search_results) == 4
    for tier in range(4):
        members = strategy.tier_members(tier)
        msgs = [msg for msg in cand_msgs if _client_of(grid, msg) in members]
        sent = [list(msg.content["config"][CANDIDATES]) for msg in msgs]
        assert all(s == sent[0] for s in sent) and len(sent[0]) == 3
        for i, arch_json in enumerate(sent[0]):
            arch = architecture_from_json(arch_json, FAMILY.search_space)
            assert strategy.model_size(arch) <= strategy.budgets[tier]
            assert set(msgs[0].content[candidate_key(i)]) == set(FAMILY.subnet_shapes(arch))
        # Hand computation: example-weighted mean accuracy per candidate, best one.
        weights = np.array([forced[c][1] for c in members], dtype=float)
        table = np.array([forced[c][0] for c in members])
        means = weights @ table / weights.sum()
        best = int(np.argmax(means))
        assert strategy.search_results[tier]["chosen"] == best
        assert np.allclose(strategy.search_results[tier]["scores"], means)
        chosen = strategy.tier_archs[tier]
        assert architecture_to_json(chosen) == sent[0][best]
        # Exactly one architecture per tier afterwards: trained and tested by its clients.
        later = [
            msg
            for msg in grid.sent
            if _step(msg) == "subnet" and _round(msg) >= 2 and _client_of(grid, msg) in members
        ]
        assert later and {msg.content["config"][m.ARCH] for msg in later} == {sent[0][best]}
    rows = strategy.recorder.rounds_frame()
    assert list(rows["phase"]) == ["supernet", "finetune"]
    # The search's traffic counts in round 2, with that round's training.
    timed = cand_msgs + [
        msg for msg in grid.sent if message_kind(msg) == MessageType.TRAIN and _round(msg) == 2
    ]
    assert rows["bytes-down"][1] == sum(content_bytes(msg.content) for msg in timed)
    clients = strategy.recorder.clients_frame()
    for _, row in clients.iterrows():
        tier = strategy.tier_of[row["client-id"]]
        assert row["tier"] == tier
        assert row["arch"] == architecture_to_json(strategy.tier_archs[tier])
        assert row["arch-params"] == strategy.model_size(strategy.tier_archs[tier])


# ---------------------------------------------------------------------- (c) fine-tuning
def test_finetune_averages_each_tier_separately(local_grid):
    snapshots: dict[int, list[dict[str, np.ndarray]]] = {}
    supernets: dict[int, dict[str, np.ndarray]] = {}

    def between(s, rnd):
        supernets[rnd] = _copy(s.supernet)
        if s.searched:
            snapshots[rnd] = [_copy(t) for t in s.tier_models]

    strategy = _strategy(supernet_rounds=1, clients_per_round=2)
    grid = _run(local_grid, strategy, rounds=3, between=between, planned=99)
    # Phase 2 never changes the supernet.
    assert _bit_equal(supernets[1], supernets[3])
    touched_any, untouched_any = False, False
    for rnd in (3,):
        replies = [
            (msg, reply)
            for msg, reply in grid.replies
            if message_kind(msg) == MessageType.TRAIN and _round(msg) == rnd
        ]
        assert len(replies) == 2
        for tier in range(4):
            mine = [
                (m.record_to_arrays(reply.content["arrays"]), reply.content["metrics"])
                for msg, reply in replies
                if strategy.tier_of[_client_of(grid, msg)] == tier
            ]
            after = snapshots[rnd][tier]
            if not mine:
                untouched_any = True
                assert _bit_equal(after, snapshots[rnd - 1][tier])
                continue
            touched_any = True
            n = np.array([float(metrics[m.NUM_EXAMPLES]) for _, metrics in mine])
            assert set(after) == set(FAMILY.subnet_shapes(strategy.tier_archs[tier]))
            for key, value in after.items():
                stacked = np.stack([s[key].astype(np.float64) for s, _ in mine])
                expected = np.tensordot(n / n.sum(), stacked, axes=1)
                if value.dtype.kind in "iu":
                    expected = np.rint(expected)
                assert value.dtype == mine[0][0][key].dtype
                np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7, err_msg=key)
    assert touched_any and untouched_any


# ---------------------------------------------------------------------- (d) tiers.csv
def test_tiers_csv_reports_accuracy_range_per_tier(local_grid, tmp_path):
    strategy = _strategy(supernet_rounds=1, results_dir=str(tmp_path))
    _run(local_grid, strategy, rounds=2)
    tiers = pd.read_csv(tmp_path / "tiers.csv")
    assert list(tiers["tier"]) == [0, 1, 2, 3]
    assert list(tiers["budget-params"]) == strategy.budgets
    assert list(tiers["clients"]) == [2, 2, 2, 2]
    assert list(tiers["evaluated"]) == [2, 2, 2, 2]
    assert (tiers["round"] == 2).all() and (tiers["phase"] == "finetune").all()
    assert (tiers["arch-params"] <= tiers["budget-params"]).all()
    assert (tiers["accuracy-min"] <= tiers["accuracy-mean"] + 1e-12).all()
    assert (tiers["accuracy-mean"] <= tiers["accuracy-max"] + 1e-12).all()
    clients = pd.read_csv(tmp_path / "clients.csv")
    for tier, group in clients.groupby("tier"):
        row = tiers[tiers["tier"] == tier].iloc[0]
        assert math.isclose(row["accuracy-min"], group["accuracy"].min())
        assert math.isclose(row["accuracy-max"], group["accuracy"].max())
        assert math.isclose(row["accuracy-mean"], group["accuracy"].mean())
        assert (group["arch"] == row["arch"]).all()
    pd.testing.assert_frame_equal(
        strategy.tier_accuracy_ranges().reset_index(drop=True), tiers, check_dtype=False
    )
    assert {"rounds.csv", "clients.csv", "config.json"} <= {p.name for p in tmp_path.iterdir()}


# ---------------------------------------------------------------------- (e) bad replies
def _nan_first_tensor(reply: Message) -> None:
    arrays = reply.content["arrays"]
    key = next(k for k in arrays if arrays[k].numpy().dtype.kind == "f")
    arrays[key] = Array(np.full_like(arrays[key].numpy(), np.nan))


def _targeting(action):
    """Tamper hook applying ``action`` to the first train reply of rounds 1 and 2 and
    the first candidates reply; ``action(kind, reply)`` returns the reply or None."""
    done: set[tuple[str, int]] = set()

    def tamper(msg, reply):
        kind = _step(msg) if _step(msg) == "candidates" else message_kind(msg)
        if kind not in ("candidates", MessageType.TRAIN) or msg.metadata.message_type not in (
            MessageType.TRAIN,
            MessageType.EVALUATE,
        ):
            return reply
        rnd = _round(msg)
        if kind == MessageType.TRAIN and rnd not in (1, 2):
            return reply
        if (kind, rnd) in done:
            return reply
        done.add((kind, rnd))
        return action(kind, reply)

    return tamper


def _tampered(kind, reply):
    if kind == "candidates":
        metrics = reply.content["metrics"]
        metrics[ACCURACIES] = list(metrics[ACCURACIES]) + [0.5]
    else:
        _nan_first_tensor(reply)
    return reply


def test_bad_replies_are_refused_and_change_nothing(local_grid):
    bad = _strategy(supernet_rounds=1)
    _run(local_grid, bad, rounds=2, tamper=_targeting(_tampered), planned=99)
    clean = _strategy(supernet_rounds=1)
    _run(local_grid, clean, rounds=2, tamper=_targeting(lambda kind, reply: None), planned=99)
    failures = list(bad.recorder.rounds_frame()["failures"])
    assert "NaN" in failures[0] and "tensor" in failures[0]
    # Round 2: the search's refused reply, then the fine-tuning one.
    assert "'accuracies' has 4 value(s), expected 3" in failures[1]
    assert "NaN" in failures[1].split("expected 3")[1]
    assert list(bad.recorder.rounds_frame()["num-failed"]) == [1, 1]
    assert _bit_equal(bad.supernet, clean.supernet)
    assert bad.search_results == clean.search_results
    assert bad.tier_archs == clean.tier_archs
    for a, b in zip(bad.tier_models, clean.tier_models):
        assert _bit_equal(a, b)


def _reply(metrics: dict, arrays=None) -> RecordDict:
    content = {"metrics": MetricRecord(metrics), "config": ConfigRecord({})}
    if arrays is not None:
        content["arrays"] = m.arrays_to_record(arrays)
    return RecordDict(content)


@pytest.mark.parametrize(
    "accuracies,field",
    [
        ([0.1, 0.2], "has 2 value(s), expected 3"),
        ([0.1, 0.2, 1.5], "[2] is 1.5, outside 0..1"),
        ([0.1, float("nan"), 0.3], "[1] is nan"),
        (0.5, "not a list"),
        (None, "lack 'accuracies'"),
    ],
)
def test_candidate_reply_checks_name_field_and_value(accuracies, field):
    strategy = _strategy()
    metrics = {m.NUM_EXAMPLES: 16, m.COMPUTE_SECONDS: 0.1}
    if accuracies is not None:
        metrics[ACCURACIES] = accuracies
    with pytest.raises(ValueError, match="accuracies") as err:
        strategy.check_candidates_reply(_reply(metrics), 3)
    assert field in str(err.value)
    metrics[ACCURACIES] = [0.1, 0.2, 0.3]
    assert strategy.check_candidates_reply(_reply(metrics), 3) == [0.1, 0.2, 0.3]


def test_train_reply_checks_shape_and_accuracy():
    strategy = _strategy()
    strategy.assign_tiers(CLIENTS)
    content = strategy.train_content(1, "0")
    arch = strategy._pending["0"]
    state = m.record_to_arrays(content["arrays"])
    good = {m.NUM_EXAMPLES: 32, m.ACCURACY: 0.5, m.COMPUTE_SECONDS: 0.1}
    strategy.check_train_reply(1, "0", _reply(good, state))
    key = next(k for k, v in state.items() if v.ndim >= 2)
    wrong = dict(state, **{key: np.zeros((1,) + state[key].shape[1:], state[key].dtype)})
    with pytest.raises(ValueError, match="has shape"):
        strategy.check_train_reply(1, "0", _reply(good, wrong))
    with pytest.raises(ValueError, match="'accuracy' is 1.5"):
        strategy.check_train_reply(1, "0", _reply(dict(good, **{m.ACCURACY: 1.5}), state))
    other = dict(arch)
    dim = next(iter(other))
    other[dim] = next(c for c in FAMILY.search_space[dim].choices if c != arch[dim])
    reply = _reply(good, state)
    reply["config"] = ConfigRecord({m.ARCH: architecture_to_json(other)})
    with pytest.raises(ValueError, match="arch is"):
        strategy.check_train_reply(1, "0", reply)
