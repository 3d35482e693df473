"""Round numbering, evaluation schedule, seeded sampling and the cost of each exchange."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from flwr_pfedrlnas.core.rewards import DEFAULT_BANDWIDTH_BPS, round_time

__all__ = [
    "DEFAULT_MACS_PER_SECOND",
    "ExchangeLedger",
    "RoundSchedule",
    "bandwidth_bps_of",
    "natural_key",
    "natural_sorted",
    "seeded_sample",
]


# The modelled device's sustained rate: 1 GMAC/s, a modest mobile CPU.
DEFAULT_MACS_PER_SECOND = 1e9


def natural_key(client_id: str) -> tuple[int, int, str]:
    """Sort key of a client id: numeric ids first, by value ("2" before "10"), then text."""
    text = str(client_id)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def natural_sorted(client_ids: Iterable[str]) -> list[str]:
    """Client ids in natural order (the order sampling draws from)."""
    return sorted((str(c) for c in client_ids), key=natural_key)


def bandwidth_bps_of(mbps: float) -> float:
    """A run config's ``bandwidth-mbps`` in bit/s, checked (the one conversion)."""
    value = float(mbps)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"bandwidth-mbps must be a positive number, got {mbps!r}")
    return value * 1e6


def seeded_sample(rng: np.random.Generator, client_ids: Sequence[str], num: int) -> list[str]:
    """``num`` distinct clients drawn with ``rng`` from the natural order of their ids.

    The draw depends only on the set of stable client ids, never on Flower's
    node ids or on the order in which nodes connected, so a resumed run (its
    generator restored) samples what the uninterrupted one would have.
    """
    if num < 1:
        raise ValueError(f"clients per round must be >= 1, got {num!r}")
    pool = natural_sorted(client_ids)
    if num >= len(pool):
        return pool
    picked = rng.choice(len(pool), size=num, replace=False)
    return [pool[i] for i in sorted(picked)]


@dataclass
class RoundSchedule:
    """Which round is which, across a resume.

    Rounds are numbered globally: a run resumed after ``rounds_done`` rounds
    continues at ``rounds_done + 1`` and ends at ``num_rounds``.

    Parameters
    ----------
    num_rounds : int | None
        Rounds of the whole run; ``None`` while not known yet (a Flower
        strategy learns it when started): then no round is the last.
    evaluate_every : int (default: 1)
        Every client tests its deployed model every this many rounds and in
        the last one.
    rounds_done : int (default: 0)
        Rounds completed before this start (from a checkpoint).
    """

    num_rounds: int | None
    evaluate_every: int = 1
    rounds_done: int = 0

    def __post_init__(self) -> None:
        for name, low in (("num_rounds", 0), ("evaluate_every", 1), ("rounds_done", 0)):
            value = getattr(self, name)
            if name == "num_rounds" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    def remaining(self) -> range:
        """The global numbers of the rounds still to run."""
        if self.num_rounds is None:
            raise ValueError("the number of rounds is not known yet (num_rounds is None)")
        return range(self.rounds_done + 1, self.num_rounds + 1)

    def global_round(self, server_round: int) -> int:
        """Global number of a start's ``server_round`` (Flower counts each start from 1)."""
        return self.rounds_done + int(server_round)

    def is_last_round(self, rnd: int) -> bool:
        return self.num_rounds is not None and rnd >= self.num_rounds

    def is_evaluation_round(self, rnd: int) -> bool:
        return rnd % self.evaluate_every == 0 or self.is_last_round(rnd)


@dataclass
class ExchangeLedger:
    """Bytes, simulated time and failures of one round's exchanges.

    Every exchange that counts towards the round adds the bytes each client
    received and sent (as serialised by the framework) and the slowest
    client's compute + transfer time; the round's simulated latency is the sum
    over its exchanges plus the server's own time.

    Beside it runs the modelled latency, which no load on the machine can
    change: each client's compute is the MACs it reports (``compute-macs``,
    counted by :class:`~flwr_pfedrlnas.core.cost.ComputeCounter`) over
    ``macs_per_second`` (times its device's speed factor), plus the same
    transfer time; the slowest client per exchange, summed over exchanges, the
    server's time left out. NaN for a round in which a usable reply lacked the
    count.
    """

    bandwidth_down_bps: float = DEFAULT_BANDWIDTH_BPS
    bandwidth_up_bps: float = DEFAULT_BANDWIDTH_BPS
    macs_per_second: float = DEFAULT_MACS_PER_SECOND
    bytes_down: int = 0
    bytes_up: int = 0
    exchange_seconds: list[float] = field(default_factory=list)
    modelled_seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    server_seconds: float = 0.0

    def client_time(self, compute_seconds: float, down: int, up: int) -> float:
        return round_time(compute_seconds, down, up, self.bandwidth_down_bps, self.bandwidth_up_bps)

    def modelled_time(
        self,
        compute_macs: float,
        down: int,
        up: int,
        speed_factor: float = 1.0,
        bandwidth_down_bps: float | None = None,
        bandwidth_up_bps: float | None = None,
    ) -> float:
        """One client's modelled time: ``MACs / macs_per_second x speed + bytes / bandwidth``.

        NaN when ``compute_macs`` is (a reply without the count); the
        bandwidths default to the ledger's.
        """
        return round_time(
            float(compute_macs) / self.macs_per_second * float(speed_factor),
            down,
            up,
            bandwidth_down_bps or self.bandwidth_down_bps,
            bandwidth_up_bps or self.bandwidth_up_bps,
        )

    def add_exchange(
        self,
        bytes_down: int,
        bytes_up: int,
        client_seconds: Iterable[float],
        modelled_seconds: Iterable[float] = (),
    ) -> float:
        """Record one exchange: all bytes sent and received, and each usable client's time.

        Bytes count whatever became of the reply (a refused upload still used
        the link); the exchange lasts as long as its slowest usable client.
        ``modelled_seconds`` are the same clients' modelled times (a NaN
        among them makes the exchange's NaN).
        """
        self.bytes_down += int(bytes_down)
        self.bytes_up += int(bytes_up)
        slowest = max(client_seconds, default=0.0)
        self.exchange_seconds.append(float(slowest))
        modelled = [float(t) for t in modelled_seconds]
        self.modelled_seconds.append(
            float("nan") if any(math.isnan(t) for t in modelled) else max(modelled, default=0.0)
        )
        return float(slowest)

    def fail(self, who: str, reason: str) -> None:
        self.failures.append(f"{who}: {reason}")

    @property
    def latency(self) -> float:
        return float(sum(self.exchange_seconds) + self.server_seconds)

    @property
    def modelled_latency(self) -> float:
        """The round's modelled latency: its exchanges', no server time (see the class)."""
        return float(sum(self.modelled_seconds))
