"""Property-based tests (hypothesis) of the merge, the policies and the rewards."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flwr_pfedrlnas.core.aggregation import merge_subnets
from flwr_pfedrlnas.core.policy import ArchitecturePolicy
from flwr_pfedrlnas.core.search import ClientReply, PerFedRLNASSearch, SearchConfig
from flwr_pfedrlnas.supernets import get_supernet

FAMILY = get_supernet("elastic-cnn", num_stages=2, base_width=4)
SPACE = FAMILY.search_space
SUPERNET = FAMILY.init_supernet_state(seed=0)
DIMS = list(SPACE)

archs = st.tuples(*[st.integers(0, len(d) - 1) for d in DIMS]).map(
    lambda idx: SPACE.from_indices(list(idx))
)
# One returned subnet: architecture, a seed for its values, its number of examples.
updates = st.lists(
    st.tuples(archs, st.integers(0, 2**31 - 1), st.integers(1, 10_000)), min_size=1, max_size=5
)


def _subnet_values(arch, seed, scale=10.0):
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in FAMILY.subnet_shapes(arch).items():
        dtype = SUPERNET[key].dtype
        if dtype.kind == "f":
            out[key] = (rng.normal(size=shape) * scale).astype(dtype)
        else:
            out[key] = rng.integers(0, 1000, size=shape).astype(dtype)
    return out


def _materialise(ups):
    return [(arch, _subnet_values(arch, seed), n) for arch, seed, n in ups]


def _coverage(ups):
    """Per key: list of (mask, values placed in supernet coordinates) per update."""
    cover = {}
    for arch, state, _ in ups:
        for key, slices in FAMILY.subnet_slices(arch).items():
            mask = np.zeros(SUPERNET[key].shape, bool)
            mask[slices] = True
            full = np.zeros(SUPERNET[key].shape, np.float64)
            full[slices] = state[key]
            cover.setdefault(key, []).append((mask, full))
    return cover


@settings(max_examples=60, deadline=None)
@given(updates, st.sampled_from(["examples", "uniform"]))
def test_merge_is_a_convex_combination_entry_by_entry(ups, weighting):
    ups = _materialise(ups)
    merged = merge_subnets(FAMILY, SUPERNET, ups, weighting=weighting)
    cover = _coverage(ups)
    for key, old in SUPERNET.items():
        new = merged[key]
        assert new.dtype == old.dtype and new.shape == old.shape
        parts = cover.get(key, [])
        covered = np.zeros(old.shape, bool)
        lo = np.full(old.shape, np.inf)
        hi = np.full(old.shape, -np.inf)
        for mask, full in parts:
            covered |= mask
            lo = np.where(mask, np.minimum(lo, full), lo)
            hi = np.where(mask, np.maximum(hi, full), hi)
        # Uncovered entries keep their bits.
        assert new[~covered].tobytes() == old[~covered].tobytes()
        # Covered entries lie between the smallest and largest covering value
        # (exactly: both bounds are representable and rounding is monotonic).
        vals = new[covered].astype(np.float64)
        assert np.all(vals >= lo[covered]) and np.all(vals <= hi[covered]), key
        assert np.all(np.isfinite(vals))


@settings(max_examples=40, deadline=None)
@given(updates, st.randoms(use_true_random=False))
def test_merge_is_invariant_to_reply_order(ups, rnd):
    ups = _materialise(ups)
    shuffled = list(ups)
    rnd.shuffle(shuffled)
    a = merge_subnets(FAMILY, SUPERNET, ups)
    b = merge_subnets(FAMILY, SUPERNET, shuffled)
    for key in SUPERNET:
        # Float sums in another order may differ in the last float64 bit, which can
        # round to a neighbouring float32: at most one unit in the last place.
        np.testing.assert_array_max_ulp(a[key], b[key], maxulp=1)


@settings(max_examples=40, deadline=None)
@given(updates)
def test_merge_of_identical_copies_is_that_copy(ups):
    """A convex combination of equal values is that value, bit for bit."""
    arch, seed, _ = ups[0]
    state = _subnet_values(arch, seed)
    merged = merge_subnets(FAMILY, SUPERNET, [(arch, state, n) for _, _, n in ups])
    for key, slices in FAMILY.subnet_slices(arch).items():
        assert merged[key][slices].tobytes() == state[key].tobytes()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 1),  # accuracy
            st.floats(0, 1e6),  # compute-seconds (absurd ones included)
            st.integers(1, 10**6),  # num-examples
            st.integers(0, 2**31 - 1),  # seed of the returned weights
        ),
        min_size=1,
        max_size=4,
    ),
    st.randoms(use_true_random=False),
)
def test_core_round_is_order_invariant_and_rewards_bounded(clients, rnd):
    def run(order):
        search = PerFedRLNASSearch(FAMILY, SearchConfig(seed=5, lambda_time=0.01))
        props = [search.propose(f"c{i}") for i in range(len(clients))]
        replies = []
        for p, (acc, secs, n, seed) in zip(props, clients):
            state = _subnet_values(p.arch, seed, scale=1.0)
            replies.append(ClientReply(p.client_id, None, state, n, acc, compute_seconds=secs))
        outcome = search.incorporate(1, [replies[i] for i in order])
        return search, outcome

    order = list(range(len(clients)))
    a, out_a = run(order)
    rnd.shuffle(order)
    b, out_b = run(order)
    assert {k: v.tobytes() for k, v in a.supernet.items()} == {
        k: v.tobytes() for k, v in b.supernet.items()
    }
    assert json.dumps({c: p.state_dict() for c, p in a.policies.items()}, sort_keys=True) == (
        json.dumps({c: p.state_dict() for c, p in b.policies.items()}, sort_keys=True)
    )
    assert out_a.rewards == out_b.rewards
    assert all(-2.0 <= r <= 2.0 for r in out_a.rewards.values())


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["adam", "sgd"]),
    st.floats(1e-3, 5.0),
    st.lists(st.tuples(archs, st.floats(-1.0, 1.0)), min_size=1, max_size=300),
)
def test_policy_stays_finite_under_bounded_rewards(optimizer, lr, steps):
    policy = ArchitecturePolicy(SPACE, lr=lr, optimizer=optimizer)
    rng = np.random.default_rng(0)
    for arch, reward in steps:
        policy.update(arch, reward)
    assert policy.steps == len(steps)
    for name, p in policy.probabilities().items():
        assert np.all(np.isfinite(policy.alpha[name]))
        assert np.all(np.isfinite(p)) and np.all(p >= 0) and abs(p.sum() - 1) < 1e-9
    SPACE.validate(policy.sample(rng))  # still samples a valid architecture
    SPACE.validate(policy.argmax())
    assert np.isfinite(policy.entropy())
    # The state round-trips through JSON.
    clone = ArchitecturePolicy(SPACE)
    clone.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert clone.state_dict() == policy.state_dict()


@settings(max_examples=30, deadline=None)
@given(archs, st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_policy_refuses_non_finite_steps_and_keeps_its_state(arch, reward):
    policy = ArchitecturePolicy(SPACE, optimizer="sgd", lr=10.0)
    policy.update(arch, 0.5)
    before = copy.deepcopy(policy.state_dict())
    with np.errstate(over="ignore", invalid="ignore"):
        with pytest.raises((ValueError, FloatingPointError)):
            policy.update(arch, reward)
    assert policy.state_dict() == before
