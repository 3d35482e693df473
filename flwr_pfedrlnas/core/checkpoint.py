"""Checkpoint files of the search core: the supernet in .npz, the rest in JSON, atomic."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_write", "read_search_checkpoint", "write_search_checkpoint"]

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


def write_search_checkpoint(
    directory: str | os.PathLike,
    state: Mapping[str, Any],
    completed_rounds: int,
    extra: Mapping[str, Any] | None = None,
    write: Writer = atomic_write,
) -> Path:
    """Write a search state (``supernet`` arrays + ``meta``) as a checkpoint.

    Both files are written under temporary names and renamed; ``state.json``
    (renamed last) names the supernet file it belongs to, so a crash between
    the two renames leaves the previous checkpoint readable. ``write`` is the
    atomic writer (a parameter so that tests can simulate a crash inside it).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    round_tag = f"supernet-{completed_rounds:06d}.npz"
    write(directory / round_tag, lambda f: np.savez(f, **state["supernet"]))
    meta = dict(state["meta"], supernet_file=round_tag, extra=dict(extra or {}))
    write(
        directory / STATE_FILE,
        lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True).encode()),
    )
    for old in directory.glob("supernet-*.npz"):
        if old.name != round_tag:
            old.unlink(missing_ok=True)
    return directory


def read_search_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint of :func:`write_search_checkpoint` (arrays and JSON only)."""
    directory = Path(directory)
    meta = json.loads((directory / STATE_FILE).read_text())
    with np.load(directory / meta["supernet_file"], allow_pickle=False) as npz:
        supernet = {k: npz[k] for k in npz.files}
    return {"supernet": supernet, "meta": meta}
