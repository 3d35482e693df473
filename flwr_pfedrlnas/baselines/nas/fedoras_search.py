"""FedorAS's search: in-budget candidates per tier, scored by its clients, one chosen per tier.

The second layer of :class:`~flwr_pfedrlnas.baselines.nas.fedoras.FedorAS`
(over :class:`~.fedoras_tiers.FedorASTiers`); the clients' scoring step is
:func:`~.fedoras_client.evaluate_candidates`. The method is described in
``docs/baselines.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MessageType, RecordDict
from flwr.common import log

from flwr_pfedrlnas.baselines.nas.fedoras_client import (
    ACCURACIES,
    CANDIDATE_BATCHES,
    CANDIDATES,
    candidate_key,
)
from flwr_pfedrlnas.baselines.nas.fedoras_tiers import FedorASTiers, check_min_ints
from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.core.search_space import Architecture, architecture_to_json
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.identity import natural_sorted
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = ["FedorASSearch"]


class FedorASSearch(FedorASTiers):
    """Device tiers and the once-per-run search of one architecture per tier.

    ``family``, ``num_candidates`` and ``candidate_batches`` are described at
    :class:`~flwr_pfedrlnas.baselines.nas.fedoras.FedorAS`; ``**kwargs`` go
    to :class:`~.fedoras_tiers.FedorASTiers`.
    """

    def __init__(
        self,
        family: SupernetFamily,
        num_candidates: int = 4,
        candidate_batches: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(family, **kwargs)
        check_min_ints(
            ("num_candidates", num_candidates, 1), ("candidate_batches", candidate_batches, 1)
        )
        self.num_candidates = int(num_candidates)
        self.candidate_batches = int(candidate_batches)
        # A seeded stream of its own, so that client sampling matches the other baselines.
        self._candidate_rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 2])
        self.searched = False
        self.search_results: list[dict[str, Any]] = []
        self.tier_archs: list[Architecture] = [dict(a) for a in self.reference_archs]
        self.tier_models: list[dict[str, np.ndarray]] = []

    def draw_candidates(self, tier: int) -> list[Architecture]:
        """``num_candidates`` seeded, distinct (where possible) in-budget architectures."""
        out: list[Architecture] = []
        seen: set[str] = set()
        for _ in range(self.num_candidates * 20):
            if len(out) == self.num_candidates:
                break
            arch = self.sample_within(tier, self._candidate_rng)
            key = architecture_to_json(arch)
            if key not in seen:
                seen.add(key)
                out.append(arch)
        while len(out) < self.num_candidates:  # tiny spaces: repeats allowed
            out.append(self.sample_within(tier, self._candidate_rng))
        return out

    def candidates_content(
        self,
        server_round: int,
        archs: Sequence[Architecture],
        states: Sequence[Mapping[str, np.ndarray] | ArrayRecord],
    ) -> RecordDict:
        """The EVALUATE message scoring ``archs`` (weights ``states``) on a client."""
        config = ConfigRecord(
            {
                **self.base_config(server_round, "candidates"),
                CANDIDATES: [architecture_to_json(a) for a in archs],
                CANDIDATE_BATCHES: self.candidate_batches,
            }
        )
        records: dict[str, Any] = {
            candidate_key(i): self._as_record(s) for i, s in enumerate(states)
        }
        records["config"] = config
        return RecordDict(records)

    def check_candidates_reply(self, content: RecordDict, expected: int) -> list[float]:
        """The reply's candidate accuracies; ``ValueError`` naming a bad field."""
        self.check_metrics(content, (m.NUM_EXAMPLES, m.COMPUTE_SECONDS))
        metrics = content.metric_records[self.metricrecord_key]
        if ACCURACIES not in metrics:
            raise ValueError(f"metrics lack {ACCURACIES!r}")
        values = metrics[ACCURACIES]
        if not isinstance(values, list):
            raise ValueError(f"metrics {ACCURACIES!r} is {values!r}, not a list")
        if len(values) != expected:
            raise ValueError(
                f"metrics {ACCURACIES!r} has {len(values)} value(s), expected {expected}: "
                f"{values!r}"
            )
        out = []
        for i, value in enumerate(values):
            v = float(value)
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"metrics {ACCURACIES!r}[{i}] is {value!r}, outside 0..1")
            out.append(v)
        return out

    def search(self, server_round: int, exchange: Any, clients: Sequence[str]) -> None:
        """Pick one architecture per tier and initialise the tier models."""
        connected = set(clients)
        candidates = [self.draw_candidates(t) for t in range(self.num_tiers)]
        states = [
            [m.arrays_to_record(extract_subnet(self.family, self.supernet, a)) for a in archs]
            for archs in candidates
        ]
        contents = {
            cid: self.candidates_content(
                server_round, candidates[self.tier_of[cid]], states[self.tier_of[cid]]
            )
            for cid in natural_sorted(self.tier_of)
            if cid in connected
        }
        scores: dict[str, list[float]] = {}
        examples: dict[str, float] = {}

        def check(cid: str, content: RecordDict) -> None:
            scores[cid] = self.check_candidates_reply(content, self.num_candidates)
            examples[cid] = float(content.metric_records[self.metricrecord_key][m.NUM_EXAMPLES])

        accepted = exchange(contents, MessageType.EVALUATE, check)
        self.search_results = []
        self.tier_archs = []
        self.tier_models = []
        for t in range(self.num_tiers):
            replied = [c for c in self.tier_members(t) if c in accepted]
            result: dict[str, Any] = {
                "tier": t,
                "candidates": [architecture_to_json(a) for a in candidates[t]],
                "clients": replied,
            }
            if replied:
                weights = np.array([examples[c] for c in replied], dtype=np.float64)
                table = np.array([scores[c] for c in replied], dtype=np.float64)
                mean = weights @ table / weights.sum()
                chosen = int(np.argmax(mean))
                arch = candidates[t][chosen]
                result.update(scores=mean.tolist(), chosen=chosen)
            else:
                arch = self.reference_archs[t]
                result.update(scores=[], chosen=-1)
            arch = self.family.search_space.validate(arch)
            result["arch"] = architecture_to_json(arch)
            self.search_results.append(result)
            self.tier_archs.append(arch)
            self.tier_models.append(extract_subnet(self.family, self.supernet, arch))
        self.searched = True
        log(
            INFO,
            "FedorAS search: %s",
            "; ".join(
                f"tier {r['tier']}: candidate {r['chosen']} of {len(r['candidates'])} "
                f"({self.model_size(self.tier_archs[r['tier']])} parameters)"
                for r in self.search_results
            ),
        )

    @staticmethod
    def _as_record(state: Mapping[str, np.ndarray] | ArrayRecord) -> ArrayRecord:
        return state if isinstance(state, ArrayRecord) else m.arrays_to_record(state)
