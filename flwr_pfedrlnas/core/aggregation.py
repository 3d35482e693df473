"""Subnet extraction and the count-normalised masked merge into the supernet."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import numpy as np

from flwr_pfedrlnas.core.search_space import Architecture
from flwr_pfedrlnas.supernets.base import SupernetFamily

__all__ = [
    "Weighting",
    "check_subnet_state",
    "extract_subnet",
    "merge_subnets",
    "state_num_bytes",
]

Weighting = Literal["examples", "uniform"]

# One returned subnet: its architecture, its weights and its number of examples.
SubnetUpdate = tuple[Architecture, Mapping[str, np.ndarray], int | float]


def extract_subnet(
    family: SupernetFamily,
    supernet_state: Mapping[str, np.ndarray],
    arch: Architecture,
) -> dict[str, np.ndarray]:
    """Cut the subnet of ``arch`` out of the supernet (copies, subnet key order)."""
    return {
        key: np.array(supernet_state[key][slices], order="C", copy=True)
        for key, slices in family.subnet_slices(arch).items()
    }


def state_num_bytes(state: Mapping[str, np.ndarray]) -> int:
    """Bytes of a state's tensors (the payload of one transfer)."""
    return int(sum(np.asarray(v).nbytes for v in state.values()))


def check_subnet_state(
    family: SupernetFamily,
    arch: Architecture,
    state: Mapping[str, np.ndarray],
    supernet_state: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Raise ``ValueError`` naming the field if ``state`` is not ``arch``'s subnet.

    Checks the keys (none missing, none extra), every shape, that dtypes match
    the supernet's where it is given, and that floating tensors are finite.
    """
    expected = family.subnet_shapes(arch)
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing:
        raise ValueError(f"subnet state is missing tensor(s) {missing[:5]}")
    if extra:
        raise ValueError(f"subnet state has unexpected tensor(s) {extra[:5]}")
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, np.ndarray):
            raise ValueError(f"tensor {key!r} is a {type(value).__name__}, not an array")
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"tensor {key!r} has shape {tuple(value.shape)}, expected {tuple(shape)}"
            )
        if supernet_state is not None and value.dtype != supernet_state[key].dtype:
            raise ValueError(
                f"tensor {key!r} has dtype {value.dtype}, expected {supernet_state[key].dtype}"
            )
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            raise ValueError(f"tensor {key!r} has {bad} NaN or infinite value(s)")


def merge_subnets(
    family: SupernetFamily,
    supernet_state: Mapping[str, np.ndarray],
    updates: Iterable[SubnetUpdate],
    weighting: Weighting = "examples",
) -> dict[str, np.ndarray]:
    """Count-normalised masked average of subnets into the supernet.

    For every supernet entry, the new value is the weighted mean of the values
    returned by the clients whose subnet covers that entry (weights: number of
    examples, or 1 each with ``weighting="uniform"``). Entries no client
    covered keep their value bit for bit. Coverage comes from the architecture
    (the family's slices), never from comparing values. BatchNorm running
    statistics are ordinary state entries and merge the same way.

    The mean is accumulated as ``old + sum_i w_i (x_i - old) / sum_i w_i`` in
    float64, which equals ``sum_i w_i x_i / sum_i w_i`` and returns ``old``
    exactly when every client sends back ``old``.

    Parameters
    ----------
    family : SupernetFamily
        The family whose slices place each subnet tensor.
    supernet_state : Mapping[str, np.ndarray]
        Current supernet (not modified).
    updates : Iterable[tuple[Architecture, Mapping[str, np.ndarray], int | float]]
        ``(arch, subnet_state, num_examples)`` per client.
    weighting : {"examples", "uniform"} (default: "examples")
        Weight of each client within an entry's mean.

    Returns
    -------
    dict[str, np.ndarray]
        The merged supernet (new arrays; the input is left untouched).
    """
    if weighting not in ("examples", "uniform"):
        raise ValueError(f"weighting must be 'examples' or 'uniform', got {weighting!r}")
    delta_sum: dict[str, np.ndarray] = {}
    weight_sum: dict[str, np.ndarray] = {}
    for arch, state, num_examples in updates:
        weight = 1.0 if weighting == "uniform" else float(num_examples)
        if not weight > 0:
            raise ValueError(f"num-examples must be positive, got {num_examples!r}")
        for key, slices in family.subnet_slices(arch).items():
            old = supernet_state[key]
            if key not in delta_sum:
                delta_sum[key] = np.zeros(old.shape, dtype=np.float64)
                weight_sum[key] = np.zeros(old.shape, dtype=np.float64)
            new = np.asarray(state[key], dtype=np.float64)
            delta_sum[key][slices] += weight * (new - old[slices])
            weight_sum[key][slices] += weight

    merged: dict[str, np.ndarray] = {}
    for key, old in supernet_state.items():
        if key not in delta_sum:
            merged[key] = old.copy()
            continue
        covered = weight_sum[key] > 0
        mean_delta = np.zeros_like(delta_sum[key])
        np.divide(delta_sum[key], weight_sum[key], out=mean_delta, where=covered)
        value = old.astype(np.float64) + mean_delta
        if old.dtype.kind in "iu":
            value = np.rint(value)
        # Uncovered entries: the old bits, not a float64 round trip of them.
        merged[key] = np.where(covered, np.asarray(value).astype(old.dtype), old)
    return merged
