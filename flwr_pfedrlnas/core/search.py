"""Framework-free PerFedRLNAS server core: propose, incorporate, deploy, checkpoint."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flwr_pfedrlnas.core.aggregation import (
    merge_subnets,
    state_num_bytes,
)
from flwr_pfedrlnas.core.checkpoint import (
    atomic_write,
    read_search_checkpoint,
    write_search_checkpoint,
)
from flwr_pfedrlnas.core.cost import subnet_macs
from flwr_pfedrlnas.core.kept import KeptBlocks
from flwr_pfedrlnas.core.policy import ArchitecturePolicy
from flwr_pfedrlnas.core.profiles import DeviceProfile
from flwr_pfedrlnas.core.replies import (
    ClientReply,
    Proposal,
    RoundOutcome,
    reward_accuracy_of,
)
from flwr_pfedrlnas.core.reply_checks import is_overrun, reply_problem
from flwr_pfedrlnas.core.rewards import (
    AccuracyHistory,
    RewardStatistics,
    round_time,
    search_rewards,
)
from flwr_pfedrlnas.core.search_config import SearchConfig
from flwr_pfedrlnas.core.search_only import SearchOnlyRounds
from flwr_pfedrlnas.core.search_space import Architecture
from flwr_pfedrlnas.supernets import SupernetFamily, get_supernet

__all__ = [
    "ClientReply",
    "PerFedRLNASSearch",
    "Proposal",
    "RoundOutcome",
    "SearchConfig",
]

logger = logging.getLogger(__name__)

# The checkpoint writer, looked up at save time (tests replace it to simulate a crash).
_atomic_write = atomic_write


class PerFedRLNASSearch(SearchOnlyRounds):
    """Server state of PerFedRLNAS: one supernet, one policy per client.

    The core knows no Flower. Each round: :meth:`propose` per sampled client,
    then :meth:`incorporate` with the replies (rewards, policy updates, merge).
    :meth:`deploy` gives a client's argmax architecture and its weights. New
    clients search without training through :class:`SearchOnlyRounds`' methods.

    Parameters
    ----------
    family : SupernetFamily
        The supernet family.
    config : SearchConfig (default: SearchConfig())
        Search settings.
    supernet_state : Mapping[str, np.ndarray] | None (default: None)
        Initial supernet weights; a fresh seeded initialisation when ``None``.
    profiles : Mapping[str, DeviceProfile] | None (default: None)
        Simulated device of each client id: its speed factor multiplies the
        reported compute seconds and its bandwidths replace the configured
        ones in the round time. Clients without a profile use the measured
        compute time and the configured bandwidth (deployment).
    """

    def __init__(
        self,
        family: SupernetFamily,
        config: SearchConfig | None = None,
        supernet_state: Mapping[str, np.ndarray] | None = None,
        profiles: Mapping[str, DeviceProfile] | None = None,
    ) -> None:
        self.family = family
        self.config = config or SearchConfig()
        self.rng = np.random.default_rng(self.config.seed)
        self.supernet: dict[str, np.ndarray] = (
            family.init_supernet_state(self.config.seed)
            if supernet_state is None
            else self._checked_supernet(supernet_state)
        )
        self.policies: dict[str, ArchitecturePolicy] = {}
        self.history = AccuracyHistory()
        self.reward_stats = self._new_stats()
        self.pending: dict[str, Proposal] = {}
        self.completed_rounds = 0
        self.profiles: dict[str, DeviceProfile] = dict(profiles or {})
        # Search-only rounds (new clients): their own accuracy baseline and proposals.
        self.search_history = AccuracyHistory()
        self.search_stats = self._new_stats()
        self.search_pending: dict[str, Architecture] = {}
        # Share-or-keep: which blocks each client holds a personal copy of.
        self.kept = KeptBlocks(family)

    def _new_stats(self) -> RewardStatistics:
        return RewardStatistics(self.config.baseline_decay, self.config.reward_standardise)

    # ------------------------------------------------------------------ helpers
    def _checked_supernet(self, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes = self.family.supernet_shapes()
        if set(state) != set(shapes):
            missing = sorted(set(shapes) - set(state))[:5]
            extra = sorted(set(state) - set(shapes))[:5]
            raise ValueError(
                f"supernet state does not fit {self.family!r}: "
                f"missing {missing}, unexpected {extra}"
            )
        out = {}
        for key, shape in shapes.items():
            arr = np.asarray(state[key])
            if tuple(arr.shape) != tuple(shape):
                raise ValueError(f"supernet tensor {key!r} has shape {arr.shape}, expected {shape}")
            out[key] = arr.copy()
        return out

    def policy(self, client_id: str) -> ArchitecturePolicy:
        """The policy of ``client_id`` (created uniform on first use)."""
        cid = str(client_id)
        if cid not in self.policies:
            self.policies[cid] = ArchitecturePolicy(
                self.family.search_space,
                lr=self.config.policy_lr,
                optimizer=self.config.policy_optimizer,  # type: ignore[arg-type]
                betas=self.config.policy_betas,
            )
        return self.policies[cid]

    def sample_clients(self, client_ids: Sequence[str], num: int) -> list[str]:
        """Seeded sample of ``num`` distinct clients (order-independent input)."""
        pool = sorted(str(c) for c in client_ids)
        if num >= len(pool):
            return pool
        picked = self.rng.choice(len(pool), size=num, replace=False)
        return [pool[i] for i in sorted(picked)]

    # ------------------------------------------------------------------ round
    def propose(self, client_id: str, server_round: int | None = None) -> Proposal:
        """Sample ``client_id``'s architecture from its policy and cut its subnet.

        From ``config.commit_round`` on, the policy's argmax instead of a sample.
        ``server_round`` defaults to the round after the last one incorporated.
        """
        cid = str(client_id)
        if server_round is None:
            server_round = self.completed_rounds + 1
        policy = self.policy(cid)
        arch = policy.argmax() if self.config.committed(server_round) else policy.sample(self.rng)
        # Read-only views, not copies: the payload is serialised and dropped, and the
        # supernet is never written in place (the merge returns new arrays), so a
        # sent state keeps its values after the round's merge.
        state, init = self.kept.downlink(cid, self.supernet, arch, training=True, copy=False)
        proposal = Proposal(cid, arch, state, state_num_bytes(state) + state_num_bytes(init), init)
        self.pending[cid] = proposal
        return proposal

    def _reject_reason(self, reply: ClientReply, seen: set[str]) -> str | None:
        cid = str(reply.client_id)
        if cid in seen:
            return f"duplicate reply from client {cid!r}"
        proposal = self.pending.get(cid)
        if proposal is None:
            return f"no architecture was sent to client {cid!r} this round"
        return reply_problem(reply, proposal.arch, self.family, self.config, self.supernet)

    def device_profile(self, client_id: str) -> DeviceProfile:
        """The client's simulated device; without one, speed 1 and the configured bandwidth."""
        cfg = self.config
        return self.profiles.get(str(client_id)) or DeviceProfile(
            1.0, cfg.bandwidth_down_bps, cfg.bandwidth_up_bps
        )

    def round_time_of(
        self,
        client_id: str,
        compute_seconds: float,
        bytes_down: int,
        bytes_up: int,
        arch: Architecture | None = None,
    ) -> float:
        """RT of one client: compute (measured, or from ``arch``'s MACs) + bytes / bandwidth.

        Under ``round_time_model="macs"`` the compute part is ``MACs(arch) x
        speed factor x seconds_per_mac`` and ``compute_seconds`` is ignored;
        without a profile the speed factor is 1 and the configured bandwidth holds.
        """
        cfg = self.config
        profile = self.device_profile(client_id)
        if cfg.round_time_model == "macs" and arch is not None:
            compute = subnet_macs(self.family, arch) * cfg.seconds_per_mac
        else:
            compute = compute_seconds
        return round_time(
            compute * profile.speed_factor,
            bytes_down,
            bytes_up,
            profile.bandwidth_down_bps,
            profile.bandwidth_up_bps,
        )

    def incorporate(self, server_round: int, replies: Iterable[ClientReply]) -> RoundOutcome:
        """Validate replies, reward, update policies, merge subnets.

        A reply that fails validation is rejected with a reason naming the field
        and value; it changes neither the supernet nor any policy. Every
        pending proposal of this round is closed, answered or not. The state
        changes all at once, after every computation succeeded.
        """
        outcome = RoundOutcome(server_round=server_round)
        accepted: list[ClientReply] = []
        seen: set[str] = set()
        for reply in replies:
            reason = self._reject_reason(reply, seen)
            seen.add(str(reply.client_id))
            if reason is not None:
                outcome.rejected[str(reply.client_id)] = reason
                logger.warning(
                    "round %s: rejected reply of client %s: %s",
                    server_round,
                    reply.client_id,
                    reason,
                )
                continue
            accepted.append(reply)
        # A duplicate reply invalidates the first one too: we cannot tell which is real.
        dupes = {cid for cid, why in outcome.rejected.items() if why.startswith("duplicate")}
        # Client order, not arrival order: the merge's float sums are then the same
        # whatever order the replies came in (a resumed run must match bit for bit).
        accepted = sorted(
            (r for r in accepted if str(r.client_id) not in dupes), key=lambda r: str(r.client_id)
        )

        cfg = self.config
        accs, rts, peaks, budgets = {}, {}, {}, {}
        overruns = {str(r.client_id) for r in accepted if is_overrun(r)}
        for reply in accepted:
            cid = str(reply.client_id)
            proposal = self.pending[cid]
            # An over-budget client uploads nothing that is used (its state is ignored).
            bytes_up = 0 if cid in overruns else state_num_bytes(reply.state)
            outcome.bytes_down[cid] = proposal.bytes_down
            outcome.bytes_up[cid] = bytes_up
            accs[cid] = float(
                reply.accuracy
                if cid in overruns
                else reward_accuracy_of(reply, cfg.reward_accuracy)
            )
            rts[cid] = self.round_time_of(
                cid, reply.compute_seconds, proposal.bytes_down, bytes_up, proposal.arch
            )
            peaks[cid] = float(reply.peak_memory_bytes)
            budgets[cid] = float(reply.memory_budget_bytes or 0.0)
            if cid in overruns and not (peaks[cid] > budgets[cid] > 0):
                # Flagged (e.g. out of memory) without a usable peak/budget pair:
                # give eq. 9 one that is over budget.
                peaks[cid], budgets[cid] = 2.0, 1.0
        if overruns:
            # Eq. 9's treatment of an overrun (also under eq. 8): acc 0, the round's max RT.
            max_rt = max(rts.values())
            for cid in overruns:
                accs[cid], rts[cid] = 0.0, max_rt

        history = copy.deepcopy(self.history)
        stats = copy.deepcopy(self.reward_stats)
        rewards, effective = search_rewards(
            history,
            stats,
            accs,
            rts,
            peaks,
            budgets,
            cfg.reward_baseline,
            memory_aware=cfg.memory_aware,
            lambda_time=cfg.lambda_time,
            clip=cfg.reward_clip,
        )
        new_policies = {}
        for reply in accepted:
            cid = str(reply.client_id)
            if stats.count(cid) <= cfg.warmup_updates:
                continue  # warm-up: the statistics learn, the policy stays uniform
            if cfg.committed(server_round):
                continue  # committed: the argmax was trained, not a sample of the policy
            policy = copy.deepcopy(self.policy(cid))
            policy.update(self.pending[cid].arch, rewards[cid], cfg.entropy_bonus)  # eq. 6
            new_policies[cid] = policy
        merged = merge_subnets(
            self.family,
            self.supernet,
            [
                (self.pending[str(r.client_id)].arch, r.state, r.num_examples)
                for r in accepted
                if str(r.client_id) not in overruns
            ],
            weighting=cfg.weighting,
        )

        # Commit.
        for reply in accepted:
            if str(reply.client_id) not in overruns:
                self.kept.started(str(reply.client_id), self.pending[str(reply.client_id)].arch)
        self.supernet = merged
        self.policies.update(new_policies)
        self.history = history
        self.reward_stats = stats
        self.pending.clear()
        self.completed_rounds = max(self.completed_rounds, server_round)
        outcome.accepted = [str(r.client_id) for r in accepted]
        outcome.accuracies = effective
        outcome.rewards = rewards
        outcome.round_times = rts
        outcome.mean_accuracy = history.mean()
        outcome.overruns = sorted(overruns)
        return outcome

    def deploy(self, client_id: str) -> tuple[Architecture, dict[str, np.ndarray]]:
        """The client's deployed model: its argmax architecture and weights.

        Blocks the client keeps personal (and holds) are not among the weights:
        the client fills them in from its own copy.
        """
        return self.subnet_for(client_id, self.policy(client_id).argmax())

    def subnet_for(
        self, client_id: str, arch: Architecture
    ) -> tuple[Architecture, dict[str, np.ndarray]]:
        """``arch`` and the weights a test of it on ``client_id`` is sent (see :meth:`deploy`)."""
        state, _ = self.kept.downlink(str(client_id), self.supernet, arch, training=False)
        return arch, state

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the search (arrays + JSON-able parts)."""
        return {
            "supernet": {k: v.copy() for k, v in self.supernet.items()},
            "meta": {
                "family": self.family.name,
                "family_config": self.family.config,
                "completed_rounds": self.completed_rounds,
                # For the record: a resumed run takes the config it is given.
                "search_config": dataclasses.asdict(self.config),
                "policies": {c: p.state_dict() for c, p in self.policies.items()},
                "history": self.history.state_dict(),
                "search_history": self.search_history.state_dict(),
                "reward_stats": self.reward_stats.state_dict(),
                "search_stats": self.search_stats.state_dict(),
                "kept": self.kept.state_dict(),
                "rng": self.rng.bit_generator.state,
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; nothing changes if any part is invalid."""
        meta = state["meta"]
        if meta["family"] != self.family.name or meta["family_config"] != self.family.config:
            raise ValueError(
                f"checkpoint is for {meta['family']} {meta['family_config']}, "
                f"not {self.family.name} {self.family.config}"
            )
        supernet = self._checked_supernet(state["supernet"])
        policies = {}
        for cid, pstate in meta["policies"].items():
            policy = ArchitecturePolicy(self.family.search_space)
            policy.load_state_dict(pstate)
            policies[str(cid)] = policy
        history = AccuracyHistory()
        history.load_state_dict(meta["history"])
        search_history = AccuracyHistory()
        search_history.load_state_dict(meta.get("search_history", {}))
        # Checkpoints from before our reward options hold no statistics: start fresh.
        reward_stats, search_stats = self._new_stats(), self._new_stats()
        reward_stats.load_state_dict(meta.get("reward_stats", {}))
        search_stats.load_state_dict(meta.get("search_stats", {}))
        kept = KeptBlocks(self.family)
        kept.load_state_dict(meta.get("kept", {}))
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["rng"]
        self.supernet, self.policies, self.history, self.rng = supernet, policies, history, rng
        self.search_history = search_history
        self.reward_stats, self.search_stats = reward_stats, search_stats
        self.kept = kept
        self.completed_rounds = int(meta["completed_rounds"])
        self.pending.clear()
        self.search_pending.clear()

    def save(self, directory: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write a checkpoint atomically: ``supernet-<round>.npz`` + ``state.json``."""
        return write_search_checkpoint(
            directory, self.state_dict(), self.completed_rounds, extra, write=_atomic_write
        )

    @staticmethod
    def read_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
        """Read a checkpoint written by :meth:`save` (arrays and JSON only)."""
        return read_search_checkpoint(directory)

    @classmethod
    def from_checkpoint(
        cls, directory: str | os.PathLike, config: SearchConfig | None = None
    ) -> tuple[PerFedRLNASSearch, dict[str, Any]]:
        """Rebuild the core from a checkpoint; returns it and the saved ``extra``."""
        state = cls.read_checkpoint(directory)
        meta = state["meta"]
        family = get_supernet(meta["family"], **meta["family_config"])
        core = cls(family, config, supernet_state=state["supernet"])
        core.load_state_dict(state)
        return core, meta.get("extra", {})
