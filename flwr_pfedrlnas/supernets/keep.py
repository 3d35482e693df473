"""Share-or-keep: a family whose clients may keep some blocks for themselves.

:class:`ShareOrKeep` wraps any family that declares
:meth:`~flwr_pfedrlnas.supernets.base.SupernetFamily.keepable_blocks`. For
each chosen block it adds a search dimension ``keep.<block>`` with the choices
``"shared"`` and ``"personal"``; the subnet itself (its keys and shapes) does
not depend on those choices. What they change is where the block's weights
live: under ``"personal"`` they stay on the client, are never sent either way
and never merged (:func:`personal_keys`). ``get_supernet(name, keep=[...],
**knobs)`` builds the wrapper, and ``keep`` travels with the knobs, so a client
rebuilds the same family from the server's ``supernet-config``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from flwr_pfedrlnas.core.search_space import Architecture, Choice, Dimension, SearchSpace
from flwr_pfedrlnas.supernets.base import Slices, SupernetFamily

__all__ = [
    "KEEP_KNOB",
    "KEEP_PREFIX",
    "PERSONAL",
    "SHARED",
    "ShareOrKeep",
    "block_keys",
    "is_keep_dimension",
    "kept_blocks",
    "parse_keep",
    "personal_blocks",
    "personal_keys",
]

KEEP_KNOB = "keep"
KEEP_PREFIX = "keep."
SHARED, PERSONAL = "shared", "personal"


def parse_keep(value: str | Sequence[str] | None) -> list[str]:
    """Block names from ``"classifier,last-stage"`` or a list; ``""`` / ``"none"``: none."""
    if value is None:
        return []
    if isinstance(value, str):
        items = [] if value.strip().lower() in ("", "none") else value.split(",")
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise ValueError(f"keep must be a list of block names, got {value!r}")
    names = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"keep has block name {item!r}, not a non-empty string")
        name = item.strip()
        if name in names:
            raise ValueError(f"keep names block {name!r} twice")
        names.append(name)
    return names


def is_keep_dimension(name: str) -> bool:
    """Whether ``name`` is a share-or-keep dimension (``keep.<block>``)."""
    return name.startswith(KEEP_PREFIX)


class ShareOrKeep(SupernetFamily):
    """``inner`` with a ``keep.<block>`` search dimension per block in ``blocks``.

    Everything about shapes, slices and modules is ``inner``'s: an
    architecture's ``keep.*`` fields are dropped before ``inner`` sees it.
    Attributes the wrapper does not define are looked up on ``inner``.

    Parameters
    ----------
    inner : SupernetFamily
        The family (not itself a ``ShareOrKeep``).
    blocks : Sequence[str] | str
        Names among ``inner.keepable_blocks()``, in the order of their dimensions.
    """

    def __init__(self, inner: SupernetFamily, blocks: Sequence[str] | str) -> None:
        if isinstance(inner, ShareOrKeep):
            raise ValueError("keep: the family already has share-or-keep choices")
        names = parse_keep(blocks)
        declared = inner.keepable_blocks()
        for name in names:
            if name not in declared:
                raise ValueError(
                    f"keep has block {name!r}, which {inner.name} does not declare; "
                    f"its keepable blocks are {sorted(declared)}"
                )
        if not names:
            raise ValueError("keep names no block: build the family without the wrapper")
        self.inner = inner
        super().__init__(**inner.config, **{KEEP_KNOB: names})
        self.name = inner.name  # type: ignore[misc]  # the family's own name travels
        self.blocks: tuple[str, ...] = tuple(names)
        self._space = SearchSpace(
            [
                *inner.search_space.dimensions,
                *(Dimension(f"{KEEP_PREFIX}{b}", (SHARED, PERSONAL)) for b in names),
            ]
        )
        keys = list(inner.supernet_shapes())
        self._block_keys: dict[str, frozenset[str]] = {}
        owner: dict[str, str] = {}
        for name in names:
            prefixes = tuple(declared[name])
            found = frozenset(k for k in keys if k.startswith(prefixes))
            if not found:
                raise ValueError(
                    f"{inner.name}: keepable block {name!r} (prefixes {list(prefixes)}) "
                    "matches no supernet tensor"
                )
            for key in found:
                if key in owner:
                    raise ValueError(
                        f"{inner.name}: tensor {key!r} is in both keepable blocks "
                        f"{owner[key]!r} and {name!r}"
                    )
                owner[key] = name
            self._block_keys[name] = found

    def __repr__(self) -> str:
        return f"ShareOrKeep({self.inner!r}, keep={list(self.blocks)})"

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (during __init__ or unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    # ------------------------------------------------------------------ contract
    @property
    def search_space(self) -> SearchSpace:
        """``inner``'s dimensions, then ``keep.<block>`` for each block."""
        return self._space

    def inner_arch(self, arch: Mapping[str, Choice]) -> Architecture:
        """``arch`` validated, without its ``keep.*`` fields (what ``inner`` builds)."""
        arch = self._space.validate(arch)
        return {k: v for k, v in arch.items() if not is_keep_dimension(k)}

    def build_supernet(self) -> nn.Module:
        return self.inner.build_supernet()

    def build_subnet(self, arch: Architecture) -> nn.Module:
        return self.inner.build_subnet(self.inner_arch(arch))

    def keepable_blocks(self) -> dict[str, tuple[str, ...]]:
        return self.inner.keepable_blocks()

    # ------------------------------------------------------------------ derived (inner's)
    def supernet_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.inner.supernet_shapes()

    def subnet_shapes(self, arch: Architecture) -> dict[str, tuple[int, ...]]:
        return self.inner.subnet_shapes(self.inner_arch(arch))

    def subnet_slices(self, arch: Architecture) -> dict[str, Slices]:
        return self.inner.subnet_slices(self.inner_arch(arch))

    def tensor_slices(
        self, key: str, sub_shape: tuple[int, ...], super_shape: tuple[int, ...]
    ) -> Slices:
        return self.inner.tensor_slices(key, sub_shape, super_shape)

    def init_supernet_state(self, seed: int = 0) -> dict[str, np.ndarray]:
        return self.inner.init_supernet_state(seed)

    def block_keys(self, block: str) -> frozenset[str]:
        """The supernet keys of ``block``."""
        return self._block_keys[block]


def kept_blocks(family: SupernetFamily) -> tuple[str, ...]:
    """The blocks ``family`` lets a client keep; empty for a plain family."""
    return family.blocks if isinstance(family, ShareOrKeep) else ()


def personal_blocks(family: SupernetFamily, arch: Mapping[str, Choice]) -> list[str]:
    """The blocks ``arch`` keeps personal, in the family's order."""
    return [b for b in kept_blocks(family) if arch.get(f"{KEEP_PREFIX}{b}") == PERSONAL]


def block_keys(family: SupernetFamily, blocks: Sequence[str]) -> frozenset[str]:
    """The supernet keys of every block in ``blocks``."""
    if not blocks:
        return frozenset()
    assert isinstance(family, ShareOrKeep)
    return frozenset().union(*(family.block_keys(b) for b in blocks))


def personal_keys(family: SupernetFamily, arch: Mapping[str, Choice]) -> frozenset[str]:
    """Supernet keys whose weights ``arch`` keeps on the client (never sent, never merged)."""
    return block_keys(family, personal_blocks(family, arch))
