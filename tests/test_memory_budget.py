"""Memory budget (eq. 9 through the core and the strategy), device profiles, client overruns."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from flwr_pfedrlnas.core.aggregation import merge_subnets, state_num_bytes
from flwr_pfedrlnas.core.profiles import DeviceProfile, ProfileDistribution, parse_choices
from flwr_pfedrlnas.core.rewards import round_time
from flwr_pfedrlnas.core.search import ClientReply, PerFedRLNASSearch, SearchConfig
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders
from flwr_pfedrlnas.flower import client as client_mod
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.client import evaluate_subnet, identify, train_subnet
from flwr_pfedrlnas.flower.numpy_client import SubnetClient
from flwr_pfedrlnas.flower.strategy import PerFedRLNAS
from flwr_pfedrlnas.supernets import get_supernet

MB = 2**20


def _family():
    return get_supernet("elastic-cnn", num_stages=2, base_width=4)


def _trained(core, proposal, value):
    """A plausible trained state: the sent one shifted by ``value``."""
    return {
        k: np.asarray(v + value if v.dtype.kind == "f" else v, dtype=v.dtype)
        for k, v in proposal.state.items()
    }


def _reply(core, proposal, acc, compute, peak, budget, shift, **kw):
    return ClientReply(
        client_id=proposal.client_id,
        arch=proposal.arch,
        state=_trained(core, proposal, shift),
        num_examples=kw.pop("num_examples", 100),
        accuracy=acc,
        compute_seconds=compute,
        peak_memory_bytes=peak,
        memory_budget_bytes=budget,
        **kw,
    )


@pytest.mark.parametrize("flagged", [True, False])
def test_eq9_cases_through_the_core(flagged):
    """Within budget: phi = peak/budget. Over: phi 1, acc 0, RT = max RT; never merged."""
    cfg = SearchConfig(memory_aware=True, lambda_time=0.1, seed=3, reward_clip=None)
    core = PerFedRLNASSearch(_family(), cfg)
    start = copy.deepcopy(core.supernet)
    a, b, c = (core.propose(cid) for cid in ("a", "b", "c"))
    replies = [
        _reply(core, a, 0.8, 1.0, 50.0, 100.0, 0.5),
        _reply(core, b, 0.6, 3.0, 30.0, 100.0, -0.25),
        # c measured a peak over its budget. Flagged: it did not train, replies
        # without weights; unflagged: it trained anyway and sent weights, which
        # must still not be merged.
        ClientReply(
            client_id="c",
            arch=c.arch,
            state={} if flagged else _trained(core, c, 1000.0),
            num_examples=0 if flagged else 100,
            accuracy=0.0 if flagged else 0.9,
            compute_seconds=0.2,
            peak_memory_bytes=200.0,
            memory_budget_bytes=100.0,
            memory_overrun=flagged,
        ),
    ]
    out = core.incorporate(1, replies)
    assert out.accepted == ["a", "b", "c"] and not out.rejected
    assert out.overruns == ["c"]
    rt = {
        "a": round_time(1.0, a.bytes_down, state_num_bytes(replies[0].state)),
        "b": round_time(3.0, b.bytes_down, state_num_bytes(replies[1].state)),
    }
    rt["c"] = max(rt["a"], rt["b"], round_time(0.2, c.bytes_down, 0))  # the round's max RT
    assert out.round_times["c"] == pytest.approx(rt["c"])
    assert out.accuracies == {"a": 0.8, "b": 0.6, "c": 0.0}
    mean = (0.8 + 0.6 + 0.0) / 3
    assert core.history.latest == {"a": 0.8, "b": 0.6, "c": 0.0}
    min_rt = min(rt["a"], rt["b"])  # c's RT is the max, never the min
    want = {
        "a": 0.8 - mean - 0.1 * (rt["a"] - min_rt) - 50 / 100,
        "b": 0.6 - mean - 0.1 * (rt["b"] - min_rt) - 30 / 100,
        "c": 0.0 - mean - 0.1 * (rt["c"] - min_rt) - 1.0,
    }
    for cid, r in want.items():
        assert out.rewards[cid] == pytest.approx(r, abs=1e-12)
    assert out.rewards["c"] < min(out.rewards["a"], out.rewards["b"])
    # The over-budget client's policy learns (its reward is negative) ...
    assert core.policies["c"].steps == 1
    # ... but its weights never reach the supernet: the merge is a's and b's alone.
    expected = merge_subnets(
        core.family,
        start,
        [(a.arch, replies[0].state, 100), (b.arch, replies[1].state, 100)],
    )
    for key in expected:
        np.testing.assert_array_equal(core.supernet[key], expected[key])


def test_overrun_under_eq8_gets_zero_accuracy_and_max_rt():
    core = PerFedRLNASSearch(
        _family(), SearchConfig(memory_aware=False, lambda_time=0.1, reward_clip=None)
    )
    a, c = core.propose("a"), core.propose("c")
    replies = [
        _reply(core, a, 0.5, 1.0, 10.0, None, 0.1),
        ClientReply("c", c.arch, {}, 0, 0.0, compute_seconds=0.0, memory_overrun=True),
    ]
    out = core.incorporate(1, replies)
    assert out.overruns == ["c"] and out.round_times["c"] == max(out.round_times.values())
    mean = 0.25
    assert out.rewards["c"] == pytest.approx(
        0.0 - mean - 0.1 * (out.round_times["c"] - out.round_times["a"])
    )


def test_within_budget_reply_must_carry_its_budget_when_memory_aware():
    core = PerFedRLNASSearch(_family(), SearchConfig(memory_aware=True))
    a = core.propose("a")
    out = core.incorporate(1, [_reply(core, a, 0.5, 1.0, 10.0, None, 0.1)])
    assert "memory-budget-bytes" in out.rejected["a"]


# ---------------------------------------------------------------- profiles
def test_profiles_are_seeded_per_client_and_deterministic():
    dist = ProfileDistribution(
        seed=7, speed_factor_min=1.0, speed_factor_max=8.0, memory_budget_choices_mb=(16, 64)
    )
    ids = [str(i) for i in range(50)]
    first = dist.profiles(ids)
    assert first == ProfileDistribution(**dist.__dict__).profiles(list(reversed(ids)))
    assert first != ProfileDistribution(**{**dist.__dict__, "seed": 8}).profiles(ids)
    for p in first.values():
        assert 1.0 <= p.speed_factor <= 8.0
        assert p.bandwidth_down_bps in (10e6, 50e6, 100e6)
        assert p.memory_budget_bytes in (16 * MB, 64 * MB)
    assert len({p.speed_factor for p in first.values()}) == 50
    assert len({p.memory_budget_bytes for p in first.values()}) == 2
    # The same in another process (no dependence on hash randomisation).
    code = (
        "from flwr_pfedrlnas.core.profiles import ProfileDistribution as P;"
        "print(P(seed=7, speed_factor_min=1.0, speed_factor_max=8.0,"
        " memory_budget_choices_mb=(16, 64)).profile('3'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == repr(first["3"])
    assert parse_choices("10, 50;100") == (10.0, 50.0, 100.0) and parse_choices("") == ()
    with pytest.raises(ValueError):
        DeviceProfile(speed_factor=0.0)
    assert ProfileDistribution.from_run_config({"seed": 1}) is None
    from_cfg = ProfileDistribution.from_run_config(
        {"simulate-profiles": True, "profile-seed": 7, "memory-budget-choices-mb": "16,64"}
    )
    assert from_cfg.seed == 7 and from_cfg.memory_budget_choices_mb == (16.0, 64.0)


def test_profile_enters_the_round_time():
    profile = DeviceProfile(
        speed_factor=3.0, bandwidth_down_bps=8e6, bandwidth_up_bps=4e6, memory_budget_bytes=None
    )
    core = PerFedRLNASSearch(_family(), SearchConfig(), profiles={"slow": profile})
    # RT_i = compute * speed + 8 bytes_down / bw_down + 8 bytes_up / bw_up
    assert core.round_time_of("slow", 2.0, 1_000_000, 500_000) == pytest.approx(6.0 + 1.0 + 1.0)
    # No profile (deployment): measured compute, configured bandwidth.
    assert core.round_time_of("other", 2.0, 1_250_000, 0) == pytest.approx(2.1)


# ---------------------------------------------------------------- client
def _loaders(pid=0):
    data = load_client_data("embedded", partition_id=pid, num_partitions=20, alpha=1.0, seed=0)
    return make_loaders(data, batch_size=32, seed=0)


def _train_message(budget_bytes=None):
    core = PerFedRLNASSearch(_family(), SearchConfig(seed=1))
    proposal = core.propose("0")
    extra = {} if budget_bytes is None else {m.MEMORY_BUDGET_BYTES: budget_bytes}
    content = RecordDict(
        {
            "arrays": m.arrays_to_record(proposal.state),
            "config": m.subnet_config(core.family, proposal.arch, 1, extra),
        }
    )
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=1)


def _context(node_config):
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


@pytest.mark.parametrize(
    "node_config, budget",
    [({"partition-id": 0, "memory-budget-mb": 0.001}, None), ({"partition-id": 0}, 1000.0)],
)
def test_client_over_budget_does_not_train_and_does_not_raise(node_config, budget, monkeypatch):
    calls = []
    monkeypatch.setattr(client_mod, "train", lambda *a, **k: calls.append(1))
    reply = train_subnet(_train_message(budget), _context(node_config), *_loaders())
    assert not calls  # never trained
    metrics = reply.content["metrics"]
    assert metrics["memory-overrun"] == 1
    assert metrics["peak-memory-bytes"] > metrics["memory-budget-bytes"]
    assert metrics["memory-budget-bytes"] == (budget if budget else 0.001 * MB)
    assert metrics["accuracy"] == 0.0 and len(reply.content["arrays"]) == 0


def test_node_budget_wins_and_within_budget_trains():
    msg = _train_message(1.0)  # the server's simulated budget: 1 byte
    reply = train_subnet(msg, _context({"partition-id": 0, "memory-budget-mb": 4096}), *_loaders())
    metrics = reply.content["metrics"]
    assert metrics["memory-overrun"] == 0 and metrics["memory-budget-bytes"] == 4096 * MB
    assert 0 < metrics["peak-memory-bytes"] < 4096 * MB and len(reply.content["arrays"]) > 0


@pytest.mark.parametrize(
    "where, error",
    [
        ("training_peak_memory", RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")),
        ("train", MemoryError()),
    ],
)
def test_running_out_of_memory_never_raises_out_of_the_client(where, error, monkeypatch):
    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(client_mod, where, boom)
    reply = train_subnet(_train_message(), _context({"partition-id": 0}), *_loaders())
    metrics = reply.content["metrics"]
    assert metrics["memory-overrun"] == 1 and len(reply.content["arrays"]) == 0
    # Other errors still surface (a bug is not an overrun).
    monkeypatch.setattr(client_mod, where, lambda *a, **k: (_ for _ in ()).throw(KeyError("x")))
    with pytest.raises(KeyError):
        train_subnet(_train_message(), _context({"partition-id": 0}), *_loaders())


def test_numpy_client_over_budget_returns_the_weights_unchanged():
    msg = _train_message()
    config = dict(msg.content["config"])
    params = [a.numpy() for a in msg.content["arrays"].values()]
    client = SubnetClient("0", *_loaders(), node_config={"memory-budget-mb": 0.001})
    arrays, n, metrics = client.fit(params, config)
    assert metrics["memory-overrun"] == 1 and n == 0
    assert all(np.array_equal(x, y) for x, y in zip(arrays, params))


def test_cpu_peak_is_a_measurement_that_tracks_the_profiler():
    """The CPU figure agrees with torch.profiler's allocator trace of the same step."""
    from torch.profiler import ProfilerActivity, profile

    from flwr_pfedrlnas.training import training_peak_memory

    torch.manual_seed(0)
    family = _family()
    small = family.build_subnet(family.search_space.smallest())
    large = family.build_subnet(family.search_space.largest())
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    ours = {k: training_peak_memory(mod, x, y) for k, mod in (("s", small), ("l", large))}

    def profiled(model):
        model.train()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
        model.zero_grad(set_to_none=True)
        # Bytes the step itself allocated (positive self allocations).
        return sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages())

    theirs = {"s": profiled(small), "l": profiled(large)}
    assert ours["l"] > ours["s"] and theirs["l"] > theirs["s"]
    # Same order of magnitude on both (saved activations dominate both figures).
    for k in ours:
        assert 0.1 < ours[k] / theirs[k] < 10, (ours, theirs)


