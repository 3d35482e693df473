"""Simulated device profiles: compute speed, link bandwidth and memory budget per client.

In simulation every client gets a :class:`DeviceProfile` drawn from seeded
distributions (:class:`ProfileDistribution`), keyed on its stable client id, so
a client has the same profile in every round, every process and every rerun
with the same seed. The server core applies the profile to the simulated round
time, ``RT_i = compute_i * speed_factor_i + 8 * bytes_down / bw_down_i + 8 *
bytes_up / bw_up_i``, and sends the memory budget to the client, which refuses
to train a subnet whose measured peak memory exceeds it. In deployment there is
no profile: the measured compute time, the configured bandwidth and the node's
own ``memory-budget-mb`` are used.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DeviceProfile", "ProfileDistribution", "parse_choices"]

MB = 2**20


@dataclass(frozen=True)
class DeviceProfile:
    """One simulated device.

    Parameters
    ----------
    speed_factor : float
        Multiplies the measured compute seconds (2.0 = a device twice as slow).
    bandwidth_down_bps, bandwidth_up_bps : float
        Link speed in bit/s, server -> client and client -> server.
    memory_budget_bytes : float | None
        Training memory available on the device; ``None``: no budget.
    """

    speed_factor: float = 1.0
    bandwidth_down_bps: float = 100e6
    bandwidth_up_bps: float = 100e6
    memory_budget_bytes: float | None = None

    def __post_init__(self) -> None:
        for name in ("speed_factor", "bandwidth_down_bps", "bandwidth_up_bps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        budget = self.memory_budget_bytes
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise ValueError(f"memory_budget_bytes must be positive, got {budget!r}")


def parse_choices(value: str | Sequence[float] | None) -> tuple[float, ...]:
    """``"10, 50,100"`` (or a list) -> ``(10.0, 50.0, 100.0)``; ``""`` -> ``()``."""
    if value is None:
        return ()
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace(";", ",").split(",")]
        return tuple(float(p) for p in parts if p)
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class ProfileDistribution:
    """Seeded distributions of the device profiles of a simulated federation.

    Parameters
    ----------
    seed : int (default: 0)
        Seed; with the client id it fixes the client's profile.
    speed_factor_min, speed_factor_max : float (default: 1.0, 4.0)
        Speed factor drawn log-uniformly from this range.
    bandwidth_choices_mbps : tuple[float, ...] (default: (10, 50, 100))
        Upload and download bandwidth (Mbit/s), each drawn uniformly from these.
    memory_budget_choices_mb : tuple[float, ...] (default: ())
        Memory budget (MiB) drawn uniformly from these; empty: no budget.
    """

    seed: int = 0
    speed_factor_min: float = 1.0
    speed_factor_max: float = 4.0
    bandwidth_choices_mbps: tuple[float, ...] = (10.0, 50.0, 100.0)
    memory_budget_choices_mb: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.speed_factor_min <= self.speed_factor_max:
            raise ValueError(
                f"need 0 < speed-factor-min <= speed-factor-max, got "
                f"{self.speed_factor_min!r}, {self.speed_factor_max!r}"
            )
        if not self.bandwidth_choices_mbps or min(self.bandwidth_choices_mbps) <= 0:
            raise ValueError(
                f"bandwidth choices must be positive, got {self.bandwidth_choices_mbps!r}"
            )
        if self.memory_budget_choices_mb and min(self.memory_budget_choices_mb) <= 0:
            raise ValueError(
                f"memory budget choices must be positive, got {self.memory_budget_choices_mb!r}"
            )

    def profile(self, client_id: str) -> DeviceProfile:
        """The profile of ``client_id`` (a pure function of the seed and the id)."""
        key = zlib.crc32(str(client_id).encode())
        rng = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, key])
        lo, hi = math.log(self.speed_factor_min), math.log(self.speed_factor_max)
        speed = math.exp(rng.uniform(lo, hi)) if hi > lo else self.speed_factor_min
        bw = self.bandwidth_choices_mbps
        down = bw[int(rng.integers(len(bw)))] * 1e6
        up = bw[int(rng.integers(len(bw)))] * 1e6
        budgets = self.memory_budget_choices_mb
        budget = budgets[int(rng.integers(len(budgets)))] * MB if budgets else None
        return DeviceProfile(speed, down, up, budget)

    def profiles(self, client_ids: Sequence[str]) -> dict[str, DeviceProfile]:
        return {str(c): self.profile(str(c)) for c in client_ids}

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> ProfileDistribution | None:
        """From run config keys; ``None`` unless ``simulate-profiles`` is true.

        Keys: ``profile-seed`` (default: ``seed``), ``speed-factor-min``,
        ``speed-factor-max``, ``bandwidth-choices-mbps`` ("10,50,100"),
        ``memory-budget-choices-mb`` ("" = no budget).
        """
        if not bool(cfg.get("simulate-profiles", False)):
            return None
        return cls(
            seed=int(cfg.get("profile-seed", cfg.get("seed", 0))),
            speed_factor_min=float(cfg.get("speed-factor-min", 1.0)),
            speed_factor_max=float(cfg.get("speed-factor-max", 4.0)),
            bandwidth_choices_mbps=parse_choices(cfg.get("bandwidth-choices-mbps", "10,50,100")),
            memory_budget_choices_mb=parse_choices(cfg.get("memory-budget-choices-mb", "")),
        )
