"""The optimised extraction, merge and decoding against plain reference implementations."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from flwr_pfedrlnas.core.aggregation import check_subnet_state, extract_subnet, merge_subnets
from flwr_pfedrlnas.core.search import ClientReply, PerFedRLNASSearch, SearchConfig
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.supernets import available_supernets, cpu_preset, get_supernet

FAMILIES = available_supernets()
_FAMILY_CACHE: dict[str, object] = {}


def _family(name):
    if name not in _FAMILY_CACHE:
        _FAMILY_CACHE[name] = get_supernet(name, **cpu_preset(name))
    return _FAMILY_CACHE[name]


def _random_state(family, arch, supernet, rng):
    """A subnet state of ``arch`` with random values in the supernet's dtypes."""
    out = {}
    for key, slices in family.subnet_slices(arch).items():
        old = supernet[key]
        shape = old[slices].shape if slices else old.shape
        if old.dtype.kind == "f":
            out[key] = rng.standard_normal(shape).astype(old.dtype)
        else:
            out[key] = rng.integers(0, 1000, size=shape).astype(old.dtype)
    return out


def _updates(family, supernet, rng, num):
    updates = []
    for i in range(num):
        arch = family.search_space.sample(rng)
        # Whole and fractional weights: the sums' order matters for the latter.
        weight = int(rng.integers(1, 500)) if i % 2 else float(rng.uniform(0.1, 9.9))
        updates.append((arch, _random_state(family, arch, supernet, rng), weight))
    return updates


def reference_merge(family, supernet, updates, weighting="examples"):
    """The count-normalised masked mean, entry by entry, with boolean coverage masks.

    For every entry: ``old + (sum_i w_i (x_i - old)) / sum_i w_i`` over the clients
    whose mask covers it, summed in the updates' order, in float64; entries no
    mask covers keep their old value.
    """
    delta = {k: np.zeros(v.shape, np.float64) for k, v in supernet.items()}
    weight_sum = {k: np.zeros(v.shape, np.float64) for k, v in supernet.items()}
    for arch, state, num_examples in updates:
        w = 1.0 if weighting == "uniform" else float(num_examples)
        for key, slices in family.subnet_slices(arch).items():
            old = supernet[key].astype(np.float64)
            mask = np.zeros(old.shape, dtype=bool)
            mask[slices] = True
            # The box's entries in C order are the mask's True positions in C order.
            value = np.asarray(state[key], dtype=np.float64).reshape(-1)
            assert value.size == np.count_nonzero(mask)
            delta[key][mask] = delta[key][mask] + w * (value - old[mask])
            weight_sum[key][mask] = weight_sum[key][mask] + w
    merged = {}
    for key, old in supernet.items():
        out = old.copy()
        covered = weight_sum[key] > 0
        value = old.astype(np.float64)[covered] + delta[key][covered] / weight_sum[key][covered]
        if old.dtype.kind in "iu":
            value = np.rint(value)
        out[covered] = value.astype(old.dtype)
        merged[key] = out
    return merged


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("num", [1, 2, 5])
@pytest.mark.parametrize("weighting", ["examples", "uniform"])
@pytest.mark.parametrize("precision", ["native", "float64"])
def test_merge_equals_reference_bit_for_bit(name, num, weighting, precision):
    family = _family(name)
    supernet = family.init_supernet_state(seed=1)
    if precision == "float64":  # float64 tensors show a last-bit difference of the mean
        supernet = {
            k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in supernet.items()
        }
    rng = np.random.default_rng([num, len(name), weighting == "uniform"])
    updates = _updates(family, supernet, rng, num)
    before = {k: v.copy() for k, v in supernet.items()}

    merged = merge_subnets(family, supernet, updates, weighting=weighting)
    expected = reference_merge(family, supernet, updates, weighting=weighting)

    assert list(merged) == list(supernet)
    for key in supernet:
        assert _same_bits(merged[key], expected[key]), key
        assert _same_bits(supernet[key], before[key]), key  # the input is untouched
        assert not np.shares_memory(merged[key], supernet[key]), key


