"""The supernet contract that every family implements, and what follows from it."""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import json
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from flwr_pfedrlnas.core.search_space import Architecture, SearchSpace, architecture_to_json

__all__ = [
    "LayoutFamily",
    "ShapeItems",
    "SupernetFamily",
    "Slices",
    "block_shapes",
    "clear_block_shapes",
    "module_shapes",
    "numpy_to_state",
    "shape_cache",
    "state_to_numpy",
]

# Where one subnet tensor sits inside the supernet tensor of the same key.
Slices = tuple[slice, ...]
# (key, shape) of every entry of a state_dict, in its order.
ShapeItems = tuple[tuple[str, tuple[int, ...]], ...]

_SHAPE_CACHE_SIZE = 512
_TENSOR_SLICES_CACHE_SIZE = 1 << 16
_BLOCK_CACHE_SIZE = 1 << 14

# torch.nn.init functions skipped on meta tensors while shapes are derived: a meta
# tensor has no values, and initialising one still dispatches through torch's
# reference decompositions (about two thirds of a meta build of a MobileNetV3 subnet).
_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)
_init_lock = threading.Lock()
_init_depth = 0
_init_originals: dict[str, Any] = {}


def _skip_on_meta(original):
    @functools.wraps(original)
    def init(tensor, *args, **kwargs):
        if isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return original(tensor, *args, **kwargs)

    return init


@contextlib.contextmanager
def _gc_paused():
    # A meta build makes thousands of short-lived objects and frees them all by
    # reference counting; the cyclic collector, triggered by their number, would
    # walk the whole heap (torch's included) several times per build for nothing.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def skip_meta_init():
    """Within the block, ``torch.nn.init`` functions leave meta tensors alone.

    Real tensors (another thread building a real module meanwhile) are
    initialised as usual: the patched functions call the original for them.
    """
    global _init_depth
    with _init_lock:
        if _init_depth == 0:
            for name in _INIT_FUNCTIONS:
                original = getattr(nn.init, name, None)
                if original is not None:
                    _init_originals[name] = original
                    setattr(nn.init, name, _skip_on_meta(original))
        _init_depth += 1
    try:
        yield
    finally:
        with _init_lock:
            _init_depth -= 1
            if _init_depth == 0:
                for name, original in _init_originals.items():
                    setattr(nn.init, name, original)
                _init_originals.clear()


def module_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shape of every ``state_dict`` entry of ``module``, in its order (no detach)."""
    state = module.state_dict(keep_vars=True)  # keep_vars: no detach per tensor
    return {k: tuple(v.shape) for k, v in state.items()}


_SHAPE_CACHES: list[Any] = []


def shape_cache(fn: Any) -> Any:
    """``functools.lru_cache`` (16 Ki entries) that :func:`clear_block_shapes` clears too.

    For functions of hashable arguments that assemble shapes from
    :func:`block_shapes` (a block made of blocks).
    """
    cached = functools.lru_cache(maxsize=_BLOCK_CACHE_SIZE)(fn)
    _SHAPE_CACHES.append(cached)
    return cached


@shape_cache
def _block_items(factory: Any, args: tuple[Any, ...], kwargs: tuple[Any, ...]) -> ShapeItems:
    with _gc_paused(), skip_meta_init(), torch.device("meta"):
        module = factory(*args, **dict(kwargs))
        return tuple(module_shapes(module).items())


@shape_cache
def _prefixed_items(
    prefix: str, factory: Any, args: tuple[Any, ...], kwargs: tuple[Any, ...]
) -> ShapeItems:
    return tuple((prefix + key, shape) for key, shape in _block_items(factory, args, kwargs))


def block_shapes(prefix: str, factory: Any, *args: Any, **kwargs: Any) -> ShapeItems:
    """The ``state_dict`` shapes of ``factory(*args, **kwargs)``, keys after ``prefix``.

    The module is built once on the meta device per distinct ``(factory, args,
    kwargs)`` (all hashable) and its shapes are kept (the last 16 Ki blocks), so
    a family's :meth:`SupernetFamily.derive_subnet_shapes` can assemble a subnet's
    shapes from its blocks' without building the subnet: the shapes of a module
    depend only on its constructor's arguments, and a container's ``state_dict``
    is its own entries followed by each child's under ``"<child name>."``, in
    registration order. ``prefix`` is the block's path in the subnet followed by
    a dot (``"stages.0.1."``), or ``""``.
    """
    return _prefixed_items(prefix, factory, args, tuple(sorted(kwargs.items())))


def clear_block_shapes() -> None:
    """Forget every block's shapes kept by :func:`block_shapes` and :func:`shape_cache`."""
    for cache in _SHAPE_CACHES:
        cache.cache_clear()


