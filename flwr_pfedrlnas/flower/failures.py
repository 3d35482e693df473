"""Failing loudly: the checks that stop a run whose replies cannot be used."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "NoUsableRepliesError",
    "UnidentifiedNodesError",
    "ErrorAnswers",
    "check_usable_replies",
    "min_usable_count",
    "raise_unidentified",
    "validate_min_usable_fraction",
]

QUERY_HINT = (
    "every ClientApp must answer the identity query: register_handlers(app, load_data) "
    "registers it, or @app.query() returning flwr_pfedrlnas.flower.client.identify(msg, context)"
)


class NoUsableRepliesError(RuntimeError):
    """Too few replies of a round could be used; the run stops (``flwr ls``: failed)."""


class UnidentifiedNodesError(RuntimeError):
    """No connected node said which client it is; the run stops."""


def validate_min_usable_fraction(value: Any, field_name: str = "min_usable_fraction") -> float:
    """``value`` as a float in [0, 1]; ``ValueError`` naming the field and value otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field_name} is {value!r}, not a number in [0, 1]")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{field_name} is {value!r}, out of range [0, 1]")
    return float(value)


def min_usable_count(num_sampled: int, min_usable_fraction: float) -> int:
    """Usable replies a round of ``num_sampled`` clients needs: at least one, always."""
    # The small epsilon keeps 0.5 * 4 at 2, not 3 after float rounding up.
    return max(1, math.ceil(min_usable_fraction * num_sampled - 1e-9))


def check_usable_replies(
    what: str,
    server_round: int,
    sampled: Sequence[str],
    usable: Sequence[str],
    failures: Mapping[str, str],
    min_usable_fraction: float = 0.0,
) -> None:
    """Raise :class:`NoUsableRepliesError` when too few of ``sampled`` were usable.

    Parameters
    ----------
    what : str
        The kind of reply ("train", "evaluate"), named in the error.
    server_round : int
        Round number, named in the error.
    sampled : Sequence[str]
        The clients sent a message this round; nothing is checked when empty.
    usable : Sequence[str]
        The clients whose reply was used.
    failures : Mapping[str, str]
        Client id -> why its reply was not used (named in the error).
    min_usable_fraction : float (default: 0.0)
        Share of ``sampled`` that must be usable; at least one is always needed.
    """
    if not sampled:
        return
    need = min_usable_count(len(sampled), min_usable_fraction)
    if len(usable) >= need:
        return
    reasons = "; ".join(
        f"client {cid}: {failures.get(cid, 'no reply (timeout or lost)')}"
        for cid in sorted(set(sampled) - set(usable))
    )
    raise NoUsableRepliesError(
        f"round {server_round}: {len(usable)} of {len(sampled)} {what} replies usable, "
        f"{need} needed (min-usable-fraction {min_usable_fraction:g}); the run stops. "
        f"{reasons}"
    )


def raise_unidentified(num_nodes: int, query_timeout: float, answers: Mapping[Any, str]) -> None:
    """Raise :class:`UnidentifiedNodesError`: ``num_nodes`` connected, none identified.

    ``answers`` maps a node (or proxy) id to what it answered instead of a
    client id (an error reason); nodes absent from it did not answer in time.
    """
    said = "; ".join(f"node {node}: {reason}" for node, reason in sorted(answers.items())[:5])
    raise UnidentifiedNodesError(
        f"no node said who it is (client-id) within query_timeout={query_timeout:g} s: "
        f"{num_nodes} connected, {len(answers)} answered with an error"
        + (f" ({said})" if said else "")
        + f"; {QUERY_HINT}"
    )


class ErrorAnswers:
    """A grid seen through a recorder of the error answers it delivers.

    Passed where a ``Grid`` is expected (only ``get_node_ids`` and
    ``send_and_receive`` are used), so that a failed identity query can name
    what the nodes answered.
    """

    def __init__(self, grid: Any) -> None:
        self.grid = grid
        self.errors: dict[int, str] = {}

    def get_node_ids(self) -> Any:
        return self.grid.get_node_ids()

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.has_error():
                self.errors[reply.metadata.src_node_id] = str(reply.error.reason)
        return replies
