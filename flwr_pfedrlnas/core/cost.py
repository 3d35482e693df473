"""Deterministic cost of a subnet: multiply-accumulates of one forward pass, cached."""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
from torch.utils.flop_counter import FlopCounterMode

from flwr_pfedrlnas.core.search_space import Architecture, architecture_to_json
from flwr_pfedrlnas.supernets.base import SupernetFamily, skip_meta_init

__all__ = ["count_macs", "input_resolution", "subnet_macs"]

_CACHE_SIZE = 4096
_cache: OrderedDict[tuple[str, str, str, int], int] = OrderedDict()
_lock = threading.Lock()


def count_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """MACs of one forward of ``model`` on ``x`` (FLOPs / 2 of FlopCounterMode)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops() // 2)


def input_resolution(family: SupernetFamily) -> int:
    """Input height and width a family is fed: its ``input_resolution`` knob, the
    largest of its ``resolution_choices`` (the data's size; a subnet resizes), else 32."""
    cfg = family.config
    if "input_resolution" in cfg:
        return int(cfg["input_resolution"])
    if cfg.get("resolution_choices"):
        return int(max(cfg["resolution_choices"]))
    return 32


def subnet_macs(family: SupernetFamily, arch: Architecture, resolution: int | None = None) -> int:
    """MACs of one image through ``arch``'s subnet, counted on the meta device.

    No weight is allocated (the subnet is built on the meta device), and the
    count is cached by family, knobs and architecture JSON, so a round-time
    model that asks for it every round pays the count once per architecture.
    """
    arch = family.search_space.validate(arch)
    size = input_resolution(family) if resolution is None else int(resolution)
    key = (family.name, family.config_json(), architecture_to_json(arch), size)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    channels = int(family.config.get("in_channels", 3))
    with skip_meta_init(), torch.device("meta"):
        model = family.build_subnet(arch)
        x = torch.empty(1, channels, size, size)
    macs = count_macs(model, x)
    with _lock:
        _cache[key] = macs
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return macs