class SupernetFamily(ABC):
    """A weight-sharing supernet family.

    A family declares its :class:`SearchSpace` and two builders. Everything else
    (where each subnet tensor sits inside the supernet, extraction, merging) is
    derived from them by generic code, so a new family is a new subclass and
    nothing more.

    Contract
    --------
    ``build_subnet(arch).state_dict()`` has a subset of the keys of
    ``build_supernet().state_dict()``, and each tensor is a slice of the
    supernet tensor of the same key: leading entries along every axis, except
    the spatial axes of convolution kernels (axes 2 and up of a tensor of 3 or
    more dimensions), where it is the centre crop. Families whose tensors follow
    another rule override :meth:`tensor_slices`.

    Parameters
    ----------
    **knobs
        The family's size knobs (JSON-serialisable scalars). A client rebuilds
        the family from its name and these knobs, so they must determine every
        shape.
    """

    name: ClassVar[str] = ""

    def __init__(self, **knobs: Any) -> None:
        self._config = copy.deepcopy(dict(knobs))
        self._supernet_shapes: dict[str, tuple[int, ...]] | None = None
        self._subnet_shapes: OrderedDict[str, dict[str, tuple[int, ...]]] = OrderedDict()
        self._subnet_slices: OrderedDict[str, dict[str, Slices]] = OrderedDict()
        # (key, subnet shape) -> slices: one tensor's slices recur across architectures.
        self._tensor_slices: dict[tuple[str, tuple[int, ...]], Slices] = {}

    # ------------------------------------------------------------------ contract
    @property
    @abstractmethod
    def search_space(self) -> SearchSpace:
        """The family's search space."""

    @abstractmethod
    def build_supernet(self) -> nn.Module:
        """Server-side module holding every shared weight."""

    @abstractmethod
    def build_subnet(self, arch: Architecture) -> nn.Module:
        """Standalone module for one architecture (never builds the supernet)."""

    def keepable_blocks(self) -> dict[str, tuple[str, ...]]:
        """Blocks a client may keep for itself (share-or-keep): name -> key prefixes.

        Each block is the set of supernet ``state_dict`` keys that start with
        one of its prefixes (``"classifier."``). With ``keep`` among the knobs
        (see :class:`~flwr_pfedrlnas.supernets.keep.ShareOrKeep`), each chosen
        block becomes a search dimension ``keep.<block>`` over ``"shared"`` and
        ``"personal"``. The default declares none: the paper's setting.
        """
        return {}

    # ------------------------------------------------------------------ derived
    @property
    def config(self) -> dict[str, Any]:
        """The size knobs this family was built with (a copy)."""
        return copy.deepcopy(self._config)

    def config_json(self) -> str:
        """Size knobs as JSON (sent to clients as ``supernet-config``)."""
        return json.dumps(self._config, sort_keys=True)

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({knobs})"

    def largest_architecture(self) -> Architecture:
        """The architecture with the most weights (last choice of each dimension)."""
        return self.search_space.largest()

    def smallest_architecture(self) -> Architecture:
        """The architecture with the fewest weights (first choice of each dimension)."""
        return self.search_space.smallest()

    def supernet_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every supernet tensor, derived without allocating weights."""
        if self._supernet_shapes is None:
            with skip_meta_init(), torch.device("meta"):
                module = self.build_supernet()
            self._supernet_shapes = module_shapes(module)
        return dict(self._supernet_shapes)

    def subnet_shapes(self, arch: Architecture) -> dict[str, tuple[int, ...]]:
        """Shape of every tensor of ``arch``'s subnet, in the subnet's key order.

        Derived once per architecture by :meth:`derive_subnet_shapes` and kept
        (the last 512 architectures, keyed by the architecture's JSON).
        """
        arch = self.search_space.validate(arch)
        return dict(self._cached_shapes(arch, architecture_to_json(arch)))

    def derive_subnet_shapes(self, arch: Architecture) -> dict[str, tuple[int, ...]]:
        """Shapes of a validated ``arch``'s subnet, uncached (optional override).

        Must equal ``build_subnet(arch).state_dict()``'s shapes exactly: the same
        keys, in the same order, with the same shapes. The default builds the
        subnet on PyTorch's meta device (no weights allocated), which is right
        for every family but costs a whole module build per new architecture; a
        family may override it with a cheaper exact derivation, typically
        assembled from cached per-block shapes (:func:`block_shapes`).
        :meth:`subnet_shapes` and :meth:`subnet_slices` cache its result.
        """
        with _gc_paused(), skip_meta_init(), torch.device("meta"):
            return module_shapes(self.build_subnet(arch))

    def _cached_shapes(self, arch: Architecture, arch_json: str) -> dict[str, tuple[int, ...]]:
        # The cache's own dict: callers copy it before handing it out.
        shapes = self._subnet_shapes.get(arch_json)
        if shapes is not None:
            self._subnet_shapes.move_to_end(arch_json)
            return shapes
        shapes = self.derive_subnet_shapes(arch)
        self._subnet_shapes[arch_json] = shapes
        if len(self._subnet_shapes) > _SHAPE_CACHE_SIZE:
            self._subnet_shapes.popitem(last=False)
        return shapes

    def tensor_slices(
        self, key: str, sub_shape: tuple[int, ...], super_shape: tuple[int, ...]
    ) -> Slices:
        """Where a subnet tensor of ``sub_shape`` sits in the supernet tensor.

        Leading entries along every axis; centre crop along the spatial axes
        (2 and up) of tensors with 3 or more dimensions (convolution kernels).
        Shapes cannot tell meaning: a fused tensor (one q/k/v projection, say)
        or a rank-3 tensor that is not a kernel would be sliced with the right
        shape but the wrong entries. Lay such weights out as separate tensors,
        or override this method for them.
        """
        if len(sub_shape) != len(super_shape):
            raise ValueError(
                f"{self.name}: subnet tensor {key!r} has shape {sub_shape}, "
                f"supernet tensor has shape {super_shape} (different rank)"
            )
        slices = []
        for axis, (s, big) in enumerate(zip(sub_shape, super_shape)):
            if s > big:
                raise ValueError(
                    f"{self.name}: subnet tensor {key!r} has shape {sub_shape}, "
                    f"larger than the supernet's {super_shape} on axis {axis}"
                )
            if axis >= 2 and len(sub_shape) >= 3:
                if (big - s) % 2:
                    raise ValueError(
                        f"{self.name}: kernel axis {axis} of {key!r} cannot be "
                        f"centre-cropped from {big} to {s}"
                    )
                start = (big - s) // 2
                slices.append(slice(start, start + s))
            else:
                slices.append(slice(0, s))
        return tuple(slices)

    def subnet_slices(self, arch: Architecture) -> dict[str, Slices]:
        """For each subnet key, its slices into the supernet tensor of that key.

        Derived once per architecture and kept (the last 512 architectures, keyed
        by the architecture's JSON), like :meth:`subnet_shapes`.
        """
        arch = self.search_space.validate(arch)
        arch_json = architecture_to_json(arch)
        slices = self._subnet_slices.get(arch_json)
        if slices is not None:
            self._subnet_slices.move_to_end(arch_json)
            return dict(slices)
        if self._supernet_shapes is None:
            self.supernet_shapes()
        super_shapes = self._supernet_shapes
        assert super_shapes is not None
        if type(self).subnet_shapes is SupernetFamily.subnet_shapes:
            shapes = self._cached_shapes(arch, arch_json)
        else:  # a family that derives its shapes its own way
            shapes = self.subnet_shapes(arch)
        memo = self._tensor_slices
        if len(memo) > _TENSOR_SLICES_CACHE_SIZE:
            memo.clear()
        slices = {}
        for key, shape in shapes.items():
            found = memo.get((key, shape))
            if found is None:
                if key not in super_shapes:
                    raise ValueError(
                        f"{self.name}: subnet key {key!r} is not in the supernet "
                        "(the family breaks the supernet contract)"
                    )
                found = memo[(key, shape)] = self.tensor_slices(key, shape, super_shapes[key])
            slices[key] = found
        self._subnet_slices[arch_json] = slices
        if len(self._subnet_slices) > _SHAPE_CACHE_SIZE:
            self._subnet_slices.popitem(last=False)
        return dict(slices)

    def init_supernet_state(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Freshly initialised supernet weights as numpy arrays (seeded)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = self.build_supernet()
        return state_to_numpy(module.state_dict())


class LayoutFamily(SupernetFamily):
    """A family whose supernet and subnets come from one ``_build(arch)`` code path."""

    @abstractmethod
    def _build(self, arch: Architecture) -> nn.Module:
        """Build the network of a validated ``arch``."""

    def build_supernet(self) -> nn.Module:
        """The network of the largest architecture (holds every shared weight)."""
        return self._build(self.search_space.largest())

    def build_subnet(self, arch: Architecture) -> nn.Module:
        """Standalone network of ``arch`` (built from ``arch`` alone)."""
        return self._build(self.search_space.validate(arch))


def state_to_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A torch ``state_dict`` as name -> numpy array (copies, on the CPU)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


def numpy_to_state(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Name -> numpy array as a torch ``state_dict``."""
    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
