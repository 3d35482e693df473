"""Rewards: eq. 8 (accuracy and time), eq. 9 (memory budget), round time, history."""

from __future__ import annotations

import math

import pytest

from flwr_pfedrlnas.core.rewards import (
    AccuracyHistory,
    accuracy_time_rewards,
    memory_aware_rewards,
    round_time,
)


def test_round_time_adds_transfer_at_the_bandwidth():
    # 1.25e6 bytes = 1e7 bits = 0.1 s at 100 Mbit/s, each way.
    assert math.isclose(round_time(2.0, 1_250_000, 1_250_000), 2.2)
    assert math.isclose(round_time(0.0, 1_000, 0, bandwidth_down_bps=8_000), 1.0)


def test_eq8_on_three_clients_by_hand():
    history = AccuracyHistory()
    history.update({"d": 0.5})  # seen in an earlier round
    accs = {"a": 0.8, "b": 0.6, "c": 0.7}
    history.update(accs)
    assert math.isclose(history.mean(), (0.8 + 0.6 + 0.7 + 0.5) / 4)  # 0.65
    rts = {"a": 10.0, "b": 12.0, "c": 15.0}
    rewards = accuracy_time_rewards(accs, rts, history.mean(), lambda_time=0.01)
    assert math.isclose(rewards["a"], 0.8 - 0.65 - 0.0)
    assert math.isclose(rewards["b"], 0.6 - 0.65 - 0.01 * 2.0)
    assert math.isclose(rewards["c"], 0.7 - 0.65 - 0.01 * 5.0, abs_tol=1e-12)


def test_history_keeps_the_latest_accuracy_per_client():
    history = AccuracyHistory()
    history.update({"a": 0.2, "b": 0.4})
    history.update({"a": 0.6})
    assert history.latest == {"a": 0.6, "b": 0.4}
    assert math.isclose(history.mean(), 0.5)
    assert AccuracyHistory().mean() == 0.0


def test_eq9_within_and_over_budget():
    accs = {"a": 0.9, "b": 0.8, "c": 0.7}
    rts = {"a": 4.0, "b": 6.0, "c": 5.0}
    peaks = {"a": 50.0, "b": 300.0, "c": 100.0}
    budgets = {"a": 100.0, "b": 200.0, "c": 400.0}
    rewards, effective = memory_aware_rewards(accs, rts, peaks, budgets, 0.5, lambda_time=0.1)
    # b is over budget: acc 0, RT = max RT of the round (6), phi = 1.
    assert effective == {"a": 0.9, "b": 0.0, "c": 0.7}
    assert math.isclose(rewards["a"], 0.9 - 0.5 - 0.1 * (4 - 4) - 0.5)
    assert math.isclose(rewards["b"], 0.0 - 0.5 - 0.1 * (6 - 4) - 1.0)
    assert math.isclose(rewards["c"], 0.7 - 0.5 - 0.1 * (5 - 4) - 0.25)


def test_eq9_over_budget_client_takes_the_max_rt_even_if_fastest():
    rewards, _ = memory_aware_rewards(
        {"a": 0.5, "b": 0.5},
        {"a": 1.0, "b": 9.0},
        {"a": 10.0, "b": 1.0},
        {"a": 5.0, "b": 10.0},
        0.0,
        lambda_time=1.0,
    )
    # a: over -> RT 9; min RT over effective times is 9 (b) -> no time penalty.
    assert math.isclose(rewards["a"], 0.0 - 0.0 - 0.0 - 1.0)
    assert math.isclose(rewards["b"], 0.5 - 0.0 - 0.0 - 0.1)


def test_reward_inputs_are_checked():
    with pytest.raises(ValueError, match="round_times covers"):
        accuracy_time_rewards({"a": 0.5}, {"b": 1.0}, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"accuracies\['a'\] is nan"):
        accuracy_time_rewards({"a": float("nan")}, {"a": 1.0}, 0.0, 0.0)
    with pytest.raises(ValueError, match="memory_budget"):
        memory_aware_rewards({"a": 0.5}, {"a": 1.0}, {"a": 1.0}, {"a": 0.0}, 0.0, 0.0)
