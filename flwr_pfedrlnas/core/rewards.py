"""Rewards of the architecture policies: accuracy-time (eq. 8) and memory (eq. 9)."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = [
    "AccuracyHistory",
    "accuracy_time_rewards",
    "memory_aware_rewards",
    "round_time",
]

DEFAULT_BANDWIDTH_BPS = 100e6  # 100 Mbit/s each way


class AccuracyHistory:
    """The most recent accuracy of every client seen so far."""

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.latest)

    def update(self, accuracies: Mapping[str, float]) -> None:
        """Record this round's accuracies (each replaces that client's last one)."""
        for cid, acc in accuracies.items():
            self.latest[str(cid)] = float(acc)

    def mean(self) -> float:
        """Mean over clients of each one's most recent accuracy (0 when empty)."""
        if not self.latest:
            return 0.0
        # fsum is exactly rounded, so the mean does not depend on insertion order
        # (a resumed run must reproduce an uninterrupted one bit for bit).
        return math.fsum(self.latest.values()) / len(self.latest)

    def state_dict(self) -> dict[str, float]:
        return dict(self.latest)

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.latest = {str(k): float(v) for k, v in state.items()}


def round_time(
    compute_seconds: float,
    bytes_down: int,
    bytes_up: int,
    bandwidth_down_bps: float = DEFAULT_BANDWIDTH_BPS,
    bandwidth_up_bps: float = DEFAULT_BANDWIDTH_BPS,
) -> float:
    """``RT = compute + bytes moved / bandwidth`` (bandwidth in bit/s, each way)."""
    return (
        float(compute_seconds)
        + 8.0 * bytes_down / bandwidth_down_bps
        + 8.0 * bytes_up / bandwidth_up_bps
    )


def _check_same_clients(**named: Mapping[str, float]) -> list[str]:
    keys = None
    for name, mapping in named.items():
        if keys is None:
            keys = set(mapping)
        elif set(mapping) != keys:
            raise ValueError(f"{name} covers clients {sorted(mapping)}, expected {sorted(keys)}")
        for cid, value in mapping.items():
            if not math.isfinite(value):
                raise ValueError(f"{name}[{cid!r}] is {value!r}, not a finite number")
    return sorted(keys or [])


def accuracy_time_rewards(
    accuracies: Mapping[str, float],
    round_times: Mapping[str, float],
    mean_accuracy: float,
    lambda_time: float,
) -> dict[str, float]:
    """Eq. 8: ``r_i = acc_i - mean_acc - lambda_time * (RT_i - min RT)``.

    ``min RT`` is taken over the clients of this round (the keys given).
    """
    clients = _check_same_clients(accuracies=accuracies, round_times=round_times)
    if not clients:
        return {}
    min_rt = min(round_times.values())
    return {
        cid: accuracies[cid] - mean_accuracy - lambda_time * (round_times[cid] - min_rt)
        for cid in clients
    }


def memory_aware_rewards(
    accuracies: Mapping[str, float],
    round_times: Mapping[str, float],
    peak_memory: Mapping[str, float],
    memory_budget: Mapping[str, float],
    mean_accuracy: float,
    lambda_time: float,
) -> tuple[dict[str, float], dict[str, float]]:
    """Eq. 9: eq. 8 minus the memory utilisation ``phi_i = peak_i / budget_i``.

    A client over its budget gets ``phi_i = 1``, ``acc_i = 0`` and
    ``RT_i = max RT`` of the round. Returns the rewards and the effective
    accuracies (what the accuracy history should record).
    """
    clients = _check_same_clients(
        accuracies=accuracies,
        round_times=round_times,
        peak_memory=peak_memory,
        memory_budget=memory_budget,
    )
    if not clients:
        return {}, {}
    for cid in clients:
        if not memory_budget[cid] > 0:
            raise ValueError(f"memory_budget[{cid!r}] is {memory_budget[cid]!r}, not positive")
    max_rt = max(round_times.values())
    acc, rt, phi = {}, {}, {}
    for cid in clients:
        if peak_memory[cid] > memory_budget[cid]:
            acc[cid], rt[cid], phi[cid] = 0.0, max_rt, 1.0
        else:
            acc[cid] = accuracies[cid]
            rt[cid] = round_times[cid]
            phi[cid] = peak_memory[cid] / memory_budget[cid]
    min_rt = min(rt.values())
    rewards = {
        cid: acc[cid] - mean_accuracy - lambda_time * (rt[cid] - min_rt) - phi[cid]
        for cid in clients
    }
    return rewards, acc
