"""Subnet extraction and the count-normalised masked merge into the supernet."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal

import numpy as np

from flwr_pfedrlnas.core.search_space import Architecture
from flwr_pfedrlnas.supernets.base import Slices, SupernetFamily
from flwr_pfedrlnas.supernets.keep import personal_keys

__all__ = [
    "Weighting",
    "check_subnet_state",
    "check_tensors",
    "extract_subnet",
    "merge_subnets",
    "state_num_bytes",
]

Weighting = Literal["examples", "uniform"]

# One returned subnet: its architecture, its weights and its number of examples.
SubnetUpdate = tuple[Architecture, Mapping[str, np.ndarray], int | float]

# float64 entries per block of the merge's accumulation: 256 KiB, so the block's
# scratch stays in cache between the subtract, the multiply and the add.
_BLOCK = 1 << 15
# Tensors up to this many entries are merged whole (see _merge_small).
_SMALL = 1 << 13


def _view(array: np.ndarray, slices: Slices) -> np.ndarray:
    """``array[slices]`` as a view, also for a 0-d tensor (whose ``[()]`` is a scalar)."""
    return array[slices] if slices else array[...]


def extract_subnet(
    family: SupernetFamily,
    supernet_state: Mapping[str, np.ndarray],
    arch: Architecture,
    copy: bool = True,
) -> dict[str, np.ndarray]:
    """Cut the subnet of ``arch`` out of the supernet, in the subnet's key order.

    Parameters
    ----------
    family : SupernetFamily
        The family whose slices place each subnet tensor.
    supernet_state : Mapping[str, np.ndarray]
        The supernet.
    arch : Architecture
        The subnet's architecture.
    copy : bool (default: True)
        ``True``: C-ordered copies the caller owns. ``False``: read-only views
        into ``supernet_state``, for a payload that is serialised and dropped;
        safe only while nobody writes the supernet arrays in place (the merge
        never does: it returns new arrays).

    Returns
    -------
    dict[str, np.ndarray]
        Subnet key -> tensor.
    """
    out = {}
    for key, slices in family.subnet_slices(arch).items():
        if copy:
            out[key] = np.array(supernet_state[key][slices], order="C", copy=True)
        else:
            view = _view(np.asarray(supernet_state[key]), slices)
            view.flags.writeable = False  # a payload must not write into the supernet
            out[key] = view
    return out


def state_num_bytes(state: Mapping[str, np.ndarray]) -> int:
    """Bytes of a state's tensors (the payload of one transfer)."""
    return int(sum(np.asarray(v).nbytes for v in state.values()))


def _all_finite(value: np.ndarray) -> bool:
    # One read-only pass: a sum with a NaN or an infinity among its terms is not
    # finite. A non-finite sum of finite terms (overflow) falls back to the exact test.
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(float(np.add.reduce(value, axis=None))):
            return True
    return bool(np.all(np.isfinite(value)))