@pytest.mark.parametrize("name", FAMILIES)
def test_reference_is_the_example_weighted_mean(name):
    """The reference itself against sum_i w_i x_i / sum_i w_i (up to rounding)."""
    family = _family(name)
    supernet = family.init_supernet_state(seed=2)
    rng = np.random.default_rng(3)
    updates = _updates(family, supernet, rng, 4)
    merged = reference_merge(family, supernet, updates)
    for key, old in supernet.items():
        if old.dtype.kind != "f":
            continue
        num = np.zeros(old.shape)
        den = np.zeros(old.shape)
        for arch, state, w in updates:
            slices = family.subnet_slices(arch).get(key)
            if slices is not None:
                num[slices] += w * state[key].astype(np.float64)
                den[slices] += w
        covered = den > 0
        np.testing.assert_allclose(
            merged[key][covered],
            (num[covered] / den[covered]).astype(old.dtype),
            rtol=2e-5,
            atol=1e-6,
        )
        assert _same_bits(merged[key][~covered], old[~covered])


@pytest.mark.parametrize("name", FAMILIES)
def test_merge_of_unchanged_subnets_returns_the_supernet_bits(name):
    family = _family(name)
    supernet = family.init_supernet_state(seed=4)
    rng = np.random.default_rng(5)
    archs = [family.search_space.sample(rng) for _ in range(3)]
    updates = [(a, extract_subnet(family, supernet, a), 10 + i) for i, a in enumerate(archs)]
    merged = merge_subnets(family, supernet, updates)
    for key in supernet:
        assert _same_bits(merged[key], supernet[key]), key


@pytest.mark.parametrize("name", FAMILIES)
def test_extraction_equals_plain_slicing(name):
    family = _family(name)
    supernet = family.init_supernet_state(seed=6)
    rng = np.random.default_rng(7)
    for _ in range(3):
        arch = family.search_space.sample(rng)
        slices = family.subnet_slices(arch)
        copied = extract_subnet(family, supernet, arch)
        viewed = extract_subnet(family, supernet, arch, copy=False)
        assert list(copied) == list(viewed) == list(family.subnet_shapes(arch))
        for key, sl in slices.items():
            plain = supernet[key][sl]
            assert _same_bits(copied[key], np.asarray(plain)), key
            assert _same_bits(viewed[key], np.asarray(plain)), key
            assert copied[key].flags.c_contiguous and copied[key].flags.writeable
            assert not np.shares_memory(copied[key], supernet[key])
            assert not viewed[key].flags.writeable  # a payload cannot write the supernet
        check_subnet_state(family, arch, viewed, supernet)
    key = next(k for k, v in viewed.items() if v.size)
    with pytest.raises(ValueError, match="read-only"):
        viewed[key][...] = 0


@pytest.mark.parametrize("name", FAMILIES)
def test_sent_payload_does_not_change_when_the_supernet_is_merged(name):
    family = _family(name)
    core = PerFedRLNASSearch(family, SearchConfig(seed=8))
    rng = np.random.default_rng(9)
    proposals = [core.propose(cid) for cid in ("a", "b", "c")]
    sent = [{k: v.copy() for k, v in p.state.items()} for p in proposals]
    old_supernet = core.supernet
    replies = [
        ClientReply(p.client_id, None, _random_state(family, p.arch, core.supernet, rng), 20, 0.5)
        for p in proposals
    ]
    outcome = core.incorporate(1, replies)
    assert sorted(outcome.accepted) == ["a", "b", "c"]
    changed = 0
    for p, snapshot in zip(proposals, sent):
        for key, value in p.state.items():
            assert _same_bits(value, snapshot[key]), key
            changed += not np.array_equal(
                core.supernet[key][family.subnet_slices(p.arch)[key]], value
            )
    assert changed  # the merge did move the supernet
    for key in core.supernet:
        assert not np.shares_memory(core.supernet[key], old_supernet[key])


