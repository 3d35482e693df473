"""FedorAS: federated NAS across device tiers, on this package's supernet families.

FedorAS ("FedorAS: Federated Architecture Search under system heterogeneity",
2022) trains one weight-sharing supernet with clients of different capability,
each training only subnets its device can afford, then
searches one model per device tier and fine-tunes it federatedly within the
tier. This module adapts it to the path-wise DARTS space (any family works;
model sizes are fastest for families with ``operation_sizes``).

Tiers
    Every client gets a capability score. With a
    :class:`~flwr_pfedrlnas.core.profiles.ProfileDistribution` it is
    ``log(memory budget) - log(speed factor)`` of the client's seeded device
    profile (``-log(speed factor)`` when the profiles have no memory budget:
    a faster device is more capable). Without profiles it is a seeded random
    number in ``[0, 1)``, a pure function of the seed and the client id (the
    same in every process and rerun). The clients known at the first round
    are sorted by score (ties: client id) and cut into ``num_tiers``
    equal-size quantile groups (the client of rank ``r`` out of ``n`` goes to
    tier ``floor(r * num_tiers / n)``; tier 0 is the weakest). Equal-size
    groups, unlike 1-D k-means, never leave a tier empty when there are at
    least ``num_tiers`` clients. A client that connects later goes to the
    highest tier whose weakest member it matches or beats, so a weaker client
    is never in a higher tier than a stronger one.

Budgets
    Model size = parameter count of a subnet. Tier ``t``'s budget is the
    ``(t + 1) / num_tiers`` quantile of the sizes of ``budget_samples``
    seeded random architectures; the top tier's budget is the size of the
    largest architecture, so the most capable devices may train any subnet
    (the paper's top tier is unconstrained). With ``operation_sizes`` (the
    DARTS family) the size is the parameters of the chosen operations plus
    every weight outside the operations (stem, preprocessing, classifier): an
    upper bound of the subnet's exact count, equal to it unless every edge
    reading a cell input is 'none' (the subnet then drops that input's
    preprocessing). Other families count the subnet's parameters exactly.

Phase 1, "supernet" (rounds ``1 .. supernet_rounds``)
    Every sampled client gets a random architecture within its tier's budget
    (seeded rejection sampling from the search space; after
    ``max_sample_tries`` misses the smallest architecture) cut from the
    supernet, trains it (the built-in ``"subnet"`` step), and the server
    merges the replies with the count-normalised masked average
    (:func:`~flwr_pfedrlnas.core.aggregation.merge_subnets`).

Search (once, at the start of round ``supernet_rounds + 1``)
    Per tier, ``num_candidates`` distinct seeded architectures within the
    budget. Every connected client of the tier receives all of them (an
    EVALUATE message, step ``"candidates"``: one ArrayRecord ``cand-{i}`` per
    candidate, their JSON in ``config["candidates"]``) and replies one
    accuracy per candidate, measured on ``candidate_batches`` batches of its
    *training* data after re-estimating BatchNorm statistics on the following
    training batches (all of them, or ``bn-recalibration-batches``; the same
    batches for every candidate). The tier's model is the candidate with the
    best example-weighted mean accuracy over the tier's replies (ties: the
    first). The exchange's bytes and time count in the round. A tier without
    a usable reply keeps its phase-1 reference architecture.

Phase 2, "finetune"
    Each tier's model is its chosen subnet, initialised from the supernet and
    then kept as a separate state; sampled clients train their tier's model,
    and each tier's state becomes the example-weighted mean of its own
    replies (other tiers are untouched).

Evaluation
    Every client tests its tier's model on its own test split: in phase 1 the
    tier's reference architecture (the largest of the budget samples within
    the tier's budget) cut from the current supernet; in phase 2 the tier's
    fine-tuned model. :meth:`FedorAS.tier_accuracy_ranges` (and
    ``tiers.csv`` in ``results_dir`` after every round) gives each tier's
    accuracy range over its clients at the last evaluation, as the paper
    reports it.

Deviations from the published method: sizes are parameter counts, not
FLOPs; phase 1 samples uniformly among in-budget architectures (no
tier-wise sampling schedule and no inter-tier distillation); the search is a
seeded random search scored on the clients' training batches instead of an
evolutionary search on held-out client data; tier assignment uses simulated
profiles (or random scores) instead of measured device classes.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common import log
from torch.utils.data import DataLoader

from flwr_pfedrlnas.baselines.nas.base import FederatedNASBaseline, weighted_mean
from flwr_pfedrlnas.baselines.nas.client import register_step
from flwr_pfedrlnas.core.aggregation import check_subnet_state, extract_subnet, merge_subnets
from flwr_pfedrlnas.core.profiles import ProfileDistribution
from flwr_pfedrlnas.core.search_space import (
    Architecture,
    architecture_from_json,
    architecture_to_json,
)
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.client import client_id_from_context
from flwr_pfedrlnas.flower.identity import natural_sorted
from flwr_pfedrlnas.protocol.checkpoint import prefixed, unprefixed
from flwr_pfedrlnas.supernets import SupernetFamily, get_supernet
from flwr_pfedrlnas.training import evaluate, recalibrate_batchnorm

__all__ = [
    "ACCURACIES",
    "CANDIDATES",
    "CANDIDATE_BATCHES",
    "FedorAS",
    "candidate_key",
    "evaluate_candidates",
]

# ConfigRecord keys of a candidates message and the MetricRecord key of its reply.
TIER_PREFIX = "tier/"  # tier models in the checkpoint
CANDIDATES = "candidates"
CANDIDATE_BATCHES = "candidate-batches"
ACCURACIES = "accuracies"


def candidate_key(index: int) -> str:
    """Name of the ArrayRecord holding candidate ``index``'s weights."""
    return f"cand-{int(index)}"


