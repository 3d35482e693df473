"""The round settings every method and strategy shares, checked in one place."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from flwr_pfedrlnas.protocol.rounds import DEFAULT_MACS_PER_SECOND
from flwr_pfedrlnas.protocol.training_options import TrainingOptions

__all__ = [
    "ROUND_SETTINGS",
    "RoundSettings",
    "RoundSettingsAttributes",
    "check_ranges",
]

Rule = Callable[[Any], bool]


def check_ranges(values: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """``ValueError`` "<name> is <value>, out of range" for the first value a rule refuses.

    ``rules`` maps a setting's name to the test its value must pass; the
    values are checked in the order of ``rules``.
    """
    for name, ok in rules.items():
        if not ok(values[name]):
            raise ValueError(f"{name} is {values[name]!r}, out of range")


# What each shared setting must be (the names are the constructors' keywords).
ROUND_RULES: dict[str, Rule] = {
    "clients_per_round": lambda v: v >= 1,
    "local_epochs": lambda v: v >= 0,
    "lr": lambda v: v > 0,
    "batch_size": lambda v: v >= 1,
    "evaluate_every": lambda v: v >= 1,
    "bn_recalibration_batches": lambda v: v >= -1,
    "device_macs_per_second": lambda v: math.isfinite(v) and v > 0,
}


@dataclass(frozen=True)
class RoundSettings:
    """Settings of the rounds that every method and strategy takes, with one validation.

    Parameters
    ----------
    clients_per_round : int (default: 5)
        ``N``, clients sampled for training each round, by stable client id
        (all when fewer are connected).
    local_epochs, lr, batch_size : int, float, int (default: 1, 0.05, 32)
        ``E``, the clients' local epochs per round, learning rate and batch
        size (sent as ``local-epochs``, ``lr``, ``batch-size``).
    evaluate_every : int (default: 1)
        Every client tests its deployed model every this many rounds and
        always in the last one.
    bn_recalibration_batches : int (default: -1)
        Before its test a client re-estimates BatchNorm statistics on this
        many local training batches (-1: all, 0: off); weights untouched.
    results_dir, checkpoint_dir : str | None (default: None)
        Where rounds.csv, clients.csv, config.json and accuracy.png go, and
        where the state is checkpointed after every round.
    resume : bool (default: False)
        Continue from the checkpoint in ``checkpoint_dir`` when there is one.
    run_config : Mapping | None (default: None)
        Settings recorded verbatim in config.json (``None``: none).
    device_macs_per_second : float (default: 1e9)
        The modelled device's rate for the modelled latency, which every run
        records beside the measured one: a client's compute is the MACs it
        reports over this rate (:class:`~flwr_pfedrlnas.protocol.rounds.ExchangeLedger`).
    training : TrainingOptions | None (default: None)
        The clients' learning-rate schedule across rounds, optimiser and label
        smoothing (:class:`~flwr_pfedrlnas.protocol.training_options.TrainingOptions`);
        ``None``: ``TrainingOptions()``, constant lr, SGD, no smoothing.

    A value out of range raises ``ValueError`` naming the field and the value
    (``"lr is 0, out of range"``); the others are stored as ``int``,
    ``float``, ``bool`` and ``dict``.
    """

    clients_per_round: int = 5
    local_epochs: int = 1
    lr: float = 0.05
    batch_size: int = 32
    evaluate_every: int = 1
    bn_recalibration_batches: int = -1
    results_dir: str | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    run_config: Mapping[str, Any] | None = None
    device_macs_per_second: float = DEFAULT_MACS_PER_SECOND
    training: TrainingOptions | None = None

    def __post_init__(self) -> None:
        check_ranges({f.name: getattr(self, f.name) for f in fields(self)}, ROUND_RULES)
        normalised = {
            "clients_per_round": int(self.clients_per_round),
            "local_epochs": int(self.local_epochs),
            "lr": float(self.lr),
            "batch_size": int(self.batch_size),
            "evaluate_every": int(self.evaluate_every),
            "bn_recalibration_batches": int(self.bn_recalibration_batches),
            "resume": bool(self.resume),
            "run_config": dict(self.run_config or {}),
            "device_macs_per_second": float(self.device_macs_per_second),
            "training": self.training or TrainingOptions(),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> RoundSettings:
        """The settings among a constructor's keyword arguments (e.g. its ``locals()``)."""
        return cls(**{name: kwargs[name] for name in ROUND_SETTINGS if name in kwargs})


# The shared settings' names, in the order of the dataclass.
ROUND_SETTINGS: tuple[str, ...] = tuple(f.name for f in fields(RoundSettings))


class _Setting:
    """One field of the owner's ``settings`` seen as an attribute of the owner.

    Reading gives the field; assigning replaces ``settings`` with a copy that
    holds the new value, checked as in the constructor.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(obj.settings, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.settings = replace(obj.settings, **{self.name: value})


class RoundSettingsAttributes:
    """Mixin: the fields of ``self.settings`` (a :class:`RoundSettings`) as attributes.

    ``obj.lr`` is ``obj.settings.lr``; ``obj.lr = 0.1`` replaces
    ``obj.settings`` with a checked copy, so the two never disagree.
    """

    settings: RoundSettings
    clients_per_round: int = _Setting()  # type: ignore[assignment]
    local_epochs: int = _Setting()  # type: ignore[assignment]
    lr: float = _Setting()  # type: ignore[assignment]
    batch_size: int = _Setting()  # type: ignore[assignment]
    evaluate_every: int = _Setting()  # type: ignore[assignment]
    bn_recalibration_batches: int = _Setting()  # type: ignore[assignment]
    results_dir: str | None = _Setting()  # type: ignore[assignment]
    checkpoint_dir: str | None = _Setting()  # type: ignore[assignment]
    resume: bool = _Setting()  # type: ignore[assignment]
    run_config: dict[str, Any] = _Setting()  # type: ignore[assignment]
    device_macs_per_second: float = _Setting()  # type: ignore[assignment]
    training: TrainingOptions = _Setting()  # type: ignore[assignment]
