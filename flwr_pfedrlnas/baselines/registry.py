"""The personalised-FL baselines by name."""

from __future__ import annotations

from typing import Any

from flwr_pfedrlnas.baselines.fedtp import FedTP
from flwr_pfedrlnas.baselines.personalised import (
    FedAvgFineTune,
    FedBABU,
    FedRep,
    LocalOnly,
    PersonalisedFedAvg,
)

__all__ = ["BASELINES", "make_baseline"]

BASELINES: dict[str, type[PersonalisedFedAvg]] = {
    cls.method: cls for cls in (FedAvgFineTune, LocalOnly, FedRep, FedBABU, FedTP)
}
FEDTP_ONLY = ("num_clients", "hn_lr", "hn_embed_dim", "hn_hidden")


def make_baseline(method: str, **kwargs: Any) -> PersonalisedFedAvg:
    """The baseline ``method`` ("fedavg-ft", "local", "fedrep", "fedbabu", "fedtp").

    ``num_clients``, ``hn_lr``, ``hn_embed_dim`` and ``hn_hidden`` go to FedTP
    only; the other methods ignore them.
    """
    if method not in BASELINES:
        raise ValueError(f"method is {method!r}; choose one of {sorted(BASELINES)}")
    fedtp_only = {k: kwargs.pop(k) for k in FEDTP_ONLY if k in kwargs}
    if method == "fedtp":
        return FedTP(**kwargs, **fedtp_only)
    return BASELINES[method](**kwargs)
