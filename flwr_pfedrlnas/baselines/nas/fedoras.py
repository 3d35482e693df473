"""FedorAS: federated NAS across device tiers, on this package's supernet families.

One weight-sharing supernet trained by clients of different capability, each
on subnets its device tier affords, then one model searched and fine-tuned
per tier. This module runs the rounds (phases, training, evaluation, state,
``tiers.csv``) over the tiers of :mod:`.fedoras_tiers` and the search of
:mod:`.fedoras_search`; the client step is in :mod:`.fedoras_client`. The
protocol, our adaptations and the differences from the published method
are in ``docs/baselines.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, RecordDict
from flwr.common import log

from flwr_pfedrlnas.baselines.nas.base import checked_unprefixed, weighted_mean

# The client side, re-exported so that the names keep their old import path.
from flwr_pfedrlnas.baselines.nas.fedoras_client import (
    ACCURACIES,
    CANDIDATE_BATCHES,
    CANDIDATES,
    candidate_key,
    evaluate_candidates,
)
from flwr_pfedrlnas.baselines.nas.fedoras_search import FedorASSearch
from flwr_pfedrlnas.core.aggregation import check_subnet_state, extract_subnet, merge_subnets
from flwr_pfedrlnas.core.profiles import ProfileDistribution
from flwr_pfedrlnas.core.search_space import (
    Architecture,
    architecture_from_json,
    architecture_to_json,
)
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.identity import natural_sorted
from flwr_pfedrlnas.protocol.checkpoint import prefixed
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = [
    "ACCURACIES",
    "CANDIDATES",
    "CANDIDATE_BATCHES",
    "FedorAS",
    "candidate_key",
    "evaluate_candidates",
]

TIER_PREFIX = "tier/"  # tier models in the checkpoint


class FedorAS(FedorASSearch):
    """FedorAS: a supernet trained across device tiers, then one searched and
    fine-tuned model per tier (the protocol is in ``docs/baselines.md``).

    Parameters
    ----------
    family : SupernetFamily
        The search space and its supernet.
    num_tiers : int (default: 4)
        Device tiers (equal-size groups by capability; tier 0 the weakest).
    supernet_rounds : int | None (default: None)
        Rounds of phase 1; ``None``: half of the run's rounds, at least 1.
        The search runs at the start of the next round.
    num_candidates : int (default: 4)
        Candidate architectures per tier in the search.
    candidate_batches : int (default: 2)
        Training batches on which a client scores each candidate.
    profiles : ProfileDistribution | None (default: None)
        Seeded device profiles giving the capability score; ``None``: a seeded
        random score per client.
    budget_samples : int (default: 200)
        Random architectures whose size quantiles set the tier budgets.
    max_sample_tries : int (default: 1000)
        Rejection-sampling attempts before falling back to the smallest
        architecture.
    **kwargs
        The options of :class:`FederatedNASBaseline` (clients per round,
        local training, evaluation, seed, results directory, ...).
    """

    method = "fedoras"
    label = "FedorAS"

    def __init__(
        self,
        family: SupernetFamily,
        num_tiers: int = 4,
        supernet_rounds: int | None = None,
        num_candidates: int = 4,
        candidate_batches: int = 2,
        profiles: ProfileDistribution | None = None,
        budget_samples: int = 200,
        max_sample_tries: int = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            family,
            num_tiers=num_tiers,
            profiles=profiles,
            budget_samples=budget_samples,
            max_sample_tries=max_sample_tries,
            num_candidates=num_candidates,
            candidate_batches=candidate_batches,
            **kwargs,
        )
        if supernet_rounds is not None and (
            isinstance(supernet_rounds, bool)
            or int(supernet_rounds) != supernet_rounds
            or supernet_rounds < 1
        ):
            raise ValueError(f"supernet_rounds must be an integer >= 1, got {supernet_rounds!r}")
        self.supernet_rounds = None if supernet_rounds is None else int(supernet_rounds)
        # A seeded stream of its own, so that client sampling matches the other baselines.
        self._arch_rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 1])
        self._pending: dict[str, Architecture] = {}
        # One ArrayRecord per (purpose, tier), shared by the messages of a tier's clients.
        self._records: dict[tuple[str, int], ArrayRecord] = {}
        self._last_eval: dict[str, float] = {}
        self._last_eval_round = 0

    # ------------------------------------------------------------------ phases
    def phase1_rounds(self) -> int:
        """Number of supernet rounds (``supernet_rounds`` or half the run, >= 1)."""
        if self.supernet_rounds is not None:
            return self.supernet_rounds
        return max(1, self.num_rounds // 2)

    def phase(self, server_round: int) -> str:
        return "supernet" if server_round <= self.phase1_rounds() else "finetune"

    def deployed_arch(self, tier: int) -> Architecture:
        """The architecture ``tier``'s clients test now (reference or chosen)."""
        return self.tier_archs[tier] if self.searched else self.reference_archs[tier]

    def before_round(self, server_round: int, exchange: Any, clients: list[str]) -> None:
        self.assign_tiers(clients)
        self._pending = {}
        self._records = {}
        if not self.searched and server_round > self.phase1_rounds():
            self.search(server_round, exchange, clients)

    # ------------------------------------------------------------------ training
    def train_content(self, server_round: int, client_id: str) -> RecordDict:
        tier = self._tier(client_id)
        if self.searched:
            arch = self.tier_archs[tier]
            state = self._tier_record(("train", tier), lambda: self.tier_models[tier])
        else:
            arch = self.sample_within(tier, self._arch_rng)
            state = extract_subnet(self.family, self.supernet, arch)
        self._pending[client_id] = arch
        return self._subnet_message(server_round, arch, state)

    def check_train_reply(self, server_round: int, client_id: str, content: RecordDict) -> None:
        self.check_metrics(content)
        arch = self._pending.get(client_id)
        if arch is None:
            raise ValueError(f"client {client_id!r} was sent nothing to train")
        config = content.config_records.get(self.configrecord_key)
        if config is not None and m.ARCH in config:
            echoed = architecture_from_json(str(config[m.ARCH]), self.family.search_space)
            if echoed != arch:
                raise ValueError(
                    f"arch is {architecture_to_json(echoed)!r}, "
                    f"the client was sent {architecture_to_json(arch)!r}"
                )
        state = self.reply_arrays(content)
        check_subnet_state(self.family, arch, state, self.supernet)

    def aggregate(self, server_round: int, replies: dict[str, RecordDict]) -> dict[str, Any]:
        self._records = {}  # the states change: later messages need new records
        parsed = {
            cid: (
                self._pending[cid],
                self.reply_arrays(content),
                float(content.metric_records[self.metricrecord_key][m.NUM_EXAMPLES]),
            )
            for cid, content in replies.items()
        }
        if not self.searched:
            self.supernet = merge_subnets(self.family, self.supernet, parsed.values())
            return {"tiers-trained": " ".join(sorted({str(self.tier_of[c]) for c in parsed}))}
        trained = []
        for tier in range(self.num_tiers):
            mine = [parsed[c] for c in natural_sorted(parsed) if self.tier_of[c] == tier]
            if not mine:
                continue
            self.tier_models[tier] = weighted_mean([s for _, s, _ in mine], [n for *_, n in mine])
            trained.append(str(tier))
        return {"tiers-trained": " ".join(trained)}

    # ------------------------------------------------------------------ evaluation
    def evaluate_content(self, server_round: int, client_id: str) -> RecordDict:
        tier = self._tier(client_id)
        arch = self.deployed_arch(tier)
        if self.searched:
            state = self._tier_record(("evaluate", tier), lambda: self.tier_models[tier])
        else:
            state = self._tier_record(
                ("evaluate", tier), lambda: extract_subnet(self.family, self.supernet, arch)
            )
        return self._subnet_message(server_round, arch, state)

    def _tier_record(
        self, key: tuple[str, int], state: Callable[[], Mapping[str, np.ndarray]]
    ) -> ArrayRecord:
        """The ArrayRecord of ``key``, built once until the server state changes."""
        if key not in self._records:
            self._records[key] = m.arrays_to_record(state())
        return self._records[key]

    def _subnet_message(
        self,
        server_round: int,
        arch: Architecture,
        state: Mapping[str, np.ndarray] | ArrayRecord,
    ) -> RecordDict:
        """:meth:`subnet_content` taking a ready ArrayRecord (shared within a tier)."""
        if not isinstance(state, ArrayRecord):
            return self.subnet_content(server_round, arch, state)
        config = m.subnet_config(
            self.family, arch, server_round, self.base_config(server_round, "subnet")
        )
        return RecordDict({self.arrayrecord_key: state, self.configrecord_key: config})

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = super().state_dict()
        for t, model in enumerate(self.tier_models):
            arrays.update(prefixed(f"{TIER_PREFIX}{t}/", model))
        meta = {
            **meta,
            "tier-of": dict(self.tier_of),
            "tier-floor": {str(t): v for t, v in self._tier_floor.items()},
            "searched": self.searched,
            "search-results": self.search_results,
            "tier-archs": [dict(a) for a in self.tier_archs],
            "num-tier-models": len(self.tier_models),
            "arch-rng": self._arch_rng.bit_generator.state,
            "candidate-rng": self._candidate_rng.bit_generator.state,
            "last-eval": dict(self._last_eval),
            "last-eval-round": self._last_eval_round,
        }
        return arrays, meta

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        archs = [self.family.search_space.validate(a) for a in meta["tier-archs"]]
        if len(archs) != self.num_tiers:
            raise ValueError(f"checkpoint has {len(archs)} tiers, the method {self.num_tiers}")
        models = []
        for t in range(int(meta["num-tier-models"])):
            expected = extract_subnet(self.family, self.supernet, archs[t])
            models.append(checked_unprefixed(f"{TIER_PREFIX}{t}/", arrays, expected))
        arch_rng, candidate_rng = np.random.default_rng(), np.random.default_rng()
        arch_rng.bit_generator.state = meta["arch-rng"]
        candidate_rng.bit_generator.state = meta["candidate-rng"]
        super().load_state_dict(arrays, meta)
        self.tier_of = {str(c): int(t) for c, t in meta["tier-of"].items()}
        self._tier_floor = {int(t): float(v) for t, v in meta["tier-floor"].items()}
        self.searched = bool(meta["searched"])
        self.search_results = list(meta["search-results"])
        self.tier_archs, self.tier_models = archs, models
        self._arch_rng, self._candidate_rng = arch_rng, candidate_rng
        self._last_eval = {str(c): float(a) for c, a in meta["last-eval"].items()}
        self._last_eval_round = int(meta["last-eval-round"])

    def client_row(self, client_id: str) -> dict[str, Any]:
        tier = self._tier(client_id)
        arch = self.deployed_arch(tier)
        return {
            "tier": tier,
            "arch": architecture_to_json(arch),
            "arch-params": self.model_size(arch),
        }

    def after_round(self, rnd: int, row: Mapping[str, Any]) -> None:
        """The per-tier accuracy ranges (and ``tiers.csv``)."""
        self._records = {}
        if row["num-evaluated"]:
            self._last_eval = {
                cid: float(r["accuracy"])
                for cid, r in self.recorder.clients.items()
                if r.get("round") == rnd
            }
            self._last_eval_round = rnd
        if self.results_dir:
            path = Path(self.results_dir)
            path.mkdir(parents=True, exist_ok=True)
            self.tier_accuracy_ranges().to_csv(path / "tiers.csv", index=False)

    def tier_accuracy_ranges(self) -> pd.DataFrame:
        """Per tier at the last evaluation: budget, clients, model and accuracy range.

        Columns: ``round``, ``phase``, ``tier``, ``budget-params``, ``clients``
        (members of the tier), ``evaluated``, ``arch``, ``arch-params``,
        ``accuracy-min``, ``accuracy-max``, ``accuracy-mean`` (unweighted over
        the tier's evaluated clients; NaN when none).
        """
        rows = []
        rnd = self._last_eval_round
        for tier in range(self.num_tiers):
            members = self.tier_members(tier)
            accs = np.array(
                [self._last_eval[c] for c in members if c in self._last_eval], dtype=np.float64
            )
            arch = self.deployed_arch(tier)
            rows.append(
                {
                    "round": rnd,
                    "phase": self.phase(rnd) if rnd else "",
                    "tier": tier,
                    "budget-params": self.budgets[tier],
                    "clients": len(members),
                    "evaluated": int(accs.size),
                    "arch": architecture_to_json(arch),
                    "arch-params": self.model_size(arch),
                    "accuracy-min": float(accs.min()) if accs.size else float("nan"),
                    "accuracy-max": float(accs.max()) if accs.size else float("nan"),
                    "accuracy-mean": float(accs.mean()) if accs.size else float("nan"),
                }
            )
        return pd.DataFrame(rows)

    def summary(self) -> None:
        super().summary()
        log(
            INFO,
            "FedorAS: %d tiers, budgets %s parameters, %d supernet rounds, "
            "%d candidates per tier on %d batches",
            self.num_tiers,
            self.budgets,
            self.phase1_rounds(),
            self.num_candidates,
            self.candidate_batches,
        )
