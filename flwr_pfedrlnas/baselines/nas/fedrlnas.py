"""FedRLNAS: one global architecture policy for all clients, learned by REINFORCE.

Warm-up, search and train phases over one supernet; described in
``docs/baselines.md``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import RecordDict

from flwr_pfedrlnas.baselines.nas.base import FederatedNASBaseline
from flwr_pfedrlnas.core.aggregation import check_subnet_state, extract_subnet, merge_subnets
from flwr_pfedrlnas.core.policy import ArchitecturePolicy
from flwr_pfedrlnas.core.search_space import (
    Architecture,
    architecture_from_json,
    architecture_to_json,
)
from flwr_pfedrlnas.flower import messages as m

__all__ = ["FedRLNAS"]


class FedRLNAS(FederatedNASBaseline):
    """FedRLNAS on any supernet family (the paper's Table 3: ``darts``).

    Parameters
    ----------
    family : SupernetFamily
        The search space and its supernet.
    warmup_rounds, search_rounds : int | None (default: None)
        Phase lengths; ``None``: 20 % and 50 % of the run's rounds (at least
        1 each); the rest trains the final architecture.
    policy_lr : float (default: 0.5)
        Learning rate of the policy's optimiser (as PerFedRLNAS's policies).
    policy_optimizer : {"adam", "sgd"} (default: "adam")
    baseline_decay : float (default: 0.9)
        Decay of the moving-average reward baseline.
    **kwargs
        The base's settings (:class:`FederatedNASBaseline`).
    """

    method = "fedrlnas"
    label = "FedRLNAS"

    def __init__(
        self,
        family,
        warmup_rounds: int | None = None,
        search_rounds: int | None = None,
        policy_lr: float = 0.5,
        policy_optimizer: str = "adam",
        baseline_decay: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(family, **kwargs)
        for name, value in (("warmup_rounds", warmup_rounds), ("search_rounds", search_rounds)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        self._warmup, self._search = warmup_rounds, search_rounds
        self.policy = ArchitecturePolicy(
            family.search_space, lr=policy_lr, optimizer=policy_optimizer
        )
        self.baseline_decay = float(baseline_decay)
        self.baseline: float | None = None
        self._sent: dict[str, Architecture] = {}

    @property
    def warmup_rounds(self) -> int:
        return self._warmup if self._warmup is not None else max(1, round(0.2 * self.num_rounds))

    @property
    def search_rounds(self) -> int:
        return self._search if self._search is not None else max(1, round(0.5 * self.num_rounds))

    def phase(self, server_round: int) -> str:
        if server_round <= self.warmup_rounds:
            return "warmup"
        if server_round <= self.warmup_rounds + self.search_rounds:
            return "search"
        return "train"

    # ------------------------------------------------------------------ train
    def train_content(self, server_round: int, client_id: str) -> RecordDict:
        phase = self.phase(server_round)
        if phase == "warmup":
            arch = self.family.search_space.sample(self.rng)
        elif phase == "search":
            arch = self.policy.sample(self.rng)
        else:
            arch = self.policy.argmax()
        self._sent[client_id] = arch
        state = extract_subnet(self.family, self.supernet, arch)
        return self.subnet_content(server_round, arch, state)

    def check_train_reply(self, server_round: int, client_id: str, content: RecordDict) -> None:
        self.check_metrics(content)
        arch = self._sent[client_id]
        config = content.config_records.get(self.configrecord_key)
        if config is not None and m.ARCH in config:
            echoed = architecture_from_json(str(config[m.ARCH]), self.family.search_space)
            if echoed != arch:
                raise ValueError(f"arch is {config[m.ARCH]!r}, not the architecture sent")
        check_subnet_state(self.family, arch, self.reply_arrays(content), self.supernet)

    def aggregate(self, server_round: int, replies: dict[str, RecordDict]) -> dict[str, Any]:
        metrics = {cid: c.metric_records[self.metricrecord_key] for cid, c in replies.items()}
        updates = [
            (self._sent[cid], self.reply_arrays(c), float(metrics[cid][m.NUM_EXAMPLES]))
            for cid, c in replies.items()
        ]
        self.supernet = merge_subnets(self.family, self.supernet, updates)
        extra: dict[str, Any] = {}
        if self.phase(server_round) == "search":
            accs = {cid: float(metrics[cid][m.ACCURACY]) for cid in replies}
            rewards = self.policy_step({cid: self._sent[cid] for cid in replies}, accs)
            extra["reward-mean"] = float(np.mean(list(rewards.values())))
        extra["baseline"] = float("nan") if self.baseline is None else self.baseline
        extra["policy-entropy"] = self.policy.entropy()
        extra["arch"] = architecture_to_json(self.policy.argmax())
        return extra

    def policy_step(
        self, archs: dict[str, Architecture], accuracies: dict[str, float]
    ) -> dict[str, float]:
        """One REINFORCE step of the shared policy from a round's clients; their rewards."""
        mean_acc = float(np.mean(list(accuracies.values())))
        baseline = mean_acc if self.baseline is None else self.baseline
        rewards = {cid: accuracies[cid] - baseline for cid in sorted(accuracies)}
        grads = [self.policy.gradient(archs[cid], r) for cid, r in rewards.items()]
        mean_grad = {d: np.mean([g[d] for g in grads], axis=0) for d in self.policy.alpha}
        self.policy.step(mean_grad)
        self.baseline = self.baseline_decay * baseline + (1 - self.baseline_decay) * mean_acc
        return rewards

    # ------------------------------------------------------------------ evaluate
    def evaluate_content(self, server_round: int, client_id: str) -> RecordDict:
        arch = self.policy.argmax()
        return self.subnet_content(
            server_round, arch, extract_subnet(self.family, self.supernet, arch)
        )

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = super().state_dict()
        return arrays, {**meta, "policy": self.policy.state_dict(), "baseline": self.baseline}

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        policy = copy.deepcopy(self.policy)
        policy.load_state_dict(meta["policy"])
        baseline = meta.get("baseline")
        super().load_state_dict(arrays, meta)
        self.policy = policy
        self.baseline = None if baseline is None else float(baseline)

    def client_row(self, client_id: str) -> dict[str, Any]:
        return {"arch": architecture_to_json(self.policy.argmax())}
