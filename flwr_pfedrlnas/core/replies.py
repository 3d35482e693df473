"""What one round exchanges: a proposal to a client, its reply, the round's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flwr_pfedrlnas.core.search_space import Architecture

__all__ = ["ClientReply", "Proposal", "RoundOutcome", "reward_accuracy_of"]


@dataclass
class Proposal:
    """What the server sends one client: its sampled architecture and subnet.

    ``state`` lacks the blocks the client keeps personal (share-or-keep);
    ``init_state`` holds, the first time the client keeps a block, that
    block's whole supernet tensors to start its personal copy from.
    ``bytes_down`` counts both.
    """

    client_id: str
    arch: Architecture
    state: dict[str, np.ndarray]
    bytes_down: int
    init_state: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ClientReply:
    """What one client returned after training its subnet."""

    client_id: str
    arch: Architecture | None  # None: the client did not echo it; the sent one holds
    state: dict[str, np.ndarray]
    num_examples: int
    accuracy: float
    train_loss: float = float("nan")
    compute_seconds: float = 0.0
    # MACs of the same work (None: the client did not count them).
    compute_macs: float | None = None
    peak_memory_bytes: float = 0.0
    memory_budget_bytes: float | None = None
    # The client measured a peak over its budget and did not train: its weights
    # (unchanged or absent) are never merged; eq. 9 gives it acc 0, RT max, phi 1.
    memory_overrun: bool = False
    # Accuracy on the client's validation split after training (None: it has none).
    val_accuracy: float | None = None
    # The received subnet before training (BatchNorm re-estimated) on the same split
    # (None: not asked for, or no validation split).
    deployed_val_accuracy: float | None = None


def reward_accuracy_of(reply: ClientReply, reward_accuracy: str) -> float | None:
    """The accuracy of ``reply`` that ``SearchConfig.reward_accuracy`` names."""
    return {
        "test": reply.accuracy,
        "validation": reply.val_accuracy,
        "deployed": reply.deployed_val_accuracy,
    }[reward_accuracy]


@dataclass
class RoundOutcome:
    """What one call of :meth:`PerFedRLNASSearch.incorporate` did."""

    server_round: int
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    accuracies: dict[str, float] = field(default_factory=dict)
    rewards: dict[str, float] = field(default_factory=dict)
    round_times: dict[str, float] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    mean_accuracy: float = float("nan")
    overruns: list[str] = field(default_factory=list)

    @property
    def latency(self) -> float:
        """Simulated duration of the round: the slowest accepted client's RT."""
        return max(self.round_times.values(), default=0.0)
