"""Validation of a family's choice lists (numbers, increasing) and channel scaling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flwr_pfedrlnas.supernets._layers import make_divisible

__all__ = ["choice_list", "is_int", "positive_int", "scaled_choices", "stage_choice_lists"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integral number (``bool`` excluded)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and float(value) == int(value)
    )


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int, or ``ValueError`` naming ``name`` unless a positive integer."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def choice_list(
    name: str, values: Any, kind: type, minimum: float, all_float: bool = False
) -> list[Any]:
    """Validate a choice list: numbers (integers for ``int``), >= ``minimum``, increasing.

    For ``kind=float`` integral values are returned as ``int`` (``[1, 2]`` stays
    ``[1, 2]``, ``1.5`` stays a float), so that JSON round trips are stable;
    ``all_float=True`` returns every value as a float instead.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list, got {values!r}")
    if len(values) == 0:
        raise ValueError(f"{name} must not be empty")
    out: list[Any] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{name}: choice {v!r} is not a number")
        if kind is int and not is_int(v):
            raise ValueError(f"{name}: choice {v!r} is not an integer")
        v = int(v) if is_int(v) and not all_float else float(v)
        if v < minimum:
            raise ValueError(f"{name}: choice {v!r} is below {minimum}")
        out.append(v)
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"{name} must be strictly increasing, got {out}")
    return out


def stage_choice_lists(
    name: str, values: Any, num_stages: int, kind: type, minimum: float
) -> list[list[Any]]:
    """Validate per-stage choice lists; keep the first ``num_stages`` of them."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list of per-stage lists, got {values!r}")
    if len(values) < num_stages:
        raise ValueError(f"{name} has choices for {len(values)} stage(s), {num_stages} needed")
    return [
        choice_list(f"{name}[{i}]", stage, kind, minimum)
        for i, stage in enumerate(values[:num_stages])
    ]


def scaled_choices(values: Sequence[float], mult: float, divisor: int) -> tuple[int, ...]:
    """Channel choices scaled by ``mult`` and rounded; duplicates after rounding dropped."""
    return tuple(sorted({make_divisible(v * mult, divisor) for v in values}))
