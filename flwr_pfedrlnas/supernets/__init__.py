"""Supernet families and their registry."""

from __future__ import annotations

import importlib
from typing import Any

from flwr_pfedrlnas.supernets.base import SupernetFamily, numpy_to_state, state_to_numpy
from flwr_pfedrlnas.supernets.checks import check_dimensions, dead_dimensions
from flwr_pfedrlnas.supernets.keep import KEEP_KNOB, ShareOrKeep, parse_keep
from flwr_pfedrlnas.supernets.presets import CPU_PRESETS, cpu_preset

__all__ = [
    "CPU_PRESETS",
    "ShareOrKeep",
    "SupernetFamily",
    "available_supernets",
    "check_dimensions",
    "cpu_preset",
    "dead_dimensions",
    "get_supernet",
    "numpy_to_state",
    "register_supernet",
    "state_to_numpy",
]

# Built-in families, imported on first use so that a client pays only for its own.
_BUILTIN_MODULES = {
    "darts": "flwr_pfedrlnas.supernets.darts",
    "elastic-cnn": "flwr_pfedrlnas.supernets.elastic_cnn",
    "mobilenetv3": "flwr_pfedrlnas.supernets.mobilenetv3",
    "nasvit": "flwr_pfedrlnas.supernets.nasvit",
}
_REGISTRY: dict[str, type[SupernetFamily]] = {}


def register_supernet(cls: type[SupernetFamily]) -> type[SupernetFamily]:
    """Class decorator: make a family available under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} must set a non-empty class attribute 'name'")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"supernet family {cls.name!r} is already registered by "
            f"{existing.__module__}.{existing.__qualname__}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin(name: str) -> None:
    if name in _BUILTIN_MODULES and name not in _REGISTRY:
        importlib.import_module(_BUILTIN_MODULES[name])


def available_supernets() -> list[str]:
    """Names of every registered family, built-in ones included."""
    for name in _BUILTIN_MODULES:
        _load_builtin(name)
    return sorted(_REGISTRY)


def get_supernet(
    name: str, *, refuse_dead_dimensions: bool = False, **knobs: Any
) -> SupernetFamily:
    """Build the family ``name`` with the given size knobs.

    Raises ``ValueError`` naming the unknown family and the known ones, and,
    with ``refuse_dead_dimensions``, naming any dimension whose choices build
    identical subnets (:func:`check_dimensions`; it builds one meta-device
    subnet per choice, so it is opt-in where families are built every round).
    A ``keep`` knob (block names, see :class:`ShareOrKeep`) adds the
    share-or-keep dimensions of those blocks.
    """
    _load_builtin(name)
    if name not in _REGISTRY:
        raise ValueError(f"unknown supernet family {name!r}; available: {available_supernets()}")
    keep = knobs.pop(KEEP_KNOB, None)
    family = _REGISTRY[name](**knobs)
    if parse_keep(keep):
        family = ShareOrKeep(family, keep)
    return check_dimensions(family) if refuse_dead_dimensions else family
