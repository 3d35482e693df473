"""Local-training practice every method shares: learning-rate schedule, optimiser, smoothing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "TrainingOptions"]

LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("sgd", "adamw")
# Config keys of what the server sends (the learning rate goes as "lr").
OPTIMIZER = "optimizer"
LABEL_SMOOTHING = "label-smoothing"


@dataclass(frozen=True)
class TrainingOptions:
    """How the clients train, the same for every method of a comparison.

    Parameters
    ----------
    lr_schedule : {"constant", "cosine"} (default: "constant")
        The learning rate of round ``t`` of ``T``: ``lr`` throughout, or
        ``lr * (1 + cos(pi (t - 1) / T)) / 2`` (cosine decay across rounds,
        from ``lr`` in round 1 towards 0 after the last).
    optimizer : {"sgd", "adamw"} (default: "sgd")
        The clients' optimiser: SGD with momentum 0.9, or AdamW; weight decay
        5e-4 in both.
    label_smoothing : float (default: 0.0)
        Label smoothing of the training loss, in ``[0, 1)``.

    The defaults are today's training, unchanged until a measurement says
    otherwise.
    """

    lr_schedule: str = "constant"
    optimizer: str = "sgd"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr-schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        smoothing = self.label_smoothing
        if isinstance(smoothing, bool) or not (
            isinstance(smoothing, (int, float)) and 0.0 <= smoothing < 1.0
        ):
            raise ValueError(f"label-smoothing must be in [0, 1), got {smoothing!r}")

    @classmethod
    def from_run_config(cls, cfg: Any) -> TrainingOptions:
        """From the run config keys ``lr-schedule``, ``optimizer``, ``label-smoothing``."""
        return cls(
            lr_schedule=str(cfg.get("lr-schedule", "constant")),
            optimizer=str(cfg.get("optimizer", "sgd")),
            label_smoothing=float(cfg.get("label-smoothing", 0.0)),
        )

    def lr_at(self, lr: float, rnd: int, num_rounds: int | None) -> float:
        """The learning rate of (global) round ``rnd`` of ``num_rounds``."""
        if self.lr_schedule == "constant" or not num_rounds:
            return float(lr)
        progress = min(max(rnd - 1, 0), num_rounds) / num_rounds
        return float(lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def config(self, lr: float, rnd: int, num_rounds: int | None) -> dict[str, Any]:
        """The entries of a round's client config: ``lr``, ``optimizer``, ``label-smoothing``."""
        return {
            "lr": self.lr_at(lr, rnd, num_rounds),
            OPTIMIZER: self.optimizer,
            LABEL_SMOOTHING: float(self.label_smoothing),
        }
