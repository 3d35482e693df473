"""Framework-free PerFedRLNAS server core: propose, incorporate, deploy, checkpoint."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .aggregation import (
    Weighting,
    check_subnet_state,
    extract_subnet,
    merge_subnets,
    state_num_bytes,
)
from .policy import ArchitecturePolicy
from .rewards import (
    DEFAULT_BANDWIDTH_BPS,
    AccuracyHistory,
    accuracy_time_rewards,
    memory_aware_rewards,
    round_time,
)
from .search_space import Architecture, architecture_to_json
from .supernets import SupernetFamily, get_supernet

__all__ = [
    "ClientReply",
    "PerFedRLNASSearch",
    "Proposal",
    "RoundOutcome",
    "SearchConfig",
]

logger = logging.getLogger(__name__)

# num-examples above this is treated as a corrupt reply, not a large client.
MAX_NUM_EXAMPLES = 10**9


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the search (the policy, the reward and the merge).

    Parameters
    ----------
    policy_lr : float (default: 0.5)
        Learning rate of every client's policy logits.
    policy_optimizer : {"adam", "sgd"} (default: "adam")
        Optimiser of the logits.
    policy_betas : tuple[float, float] (default: (0.5, 0.999))
        Adam's betas.
    lambda_time : float (default: 0.01)
        Weight of the round-time term of the reward, per second (eq. 8).
    bandwidth_down_bps, bandwidth_up_bps : float (default: 100e6)
        Simulated link speed (bit/s) used to turn bytes moved into seconds.
    weighting : {"examples", "uniform"} (default: "examples")
        Weight of each client in the count-normalised merge.
    memory_aware : bool (default: False)
        Use eq. 9 (memory budget) instead of eq. 8.
    reward_clip : float | None (default: None)
        Clip every reward to ``[-reward_clip, reward_clip]`` when set.
    seed : int (default: 0)
        Seed of architecture sampling and client sampling.
    """

    policy_lr: float = 0.5
    policy_optimizer: str = "adam"
    policy_betas: tuple[float, float] = (0.5, 0.999)
    lambda_time: float = 0.01
    bandwidth_down_bps: float = DEFAULT_BANDWIDTH_BPS
    bandwidth_up_bps: float = DEFAULT_BANDWIDTH_BPS
    weighting: Weighting = "examples"
    memory_aware: bool = False
    reward_clip: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("bandwidth_down_bps", "bandwidth_up_bps", "policy_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (self.lambda_time >= 0 and math.isfinite(self.lambda_time)):
            raise ValueError(f"lambda_time must be >= 0, got {self.lambda_time!r}")
        if self.weighting not in ("examples", "uniform"):
            raise ValueError(f"weighting must be 'examples' or 'uniform', got {self.weighting!r}")
        if self.policy_optimizer not in ("adam", "sgd"):
            raise ValueError(
                f"policy_optimizer must be 'adam' or 'sgd', got {self.policy_optimizer!r}"
            )
        if self.reward_clip is not None and not self.reward_clip > 0:
            raise ValueError(f"reward_clip must be positive, got {self.reward_clip!r}")


@dataclass
class Proposal:
    """What the server sends one client: its sampled architecture and subnet."""

    client_id: str
    arch: Architecture
    state: dict[str, np.ndarray]
    bytes_down: int


@dataclass
class ClientReply:
    """What one client returned after training its subnet."""

    client_id: str
    arch: Architecture | None  # None: the client did not echo it; the sent one holds
    state: dict[str, np.ndarray]
    num_examples: int
    accuracy: float
    train_loss: float = float("nan")
    compute_seconds: float = 0.0
    peak_memory_bytes: float = 0.0
    memory_budget_bytes: float | None = None


@dataclass
class RoundOutcome:
    """What one call of :meth:`PerFedRLNASSearch.incorporate` did."""

    server_round: int
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    accuracies: dict[str, float] = field(default_factory=dict)
    rewards: dict[str, float] = field(default_factory=dict)
    round_times: dict[str, float] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    mean_accuracy: float = float("nan")

    @property
    def latency(self) -> float:
        """Simulated duration of the round: the slowest accepted client's RT."""
        return max(self.round_times.values(), default=0.0)


class PerFedRLNASSearch:
    """Server state of PerFedRLNAS: one supernet, one policy per client.

    The core knows no Flower. Each round: :meth:`propose` per sampled client,
    then :meth:`incorporate` with the replies (rewards, policy updates, merge).
    :meth:`deploy` gives a client's argmax architecture and its weights.

    Parameters
    ----------
    family : SupernetFamily
        The supernet family.
    config : SearchConfig (default: SearchConfig())
        Search settings.
    supernet_state : Mapping[str, np.ndarray] | None (default: None)
        Initial supernet weights; a fresh seeded initialisation when ``None``.
    """

    def __init__(
        self,
        family: SupernetFamily,
        config: SearchConfig | None = None,
        supernet_state: Mapping[str, np.ndarray] | None = None,
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
        self.pending: dict[str, Proposal] = {}
        self.completed_rounds = 0

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
    def propose(self, client_id: str) -> Proposal:
        """Sample ``client_id``'s architecture from its policy and cut its subnet."""
        cid = str(client_id)
        arch = self.policy(cid).sample(self.rng)
        state = extract_subnet(self.family, self.supernet, arch)
        proposal = Proposal(cid, arch, state, state_num_bytes(state))
        self.pending[cid] = proposal
        return proposal

    def _reject_reason(self, reply: ClientReply, seen: set[str]) -> str | None:
        cid = str(reply.client_id)
        if cid in seen:
            return f"duplicate reply from client {cid!r}"
        proposal = self.pending.get(cid)
        if proposal is None:
            return f"no architecture was sent to client {cid!r} this round"
        try:
            arch = self.family.search_space.validate(
                proposal.arch if reply.arch is None else reply.arch
            )
        except ValueError as err:
            return str(err)
        if architecture_to_json(arch) != architecture_to_json(proposal.arch):
            return (
                f"arch is {architecture_to_json(arch)}, but "
                f"{architecture_to_json(proposal.arch)} was sent"
            )
        checks = [
            ("num-examples", reply.num_examples, lambda v: 0 < v <= MAX_NUM_EXAMPLES),
            ("accuracy", reply.accuracy, lambda v: 0.0 <= v <= 1.0),
            ("compute-seconds", reply.compute_seconds, lambda v: v >= 0),
            ("peak-memory-bytes", reply.peak_memory_bytes, lambda v: v >= 0),
        ]
        for name, value, ok in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                return f"{name} is {value!r}, not a number"
            if not math.isfinite(value) or not ok(value):
                return f"{name} is {value!r}, out of range"
        if self.config.memory_aware and not (
            reply.memory_budget_bytes is not None and reply.memory_budget_bytes > 0
        ):
            return f"memory-budget-bytes is {reply.memory_budget_bytes!r}, not positive"
        try:
            check_subnet_state(self.family, arch, reply.state, self.supernet)
        except ValueError as err:
            return str(err)
        return None

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
        accepted = [r for r in accepted if str(r.client_id) not in dupes]

        cfg = self.config
        accs, rts, peaks, budgets = {}, {}, {}, {}
        for reply in accepted:
            cid = str(reply.client_id)
            proposal = self.pending[cid]
            bytes_up = state_num_bytes(reply.state)
            outcome.bytes_down[cid] = proposal.bytes_down
            outcome.bytes_up[cid] = bytes_up
            accs[cid] = float(reply.accuracy)
            rts[cid] = round_time(
                reply.compute_seconds,
                proposal.bytes_down,
                bytes_up,
                cfg.bandwidth_down_bps,
                cfg.bandwidth_up_bps,
            )
            peaks[cid] = float(reply.peak_memory_bytes)
            budgets[cid] = float(reply.memory_budget_bytes or 0.0)

        history = copy.deepcopy(self.history)
        if cfg.memory_aware:
            # Eq. 9 decides the effective accuracy before the history sees it.
            _, effective = memory_aware_rewards(accs, rts, peaks, budgets, 0.0, 0.0)
            history.update(effective)
            rewards, effective = memory_aware_rewards(
                accs, rts, peaks, budgets, history.mean(), cfg.lambda_time
            )
        else:
            history.update(accs)
            rewards = accuracy_time_rewards(accs, rts, history.mean(), cfg.lambda_time)
        if cfg.reward_clip is not None:
            c = cfg.reward_clip
            rewards = {k: min(max(v, -c), c) for k, v in rewards.items()}

        new_policies = {}
        for reply in accepted:
            cid = str(reply.client_id)
            policy = copy.deepcopy(self.policy(cid))
            policy.update(self.pending[cid].arch, rewards[cid])  # eq. 6
            new_policies[cid] = policy
        merged = merge_subnets(
            self.family,
            self.supernet,
            [(self.pending[str(r.client_id)].arch, r.state, r.num_examples) for r in accepted],
            weighting=cfg.weighting,
        )

        # Commit.
        self.supernet = merged
        self.policies.update(new_policies)
        self.history = history
        self.pending.clear()
        self.completed_rounds = max(self.completed_rounds, server_round)
        outcome.accepted = [str(r.client_id) for r in accepted]
        outcome.accuracies = accs
        outcome.rewards = rewards
        outcome.round_times = rts
        outcome.mean_accuracy = history.mean()
        return outcome

    def deploy(self, client_id: str) -> tuple[Architecture, dict[str, np.ndarray]]:
        """The client's deployed model: its argmax architecture and weights."""
        arch = self.policy(client_id).argmax()
        return arch, extract_subnet(self.family, self.supernet, arch)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the search (arrays + JSON-able parts)."""
        return {
            "supernet": {k: v.copy() for k, v in self.supernet.items()},
            "meta": {
                "family": self.family.name,
                "family_config": self.family.config,
                "completed_rounds": self.completed_rounds,
                "policies": {c: p.state_dict() for c, p in self.policies.items()},
                "history": self.history.state_dict(),
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
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["rng"]
        self.supernet, self.policies, self.history, self.rng = supernet, policies, history, rng
        self.completed_rounds = int(meta["completed_rounds"])
        self.pending.clear()

    def save(self, directory: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write a checkpoint atomically: ``supernet.npz`` + ``state.json``.

        Both files are written under temporary names and renamed; ``state.json``
        (renamed last) names the supernet file it belongs to, so a crash
        between the two renames leaves the previous checkpoint readable.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        round_tag = f"supernet-{self.completed_rounds:06d}.npz"
        _atomic_write(directory / round_tag, lambda f: np.savez(f, **state["supernet"]))
        meta = dict(state["meta"], supernet_file=round_tag, extra=dict(extra or {}))
        _atomic_write(
            directory / "state.json",
            lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True).encode()),
        )
        for old in directory.glob("supernet-*.npz"):
            if old.name != round_tag:
                old.unlink(missing_ok=True)
        return directory

    @staticmethod
    def read_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
        """Read a checkpoint written by :meth:`save` (arrays and JSON only)."""
        directory = Path(directory)
        meta = json.loads((directory / "state.json").read_text())
        with np.load(directory / meta["supernet_file"], allow_pickle=False) as npz:
            supernet = {k: npz[k] for k in npz.files}
        return {"supernet": supernet, "meta": meta}

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


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