# ---------------------------------------------------------------- strategy
NODES = {101: {"client-id": "0"}, 202: {"client-id": "1"}, 303: {"client-id": "2"}}


def _handlers():
    def loaders(ctx):
        return _loaders(int(ctx.node_config["client-id"]))

    return {
        "query": identify,
        "train": lambda msg, ctx: train_subnet(msg, ctx, *loaders(ctx)),
        "evaluate": lambda msg, ctx: evaluate_subnet(msg, ctx, loaders(ctx)[1]),
    }


def test_strategy_sends_simulated_budgets_and_survives_overruns(local_grid, tmp_path):
    # Budgets: 1 KiB (always over) or 4 GiB (always within), drawn per client.
    dist = ProfileDistribution(seed=0, memory_budget_choices_mb=(1 / 1024, 4096))
    budgets = {c: dist.profile(c).memory_budget_bytes for c in ("0", "1", "2")}
    assert len(set(budgets.values())) == 2  # both kinds present with this seed
    strategy = PerFedRLNAS(
        _family(),
        clients_per_round=3,
        min_available_nodes=3,
        search_config=SearchConfig(memory_aware=True, seed=0),
        profiles=dist,
        results_dir=str(tmp_path / "results"),
    )
    grid = local_grid(NODES, _handlers())
    strategy.start(grid, num_rounds=2)
    for msg in grid.sent:
        if msg.metadata.message_type == MessageType.TRAIN:
            cid = NODES[msg.metadata.dst_node_id]["client-id"]
            assert msg.content["config"][m.MEMORY_BUDGET_BYTES] == budgets[cid]
    rows = strategy.session.recorder.rounds
    over = sorted(c for c, b in budgets.items() if b < MB)
    assert all(r["num-failed"] == 0 and r["num-accepted"] == 3 for r in rows)
    assert all(r["overruns"] == " ".join(over) for r in rows)
    assert all(math.isfinite(r["reward-mean"]) for r in rows)
    assert strategy.search.history.latest[over[0]] == 0.0
    assert set(strategy.search.profiles) == {"0", "1", "2"}


