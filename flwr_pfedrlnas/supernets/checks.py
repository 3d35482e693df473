"""Dead dimensions: choices of one search dimension that build the same subnet."""

from __future__ import annotations

from typing import Any

import torch

from flwr_pfedrlnas.core.search_space import Choice
from flwr_pfedrlnas.supernets.base import SupernetFamily, skip_meta_init
from flwr_pfedrlnas.supernets.keep import is_keep_dimension

__all__ = ["check_dimensions", "dead_dimensions", "subnet_signature"]

_SCALARS = (bool, int, float, str, tuple, type(None))
_cache: dict[tuple[str, str], dict[str, list[list[Choice]]]] = {}


def subnet_signature(family: SupernetFamily, arch: dict[str, Choice]) -> tuple[Any, ...]:
    """What tells two subnets apart: every module's type and settings, every tensor's shape.

    Shapes alone do not: a DARTS edge's ``none`` and ``skip_connect`` have no
    weights, and a resolution has none either, yet each changes the network.
    So the public scalar attributes of every module (channels, kernel size,
    stride, a subnet's input resolution) are part of the signature. Built on
    the meta device: no weight is allocated.
    """
    with skip_meta_init(), torch.device("meta"):
        module = family.build_subnet(arch)
    structure = tuple(
        (
            name,
            type(m).__qualname__,
            tuple(
                sorted(
                    (k, repr(v))
                    for k, v in vars(m).items()
                    if not k.startswith("_") and k != "training" and isinstance(v, _SCALARS)
                )
            ),
        )
        for name, m in module.named_modules()
    )
    shapes = tuple((k, tuple(v.shape)) for k, v in module.state_dict().items())
    return structure, shapes


def dead_dimensions(family: SupernetFamily) -> dict[str, list[list[Choice]]]:
    """Per dimension, the groups of its choices that build identical subnets.

    Each dimension is varied alone from the largest architecture (where every
    other dimension is at its widest, so any effect the choice has shows).
    Dimensions without such a group are left out; the answer is cached per
    family and knobs.
    """
    key = (family.name, family.config_json())
    if key in _cache:
        return {k: [list(g) for g in v] for k, v in _cache[key].items()}
    largest = family.largest_architecture()
    found: dict[str, list[list[Choice]]] = {}
    for dim in family.search_space:
        if len(dim) < 2 or is_keep_dimension(dim.name):
            continue  # a keep.<block> choice moves weights, not the subnet's shape
        groups: dict[tuple[Any, ...], list[Choice]] = {}
        for choice in dim.choices:
            arch = dict(largest, **{dim.name: choice})
            groups.setdefault(subnet_signature(family, arch), []).append(choice)
        same = [g for g in groups.values() if len(g) > 1]
        if same:
            found[dim.name] = same
    _cache[key] = found
    return {k: [list(g) for g in v] for k, v in found.items()}


def check_dimensions(family: SupernetFamily) -> SupernetFamily:
    """Refuse a family with a dead dimension; returns ``family`` when it has none.

    Raises ``ValueError`` naming every dead dimension and its identical choices:
    such choices add noise to the search and nothing else.
    """
    dead = dead_dimensions(family)
    if dead:
        what = "; ".join(
            f"dimension {name!r}: choices {' and '.join(str(g) for g in groups)} "
            "build identical subnets"
            for name, groups in dead.items()
        )
        raise ValueError(
            f"{family.name} with {family.config_json()} has dead dimensions: {what}. "
            "Change the knobs (e.g. width_mult or the choice lists) so that every choice differs."
        )
    return family
