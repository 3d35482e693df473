"""The one checkpoint format of every method: arrays in .npz, the rest in JSON, atomic."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flwr_pfedrlnas.core.checkpoint import (
    atomic_write,
    read_arrays_checkpoint,
    write_arrays_checkpoint,
)

__all__ = ["atomic_write", "prefixed", "read_checkpoint", "unprefixed", "write_checkpoint"]

ARRAYS_STEM = "arrays"


def write_checkpoint(
    directory: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    tag: str,
) -> Path:
    """Save ``arrays`` as ``arrays-<tag>.npz`` and ``meta`` as ``state.json``, atomically.

    The core's format (:func:`~flwr_pfedrlnas.core.checkpoint.write_arrays_checkpoint`):
    a crash at any point leaves the previous checkpoint whole; nothing is pickled.
    """
    return write_arrays_checkpoint(directory, arrays, meta, ARRAYS_STEM, tag)


def read_checkpoint(
    directory: str | os.PathLike,
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """``(arrays, meta)`` of the checkpoint in ``directory``, or ``None`` if there is none."""
    return read_arrays_checkpoint(directory, ARRAYS_STEM)


def prefixed(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` under names ``prefix + name`` (one part of a checkpoint's arrays)."""
    return {prefix + k: v for k, v in arrays.items()}


def unprefixed(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The part of a checkpoint's arrays saved under ``prefix``, with the prefix removed."""
    n = len(prefix)
    return {k[n:]: np.asarray(v) for k, v in arrays.items() if k.startswith(prefix)}