@pytest.mark.parametrize("name", FAMILIES)
def test_round_is_bit_identical_for_replies_in_any_order(name):
    family = _family(name)

    def run(order):
        core = PerFedRLNASSearch(family, SearchConfig(seed=10))
        proposals = [core.propose(cid) for cid in ("c1", "c2", "c3", "c4")]
        rng = np.random.default_rng(11)
        replies = [
            ClientReply(
                p.client_id,
                None,
                _random_state(family, p.arch, core.supernet, rng),
                int(rng.integers(1, 100)),
                float(rng.uniform(0, 1)),
                compute_seconds=1.0,
            )
            for p in proposals
        ]
        core.incorporate(1, [replies[i] for i in order])
        return core.supernet

    a, b = run([0, 1, 2, 3]), run([3, 1, 0, 2])
    for key in a:
        assert _same_bits(a[key], b[key]), key


def test_bad_update_is_named_and_changes_nothing():
    family = _family(FAMILIES[0])
    supernet = family.init_supernet_state(seed=12)
    before = {k: v.copy() for k, v in supernet.items()}
    arch = family.largest_architecture()
    state = extract_subnet(family, supernet, arch)
    key = next(k for k, v in state.items() if v.ndim)
    bad = {**state, key: np.zeros((1,) * state[key].ndim, state[key].dtype)}
    with pytest.raises(ValueError, match=f"tensor '{key}' has shape"):
        merge_subnets(family, supernet, [(arch, state, 1), (arch, bad, 1)])
    with pytest.raises(ValueError, match="num-examples must be positive"):
        merge_subnets(family, supernet, [(arch, state, 1), (arch, state, -2)])
    for k in supernet:
        assert _same_bits(supernet[k], before[k])


def test_slices_are_cached_per_architecture_and_bounded():
    family = get_supernet("elastic-cnn", **cpu_preset("elastic-cnn"))
    arch = family.largest_architecture()
    first = family.subnet_slices(arch)
    first.clear()  # the caller's copy, not the cache
    again = family.subnet_slices(dict(reversed(list(arch.items()))))  # same arch, other order
    assert again and again == family.subnet_slices(arch)
    rng = np.random.default_rng(13)
    for _ in range(600):
        family.subnet_slices(family.search_space.sample(rng))
    assert len(family._subnet_slices) <= 512 and len(family._subnet_shapes) <= 512


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(60, dtype=np.float16).reshape(3, 4, 5)[:, 1:3, ::2],
        np.zeros((0, 5), np.float32),
        np.array(7, dtype=np.int64),
        np.array([True, False]),
    ],
)
def test_decoding_once_without_copy_equals_flowers(array):
    record = ArrayRecord({"x": Array(array)})
    for _ in range(2):  # the second time through the header cache
        viewed = m.record_to_arrays(record, copy=False)["x"]
        copied = m.record_to_arrays(record)["x"]
        assert _same_bits(viewed, record["x"].numpy()) and _same_bits(copied, viewed)
        assert np.array_equal(viewed, array)
        assert not viewed.flags.writeable and copied.flags.writeable


def test_decoding_refuses_bad_bytes_with_the_tensor_named():
    good = Array(np.zeros(3, np.float32))
    short = Array(dtype="float32", shape=(3,), stype=good.stype, data=good.data[:-2])
    with pytest.raises(ValueError, match=r"'w' cannot be decoded: array data holds 10 bytes"):
        m.record_to_arrays(ArrayRecord({"w": short}), copy=False)
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    pickled = Array(dtype="object", shape=(1,), stype=good.stype, data=buf.getvalue())
    with pytest.raises(ValueError, match="'w' cannot be decoded: Object arrays cannot be loaded"):
        m.record_to_arrays(ArrayRecord({"w": pickled}), copy=False)
    junk = Array(dtype="float32", shape=(3,), stype=good.stype, data=b"not an npy file")
    with pytest.raises(ValueError, match="'w' cannot be decoded"):
        m.record_to_arrays(ArrayRecord({"w": junk}), copy=False)
