"""Rewards of the policies: eq. 8 (accuracy-time), eq. 9 (memory), our per-client baselines."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "BASELINE_MODES",
    "STANDARDISE_MODES",
    "AccuracyHistory",
    "RewardStatistics",
    "accuracy_time_rewards",
    "client_scores",
    "clipped",
    "memory_aware_rewards",
    "round_time",
    "search_rewards",
]

DEFAULT_BANDWIDTH_BPS = 100e6  # 100 Mbit/s each way
# "global-mean": eq. 8's mean over every client; "client-mean": ours, the client's own.
BASELINE_MODES = ("global-mean", "client-mean")
STANDARDISE_MODES = ("none", "client", "shared")


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


def client_scores(
    accuracies: Mapping[str, float],
    round_times: Mapping[str, float],
    lambda_time: float,
    memory_utilisation: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Ours: each client's own score ``acc_i - lambda_time * RT_i (- phi_i)``.

    Unlike eq. 8 it holds no term of another client (no mean accuracy, no
    ``min RT``): a per-client baseline is subtracted from it afterwards.
    """
    phi = memory_utilisation or {cid: 0.0 for cid in accuracies}
    clients = _check_same_clients(accuracies=accuracies, round_times=round_times, phi=phi)
    return {cid: accuracies[cid] - lambda_time * round_times[cid] - phi[cid] for cid in clients}


class RewardStatistics:
    """Ours: running per-client baselines and reward scales, and update counts.

    ``advantages`` turns each client's score into ``score - baseline``, where
    the baseline is the client's own exponential running mean of its past
    scores (0 reward on its first score: nothing to compare with yet), and
    optionally divides by a running standard deviation of the advantages,
    the client's own (``"client"``) or one pooled over every client
    (``"shared"``: far more samples per update, the same scale for everyone).

    Parameters
    ----------
    decay : float (default: 0.9)
        Weight of the past in the running mean and variance, in [0, 1).
    standardise : {"none", "client", "shared"} (default: "none")
        Which running standard deviation divides the advantage.
    std_floor : float (default: 1e-3)
        Smallest standard deviation divided by (noise-free rewards stay finite).
    """

    def __init__(self, decay: float = 0.9, standardise: str = "none", std_floor: float = 1e-3):
        if not (isinstance(decay, (int, float)) and 0.0 <= decay < 1.0):
            raise ValueError(f"baseline decay must be in [0, 1), got {decay!r}")
        if standardise not in STANDARDISE_MODES:
            raise ValueError(f"standardise must be one of {STANDARDISE_MODES}, got {standardise!r}")
        self.decay = float(decay)
        self.standardise = standardise
        self.std_floor = float(std_floor)
        self.means: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.client_var: dict[str, float] = {}
        self.shared_var: float | None = None

    def count(self, client_id: str) -> int:
        """How many scores of ``client_id`` were recorded."""
        return self.counts.get(str(client_id), 0)

    def record(self, client_ids: Iterable[str]) -> None:
        """Count one update for each client (without touching any baseline)."""
        for cid in client_ids:
            self.counts[str(cid)] = self.count(cid) + 1

    def centred(self, scores: Mapping[str, float]) -> dict[str, float]:
        """``score - the client's running mean``; updates the means and counts."""
        out = {}
        for cid in sorted(scores):
            score = float(scores[cid])
            if not math.isfinite(score):
                raise ValueError(f"scores[{cid!r}] is {score!r}, not a finite number")
            previous = self.means.get(cid)
            out[cid] = 0.0 if previous is None else score - previous
            self.means[cid] = (
                score if previous is None else self.decay * previous + (1 - self.decay) * score
            )
        self.record(scores)
        return out

    def scaled(self, advantages: Mapping[str, float]) -> dict[str, float]:
        """Divide by the running std (this round's advantages included)."""
        if self.standardise == "none":
            return dict(advantages)
        d = self.decay
        out = {}
        if self.standardise == "shared":
            for cid in sorted(advantages):
                sq = float(advantages[cid]) ** 2
                self.shared_var = (
                    sq if self.shared_var is None else d * self.shared_var + (1 - d) * sq
                )
            std = max(math.sqrt(self.shared_var or 0.0), self.std_floor)
            return {cid: float(a) / std for cid, a in advantages.items()}
        for cid in sorted(advantages):
            sq = float(advantages[cid]) ** 2
            var = self.client_var.get(cid)
            var = sq if var is None else d * var + (1 - d) * sq
            self.client_var[cid] = var
            out[cid] = float(advantages[cid]) / max(math.sqrt(var), self.std_floor)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "standardise": self.standardise,
            "means": dict(self.means),
            "counts": dict(self.counts),
            "client_var": dict(self.client_var),
            "shared_var": self.shared_var,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (an empty mapping: fresh statistics)."""
        means = {str(k): float(v) for k, v in state.get("means", {}).items()}
        counts = {str(k): int(v) for k, v in state.get("counts", {}).items()}
        client_var = {str(k): float(v) for k, v in state.get("client_var", {}).items()}
        shared = state.get("shared_var")
        for name, values in (("means", means), ("client_var", client_var)):
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            if bad:
                raise ValueError(f"reward statistics '{name}.{bad[0]}' is not finite")
        self.means, self.counts, self.client_var = means, counts, client_var
        self.shared_var = None if shared is None else float(shared)


def clipped(rewards: Mapping[str, float], clip: float | None) -> dict[str, float]:
    """Every reward clipped to ``[-clip, clip]`` (``None``: unchanged)."""
    if clip is None:
        return dict(rewards)
    return {k: min(max(v, -clip), clip) for k, v in rewards.items()}


def search_rewards(
    history: AccuracyHistory,
    stats: RewardStatistics,
    accuracies: Mapping[str, float],
    round_times: Mapping[str, float],
    peak_memory: Mapping[str, float],
    memory_budget: Mapping[str, float],
    baseline: str = "global-mean",
    *,
    memory_aware: bool = False,
    lambda_time: float = 0.0,
    clip: float | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """One round's rewards: eq. 8 / eq. 9 (``"global-mean"``) or ours (``"client-mean"``).

    Updates ``history`` (most recent effective accuracies) and ``stats``
    (counts, per-client means, running std) in place, then standardises as
    ``stats`` says and clips. Returns the rewards and the effective accuracies.
    """
    if baseline not in BASELINE_MODES:
        raise ValueError(f"reward baseline must be one of {BASELINE_MODES}, got {baseline!r}")
    effective, acc_minus_phi = dict(accuracies), dict(accuracies)
    if memory_aware:
        # Eq. 9 decides the effective accuracy before the history sees it.
        acc_minus_phi, effective = memory_aware_rewards(
            accuracies, round_times, peak_memory, memory_budget, 0.0, 0.0
        )
    history.update(effective)
    if baseline == "client-mean":
        phi = {c: effective[c] - acc_minus_phi[c] for c in effective}
        rewards = stats.centred(client_scores(effective, round_times, lambda_time, phi))
    elif memory_aware:
        rewards, _ = memory_aware_rewards(
            accuracies, round_times, peak_memory, memory_budget, history.mean(), lambda_time
        )
        stats.record(rewards)
    else:
        rewards = accuracy_time_rewards(accuracies, round_times, history.mean(), lambda_time)
        stats.record(rewards)
    return clipped(stats.scaled(rewards), clip), effective