@lru_cache(maxsize=16)
def _family(name: str, config_json: str) -> SupernetFamily:
    return get_supernet(name, **json.loads(config_json))


# ---------------------------------------------------------------------- client
@register_step("evaluate", "candidates")
def evaluate_candidates(
    msg: Message,
    context: Context,
    train_loader: DataLoader,
    test_loader: DataLoader,
    device: torch.device,
) -> Message:
    """Score every candidate subnet of the message on local training batches.

    The first ``candidate-batches`` batches of one pass over the training
    loader are the scoring batches; the following ones (all of them, or
    ``bn-recalibration-batches`` when that is positive; 0: no re-estimation)
    re-estimate each candidate's BatchNorm statistics first. When the loader
    has no batch beyond the scoring ones, the statistics are re-estimated on
    the scoring batches. Every candidate sees the same batches. The test
    split is never used. The reply's metrics: ``accuracies`` (one per
    candidate, in order), ``num-examples`` (scored examples) and
    ``compute-seconds``.
    """
    start = time.perf_counter()
    config = msg.content["config"]
    for key in (CANDIDATES, m.SUPERNET, m.SUPERNET_CONFIG):
        if key not in config:
            raise ValueError(f"config lacks {key!r}")
    family = _family(str(config[m.SUPERNET]), str(config[m.SUPERNET_CONFIG]))
    candidates = config[CANDIDATES]
    if isinstance(candidates, str):
        candidates = [candidates]
    archs = [architecture_from_json(str(a), family.search_space) for a in candidates]
    score_batches = max(1, int(config.get(CANDIDATE_BATCHES, 2)))
    bn_batches = int(config.get(m.BN_RECALIBRATION_BATCHES, -1))
    wanted = None if bn_batches < 0 else score_batches + bn_batches
    batches = []
    for i, batch in enumerate(train_loader):
        if wanted is not None and i >= wanted:
            break
        batches.append(batch)
    scoring, recalibration = batches[:score_batches], batches[score_batches:]
    if not recalibration:
        recalibration = scoring
    accuracies, num_examples = [], 0
    for i, arch in enumerate(archs):
        model = family.build_subnet(arch)
        model.load_state_dict(msg.content[candidate_key(i)].to_torch_state_dict(), strict=True)
        if bn_batches != 0:
            recalibrate_batchnorm(model, recalibration, None, device)
        _, accuracy, num_examples = evaluate(model, scoring, device=device)
        accuracies.append(float(accuracy))
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    ACCURACIES: accuracies,
                    m.NUM_EXAMPLES: int(num_examples),
                    m.COMPUTE_SECONDS: time.perf_counter() - start,
                }
            ),
            "config": ConfigRecord({m.CLIENT_ID: client_id_from_context(context)}),
        }
    )
    return Message(content=content, reply_to=msg)


# ---------------------------------------------------------------------- server
class FedorAS(FederatedNASBaseline):
    """FedorAS: a supernet trained across device tiers, then one searched and
    fine-tuned model per tier (see the module docstring for the protocol).

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
        super().__init__(family, **kwargs)
        for name, value, low in (
            ("num_tiers", num_tiers, 1),
            ("num_candidates", num_candidates, 1),
            ("candidate_batches", candidate_batches, 1),
            ("budget_samples", budget_samples, 1),
            ("max_sample_tries", max_sample_tries, 1),
        ):
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if supernet_rounds is not None and (
            isinstance(supernet_rounds, bool)
            or int(supernet_rounds) != supernet_rounds
            or supernet_rounds < 1
        ):
            raise ValueError(f"supernet_rounds must be an integer >= 1, got {supernet_rounds!r}")
        self.num_tiers = int(num_tiers)
        self.supernet_rounds = None if supernet_rounds is None else int(supernet_rounds)
        self.num_candidates = int(num_candidates)
        self.candidate_batches = int(candidate_batches)
        self.profiles = profiles
        self.max_sample_tries = int(max_sample_tries)
        # Independent seeded streams, so that client sampling matches the other baselines.
        self._arch_rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 1])
        self._candidate_rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 2])
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
        self.searched = False
        self.search_results: list[dict[str, Any]] = []
        self.tier_archs: list[Architecture] = [dict(a) for a in self.reference_archs]
        self.tier_models: list[dict[str, np.ndarray]] = []
        self._pending: dict[str, Architecture] = {}
        # One ArrayRecord per (purpose, tier), shared by the messages of a tier's clients.
        self._records: dict[tuple[str, int], ArrayRecord] = {}
        self._last_eval: dict[str, float] = {}
        self._last_eval_round = 0

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

    # ------------------------------------------------------------------ search
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

    @staticmethod
    def _as_record(state: Mapping[str, np.ndarray] | ArrayRecord) -> ArrayRecord:
        return state if isinstance(state, ArrayRecord) else m.arrays_to_record(state)

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
            model = unprefixed(f"{TIER_PREFIX}{t}/", arrays)
            self.check_shapes(model, extract_subnet(self.family, self.supernet, archs[t]))
            models.append(model)
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


def _parameter_count(family: SupernetFamily, arch: Architecture | None) -> int:
    """Exact parameter count of ``arch``'s subnet (the supernet for ``None``), on meta."""
    with torch.device("meta"):
        module = family.build_supernet() if arch is None else family.build_subnet(arch)
    return int(sum(p.numel() for p in module.parameters()))
