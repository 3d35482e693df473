"""The supernet contract checks, for the built-in families and for users' own."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np
import torch

from flwr_pfedrlnas.core.aggregation import check_subnet_state, extract_subnet, merge_subnets
from flwr_pfedrlnas.core.search_space import (
    Architecture,
    architecture_from_json,
    architecture_to_json,
)
from flwr_pfedrlnas.supernets.base import SupernetFamily
from flwr_pfedrlnas.supernets.keep import ShareOrKeep

__all__ = [
    "CONTRACT_CHECKS",
    "SupernetContractError",
    "check_supernet_family",
    "contract_architectures",
    "supernet_contract_test",
]

CONTRACT_CHECKS = ("slices", "forward-backward", "unchanged-merge", "merge-round-trip", "rebuild")
"""Names of the checks, in the order :func:`check_supernet_family` runs them."""

_BATCH = 2  # two examples: BatchNorm in training mode needs more than one


class SupernetContractError(AssertionError):
    """A family breaks the supernet contract; the message names the check, architecture and key."""


def _fail(family: SupernetFamily, check: str, arch: Architecture | None, what: str) -> NoReturn:
    where = f" architecture {architecture_to_json(arch)}" if arch is not None else ""
    raise SupernetContractError(f"{family.name} [{check}]{where}: {what}")


@contextlib.contextmanager
def _reporting(family: SupernetFamily, check: str, arch: Architecture | None, doing: str):
    """Turn an exception of the family's code into a finding that says where it happened."""
    try:
        yield
    except SupernetContractError:
        raise
    except Exception as err:  # a user's builder may raise anything: each is a finding
        where = f" architecture {architecture_to_json(arch)}" if arch is not None else ""
        raise SupernetContractError(
            f"{family.name} [{check}]{where}: {doing} raised {type(err).__name__}: {err}"
        ) from err


def contract_architectures(
    family: SupernetFamily, num_archs: int = 3, seed: int = 0
) -> list[Architecture]:
    """The architectures the checks use: smallest, largest, then ``num_archs`` sampled.

    Sampled with ``numpy.random.default_rng(seed)``; duplicates are dropped.
    """
    if isinstance(num_archs, bool) or not isinstance(num_archs, int) or num_archs < 0:
        raise ValueError(f"num_archs={num_archs!r} must be an int >= 0")
    rng = np.random.default_rng(seed)
    candidates = [family.smallest_architecture(), family.largest_architecture()]
    candidates += [family.search_space.sample(rng) for _ in range(num_archs)]
    seen: dict[str, Architecture] = {}
    for arch in candidates:
        seen.setdefault(architecture_to_json(arch), arch)
    return list(seen.values())


def _default_slices(family: SupernetFamily, key: str, sub: tuple, big: tuple) -> tuple:
    # The contract's own rule (leading entries, centre crop of kernels), whatever
    # the family overrides.
    return SupernetFamily.tensor_slices(family, key, sub, big)


def _sliced_shape(slices: tuple, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(len(range(*s.indices(n))) for s, n in zip(slices, shape))


def _differing_keys(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) ^ set(b)) + [k for k in a if k in b and a[k] != b[k]]
    return keys[:5]


