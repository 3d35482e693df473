"""FedorAS's device tiers: capability scores, equal-size tiers, parameter budgets.

The first layer of :class:`~flwr_pfedrlnas.baselines.nas.fedoras.FedorAS`;
the method is described in ``docs/baselines.md``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.common import log

from flwr_pfedrlnas.baselines.nas.base import FederatedNASBaseline
from flwr_pfedrlnas.core.profiles import ProfileDistribution
from flwr_pfedrlnas.core.search_space import Architecture, architecture_to_json
from flwr_pfedrlnas.flower.identity import natural_sorted
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = ["FedorASTiers", "check_min_ints"]


def check_min_ints(*checks: tuple[str, Any, int]) -> None:
    """``ValueError`` naming the first ``(name, value, low)`` whose value is no integer >= low."""
    for name, value, low in checks:
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


class FedorASTiers(FederatedNASBaseline):
    """Clients grouped into device tiers by capability, each tier a parameter budget.

    ``family``, ``num_tiers``, ``profiles``, ``budget_samples`` and
    ``max_sample_tries`` are described at
    :class:`~flwr_pfedrlnas.baselines.nas.fedoras.FedorAS`; ``**kwargs`` go
    to :class:`FederatedNASBaseline`.
    """

    def __init__(
        self,
        family: SupernetFamily,
        num_tiers: int = 4,
        profiles: ProfileDistribution | None = None,
        budget_samples: int = 200,
        max_sample_tries: int = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(family, **kwargs)
        check_min_ints(
            ("num_tiers", num_tiers, 1),
            ("budget_samples", budget_samples, 1),
            ("max_sample_tries", max_sample_tries, 1),
        )
        self.num_tiers = int(num_tiers)
        self.profiles = profiles
        self.max_sample_tries = int(max_sample_tries)
        self._size_cache: dict[str, int] = {}
        self._fixed_size: int | None = None
        budget_rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 3])
        samples = [family.search_space.sample(budget_rng) for _ in range(int(budget_samples))]
        sizes = np.array([self.model_size(a) for a in samples], dtype=np.int64)
        budgets = [
            int(np.quantile(sizes, (t + 1) / self.num_tiers, method="inverted_cdf"))
            for t in range(self.num_tiers - 1)
        ]
        budgets.append(max(int(sizes.max()), self.model_size(family.largest_architecture())))
        self.budgets: list[int] = budgets
        # Phase-1 reference of each tier: the largest budget sample within its budget.
        self.reference_archs: list[Architecture] = []
        for budget in budgets:
            fitting = [i for i, s in enumerate(sizes) if s <= budget]
            if fitting:
                best = max(fitting, key=lambda i: (int(sizes[i]), -i))
                self.reference_archs.append(family.search_space.validate(samples[best]))
            else:
                self.reference_archs.append(family.smallest_architecture())
        self.tier_of: dict[str, int] = {}
        self._tier_floor: dict[int, float] = {}  # weakest score of each tier at assignment

    # ------------------------------------------------------------------ sizes
    def model_size(self, arch: Architecture) -> int:
        """Parameter count of ``arch``'s subnet (the tier budgets' measure; cached).

        With ``operation_sizes`` (DARTS): the chosen operations' parameters
        plus every supernet parameter outside the operations (an upper bound,
        exact unless a cell input's preprocessing is pruned); otherwise the
        exact count of the subnet's parameters.
        """
        arch = self.family.search_space.validate(arch)
        key = architecture_to_json(arch)
        if key in self._size_cache:
            return self._size_cache[key]
        op_sizes_of = getattr(self.family, "operation_sizes", None)
        if callable(op_sizes_of):
            op_sizes = op_sizes_of()
            if self._fixed_size is None:
                every_op = sum(n for ops in op_sizes.values() for n, _ in ops.values())
                self._fixed_size = _parameter_count(self.family, None) - every_op
            size = self._fixed_size + sum(op_sizes[d][str(arch[d])][0] for d in op_sizes)
        else:
            size = _parameter_count(self.family, arch)
        self._size_cache[key] = int(size)
        return int(size)

    def sample_within(self, tier: int, rng: np.random.Generator) -> Architecture:
        """A random architecture within ``tier``'s budget (rejection sampling)."""
        budget = self.budgets[tier]
        for _ in range(self.max_sample_tries):
            arch = self.family.search_space.sample(rng)
            if self.model_size(arch) <= budget:
                return arch
        return self.family.smallest_architecture()

    # ------------------------------------------------------------------ tiers
    def capability(self, client_id: str) -> float:
        """The client's capability score (higher = more capable device)."""
        if self.profiles is not None:
            profile = self.profiles.profile(client_id)
            score = -math.log(profile.speed_factor)
            if profile.memory_budget_bytes is not None:
                score += math.log(profile.memory_budget_bytes)
            return float(score)
        key = zlib.crc32(str(client_id).encode())
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, key, 0xF0])
        return float(rng.uniform())

    def assign_tiers(self, clients: Sequence[str]) -> dict[str, int]:
        """Give every client of ``clients`` without a tier one; the full mapping.

        The first call cuts the clients, sorted by capability, into equal-size
        groups; later newcomers join the highest tier whose weakest member's
        score they reach.
        """
        new = [str(c) for c in clients if str(c) not in self.tier_of]
        if not new:
            return dict(self.tier_of)
        if not self.tier_of:
            order = sorted(
                natural_sorted(new), key=lambda c: self.capability(c)
            )  # stable: ties keep the natural order
            n = len(order)
            for rank, cid in enumerate(order):
                tier = rank * self.num_tiers // n
                self.tier_of[cid] = tier
                score = self.capability(cid)
                self._tier_floor[tier] = min(self._tier_floor.get(tier, score), score)
            log(
                INFO,
                "FedorAS tiers (budget in parameters): %s",
                "; ".join(
                    f"tier {t} <= {self.budgets[t]}: {self.tier_members(t)}"
                    for t in range(self.num_tiers)
                ),
            )
        else:
            for cid in natural_sorted(new):
                score = self.capability(cid)
                reached = [t for t, floor in self._tier_floor.items() if score >= floor]
                self.tier_of[cid] = max(reached, default=0)
        return dict(self.tier_of)

    def tier_members(self, tier: int) -> list[str]:
        """Clients of ``tier`` in natural order."""
        return natural_sorted([c for c, t in self.tier_of.items() if t == tier])

    def _tier(self, client_id: str) -> int:
        if client_id not in self.tier_of:
            self.assign_tiers([client_id])
        return self.tier_of[client_id]


def _parameter_count(family: SupernetFamily, arch: Architecture | None) -> int:
    """Exact parameter count of ``arch``'s subnet (the supernet for ``None``), on meta."""
    with torch.device("meta"):
        module = family.build_supernet() if arch is None else family.build_subnet(arch)
    return int(sum(p.numel() for p in module.parameters()))
