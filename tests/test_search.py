"""The framework-free server core: rounds, rejection of bad replies, checkpoints."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

from flwr_pfedrlnas.core.search import ClientReply, PerFedRLNASSearch, SearchConfig
from flwr_pfedrlnas.supernets import get_supernet


def _family():
    return get_supernet("elastic-cnn", num_stages=2, base_width=4)


def _reply(proposal, accuracy=0.5, shift=0.01, compute=1.0, n=10, **kw):
    state = {
        k: (v + shift).astype(v.dtype) if v.dtype.kind == "f" else v
        for k, v in proposal.state.items()
    }
    return ClientReply(
        proposal.client_id, dict(proposal.arch), state, n, accuracy, compute_seconds=compute, **kw
    )


def _snapshot(search):
    return (
        {k: v.tobytes() for k, v in search.supernet.items()},
        {c: copy.deepcopy(p.state_dict()) for c, p in search.policies.items()},
        dict(search.history.latest),
    )


def test_core_imports_no_flower():
    # Every module of the core and of the supernets, found from the tree, not listed by hand.
    code = (
        "import importlib, pkgutil, sys, flwr_pfedrlnas.core, flwr_pfedrlnas.supernets;"
        "mods = [m.name for p in (flwr_pfedrlnas.core, flwr_pfedrlnas.supernets)"
        " for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')];"
        "[importlib.import_module(m) for m in mods];"
        "assert len(mods) >= 10, mods;"
        "flwr_pfedrlnas.supernets.available_supernets();"
        "bad = [m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_round_rewards_policies_and_merge():
    search = PerFedRLNASSearch(_family(), SearchConfig(lambda_time=0.1, seed=3))
    props = {c: search.propose(c) for c in ("a", "b", "c")}
    replies = [
        _reply(props["a"], accuracy=0.8, compute=10.0),
        _reply(props["b"], accuracy=0.6, compute=12.0),
        _reply(props["c"], accuracy=0.7, compute=15.0),
    ]
    outcome = search.incorporate(1, replies)
    assert outcome.accepted == ["a", "b", "c"] and not outcome.rejected
    mean = (0.8 + 0.6 + 0.7) / 3
    rt = outcome.round_times
    for cid, acc in (("a", 0.8), ("b", 0.6), ("c", 0.7)):
        expected = acc - mean - 0.1 * (rt[cid] - min(rt.values()))
        assert outcome.rewards[cid] == pytest.approx(expected)
        # transfer time of the subnet, both ways, at 100 Mbit/s
        nbytes = sum(v.nbytes for v in props[cid].state.values())
        assert rt[cid] == pytest.approx({"a": 10, "b": 12, "c": 15}[cid] + 2 * 8 * nbytes / 100e6)
        assert search.policies[cid].steps == 1
    assert outcome.latency == pytest.approx(max(rt.values()))
    assert search.completed_rounds == 1 and not search.pending


@pytest.mark.parametrize(
    "corrupt, field",
    [
        (lambda r: setattr(r, "accuracy", 1.5), "accuracy is 1.5"),
        (lambda r: setattr(r, "accuracy", float("nan")), "accuracy is nan"),
        (lambda r: setattr(r, "num_examples", 0), "num-examples is 0"),
        (lambda r: setattr(r, "num_examples", 10**12), "num-examples"),
        (lambda r: setattr(r, "compute_seconds", -1.0), "compute-seconds is -1.0"),
        (lambda r: setattr(r, "client_id", "stranger"), "no architecture was sent"),
        (lambda r: r.arch.update({"stage1.kernel": 5}), "'stage1.kernel' has value 5"),
        (lambda r: r.state.update({"classifier.bias": r.state["classifier.bias"] * np.nan}), "NaN"),
        (lambda r: r.state.update({"classifier.bias": np.zeros(3, np.float32)}), "shape"),
        (lambda r: r.state.pop("classifier.bias"), "missing"),
    ],
)
def test_bad_reply_is_rejected_and_changes_nothing(corrupt, field):
    search = PerFedRLNASSearch(_family(), SearchConfig(seed=1))
    search.incorporate(1, [_reply(search.propose("a"))])  # some history first
    before = _snapshot(search)
    bad = _reply(search.propose("a"), accuracy=0.7)
    if field.startswith("'stage1.kernel'"):
        bad.arch["stage1.kernel"] = 3 if bad.arch["stage1.kernel"] == 1 else 1
        field = "arch is"
    else:
        corrupt(bad)
    outcome = search.incorporate(2, [bad])
    assert outcome.accepted == []
    assert field in next(iter(outcome.rejected.values()))
    assert _snapshot(search) == before


def test_a_bad_reply_does_not_stop_the_good_ones():
    search = PerFedRLNASSearch(_family(), SearchConfig(seed=1))
    good, bad = _reply(search.propose("a")), _reply(search.propose("b"), accuracy=-0.1)
    outcome = search.incorporate(1, [good, bad])
    assert outcome.accepted == ["a"] and "accuracy" in outcome.rejected["b"]
    assert search.policies["a"].steps == 1 and search.policies["b"].steps == 0


def test_duplicate_replies_reject_both():
    search = PerFedRLNASSearch(_family(), SearchConfig(seed=1))
    p = search.propose("a")
    before = _snapshot(search)
    outcome = search.incorporate(1, [_reply(p), _reply(p, shift=0.5)])
    assert outcome.accepted == [] and "duplicate" in outcome.rejected["a"]
    assert _snapshot(search) == before


def test_deploy_is_argmax_subnet():
    family = _family()
    search = PerFedRLNASSearch(family, SearchConfig(seed=0))
    search.policy("x").alpha["stage1.kernel"] = np.array([0.0, 3.0])
    arch, state = search.deploy("x")
    assert arch["stage1.kernel"] == 3
    assert state["stages.0.0.conv.weight"].shape[-1] == 3


def _run(search, rounds, clients=("a", "b", "c", "d")):
    for rnd in range(search.completed_rounds + 1, search.completed_rounds + rounds + 1):
        picked = search.sample_clients(list(clients), 2)
        replies = []
        for i, cid in enumerate(picked):
            p = search.propose(cid)
            acc = 0.3 + 0.1 * (p.arch["stage2.width"] == 1.0) + 0.05 * i
            replies.append(_reply(p, accuracy=acc, shift=0.001 * rnd, compute=1 + i))
        search.incorporate(rnd, replies)


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    straight = PerFedRLNASSearch(_family(), SearchConfig(seed=7))
    _run(straight, 6)

    first = PerFedRLNASSearch(_family(), SearchConfig(seed=7))
    _run(first, 3)
    first.save(tmp_path, extra={"note": "three rounds"})
    resumed, extra = PerFedRLNASSearch.from_checkpoint(tmp_path, SearchConfig(seed=7))
    assert extra == {"note": "three rounds"} and resumed.completed_rounds == 3
    _run(resumed, 3)

    assert _snapshot(resumed) == _snapshot(straight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "supernet-000003.npz"]


def test_checkpoint_of_another_family_is_refused(tmp_path):
    PerFedRLNASSearch(_family()).save(tmp_path)
    other = PerFedRLNASSearch(get_supernet("elastic-cnn", num_stages=1))
    before = _snapshot(other)
    with pytest.raises(ValueError, match="checkpoint is for elastic-cnn"):
        other.load_state_dict(PerFedRLNASSearch.read_checkpoint(tmp_path))
    assert _snapshot(other) == before