def _check_slices(family, archs, supernet, allow_custom_slices) -> None:
    real = {k: tuple(v.shape) for k, v in supernet.items()}
    if family.supernet_shapes() != real:
        keys = _differing_keys(family.supernet_shapes(), real)
        _fail(family, "slices", None, f"supernet shapes on 'meta' differ from real at {keys}")
    for arch in archs:
        with _reporting(family, "slices", arch, "build_subnet"):
            built = {k: tuple(v.shape) for k, v in family.build_subnet(arch).state_dict().items()}
            shapes = family.subnet_shapes(arch)
        if built != shapes:
            keys = _differing_keys(shapes, built)
            _fail(family, "slices", arch, f"subnet shapes on 'meta' differ from real at {keys}")
        for key in shapes:
            if key not in real:
                _fail(family, "slices", arch, f"key {key!r} is not in the supernet")
        with _reporting(family, "slices", arch, "subnet_slices"):
            slices = family.subnet_slices(arch)
        for key, sl in slices.items():
            if not all(isinstance(s, slice) for s in sl):
                _fail(family, "slices", arch, f"key {key!r}: {sl} is not a tuple of slices")
            if len(sl) != len(real[key]) or _sliced_shape(sl, real[key]) != shapes[key]:
                _fail(
                    family,
                    "slices",
                    arch,
                    f"key {key!r}: slices {sl} of the supernet tensor {real[key]} do not "
                    f"give the subnet's shape {shapes[key]}",
                )
            rule = _default_slices(family, key, shapes[key], real[key])
            if not allow_custom_slices and tuple(sl) != tuple(rule):
                _fail(
                    family,
                    "slices",
                    arch,
                    f"key {key!r}: slices {sl} are not the leading entries / centre crop "
                    f"{rule} (pass allow_custom_slices=True if the family means it)",
                )


def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, tuple | list):  # e.g. (logits, auxiliary logits)
        out = out[0]
    return out


def _check_forward_backward(family, archs, supernet, input_shape, num_classes) -> None:
    for i, arch in enumerate(archs):
        state = extract_subnet(family, supernet, arch)
        with _reporting(family, "forward-backward", arch, "check_subnet_state"):
            check_subnet_state(family, arch, state, supernet)
        with _reporting(family, "forward-backward", arch, "build_subnet + load_state_dict"):
            model = family.build_subnet(arch)
            model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
        for key, value in model.state_dict().items():
            if not np.array_equal(value.detach().cpu().numpy(), state[key]):
                _fail(family, "forward-backward", arch, f"key {key!r} did not load as sent")
        x = torch.randn(_BATCH, *input_shape, generator=torch.Generator().manual_seed(i))
        for mode in ("train", "eval"):
            model.train(mode == "train")
            model.zero_grad(set_to_none=True)
            with _reporting(family, "forward-backward", arch, f"forward ({mode} mode)"):
                out = _forward(model, x)
            expected = (
                (_BATCH, num_classes) if num_classes is not None else (_BATCH, *out.shape[1:])
            )
            if tuple(out.shape) != expected or not torch.isfinite(out).all():
                _fail(
                    family,
                    "forward-backward",
                    arch,
                    f"{mode} output has shape {tuple(out.shape)} (expected {expected}) "
                    f"or non-finite values",
                )
            with _reporting(family, "forward-backward", arch, f"backward ({mode} mode)"):
                out.sum().backward()
            if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()):
                _fail(family, "forward-backward", arch, f"{mode}: no parameter gets a gradient")


def _coverage(shape: tuple[int, ...], slices: tuple) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[slices] = True
    return mask


def _check_unchanged_merge(family, archs, supernet) -> None:
    updates = [(a, extract_subnet(family, supernet, a), 5 + i) for i, a in enumerate(archs)]
    merged = merge_subnets(family, supernet, updates)
    for key, value in supernet.items():
        if merged[key].dtype != value.dtype or merged[key].tobytes() != value.tobytes():
            _fail(
                family,
                "unchanged-merge",
                None,
                f"key {key!r} changed although every client sent back the weights it got",
            )


def _check_merge_round_trip(family, archs, supernet, seed) -> None:
    rng = np.random.default_rng(seed + 1)
    for arch in archs:
        new = {
            k: (rng.normal(size=v.shape).astype(v.dtype) if v.dtype.kind == "f" else v)
            for k, v in extract_subnet(family, supernet, arch).items()
        }
        merged = merge_subnets(family, supernet, [(arch, new, 3)])
        back = extract_subnet(family, merged, arch)
        for key, value in new.items():
            if back[key].tobytes() != value.tobytes():
                _fail(family, "merge-round-trip", arch, f"key {key!r} does not extract as merged")
        slices = family.subnet_slices(arch)
        for key, old in supernet.items():
            outside = (
                ~_coverage(old.shape, slices[key]) if key in slices else np.ones(old.shape, bool)
            )
            if merged[key][outside].tobytes() != old[outside].tobytes():
                _fail(
                    family,
                    "merge-round-trip",
                    arch,
                    f"key {key!r}: entries outside the subnet changed in the merge",
                )


