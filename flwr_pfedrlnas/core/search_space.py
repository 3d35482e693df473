"""Search spaces: named dimensions with discrete choices, and architectures."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Architecture",
    "Choice",
    "Dimension",
    "SearchSpace",
    "architecture_from_json",
    "architecture_to_json",
]

Choice = int | float | str
# An architecture is a flat mapping: dimension name -> chosen value.
Architecture = dict[str, Choice]


def _same_choice(a: Choice, b: Choice) -> bool:
    """Compare choices by value and kind (True is not 1, "3" is not 3)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return a == b


@dataclass(frozen=True)
class Dimension:
    """One search dimension: a name and its ordered, distinct choices.

    Parameters
    ----------
    name : str
        Key of the dimension in an architecture, e.g. ``"stage1.kernel"``.
    choices : tuple[int | float | str, ...]
        The values it may take. Numeric choices are ordered from small to large
        so that the last choice is the largest model.
    """

    name: str
    choices: tuple[Choice, ...]

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("dimension name must be a non-empty string")
        if len(self.choices) == 0:
            raise ValueError(f"dimension {self.name!r} has no choices")
        for choice in self.choices:
            if not isinstance(choice, (int, float, str)) or isinstance(choice, bool):
                raise ValueError(
                    f"dimension {self.name!r}: choice {choice!r} is not int, float or str"
                )
        for i, a in enumerate(self.choices):
            if any(_same_choice(a, b) for b in self.choices[i + 1 :]):
                raise ValueError(f"dimension {self.name!r}: choice {a!r} repeated")

    def __len__(self) -> int:
        return len(self.choices)

    def index(self, value: Choice) -> int:
        """Position of ``value`` among the choices; ``ValueError`` if absent."""
        for i, choice in enumerate(self.choices):
            if _same_choice(choice, value):
                return i
        raise ValueError(
            f"architecture field {self.name!r} has value {value!r}, "
            f"which is not one of its choices {list(self.choices)}"
        )


class SearchSpace:
    """An ordered set of dimensions; an architecture picks one choice from each.

    Parameters
    ----------
    dimensions : Iterable[Dimension]
        The dimensions, in a fixed order (the policy keeps one logit vector
        per dimension in this order).
    """

    def __init__(self, dimensions: Iterable[Dimension]) -> None:
        self.dimensions: tuple[Dimension, ...] = tuple(dimensions)
        names = [d.name for d in self.dimensions]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"search space repeats dimension names {dupes}")
        self._by_name = {d.name: d for d in self.dimensions}

    def __len__(self) -> int:
        return len(self.dimensions)

    def __iter__(self):
        return iter(self.dimensions)

    def __getitem__(self, name: str) -> Dimension:
        return self._by_name[name]

    def __repr__(self) -> str:
        dims = ", ".join(f"{d.name}={list(d.choices)}" for d in self.dimensions)
        return f"SearchSpace({dims})"

    @property
    def names(self) -> list[str]:
        """Dimension names in order."""
        return [d.name for d in self.dimensions]

    def num_architectures(self) -> int:
        """Number of distinct architectures (product of the choice counts)."""
        return math.prod(len(d) for d in self.dimensions)

    def validate(self, arch: Mapping[str, Choice]) -> Architecture:
        """Check that ``arch`` picks exactly one valid choice per dimension.

        Returns a normalised copy (keys in the space's order, each value the
        space's own choice object). Raises ``ValueError`` naming the field and
        the value otherwise.
        """
        if not isinstance(arch, Mapping):
            raise ValueError(f"architecture must be a mapping, got {type(arch).__name__}")
        unknown = sorted(set(arch) - set(self._by_name))
        if unknown:
            raise ValueError(
                f"architecture has unknown field(s) {unknown}; the search space has {self.names}"
            )
        missing = [n for n in self.names if n not in arch]
        if missing:
            raise ValueError(f"architecture is missing field(s) {missing}")
        return {d.name: d.choices[d.index(arch[d.name])] for d in self.dimensions}

    def indices(self, arch: Mapping[str, Choice]) -> dict[str, int]:
        """Choice index of every dimension."""
        arch = self.validate(arch)
        return {d.name: d.index(arch[d.name]) for d in self.dimensions}

    def from_indices(self, indices: Mapping[str, int] | Sequence[int]) -> Architecture:
        """Architecture from one choice index per dimension."""
        if isinstance(indices, Mapping):
            idx = [int(indices[d.name]) for d in self.dimensions]
        else:
            idx = [int(i) for i in indices]
        if len(idx) != len(self.dimensions):
            raise ValueError(f"expected {len(self.dimensions)} indices, got {len(idx)}")
        arch = {}
        for d, i in zip(self.dimensions, idx):
            if not 0 <= i < len(d):
                raise ValueError(
                    f"index {i} out of range for field {d.name!r} with {len(d)} choices"
                )
            arch[d.name] = d.choices[i]
        return arch

    def sample(self, rng: np.random.Generator) -> Architecture:
        """Uniformly random architecture."""
        return self.from_indices([int(rng.integers(len(d))) for d in self.dimensions])

    def smallest(self) -> Architecture:
        """First choice of every dimension (the smallest model for ordered spaces)."""
        return self.from_indices([0] * len(self.dimensions))

    def largest(self) -> Architecture:
        """Last choice of every dimension (the largest model for ordered spaces)."""
        return self.from_indices([len(d) - 1 for d in self.dimensions])

    def to_json(self) -> str:
        """The space as JSON: a list of ``{"name", "choices"}``."""
        return json.dumps([{"name": d.name, "choices": list(d.choices)} for d in self.dimensions])

    @classmethod
    def from_json(cls, text: str) -> SearchSpace:
        """Inverse of :meth:`to_json`."""
        return cls(Dimension(d["name"], tuple(d["choices"])) for d in json.loads(text))


def architecture_to_json(arch: Mapping[str, Choice]) -> str:
    """Compact, key-ordered JSON of an architecture."""
    return json.dumps(dict(arch), separators=(",", ":"))


def architecture_from_json(text: str, space: SearchSpace | None = None) -> Architecture:
    """Parse an architecture; validate it against ``space`` when given."""
    try:
        arch = json.loads(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"architecture is not valid JSON: {text!r}") from err
    if not isinstance(arch, dict):
        raise ValueError(f"architecture JSON must be an object, got {text!r}")
    return space.validate(arch) if space is not None else arch
