"""Search-only rounds of new clients: sample, test without training, update the policy."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from flwr_pfedrlnas.core.aggregation import state_num_bytes
from flwr_pfedrlnas.core.replies import Proposal
from flwr_pfedrlnas.core.rewards import clipped

if TYPE_CHECKING:
    from flwr_pfedrlnas.core.kept import KeptBlocks
    from flwr_pfedrlnas.core.policy import ArchitecturePolicy
    from flwr_pfedrlnas.core.rewards import AccuracyHistory, RewardStatistics
    from flwr_pfedrlnas.core.search_config import SearchConfig
    from flwr_pfedrlnas.core.search_space import Architecture

__all__ = ["SearchOnlyRounds"]

logger = logging.getLogger(__name__)


def _is_accuracy(value: Any) -> bool:
    """A finite number in [0, 1] (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return False
    return math.isfinite(value) and 0.0 <= value <= 1.0


class SearchOnlyRounds:
    """The search core's rounds for new clients (mixed into ``PerFedRLNASSearch``).

    They keep an accuracy baseline and reward statistics of their own, apart from
    the trained clients', and never change the supernet.
    """

    config: SearchConfig
    rng: np.random.Generator
    supernet: dict[str, np.ndarray]
    kept: KeptBlocks
    search_history: AccuracyHistory
    search_stats: RewardStatistics
    search_pending: dict[str, Architecture]

    policy: Callable[[str], ArchitecturePolicy]  # the core's policy of a client id

    def propose_search_only(self, client_id: str) -> Proposal:
        """Search-only round (a new client): sample an architecture to be tested.

        The client tests the subnet (no training, no upload); the supernet is
        never changed by search-only rounds.
        """
        cid = str(client_id)
        arch = self.policy(cid).sample(self.rng)
        state, _ = self.kept.downlink(cid, self.supernet, arch, training=False)
        self.search_pending[cid] = arch
        return Proposal(cid, arch, state, state_num_bytes(state))

    def incorporate_search_only(self, accuracies: Mapping[str, float]) -> dict[str, float]:
        """Reward ``acc_i - mean_acc`` (eq. 8 without time or merge); update policies.

        ``mean_acc`` is the running mean of the new clients' most recent test
        accuracies (their own baseline, kept apart from the trained clients');
        under ``reward_baseline="client-mean"`` each client's own running mean.
        An accuracy outside [0, 1] or of a client not proposed is ignored.
        Returns the rewards; every pending search-only proposal is closed.
        """
        valid = {}
        for cid, acc in accuracies.items():
            cid = str(cid)
            if cid not in self.search_pending:
                logger.warning("search-only accuracy of client %s, not proposed: ignored", cid)
                continue
            if not _is_accuracy(acc):
                logger.warning("search-only accuracy of client %s is %r: ignored", cid, acc)
                continue
            valid[cid] = float(acc)
        cfg = self.config
        self.search_history.update(valid)
        if cfg.reward_baseline == "client-mean":
            rewards = self.search_stats.centred(valid)
        else:
            baseline = self.search_history.mean()
            rewards = {cid: acc - baseline for cid, acc in valid.items()}
            self.search_stats.record(valid)
        rewards = clipped(self.search_stats.scaled(rewards), cfg.reward_clip)
        for cid, reward in rewards.items():
            if self.search_stats.count(cid) > cfg.warmup_updates:
                self.policy(cid).update(self.search_pending[cid], reward, cfg.entropy_bonus)
        self.search_pending.clear()
        return rewards
