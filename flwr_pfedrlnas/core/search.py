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

from flwr_pfedrlnas.core.aggregation import (
    Weighting,
    check_subnet_state,
    extract_subnet,
    merge_subnets,
    state_num_bytes,
)
from flwr_pfedrlnas.core.policy import ArchitecturePolicy
from flwr_pfedrlnas.core.profiles import DeviceProfile
from flwr_pfedrlnas.core.rewards import (
    DEFAULT_BANDWIDTH_BPS,
    AccuracyHistory,
    accuracy_time_rewards,
    memory_aware_rewards,
    round_time,
)
from flwr_pfedrlnas.core.search_space import Architecture, architecture_to_json
from flwr_pfedrlnas.supernets import SupernetFamily, get_supernet

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
    reward_clip : float | None (default: 2.0)
        Clip every reward to ``[-reward_clip, reward_clip]`` (``None``: no
        clipping). The accuracy part of eq. 8 lies in ``[-1, 1]`` and eq. 9's
        memory term in ``[-1, 0]``, so 2 leaves every honest accuracy and
        memory reward intact (a client just inside its budget still differs
        from one over it) while bounding the time term, so that a forged
        ``compute-seconds`` (which sets the round's ``min RT``) cannot swamp
        the other clients' rewards.
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
    reward_clip: float | None = 2.0
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
    # The client measured a peak over its budget and did not train: its weights
    # (unchanged or absent) are never merged; eq. 9 gives it acc 0, RT max, phi 1.
    memory_overrun: bool = False


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
    overruns: list[str] = field(default_factory=list)

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
        self.pending: dict[str, Proposal] = {}
        self.completed_rounds = 0
        self.profiles: dict[str, DeviceProfile] = dict(profiles or {})
        # Search-only rounds (new clients): their own accuracy baseline and proposals.
        self.search_history = AccuracyHistory()
        self.search_pending: dict[str, Architecture] = {}

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
        overrun = self._is_overrun(reply)
        checks = [
            ("num-examples", reply.num_examples, lambda v: 0 <= v <= MAX_NUM_EXAMPLES),
            ("accuracy", reply.accuracy, lambda v: 0.0 <= v <= 1.0),
            ("compute-seconds", reply.compute_seconds, lambda v: v >= 0),
            ("peak-memory-bytes", reply.peak_memory_bytes, lambda v: v >= 0),
        ]
        for name, value, ok in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                return f"{name} is {value!r}, not a number"
            if not math.isfinite(value) or not ok(value):
                return f"{name} is {value!r}, out of range"
        if overrun:
            return None  # nothing of its state is used: it is not merged
        if reply.num_examples == 0:
            return "num-examples is 0, out of range"
        if self.config.memory_aware and not (
            reply.memory_budget_bytes is not None and reply.memory_budget_bytes > 0
        ):
            return f"memory-budget-bytes is {reply.memory_budget_bytes!r}, not positive"
        try:
            check_subnet_state(self.family, arch, reply.state, self.supernet)
        except ValueError as err:
            return str(err)
        return None

    @staticmethod
    def _is_overrun(reply: ClientReply) -> bool:
        """Over budget: flagged by the client, or its peak above its budget."""
        budget = reply.memory_budget_bytes
        over = (
            budget is not None
            and isinstance(budget, (int, float, np.number))
            and budget > 0
            and isinstance(reply.peak_memory_bytes, (int, float, np.number))
            and reply.peak_memory_bytes > budget
        )
        return bool(reply.memory_overrun) or bool(over)

    def round_time_of(
        self, client_id: str, compute_seconds: float, bytes_down: int, bytes_up: int
    ) -> float:
        """RT of one client: its profile (simulation) or the configured bandwidth."""
        cfg = self.config
        profile = self.profiles.get(str(client_id))
        if profile is None:
            return round_time(
                compute_seconds, bytes_down, bytes_up, cfg.bandwidth_down_bps, cfg.bandwidth_up_bps
            )
        return round_time(
            compute_seconds * profile.speed_factor,
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
        overruns = {str(r.client_id) for r in accepted if self._is_overrun(r)}
        for reply in accepted:
            cid = str(reply.client_id)
            proposal = self.pending[cid]
            # An over-budget client uploads nothing that is used (its state is ignored).
            bytes_up = 0 if cid in overruns else state_num_bytes(reply.state)
            outcome.bytes_down[cid] = proposal.bytes_down
            outcome.bytes_up[cid] = bytes_up
            accs[cid] = float(reply.accuracy)
            rts[cid] = self.round_time_of(cid, reply.compute_seconds, proposal.bytes_down, bytes_up)
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
            [
                (self.pending[str(r.client_id)].arch, r.state, r.num_examples)
                for r in accepted
                if str(r.client_id) not in overruns
            ],
            weighting=cfg.weighting,
        )

        # Commit.
        self.supernet = merged
        self.policies.update(new_policies)
        self.history = history
        self.pending.clear()
        self.completed_rounds = max(self.completed_rounds, server_round)
        outcome.accepted = [str(r.client_id) for r in accepted]
        outcome.accuracies = effective if cfg.memory_aware else accs
        outcome.rewards = rewards
        outcome.round_times = rts
        outcome.mean_accuracy = history.mean()
        outcome.overruns = sorted(overruns)
        return outcome

    # ------------------------------------------------------------------ new clients
    def propose_search_only(self, client_id: str) -> Proposal:
        """Search-only round (a new client): sample an architecture to be tested.

        The client tests the subnet (no training, no upload); the supernet is
        never changed by search-only rounds.
        """
        cid = str(client_id)
        arch = self.policy(cid).sample(self.rng)
        state = extract_subnet(self.family, self.supernet, arch)
        self.search_pending[cid] = arch
        return Proposal(cid, arch, state, state_num_bytes(state))

    def incorporate_search_only(self, accuracies: Mapping[str, float]) -> dict[str, float]:
        """Reward ``acc_i - mean_acc`` (eq. 8 without time or merge); update policies.

        ``mean_acc`` is the running mean of the new clients' most recent test
        accuracies (their own baseline, kept apart from the trained clients').
        An accuracy outside [0, 1] or of a client not proposed is ignored.
        Returns the rewards; every pending search-only proposal is closed.
        """
        valid = {}
        for cid, acc in accuracies.items():
            cid = str(cid)
            if cid not in self.search_pending:
                logger.warning("search-only accuracy of client %s, not proposed: ignored", cid)
                continue
            if isinstance(acc, bool) or not isinstance(acc, (int, float, np.number)):
                logger.warning("search-only accuracy of client %s is %r: ignored", cid, acc)
                continue
            if not (math.isfinite(acc) and 0.0 <= acc <= 1.0):
                logger.warning("search-only accuracy of client %s is %r: ignored", cid, acc)
                continue
            valid[cid] = float(acc)
        self.search_history.update(valid)
        baseline = self.search_history.mean()
        rewards = {cid: acc - baseline for cid, acc in valid.items()}
        if self.config.reward_clip is not None:
            c = self.config.reward_clip
            rewards = {k: min(max(v, -c), c) for k, v in rewards.items()}
        for cid, reward in rewards.items():
            self.policy(cid).update(self.search_pending[cid], reward)  # eq. 6
        self.search_pending.clear()
        return rewards

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
                "search_history": self.search_history.state_dict(),
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
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["rng"]
        self.supernet, self.policies, self.history, self.rng = supernet, policies, history, rng
        self.search_history = search_history
        self.completed_rounds = int(meta["completed_rounds"])
        self.pending.clear()
        self.search_pending.clear()

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
