"""Checkpoint files of the search core: the supernet in .npz, the rest in JSON, atomic."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "atomic_write",
    "read_arrays_checkpoint",
    "read_search_checkpoint",
    "write_arrays_checkpoint",
    "write_search_checkpoint",
]

STATE_FILE = "state.json"
Writer = Callable[[Path, Callable[[IO[bytes]], Any]], None]


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through a synced temporary file in the same folder, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_arrays_checkpoint(
    directory: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    stem: str,
    tag: str,
    write: Writer = atomic_write,
) -> Path:
    """Save ``arrays`` as ``<stem>-<tag>.npz`` and ``meta`` as ``state.json``.

    Both files are written through ``write`` (atomic: temporary name, then
    rename); ``state.json``, written last, names the array file it belongs to
    (key ``<stem>_file``), so a crash at any point leaves the previous
    checkpoint whole and readable. Older ``<stem>-*.npz`` files are removed
    once the new state is in place. Nothing is pickled: ``meta`` must be JSON.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{stem}-{tag}.npz"
    text = json.dumps(dict(meta, **{f"{stem}_file": name}), indent=1, sort_keys=True)
    write(directory / name, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))
    write(directory / STATE_FILE, lambda f: f.write(text.encode()))
    for old in directory.glob(f"{stem}-*.npz"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return directory


def read_arrays_checkpoint(
    directory: str | os.PathLike, stem: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """``(arrays, meta)`` of a :func:`write_arrays_checkpoint` checkpoint; ``None`` if none."""
    state = Path(directory) / STATE_FILE
    if not state.exists():
        return None
    meta = json.loads(state.read_text())
    key = f"{stem}_file"
    if key not in meta:
        raise ValueError(f"{state} is not a checkpoint of this format (no {key!r})")
    with np.load(Path(directory) / meta[key], allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return arrays, meta


def write_search_checkpoint(
    directory: str | os.PathLike,
    state: Mapping[str, Any],
    completed_rounds: int,
    extra: Mapping[str, Any] | None = None,
    write: Writer = atomic_write,
) -> Path:
    """Write a search state (``supernet`` arrays + ``meta``) as a checkpoint.

    The format of :func:`write_arrays_checkpoint` (stem ``supernet``);
    ``write`` is the atomic writer (a parameter so that tests can simulate a
    crash inside it).
    """
    meta = dict(state["meta"], extra=dict(extra or {}))
    tag = f"{completed_rounds:06d}"
    return write_arrays_checkpoint(directory, state["supernet"], meta, "supernet", tag, write)


def read_search_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint of :func:`write_search_checkpoint` (arrays and JSON only)."""
    saved = read_arrays_checkpoint(directory, "supernet")
    if saved is None:
        raise FileNotFoundError(f"no checkpoint in {directory} ({STATE_FILE} is missing)")
    supernet, meta = saved
    return {"supernet": supernet, "meta": meta}
