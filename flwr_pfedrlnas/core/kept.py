"""The server's record of which blocks each client keeps personal (share-or-keep).

A client starts a personal block from the shared weights the first time its
sampled architecture keeps it: that message carries the block's whole
supernet tensors once (``init_state``). From then on the block's tensors are
in no message, either way. The server only records who holds what; it never
sees a personal weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.core.search_space import Architecture
from flwr_pfedrlnas.supernets.base import SupernetFamily
from flwr_pfedrlnas.supernets.keep import block_keys, kept_blocks, personal_blocks

__all__ = ["KeptBlocks"]


class KeptBlocks:
    """Client id -> the blocks it holds a personal copy of."""

    def __init__(self, family: SupernetFamily) -> None:
        self.family = family
        self.held: dict[str, set[str]] = {}

    @property
    def active(self) -> bool:
        """Whether the family has share-or-keep dimensions at all."""
        return bool(kept_blocks(self.family))

    def holds(self, client_id: str) -> set[str]:
        """The blocks ``client_id`` holds (a copy)."""
        return set(self.held.get(str(client_id), ()))

    def downlink(
        self,
        client_id: str,
        supernet: Mapping[str, np.ndarray],
        arch: Architecture,
        training: bool,
        copy: bool = True,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """What ``client_id`` is sent for ``arch``: the subnet state and the initial copies.

        The subnet state leaves out every block ``arch`` keeps personal that
        the client holds. A personal block it does not hold yet is, for
        training, left out too and sent whole as an initial copy (the second
        dict); for a test (``training=False``) it is sent as shared weights,
        which is what the client would start from.
        """
        state = extract_subnet(self.family, supernet, arch, copy=copy)
        if not self.active:
            return state, {}
        personal = personal_blocks(self.family, arch)
        held = self.holds(client_id)
        dropped = block_keys(self.family, [b for b in personal if b in held or training])
        state = {k: v for k, v in state.items() if k not in dropped}
        init_keys = block_keys(self.family, [b for b in personal if b not in held and training])
        init = {k: np.array(supernet[k], copy=True) for k in sorted(init_keys)}
        return state, init

    def started(self, client_id: str, arch: Architecture) -> None:
        """Record that ``client_id`` now holds every block ``arch`` keeps personal."""
        blocks = personal_blocks(self.family, arch)
        if blocks:
            self.held.setdefault(str(client_id), set()).update(blocks)

    def state_dict(self) -> dict[str, Any]:
        return {cid: sorted(blocks) for cid, blocks in sorted(self.held.items())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        known = set(kept_blocks(self.family))
        held = {}
        for cid, blocks in state.items():
            unknown = sorted(set(blocks) - known)
            if unknown:
                raise ValueError(
                    f"checkpoint says client {cid!r} keeps block(s) {unknown}, "
                    f"which the family does not offer (keep={sorted(known)})"
                )
            held[str(cid)] = set(blocks)
        self.held = held