def check_subnet_state(
    family: SupernetFamily,
    arch: Architecture,
    state: Mapping[str, np.ndarray],
    supernet_state: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Raise ``ValueError`` naming the field if ``state`` is not ``arch``'s subnet.

    Checks the keys (none missing, none extra), every shape, that dtypes match
    the supernet's where it is given, and that floating tensors are finite.
    The tensors of blocks ``arch`` keeps personal (share-or-keep) stay on the
    client: ``state`` must not carry them.
    """
    expected = family.subnet_shapes(arch)
    personal = personal_keys(family, arch)
    if personal:
        expected = {k: v for k, v in expected.items() if k not in personal}
    dtypes = None if supernet_state is None else {k: supernet_state[k].dtype for k in expected}
    check_tensors(state, expected, dtypes, "subnet state", finite=True)


def check_tensors(
    state: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
    dtypes: Mapping[str, np.dtype] | None = None,
    what: str = "state",
    finite: bool = False,
) -> None:
    """Raise ``ValueError`` naming the tensor unless ``state`` has exactly ``shapes``.

    Keys (none missing, none extra, ``what`` names the state in the message),
    shapes, dtypes where ``dtypes`` is given, and with ``finite`` that floating
    tensors hold no NaN or infinity.
    """
    missing = [k for k in shapes if k not in state]
    extra = [k for k in state if k not in shapes]
    if missing:
        raise ValueError(f"{what} is missing tensor(s) {missing[:5]}")
    if extra:
        raise ValueError(f"{what} has unexpected tensor(s) {extra[:5]}")
    for key, shape in shapes.items():
        value = state[key]
        if not isinstance(value, np.ndarray):
            raise ValueError(f"tensor {key!r} is a {type(value).__name__}, not an array")
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"tensor {key!r} has shape {tuple(value.shape)}, expected {tuple(shape)}"
            )
        if dtypes is not None and value.dtype != dtypes[key]:
            raise ValueError(f"tensor {key!r} has dtype {value.dtype}, expected {dtypes[key]}")
        if finite and value.dtype.kind == "f" and value.size and not _all_finite(value):
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
    covered keep their value bit for bit; so do the blocks an architecture
    keeps personal (share-or-keep), which the update does not carry. Coverage
    comes from the architecture (the family's slices), never from comparing
    values. BatchNorm running
    statistics are ordinary state entries and merge the same way.

    The mean is accumulated as ``old + sum_i w_i (x_i - old) / sum_i w_i`` in
    float64, which equals ``sum_i w_i x_i / sum_i w_i`` and returns ``old``
    exactly when every client sends back ``old``. Each entry's sums run over
    the updates in the order given, so the same updates in the same order give
    the same bits.

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
    # Every client's tensors grouped by supernet key, in the order of the updates.
    by_key: dict[str, list[tuple[Slices, np.ndarray, float]]] = {}
    for arch, state, num_examples in updates:
        weight = 1.0 if weighting == "uniform" else float(num_examples)
        if not weight > 0:
            raise ValueError(f"num-examples must be positive, got {num_examples!r}")
        personal = personal_keys(family, arch)  # kept on the client: never merged
        for key, slices in family.subnet_slices(arch).items():
            if key in personal:
                continue
            value = np.asarray(state[key])
            shape = tuple(s.stop - s.start for s in slices)
            if value.shape != shape:
                raise ValueError(f"tensor {key!r} has shape {value.shape}, expected {shape}")
            by_key.setdefault(key, []).append((slices, value, weight))
    unknown = [k for k in by_key if k not in supernet_state]
    if unknown:
        raise ValueError(f"supernet state has no tensor(s) {unknown[:5]}")

    scratch = _Scratch()
    merged: dict[str, np.ndarray] = {}
    for key, old in supernet_state.items():
        old = np.asarray(old)
        parts = by_key.get(key)
        merged[key] = old.copy() if parts is None else _merge_tensor(old, parts, scratch)
    return merged


class _Scratch:
    """float64 buffers reused by every tensor of one merge (no allocation per key)."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def shaped(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self.buffers[name] = np.empty(max(size, _BLOCK), dtype=np.float64)
        return buffer[:size].reshape(shape)


def _merge_tensor(
    old: np.ndarray, parts: list[tuple[Slices, np.ndarray, float]], scratch: _Scratch
) -> np.ndarray:
    """One supernet tensor merged from the clients' parts (each: slices, value, weight).

    Per entry the same float64 operations, in the parts' order, as
    ``delta += w * (x.astype(float64) - old)`` per part, then
    ``old + delta / sum(w)``; but walked block by block of the tensor, every part
    covering a block in turn, so that the block's accumulator and its float64 copy of
    ``old`` stay in cache while all the parts pass through them.
    """
    integer = old.dtype.kind in "iu"
    if old.size <= _SMALL:
        return _merge_small(old, parts, integer)
    # Only the hull of the parts' boxes can change; the rest keeps the old bits.
    cuts = []
    for axis in range(old.ndim):
        edges = {s[axis].start for s, _, _ in parts} | {s[axis].stop for s, _, _ in parts}
        cuts.append(sorted(edges))
    hull = tuple(slice(c[0], c[-1]) for c in cuts)
    hull_shape = tuple(c[-1] - c[0] for c in cuts)
    # Every part covers a box, so the summed weight is constant on the cells of the
    # grid cut by the boxes' edges: it is summed there (per cell, in the parts'
    # order, as it would be per entry), not once per part and entry.
    cell_of = [{edge: i for i, edge in enumerate(axis_cuts)} for axis_cuts in cuts]
    grid_weight = np.zeros([len(c) - 1 for c in cuts], dtype=np.float64)
    for slices, _, weight in parts:
        cell = tuple(slice(cell_of[a][s.start], cell_of[a][s.stop]) for a, s in enumerate(slices))
        grid_weight[cell] += weight
    every = bool(np.all(grid_weight > 0))
    merged = np.empty(old.shape, old.dtype) if every and hull_shape == old.shape else old.copy()
    # The weight sums expanded over every axis but the first; along the first, the
    # tensor is walked cell by cell (a cell's rows are covered by the same parts).
    weight_sum = grid_weight
    for axis in range(1, old.ndim):
        if len(cuts[axis]) > 2:
            weight_sum = np.repeat(weight_sum, np.diff(cuts[axis]), axis=axis)
    inner = tuple(
        tuple(slice(s.start - c[0], s.stop - c[0]) for s, c in zip(slices[1:], cuts[1:]))
        for slices, _, _ in parts
    )
    step = max(1, _BLOCK // max(1, math.prod(hull_shape[1:])))
    first = cuts[0]
    for i in range(len(first) - 1):
        covering = [
            (slices[0].start, value, weight, inner[j])
            for j, (slices, value, weight) in enumerate(parts)
            if slices[0].start <= first[i] and slices[0].stop >= first[i + 1]
        ]
        if not covering:
            continue  # not covered (``merged`` holds the old bits there)
        for start in range(first[i], first[i + 1], step):
            stop = min(start + step, first[i + 1])
            block = (slice(start, stop), *hull[1:])
            shape = (stop - start, *hull_shape[1:])
            old64, delta = scratch.shaped("old", shape), scratch.shaped("delta", shape)
            np.copyto(old64, old[block])  # cast once per block, not once per part
            delta.fill(0.0)
            for row0, value, weight, box in covering:
                rows = (slice(None), *box)
                _add_part(
                    delta[rows], value[start - row0 : stop - row0], old64[rows], weight, scratch
                )
            _finish(merged[block], delta, old64, weight_sum[i : i + 1], every, integer)
    return merged


def _merge_small(
    old: np.ndarray, parts: list[tuple[Slices, np.ndarray, float]], integer: bool
) -> np.ndarray:
    """:func:`_merge_tensor` for a small tensor: whole-tensor operations, fewest calls.

    The same float64 operations per entry, in the parts' order; the per-call cost
    of blocks and weight grids would outweigh the arithmetic on a few thousand entries.
    """
    old64 = old.astype(np.float64)
    delta = np.zeros(old.shape, dtype=np.float64)
    weight_sum = np.zeros(old.shape, dtype=np.float64)
    for slices, value, weight in parts:
        part = np.subtract(value, _view(old64, slices), dtype=np.float64)
        part *= weight
        target = _view(delta, slices)
        target += part
        _view(weight_sum, slices)[...] += weight
    covered = weight_sum > 0
    np.divide(delta, weight_sum, out=delta, where=covered)
    np.add(old64, delta, out=delta)  # old + mean delta
    if integer:
        np.rint(delta, out=delta)
    return np.where(covered, delta.astype(old.dtype), old)


def _add_part(
    delta: np.ndarray, value: np.ndarray, old64: np.ndarray, weight: float, scratch: _Scratch
) -> None:
    """``delta += weight * (value - old64)`` in float64, through a scratch buffer."""
    tmp = scratch.shaped("part", value.shape)
    np.copyto(tmp, value)
    np.subtract(tmp, old64, out=tmp)
    np.multiply(tmp, weight, out=tmp)
    np.add(delta, tmp, out=delta)


def _finish(
    target: np.ndarray,
    delta: np.ndarray,
    old64: np.ndarray,
    weight_sum: np.ndarray,
    every: bool,
    integer: bool,
) -> None:
    """``target = old + delta / weight_sum`` where covered (in float64, then cast)."""
    covered = None if every else weight_sum > 0
    np.divide(delta, weight_sum if every else np.where(covered, weight_sum, 1.0), out=delta)
    np.add(old64, delta, out=delta)  # old + mean delta
    if integer:
        np.rint(delta, out=delta)
    if covered is None:
        np.copyto(target, delta, casting="unsafe")
    else:  # uncovered entries keep the old bits
        np.copyto(target, delta, casting="unsafe", where=np.broadcast_to(covered, delta.shape))