def test_empty_arrays_reply_without_overrun_is_rejected(local_grid, tmp_path):
    def tamper(msg, reply):
        if msg.metadata.message_type == MessageType.TRAIN and msg.metadata.dst_node_id == 101:
            reply.content["arrays"] = ArrayRecord()
        return reply

    strategy = PerFedRLNAS(
        _family(), clients_per_round=3, min_available_nodes=3, search_config=SearchConfig()
    )
    strategy.start(local_grid(NODES, _handlers(), tamper=tamper), num_rounds=1)
    row = strategy.session.recorder.rounds[-1]
    assert row["num-accepted"] == 2 and "0: rejected" in row["failures"]
    assert ConfigRecord  # keep the import used in both Flower versions


def test_run_config_turns_the_features_on():
    import tomllib
    from pathlib import Path

    from flwr_pfedrlnas.flower.runconfig import message_api_kwargs, search_config_from_run_config

    app = Path(__file__).resolve().parent.parent / "apps" / "pfedrlnas"
    cfg = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert search_config_from_run_config(cfg).memory_aware is False
    assert message_api_kwargs(cfg) == {
        "profiles": None,
        "num_new_clients": 0,
        "new_client_rounds": 0,
        "diagnostic_subnets": 2,
        "diagnose_every": 0,
    }
    for name in ("memory-budget", "new-clients", "lambda-time-0", "more-clients-per-round"):
        override = tomllib.loads((app / "ablations" / f"{name}.toml").read_text())
        assert set(override) <= set(cfg), name  # only keys the app knows
        merged = {**cfg, **override}
        search_config_from_run_config(merged)
        kwargs = message_api_kwargs(merged)
    merged = {**cfg, **tomllib.loads((app / "ablations" / "memory-budget.toml").read_text())}
    assert search_config_from_run_config(merged).memory_aware is True
    dist = message_api_kwargs(merged)["profiles"]
    assert dist.memory_budget_choices_mb == (30.0, 35.0, 40.0, 64.0)
    assert kwargs["num_new_clients"] == 0