def _rebuilt_family(family: SupernetFamily) -> SupernetFamily:
    from flwr_pfedrlnas.supernets import get_supernet

    knobs = json.loads(family.config_json())
    try:  # what a client does: the registry, by name and JSON knobs
        return get_supernet(family.name, **knobs)
    except ValueError:  # a family that is not registered (yet)
        return type(family)(**knobs)


def _check_rebuild(family, archs, supernet, input_shape) -> None:
    with _reporting(family, "rebuild", None, "rebuilding from config_json()"):
        again = _rebuilt_family(family)
    if type(again) is not type(family):
        _fail(family, "rebuild", None, f"the name resolves to {type(again).__name__}")
    if again.search_space.to_json() != family.search_space.to_json():
        _fail(family, "rebuild", None, "the search space differs after a rebuild from JSON")
    if again.supernet_shapes() != family.supernet_shapes():
        _fail(family, "rebuild", None, "supernet shapes differ after a rebuild from JSON")
    for i, arch in enumerate(archs):
        with _reporting(family, "rebuild", arch, "validating the architecture's JSON"):
            sent = architecture_from_json(architecture_to_json(arch), again.search_space)
        if again.subnet_shapes(sent) != family.subnet_shapes(arch):
            _fail(family, "rebuild", arch, "subnet shapes differ after a rebuild from JSON")
        state = {k: torch.from_numpy(v) for k, v in extract_subnet(family, supernet, arch).items()}
        x = torch.randn(_BATCH, *input_shape, generator=torch.Generator().manual_seed(i))
        outputs = []
        for fam, a in ((family, arch), (again, sent)):
            with _reporting(family, "rebuild", arch, "build_subnet + forward"), torch.no_grad():
                model = fam.build_subnet(a)
                model.load_state_dict(state, strict=True)
                outputs.append(_forward(model.eval(), x))
        if not torch.equal(outputs[0], outputs[1]):
            _fail(family, "rebuild", arch, "the rebuilt subnet computes something else")


def _default_input_shape(family: SupernetFamily) -> tuple[int, ...]:
    config = family.config
    resolution = config.get("input_resolution", 32)
    return (int(config.get("in_channels", 1)), int(resolution), int(resolution))


