"""Our reward and policy options: hand-computed rewards, validation, checkpoints, MACs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flwr_pfedrlnas.core.cost import subnet_macs
from flwr_pfedrlnas.core.policy import ArchitecturePolicy
from flwr_pfedrlnas.core.profiles import DeviceProfile
from flwr_pfedrlnas.core.rewards import RewardStatistics, accuracy_time_rewards
from flwr_pfedrlnas.core.search import ClientReply, PerFedRLNASSearch, SearchConfig
from flwr_pfedrlnas.supernets import get_supernet


def _family():
    return get_supernet("elastic-cnn", num_stages=2, base_width=4)


def _round(search, rnd, accs, compute=None):
    """One round: every client in ``accs`` proposed, replies with its accuracy."""
    replies = []
    for cid, acc in accs.items():
        p = search.propose(cid)
        secs = 0.0 if compute is None else compute[cid]
        replies.append(
            ClientReply(cid, p.arch, p.state, 10, acc, compute_seconds=secs, val_accuracy=acc)
        )
    return search.incorporate(rnd, replies)


def test_client_mean_reward_ignores_other_clients_data():
    # Client a's accuracies are the same in both federations; b is easy in one, hard in
    # the other. Under our per-client baseline a's rewards are identical and equal the
    # hand-computed s_t - running mean (decay 0.9); under eq. 8 they are not.
    a_accs = [0.60, 0.70, 0.65]
    rewards = {}
    for name, b_accs in (("easy", [0.9, 0.95, 0.92]), ("hard", [0.1, 0.15, 0.12])):
        for baseline in ("client-mean", "global-mean"):
            cfg = SearchConfig(reward_baseline=baseline, lambda_time=0.0, seed=1)
            search = PerFedRLNASSearch(_family(), cfg)
            got = [
                _round(search, t, {"a": a, "b": b}).rewards["a"]
                for t, (a, b) in enumerate(zip(a_accs, b_accs), start=1)
            ]
            rewards[name, baseline] = got
    mean_after_2 = 0.9 * 0.60 + 0.1 * 0.70
    expected = [0.0, 0.70 - 0.60, 0.65 - mean_after_2]
    assert rewards["easy", "client-mean"] == pytest.approx(expected, abs=1e-12)
    assert rewards["hard", "client-mean"] == rewards["easy", "client-mean"]
    # Eq. 8 (paper): a's reward is set by b's difficulty (round 1: 0.6 - 0.75 vs 0.6 - 0.35).
    assert rewards["easy", "global-mean"][0] == pytest.approx(0.60 - 0.75)
    assert rewards["hard", "global-mean"][0] == pytest.approx(0.60 - 0.35)


def test_client_mean_time_term_is_the_clients_own():
    # Score s = acc - lambda * RT, RT = compute + bytes / bandwidth; no min RT of the round.
    search = PerFedRLNASSearch(_family(), SearchConfig(reward_baseline="client-mean", seed=2))
    first = _round(search, 1, {"a": 0.5, "b": 0.5}, compute={"a": 10.0, "b": 1.0})
    second = _round(search, 2, {"a": 0.5, "b": 0.5}, compute={"a": 4.0, "b": 1.0})
    s1 = 0.5 - 0.01 * first.round_times["a"]
    s2 = 0.5 - 0.01 * second.round_times["a"]
    assert first.rewards == {"a": 0.0, "b": 0.0}
    assert second.rewards["a"] == pytest.approx(s2 - s1, abs=1e-12)
    assert second.round_times["a"] == pytest.approx(4.0 + 8 * 2 * second.bytes_up["a"] / 100e6)


def test_paper_default_is_eq8_bit_for_bit():
    search = PerFedRLNASSearch(_family(), SearchConfig(lambda_time=0.1, seed=4))
    seen = {}
    for rnd, accs in enumerate([{"a": 0.8, "b": 0.6}, {"a": 0.7, "c": 0.4}], start=1):
        out = _round(search, rnd, accs, compute={"a": 3.0, "b": 5.0, "c": 2.0})
        seen.update(accs)
        mean = math.fsum(seen.values()) / len(seen)
        assert out.rewards == accuracy_time_rewards(accs, out.round_times, mean, 0.1)


def test_standardise_hand_computed():
    shared = RewardStatistics(decay=0.5, standardise="shared")
    var = 0.5 * 0.2**2 + 0.5 * 0.1**2  # a then b, in client order
    assert shared.scaled({"b": -0.1, "a": 0.2}) == pytest.approx(
        {"a": 0.2 / math.sqrt(var), "b": -0.1 / math.sqrt(var)}
    )
    own = RewardStatistics(decay=0.5, standardise="client")
    assert own.scaled({"a": 0.2, "b": -0.1}) == pytest.approx({"a": 1.0, "b": -1.0})
    assert own.scaled({"a": 0.1}) == pytest.approx({"a": 0.1 / math.sqrt(0.5 * 0.04 + 0.5 * 0.01)})
    assert RewardStatistics().scaled({"a": 0.3}) == {"a": 0.3}


def test_sgd_step_follows_the_rewards_size():
    # Adam's first step is about lr whatever the reward; SGD's is lr * r * (onehot - p).
    space = _family().search_space
    arch = space.largest()
    for reward in (1e-6, 0.3):
        sgd = ArchitecturePolicy(space, lr=0.1, optimizer="sgd")
        sgd.update(arch, reward)
        name = space.names[0]
        assert sgd.alpha[name][-1] == pytest.approx(0.1 * reward * 0.5)


def test_entropy_bonus_is_the_entropy_gradient():
    space = _family().search_space
    policy = ArchitecturePolicy(space, lr=0.1, optimizer="sgd")
    policy.alpha = {n: np.array([0.7, -0.4]) for n in policy.alpha}
    grad = policy.entropy_gradient()
    name = space.names[0]
    for j in range(2):
        bumped = ArchitecturePolicy(space)
        bumped.alpha = {n: a.copy() for n, a in policy.alpha.items()}
        bumped.alpha[name][j] += 1e-6
        numeric = (bumped.entropy() - policy.entropy()) / 1e-6
        assert grad[name][j] == pytest.approx(numeric, rel=1e-4)
    before = policy.entropy()
    policy.update(space.largest(), 0.0, entropy_bonus=1.0)
    assert policy.entropy() > before


def test_warmup_updates_keep_the_policy_uniform():
    cfg = SearchConfig(reward_baseline="client-mean", warmup_updates=2, seed=3)
    search = PerFedRLNASSearch(_family(), cfg)
    for rnd, acc in enumerate([0.5, 0.9], start=1):
        _round(search, rnd, {"a": acc})
        assert all(np.all(a == 0) for a in search.policy("a").alpha.values())
        assert search.reward_stats.count("a") == rnd
    _round(search, 3, {"a": 0.1})
    assert any(np.any(a != 0) for a in search.policy("a").alpha.values())


def test_commit_round_trains_the_argmax_and_freezes_the_policy():
    cfg = SearchConfig.recommended(commit_round=4, seed=1, reward_accuracy="validation")
    search = PerFedRLNASSearch(_family(), cfg)
    for rnd, acc in enumerate([0.2, 0.6, 0.4], start=1):
        _round(search, rnd, {"a": acc, "b": 1 - acc})
    assert [search.config.committed(r) for r in (3, 4, 9)] == [False, True, True]
    alpha = {c: {n: a.copy() for n, a in search.policy(c).alpha.items()} for c in "ab"}
    assert any(np.any(a != 0) for a in alpha["a"].values())  # rounds 1-3 did learn
    for rnd, acc in ((4, 0.9), (5, 0.1)):
        # The round's number is the proposal's, given or (here) the next one.
        proposals = {c: search.propose(c, rnd if c == "a" else None) for c in "ab"}
        assert all(p.arch == search.policy(c).argmax() for c, p in proposals.items())
        outcome = search.incorporate(
            rnd,
            [
                ClientReply(c, p.arch, p.state, 10, acc, val_accuracy=acc)
                for c, p in proposals.items()
            ],
        )
        assert outcome.accepted == ["a", "b"] and set(outcome.rewards) == {"a", "b"}
        for c in "ab":  # rewarded and merged, but no policy moves
            assert all(np.array_equal(search.policy(c).alpha[n], a) for n, a in alpha[c].items())
    # commit_round 0 (the paper) never commits, however late the round.
    assert not SearchConfig().committed(10**6)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reward_baseline", "median"),
        ("baseline_decay", 1.0),
        ("baseline_decay", -0.1),
        ("reward_standardise", "global"),
        ("entropy_bonus", -0.01),
        ("entropy_bonus", float("nan")),
        ("warmup_updates", -1),
        ("warmup_updates", 1.5),
        ("round_time_model", "flops"),
        ("seconds_per_mac", 0.0),
        ("policy_optimizer", "rmsprop"),
        ("commit_round", -1),
        ("commit_round", 2.0),
        ("commit_round", True),
    ],
)
def test_bad_option_is_refused_naming_field_and_value(field, value):
    with pytest.raises(ValueError, match=field) as err:
        SearchConfig(**{field: value})
    assert repr(value) in str(err.value)


def test_presets():
    assert SearchConfig.preset("paper") == SearchConfig()
    ours = SearchConfig.preset("ours", seed=5)
    assert ours == SearchConfig.recommended(seed=5) and ours.reward_baseline == "client-mean"
    with pytest.raises(ValueError, match="'best'"):
        SearchConfig.preset("best")


def test_checkpoint_round_trip_of_the_new_state(tmp_path):
    cfg = SearchConfig.recommended(entropy_bonus=0.01, warmup_updates=1, seed=6)
    search = PerFedRLNASSearch(_family(), cfg)
    rng = np.random.default_rng(0)
    for rnd in range(1, 5):
        _round(search, rnd, {c: float(rng.uniform(0.3, 0.9)) for c in ("a", "b", "c")})
    search.search_pending = {"n": search.propose_search_only("n").arch}
    search.incorporate_search_only({"n": 0.4})
    search.save(tmp_path)
    resumed, _ = PerFedRLNASSearch.from_checkpoint(tmp_path, cfg)
    assert resumed.reward_stats.state_dict() == search.reward_stats.state_dict()
    assert resumed.search_stats.state_dict() == search.search_stats.state_dict()
    assert resumed.reward_stats.shared_var is not None
    for cid, policy in search.policies.items():
        assert resumed.policies[cid].state_dict() == policy.state_dict()
    nxt = {"a": 0.7, "b": 0.2, "c": 0.5}
    assert _round(resumed, 5, nxt).rewards == _round(search, 5, nxt).rewards


def test_checkpoint_without_the_new_state_still_loads(tmp_path):
    search = PerFedRLNASSearch(_family(), SearchConfig(seed=1))
    _round(search, 1, {"a": 0.5})
    search.save(tmp_path)
    meta = json.loads((tmp_path / "state.json").read_text())
    for key in ("reward_stats", "search_stats", "search_config"):
        meta.pop(key)
    (tmp_path / "state.json").write_text(json.dumps(meta))
    resumed, _ = PerFedRLNASSearch.from_checkpoint(tmp_path, SearchConfig.recommended())
    assert resumed.reward_stats.counts == {} and resumed.reward_stats.means == {}
    assert resumed.policies["a"].state_dict() == search.policies["a"].state_dict()


def test_search_only_client_mean_is_per_client():
    cfg = SearchConfig(reward_baseline="client-mean")
    rewards = []
    for other in (0.9, 0.1):
        core = PerFedRLNASSearch(_family(), cfg)
        got = []
        for acc in (0.5, 0.6):
            core.search_pending = {c: core.propose_search_only(c).arch for c in ("x", "y")}
            got.append(core.incorporate_search_only({"x": acc, "y": other})["x"])
        rewards.append(got)
    assert rewards[0] == rewards[1] == pytest.approx([0.0, 0.1])


def test_subnet_macs_hand_counted():
    # elastic-cnn, base width 4, 1 input channel, 32x32; BatchNorm and ReLU are not MACs.
    family = _family()
    smallest = 32 * 32 * 2 * 1 + 16 * 16 * 4 * 2 + 4 * 10  # 1x1 convs (stride 2), linear
    largest = (
        32 * 32 * 4 * 1 * 9
        + 32 * 32 * 4 * 4 * 9
        + 16 * 16 * 8 * 4 * 9
        + 16 * 16 * 8 * 8 * 9
        + 8 * 10
    )
    assert subnet_macs(family, family.smallest_architecture()) == smallest
    assert subnet_macs(family, family.largest_architecture()) == largest


def test_macs_round_time_is_deterministic_and_uses_the_profile():
    family = _family()
    cfg = SearchConfig(round_time_model="macs", seconds_per_mac=1e-6)
    profile = DeviceProfile(2.0, 8e6, 16e6)
    search = PerFedRLNASSearch(family, cfg, profiles={"slow": profile})
    arch = family.largest_architecture()
    macs = subnet_macs(family, arch)
    got = search.round_time_of("slow", 123.0, 1_000_000, 500_000, arch)
    assert got == pytest.approx(macs * 1e-6 * 2.0 + 1.0 + 0.25)
    assert search.round_time_of("slow", 5.0, 1_000_000, 500_000, arch) == got
    measured = PerFedRLNASSearch(family, SearchConfig(), profiles={"slow": profile})
    assert measured.round_time_of("slow", 5.0, 0, 0, arch) == pytest.approx(10.0)


READS = {"validation": "val_accuracy", "deployed": "deployed_val_accuracy"}
FIELD = {"validation": "val-accuracy", "deployed": "deployed-val-accuracy"}


@pytest.mark.parametrize("split", ["validation", "deployed"])
def test_our_reward_reads_its_own_accuracy_and_never_the_others(split):
    # Same test accuracies; the validation split after training and the received
    # subnet before it (deployed) differ: each reward follows only its own.
    rewards = {}
    for reads in ("test", "validation", "deployed"):
        cfg = SearchConfig(lambda_time=0.0, seed=2, reward_accuracy=reads)
        search = PerFedRLNASSearch(_family(), cfg)
        replies = []
        for cid, val, deployed in (("a", 0.9, 0.2), ("b", 0.1, 0.6)):
            p = search.propose(cid)
            replies.append(
                ClientReply(
                    cid, p.arch, p.state, 10, 0.5, val_accuracy=val, deployed_val_accuracy=deployed
                )
            )
        rewards[reads] = search.incorporate(1, replies).rewards
    assert rewards["test"] == {"a": 0.0, "b": 0.0}  # eq. 8: both at the mean
    # Eq. 8 over the chosen accuracy: a - mean, b - mean.
    expected = {"validation": {"a": 0.4, "b": -0.4}, "deployed": {"a": -0.2, "b": 0.2}}
    assert rewards[split] == pytest.approx(expected[split])


@pytest.mark.parametrize("split", ["validation", "deployed"])
def test_a_reply_without_the_rewards_accuracy_is_refused(split):
    search = PerFedRLNASSearch(_family(), SearchConfig(reward_accuracy=split))
    p = search.propose("a")
    before = {k: v.copy() for k, v in search.supernet.items()}
    other = {READS[s]: 0.5 for s in READS if s != split}  # the other one does not count
    outcome = search.incorporate(1, [ClientReply("a", p.arch, p.state, 10, 0.5, **other)])
    assert (
        f"{FIELD[split]} is missing" in outcome.rejected["a"]
        and "val-fraction" in outcome.rejected["a"]
    )
    assert all(np.array_equal(before[k], search.supernet[k]) for k in before)
    p = search.propose("a")
    bad = ClientReply("a", p.arch, p.state, 10, 0.5, **{READS[split]: 1.5})
    outcome = search.incorporate(2, [bad])
    assert outcome.rejected["a"] == f"{FIELD[split]} is 1.5, out of range"
    assert all(np.array_equal(before[k], search.supernet[k]) for k in before)


def test_an_unknown_reward_accuracy_is_refused_naming_it():
    with pytest.raises(ValueError, match="reward_accuracy must be one of .* got 'train'"):
        SearchConfig(reward_accuracy="train")


def test_commit_round_from_the_run_config_survives_a_preset():
    import tomllib
    from pathlib import Path

    from flwr_pfedrlnas.flower.runconfig import search_config_from_run_config

    app = Path(__file__).resolve().parent.parent / "apps" / "pfedrlnas"
    cfg = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert search_config_from_run_config(cfg).commit_round == 0  # the paper never commits
    for preset in ("", "ours", "paper"):
        chosen = search_config_from_run_config({**cfg, "search-preset": preset, "commit-round": 81})
        assert chosen.commit_round == 81, preset
    with pytest.raises(ValueError, match=r"commit_round .*-3"):
        search_config_from_run_config({**cfg, "commit-round": -3})
