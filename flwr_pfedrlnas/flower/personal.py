"""A client's personal tensors: kept in ``context.state``, mirrored to its own disk.

Format and behaviour: docs/files.md, "Personal tensors on the client".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message

from flwr_pfedrlnas.core.checkpoint import atomic_write
from flwr_pfedrlnas.core.search_space import Architecture
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.supernets.base import SupernetFamily
from flwr_pfedrlnas.supernets.keep import personal_blocks

__all__ = [
    "SHARE_OR_KEEP",
    "KeptOnClient",
    "assemble",
    "kept_file",
    "load_personal",
    "personal_file",
    "personal_record_key",
    "save_personal",
    "write_back",
]

# The name of PerFedRLNAS's kept blocks in context.state and on disk.
SHARE_OR_KEEP = "pfedrlnas-kept"


def personal_file(directory: str | None, client_id: str, name: str) -> Path | None:
    """``<directory>/<client_id>.<name>.npz``, or ``None`` without a directory."""
    return Path(directory) / f"{client_id}.{name}.npz" if directory else None


def personal_record_key(name: str) -> str:
    """Key of the personal ArrayRecord ``name`` in ``context.state``."""
    return f"personal-{name}"


def load_personal(
    context: Context, name: str, path: Path | None = None
) -> dict[str, torch.Tensor] | None:
    """The tensors saved under ``name``: from ``context.state``, else from ``path``."""
    key = personal_record_key(name)
    if key in context.state.array_records:
        return context.state.array_records[key].to_torch_state_dict()
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as npz:
            state = {k: torch.from_numpy(npz[k].copy()) for k in npz.files}
        context.state[key] = ArrayRecord(state)
        return state
    return None


def save_personal(
    context: Context, name: str, state: Mapping[str, torch.Tensor], path: Path | None = None
) -> None:
    """Keep ``state`` under ``name`` in ``context.state`` (and at ``path``, atomically)."""
    state = {k: v.detach().cpu().clone() for k, v in state.items()}
    context.state[personal_record_key(name)] = ArrayRecord(state)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: v.numpy() for k, v in state.items()}
        atomic_write(path, lambda f: np.savez(f, **arrays))


def kept_file(context: Context, client_id: str, config: Mapping) -> Path | None:
    """Where the kept blocks are mirrored: ``client-state-dir`` of the node, else of the config."""
    directory = context.node_config.get(m.CLIENT_STATE_DIR) or config.get(m.CLIENT_STATE_DIR, "")
    return personal_file(str(directory), client_id, SHARE_OR_KEEP)


def assemble(
    family: SupernetFamily,
    arch: Architecture,
    received: Mapping[str, torch.Tensor],
    store: dict[str, torch.Tensor],
    init: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The whole subnet state of ``arch``, and the subnet keys taken from the own copy.

    ``store`` (the client's kept blocks, whole supernet tensors) gains every
    block of ``init`` it does not hold yet. A block ``arch`` keeps personal is
    then cut from ``store``; one the client does not hold and has no initial
    copy of is used as received (a test of shared weights). Raises
    ``ValueError`` naming the block when it is in neither.
    """
    blocks = personal_blocks(family, arch)
    if not blocks:
        return dict(received), set()
    slices = family.subnet_slices(arch)
    init = init or {}
    used: set[str] = set()
    for block in blocks:
        keys = family.block_keys(block)  # type: ignore[attr-defined]
        held = keys <= store.keys()
        if not held and keys <= init.keys():
            store.update({k: init[k].detach().clone() for k in keys})
            held = True
        in_subnet = [k for k in keys if k in slices]
        if held:
            used.update(in_subnet)
        elif not all(k in received for k in in_subnet):
            raise ValueError(
                f"keep.{block} is 'personal', but this client holds no copy of block "
                f"{block!r} and the message carries neither its initial copy nor its weights "
                f"(a restarted run finds a client's copies only in its {m.CLIENT_STATE_DIR})"
            )
    state = dict(received)
    for key in used:
        state[key] = store[key][slices[key]].clone()
    return state, used


def write_back(
    family: SupernetFamily,
    arch: Architecture,
    trained: Mapping[str, torch.Tensor],
    store: dict[str, torch.Tensor],
    used: set[str],
) -> None:
    """Write the trained tensors of ``used`` back into the own copy, in place."""
    slices = family.subnet_slices(arch)
    for key in used:
        store[key][slices[key]] = trained[key].detach().to(store[key].dtype).cpu()


class KeptOnClient:
    """A train or test message's share-or-keep part, on the client that received it.

    :meth:`state` gives the subnet's whole state (the message's tensors and the
    own kept blocks); :meth:`trained` keeps the trained personal tensors and
    returns the rest for the reply. For an architecture that keeps no block
    personal both pass the state through.
    """

    def __init__(
        self,
        family: SupernetFamily,
        arch: Architecture,
        msg: Message,
        context: Context,
        config: Mapping[str, Any],
        client_id: str,
    ) -> None:
        self.family, self.arch, self.context = family, arch, context
        self.active = bool(personal_blocks(family, arch))
        self.used: set[str] = set()
        self.store: dict[str, torch.Tensor] = {}
        self.path = None
        if self.active:
            self.path = kept_file(context, client_id, config)
            self.store = load_personal(context, SHARE_OR_KEEP, self.path) or {}
        init = msg.content.array_records.get(m.PERSONAL_INIT)
        self.init = init.to_torch_state_dict() if init is not None and self.active else None

    def state(self, record: ArrayRecord) -> dict[str, torch.Tensor]:
        """The subnet's whole state: the message's tensors and the own kept blocks."""
        received = record.to_torch_state_dict()
        if not self.active:
            return received
        state, self.used = assemble(self.family, self.arch, received, self.store, self.init)
        return state

    def trained(self, state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """Keep the trained personal tensors; the rest is the reply's."""
        if not self.active:
            return state
        if state is not None:
            write_back(self.family, self.arch, state, self.store, self.used)
            state = {k: v for k, v in state.items() if k not in self.used}
        save_personal(self.context, SHARE_OR_KEEP, self.store, self.path)
        return state
