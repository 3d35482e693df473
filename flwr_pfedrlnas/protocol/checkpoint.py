"""The one checkpoint format of every method: arrays in .npz, the rest in JSON, atomic."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flwr_pfedrlnas.core.checkpoint import atomic_write

__all__ = ["atomic_write", "prefixed", "read_checkpoint", "unprefixed", "write_checkpoint"]

STATE_FILE = "state.json"


def write_checkpoint(
    directory: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    tag: str,
) -> Path:
    """Save ``arrays`` (one .npz named by ``tag``) and ``meta`` (``state.json``).

    ``state.json`` is renamed last and names the array file it belongs to, so
    a crash at any point leaves the previous checkpoint whole and readable;
    older array files are removed once the new state is in place. Nothing is
    pickled: ``meta`` must be JSON.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(meta, arrays_file=f"arrays-{tag}.npz"), indent=1, sort_keys=True)
    name = f"arrays-{tag}.npz"
    atomic_write(
        directory / name, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    )
    atomic_write(directory / STATE_FILE, lambda f: f.write(text.encode()))
    for old in directory.glob("arrays-*.npz"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return directory


def read_checkpoint(
    directory: str | os.PathLike,
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """``(arrays, meta)`` of the checkpoint in ``directory``, or ``None`` if there is none."""
    directory = Path(directory)
    state = directory / STATE_FILE
    if not state.exists():
        return None
    meta = json.loads(state.read_text())
    if "arrays_file" not in meta:
        raise ValueError(f"{state} is not a checkpoint of this format (no 'arrays_file')")
    with np.load(directory / meta["arrays_file"], allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return arrays, meta


def prefixed(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` under names ``prefix + name`` (one part of a checkpoint's arrays)."""
    return {prefix + k: v for k, v in arrays.items()}


def unprefixed(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The part of a checkpoint's arrays saved under ``prefix``, with the prefix removed."""
    n = len(prefix)
    return {k[n:]: np.asarray(v) for k, v in arrays.items() if k.startswith(prefix)}