def check_supernet_family(
    family: SupernetFamily,
    num_archs: int = 3,
    seed: int = 0,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    checks: Sequence[str] = CONTRACT_CHECKS,
    allow_custom_slices: bool = False,
) -> None:
    """Check that ``family`` honours the supernet contract; raise on the first break.

    Runs on the smallest, the largest and ``num_archs`` sampled architectures
    (:func:`contract_architectures`) and a supernet initialised with ``seed``:

    - ``"slices"``: every subnet key is in the supernet and its slices give
      exactly the subnet tensor's shape, by the contract's rule (leading
      entries, centre crop of kernel axes); shapes derived on the ``meta``
      device equal the real ones;
    - ``"forward-backward"``: each subnet loads its cut of the supernet
      (``strict=True``), runs forward in train and eval mode to
      ``(batch, num_classes)`` finite outputs, and backward reaches its
      parameters;
    - ``"unchanged-merge"``: clients returning the weights they got leave the
      supernet bit for bit;
    - ``"merge-round-trip"``: after merging new weights, extracting the same
      architecture returns them exactly and every supernet entry outside the
      subnet is untouched;
    - ``"rebuild"``: the family rebuilt from its name and ``config_json()``
      (as a client does) has the same search space and shapes, and its subnet,
      built from the architecture's JSON with the same weights, computes the
      same outputs.

    Blocks the family declares in ``keepable_blocks`` must each match a
    supernet tensor and be disjoint.

    In a pytest file: ``def test_my_family(): check_supernet_family(MyFamily())``,
    or :func:`supernet_contract_test` for one test per check.

    Parameters
    ----------
    family : SupernetFamily
        The family to check, built with its (CPU-sized) knobs.
    num_archs : int (default: 3)
        Sampled architectures besides the smallest and the largest.
    seed : int (default: 0)
        Seeds the sampling, the supernet's initialisation and the inputs.
    input_shape : sequence of int, optional
        Shape of one input example; default ``(in_channels, r, r)`` from the
        knobs ``in_channels`` (1) and ``input_resolution`` (32).
    num_classes : int, optional
        Expected width of the output; default the knob ``num_classes`` if the
        family has one, else only the batch size is checked.
    checks : sequence of str (default: all of ``CONTRACT_CHECKS``)
        Which checks to run.
    allow_custom_slices : bool (default: False)
        Accept slices other than the contract's rule (a family overriding
        ``tensor_slices`` on purpose); they must still give the right shapes.

    Raises
    ------
    SupernetContractError
        (an ``AssertionError``) naming the check, the architecture and the key.
    ValueError
        An unknown check name or a bad ``num_archs``.
    """
    unknown = [c for c in checks if c not in CONTRACT_CHECKS]
    if unknown or isinstance(checks, str):
        raise ValueError(f"checks={checks!r}: unknown check(s); choose from {CONTRACT_CHECKS}")
    archs = contract_architectures(family, num_archs, seed)
    shape = tuple(input_shape) if input_shape is not None else _default_input_shape(family)
    if num_classes is None and "num_classes" in family.config:
        num_classes = int(family.config["num_classes"])
    with _reporting(family, "build", None, "build_supernet"):
        supernet = family.init_supernet_state(seed=seed)
    if family.keepable_blocks() and not isinstance(family, ShareOrKeep):
        # Every declared block holds tensors, no two share one (ShareOrKeep checks both).
        with _reporting(family, "build", None, "keepable_blocks"):
            ShareOrKeep(family, list(family.keepable_blocks()))
    runners: dict[str, Callable[[], None]] = {
        "slices": lambda: _check_slices(family, archs, supernet, allow_custom_slices),
        "forward-backward": lambda: _check_forward_backward(
            family, archs, supernet, shape, num_classes
        ),
        "unchanged-merge": lambda: _check_unchanged_merge(family, archs, supernet),
        "merge-round-trip": lambda: _check_merge_round_trip(family, archs, supernet, seed),
        "rebuild": lambda: _check_rebuild(family, archs, supernet, shape),
    }
    with torch.random.fork_rng(devices=[]):  # builders draw from torch's global RNG
        for name in CONTRACT_CHECKS:
            if name in checks:
                runners[name]()


def supernet_contract_test(
    make_family: Callable[[], SupernetFamily], **kwargs: Any
) -> Callable[[str], None]:
    """A pytest test function, parametrised over ``CONTRACT_CHECKS``, for one family.

    In a test module: ``test_my_family = supernet_contract_test(lambda: MyFamily())``
    gives one test per check (``test_my_family[slices]``, ...). The family is
    built once, on the first check that runs.

    Parameters
    ----------
    make_family : callable
        Returns the family to check (called lazily, so collection stays fast).
    **kwargs
        Passed to :func:`check_supernet_family` (``num_archs``, ``seed``,
        ``input_shape``, ``num_classes``, ``allow_custom_slices``).
    """
    import pytest  # only where tests run: not a dependency of the package

    built: list[SupernetFamily] = []

    @pytest.mark.parametrize("check", CONTRACT_CHECKS)
    def test_supernet_contract(check: str) -> None:
        if not built:
            built.append(make_family())
        check_supernet_family(built[0], checks=(check,), **kwargs)

    return test_supernet_contract
