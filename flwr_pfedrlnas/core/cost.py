"""Deterministic cost: MACs of a subnet's forward pass (cached), and of the work a client runs."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from flwr_pfedrlnas.core.search_space import Architecture, architecture_to_json
from flwr_pfedrlnas.supernets.base import SupernetFamily, skip_meta_init

__all__ = ["ComputeCounter", "count_macs", "input_resolution", "subnet_macs"]

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


_MATMULS = {
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.Tensor.matmul,
    torch.Tensor.mm,
    torch.Tensor.bmm,
    torch.Tensor.__matmul__,
}


def _requires_grad(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad


class ComputeCounter(TorchFunctionMode):
    """Multiply-accumulates of the work run while it is active, backward passes included.

    Counts convolutions (``F.conv1d/2d/3d``, weight ``[out, in/groups, *kernel]``:
    output elements x in/groups x kernel size), linear maps (output elements x
    in features), matrix products (``@``, ``matmul``, ``mm``, ``bmm``: output
    elements x the inner size) and ``F.scaled_dot_product_attention`` (batch x
    queries x keys x (query size + value size); its backward twice that),
    wherever they are called, so a supernet's sliced weights count at the size
    used. Under autograd each operand that requires a gradient adds one more
    forward's MACs (its gradient is one product of the same size), so a frozen
    layer costs its forward and the gradient of the first layer's input is not
    counted.
    Element-wise work (normalisation, activations, pooling) is not counted.
    Nothing is changed: every call runs as it would. ``macs`` is the total.

    Use as ``with ComputeCounter() as counted: ...; counted.macs``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # The forward's MACs, and how many more forwards' worth the backward costs.
        if func in (F.conv1d, F.conv2d, F.conv3d, F.linear):
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            forward = out.numel() * math.prod(w.shape[1:])
            backward = sum(_requires_grad(t) for t in (x, w))
        elif func in _MATMULS:
            a, b = args[0], args[1]
            forward = out.numel() * int(a.shape[-1])
            backward = sum(_requires_grad(t) for t in (a, b))
        elif func is F.scaled_dot_product_attention:
            q, k, v = args[0], args[1], args[2]
            forward = q.shape[:-1].numel() * int(k.shape[-2]) * (q.shape[-1] + v.shape[-1])
            # Its backward is four products of the forward's two sizes: twice the forward.
            backward = 2 if any(_requires_grad(t) for t in (q, k, v)) else 0
        else:
            return out
        self.macs += int(forward) * (1 + (backward if torch.is_grad_enabled() else 0))
        return out
