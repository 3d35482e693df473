"""Extraction and the count-normalised masked merge, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flwr_pfedrlnas.core.aggregation import check_subnet_state, extract_subnet, merge_subnets
from flwr_pfedrlnas.core.search_space import Dimension, SearchSpace
from flwr_pfedrlnas.supernets import SupernetFamily, get_supernet


class _Tiny(nn.Module):
    def __init__(self, width: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 2)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


class TinyFamily(SupernetFamily):
    """Width 2/3/5 (leading channels) and kernel 1/3 (centre crop)."""

    name = "tiny-test"

    def __init__(self) -> None:
        super().__init__()
        self._space = SearchSpace([Dimension("width", (2, 3, 5)), Dimension("kernel", (1, 3))])

    @property
    def search_space(self):
        return self._space

    def build_supernet(self):
        return _Tiny(5, 3)

    def build_subnet(self, arch):
        arch = self.search_space.validate(arch)
        return _Tiny(arch["width"], arch["kernel"])


@pytest.fixture
def family():
    return TinyFamily()


@pytest.fixture
def supernet(family):
    rng = np.random.default_rng(0)
    state = family.init_supernet_state(seed=0)
    # Distinct running statistics so that merging them is visible.
    state["bn.running_mean"] = rng.normal(size=5).astype(np.float32)
    state["bn.running_var"] = rng.uniform(0.5, 2, size=5).astype(np.float32)
    return state


def _offset(state, value):
    return {
        k: (v + value).astype(v.dtype) if v.dtype.kind == "f" else v + 1 for k, v in state.items()
    }


def test_slices_are_leading_channels_and_centre_crops(family):
    slices = family.subnet_slices({"width": 3, "kernel": 1})
    assert slices["conv.weight"] == (slice(0, 3), slice(0, 1), slice(1, 2), slice(1, 2))
    assert slices["fc.weight"] == (slice(0, 2), slice(0, 3))
    assert slices["bn.running_mean"] == (slice(0, 3),)
    assert slices["bn.num_batches_tracked"] == ()


def test_extract_cuts_the_subnet(family, supernet):
    sub = extract_subnet(family, supernet, {"width": 2, "kernel": 1})
    np.testing.assert_array_equal(sub["conv.weight"], supernet["conv.weight"][:2, :, 1:2, 1:2])
    model = family.build_subnet({"width": 2, "kernel": 1})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sub.items()}, strict=True)
    check_subnet_state(family, {"width": 2, "kernel": 1}, sub, supernet)


def test_two_overlapping_clients_merge_to_the_count_normalised_mean(family, supernet):
    a_arch, b_arch = {"width": 2, "kernel": 1}, {"width": 3, "kernel": 1}
    a = _offset(extract_subnet(family, supernet, a_arch), 1.0)
    b = _offset(extract_subnet(family, supernet, b_arch), 5.0)
    merged = merge_subnets(family, supernet, [(a_arch, a, 1), (b_arch, b, 3)])

    old_w, new_w = supernet["conv.weight"], merged["conv.weight"]
    # Channels 0-1, centre tap: both clients, weights 1 and 3 -> old + (1*1 + 3*5) / 4.
    np.testing.assert_allclose(new_w[:2, 0, 1, 1], old_w[:2, 0, 1, 1] + 4.0, rtol=1e-6)
    # Channel 2, centre tap: only b covers it -> b's value exactly.
    np.testing.assert_array_equal(new_w[2, 0, 1, 1], b["conv.weight"][2, 0, 0, 0])
    # Channels 3-4 and every outer kernel tap: nobody covered them -> same bits.
    np.testing.assert_array_equal(new_w[3:], old_w[3:])
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    np.testing.assert_array_equal(new_w[:, :, ring], old_w[:, :, ring])
    # BatchNorm running statistics merge the same way.
    rm_old, rm_new = supernet["bn.running_mean"], merged["bn.running_mean"]
    np.testing.assert_allclose(rm_new[:2], rm_old[:2] + 4.0, rtol=1e-6)
    np.testing.assert_allclose(rm_new[2], rm_old[2] + 5.0, rtol=1e-6)
    np.testing.assert_array_equal(rm_new[3:], rm_old[3:])
    # Integer counter: weighted mean of old+1 from both -> old + 1.
    assert merged["bn.num_batches_tracked"] == supernet["bn.num_batches_tracked"] + 1
    assert merged["bn.num_batches_tracked"].dtype == supernet["bn.num_batches_tracked"].dtype
    # The input is not modified.
    assert not np.shares_memory(merged["conv.weight"], supernet["conv.weight"])


def test_uniform_weighting_is_the_plain_count(family, supernet):
    a_arch = b_arch = {"width": 2, "kernel": 3}
    a = _offset(extract_subnet(family, supernet, a_arch), 1.0)
    b = _offset(extract_subnet(family, supernet, b_arch), 5.0)
    merged = merge_subnets(family, supernet, [(a_arch, a, 1), (b_arch, b, 3)], weighting="uniform")
    np.testing.assert_allclose(
        merged["fc.weight"][:, :2], supernet["fc.weight"][:, :2] + 3.0, rtol=1e-6
    )
    # A rarely sampled slice is not shrunk by n_k / N_total: one client -> its value.
    single = merge_subnets(family, supernet, [(a_arch, a, 7)])
    np.testing.assert_array_equal(single["fc.weight"][:, :2], a["fc.weight"])


def test_unchanged_replies_leave_the_supernet_bit_for_bit(family, supernet):
    archs = [{"width": w, "kernel": k} for w in (2, 3, 5) for k in (1, 3)]
    updates = [
        (a, extract_subnet(family, supernet, a), n) for a, n in zip(archs, [3, 7, 1, 11, 5, 2])
    ]
    merged = merge_subnets(family, supernet, updates)
    for key in supernet:
        assert merged[key].dtype == supernet[key].dtype
        assert merged[key].tobytes() == supernet[key].tobytes(), key


def test_extract_after_merge_round_trips(family, supernet):
    arch = {"width": 3, "kernel": 3}
    rng = np.random.default_rng(1)
    new = {
        k: (rng.normal(size=v.shape).astype(v.dtype) if v.dtype.kind == "f" else v)
        for k, v in extract_subnet(family, supernet, arch).items()
    }
    merged = merge_subnets(family, supernet, [(arch, new, 13)])
    back = extract_subnet(family, merged, arch)
    for key in new:
        assert back[key].tobytes() == new[key].tobytes(), key


def test_merge_is_invariant_to_reply_order(family, supernet):
    rng = np.random.default_rng(2)
    updates = []
    for arch in ({"width": 2, "kernel": 1}, {"width": 5, "kernel": 3}, {"width": 3, "kernel": 3}):
        sub = extract_subnet(family, supernet, arch)
        sub = {
            k: (v + rng.normal(size=v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v
            for k, v in sub.items()
        }
        updates.append((arch, sub, int(rng.integers(1, 20))))
    one = merge_subnets(family, supernet, updates)
    two = merge_subnets(family, supernet, updates[::-1])
    for key in one:
        np.testing.assert_allclose(one[key], two[key], rtol=1e-6, atol=1e-7)


def test_bad_subnet_states_are_named(family, supernet):
    arch = {"width": 2, "kernel": 1}
    good = extract_subnet(family, supernet, arch)
    with pytest.raises(
        ValueError, match=r"'conv.weight' has shape \(3, 1, 1, 1\), expected \(2, 1, 1, 1\)"
    ):
        check_subnet_state(
            family, arch, {**good, "conv.weight": np.zeros((3, 1, 1, 1), np.float32)}
        )
    bad = good["fc.weight"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="'fc.weight' has 1 NaN"):
        check_subnet_state(family, arch, {**good, "fc.weight": bad})
    with pytest.raises(ValueError, match="missing"):
        check_subnet_state(family, arch, {k: v for k, v in good.items() if k != "fc.bias"})
    with pytest.raises(ValueError, match="unexpected"):
        check_subnet_state(family, arch, {**good, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match="dtype float64"):
        check_subnet_state(
            family, arch, {**good, "fc.bias": good["fc.bias"].astype(np.float64)}, supernet
        )
    with pytest.raises(ValueError, match="num-examples must be positive"):
        merge_subnets(family, supernet, [(arch, good, 0)])


def test_elastic_cnn_family_round_trips():
    family = get_supernet("elastic-cnn", num_stages=2)
    supernet = family.init_supernet_state(0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        arch = family.search_space.sample(rng)
        sub = extract_subnet(family, supernet, arch)
        model = family.build_subnet(arch)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in sub.items()}, strict=True)
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_batchnorm_recalibration_estimates_local_statistics():
    from flwr_pfedrlnas.training import recalibrate_batchnorm

    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    bn.running_mean.fill_(100.0)
    weight_before = bn.weight.detach().clone()
    data = torch.randn(64, 3) * 2.0 + torch.tensor([1.0, -2.0, 0.5])
    loader = [(data[i : i + 16], torch.zeros(16)) for i in range(0, 64, 16)]
    seen = recalibrate_batchnorm(nn.Sequential(bn), loader)
    assert seen == 64
    # Cumulative average of the per-batch means = the mean of all 64 rows.
    torch.testing.assert_close(bn.running_mean, data.mean(0), rtol=1e-5, atol=1e-5)
    assert torch.equal(bn.weight, weight_before) and not bn.training
    assert bn.momentum == 0.1
