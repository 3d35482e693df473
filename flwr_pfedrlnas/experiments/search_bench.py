"""Synthetic federation with planted best choices: measures the search without training."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from flwr_pfedrlnas.core.replies import ClientReply
from flwr_pfedrlnas.core.search import PerFedRLNASSearch
from flwr_pfedrlnas.core.search_config import SearchConfig
from flwr_pfedrlnas.core.search_space import Architecture, Dimension, SearchSpace
from flwr_pfedrlnas.supernets import cpu_preset, get_supernet
from flwr_pfedrlnas.supernets.base import SupernetFamily

__all__ = [
    "SETTINGS",
    "VARIANTS",
    "VariantSpec",
    "FederationSetting",
    "SearchSpaceOnlyFamily",
    "SyntheticFederation",
    "VariantResult",
    "run_variant",
    "uniform_oracle",
    "variant_config",
]


class _OneWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class SearchSpaceOnlyFamily(SupernetFamily):
    """A real family's search space over a one-weight network.

    Every subnet is the same single weight, so extraction and merging cost
    next to nothing and the benchmark measures the search alone: the real
    :class:`PerFedRLNASSearch`, policies and rewards, over real dimensions.
    """

    name = "search-space-only"

    def __init__(self, dimensions: Sequence[Sequence[Any]]) -> None:
        dims = [[str(n), list(c)] for n, c in dimensions]
        super().__init__(dimensions=dims)
        self._space = SearchSpace(Dimension(n, tuple(c)) for n, c in dims)

    @classmethod
    def like(cls, family: SupernetFamily) -> SearchSpaceOnlyFamily:
        """The search space of ``family``, dimension for dimension."""
        return cls([(d.name, d.choices) for d in family.search_space])

    @property
    def search_space(self) -> SearchSpace:
        return self._space

    def build_supernet(self) -> nn.Module:
        return _OneWeight()

    def build_subnet(self, arch: Architecture) -> nn.Module:
        self.search_space.validate(arch)
        return _OneWeight()


@dataclass(frozen=True)
class FederationSetting:
    """Sizes and effects of a synthetic federation.

    A client's accuracy in round ``t`` with architecture ``a`` is
    ``base + offset_i + rise * (1 - exp(-t / (rise_time * rounds))) + effect_i(a) + noise``,
    clipped to [0, 1]. ``effect_i(a) = g * sum_d (1[a_d = planted_id] - 1/n_d)``
    has mean 0 over uniform architectures and ``arch_gap`` at the planted best
    one (``g = arch_gap / sum_d (1 - 1/n_d)``).

    Parameters
    ----------
    name : str (default: "measured")
        Name in the tables.
    family : str (default: "mobilenetv3")
        Family whose search space is searched.
    family_knobs : Mapping[str, Any] | None (default: None)
        Its knobs; ``None``: its CPU preset.
    num_clients, clients_per_round : int (default: 10, 5)
        Federation size and clients sampled per round.
    updates_per_client : int (default: 75)
        Mean policy updates per client; sets the number of rounds.
    client_offset_sd : float (default: 0.14)
        Spread of the clients' accuracies (clipped at 2 sd).
    arch_gap : float (default: 0.05)
        Expected accuracy of the planted best architecture minus that of a uniform one.
    noise_sd : float (default: 0.065)
        Round-to-round noise of a reported accuracy.
    base_accuracy, rise, rise_time : float (default: 0.45, 0.15, 0.25)
        Mean accuracy at the start, its rise over the run and the rise's time
        constant as a fraction of the rounds.
    wall_time_sd : float (default: 0.0)
        Noise (seconds) of the reported ``compute-seconds``, ``5 + N(0, sd)``
        clipped at 0: shared-CPU wall time that says nothing of the
        architecture. The one-weight subnets have no MACs, so under
        ``round_time_model="macs"`` only this noise is absent, not a real cost.
    """

    name: str = "measured"
    family: str = "mobilenetv3"
    family_knobs: Mapping[str, Any] | None = None
    num_clients: int = 10
    clients_per_round: int = 5
    updates_per_client: int = 75
    client_offset_sd: float = 0.14
    arch_gap: float = 0.05
    noise_sd: float = 0.065
    base_accuracy: float = 0.45
    rise: float = 0.15
    rise_time: float = 0.25
    wall_time_sd: float = 0.0

    def __post_init__(self) -> None:
        for name in ("num_clients", "clients_per_round", "updates_per_client"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round is {self.clients_per_round}, more than "
                f"num_clients {self.num_clients}"
            )
        for name in (
            "client_offset_sd",
            "arch_gap",
            "noise_sd",
            "rise",
            "rise_time",
            "wall_time_sd",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")

    @property
    def rounds(self) -> int:
        """Rounds giving ``updates_per_client`` updates per client on average."""
        return math.ceil(self.updates_per_client * self.num_clients / self.clients_per_round)

    def search_space(self) -> SearchSpace:
        knobs = cpu_preset(self.family) if self.family_knobs is None else dict(self.family_knobs)
        return get_supernet(self.family, **knobs).search_space


SETTINGS: dict[str, FederationSetting] = {
    # The figures measured at CPU scale (issue 14).
    "measured": FederationSetting("measured"),
    "clear": FederationSetting("clear", arch_gap=0.2, noise_sd=0.02),
    # No planted difference: a search should keep its entropy.
    "null": FederationSetting("null", arch_gap=0.0),
    # "measured" with shared-CPU wall time: 5 s +- 4 s of noise per reply.
    "measured-noisy-time": FederationSetting("measured-noisy-time", wall_time_sd=4.0),
}

_OURS = SearchConfig.recommended
# A variant is a config, or a config made for the setting (one whose schedule needs the rounds).
VariantSpec = SearchConfig | Callable[[FederationSetting], SearchConfig]


def _commit_last(fraction: float) -> Callable[[FederationSetting], SearchConfig]:
    """Our preset, committing to the argmax for the last ``fraction`` of the rounds."""

    def make(setting: FederationSetting) -> SearchConfig:
        return _OURS(commit_round=setting.rounds - round(fraction * setting.rounds) + 1)

    return make


def variant_config(spec: VariantSpec, setting: FederationSetting) -> SearchConfig:
    """The ``SearchConfig`` a variant runs with at ``setting``."""
    return spec if isinstance(spec, SearchConfig) else spec(setting)


VARIANTS: dict[str, VariantSpec] = {
    "paper (eq. 8, adam 0.5)": SearchConfig(),
    "eq. 8, adam 0.05": SearchConfig(policy_lr=0.05),
    "eq. 8, shared std, sgd 0.1": _OURS(reward_baseline="global-mean"),
    "client-mean, adam 0.5": SearchConfig(reward_baseline="client-mean", baseline_decay=0.8),
    "client-mean, adam 0.05": SearchConfig(
        reward_baseline="client-mean", baseline_decay=0.8, policy_lr=0.05
    ),
    "client-mean, client std, sgd 0.1": _OURS(reward_standardise="client"),
    "client-mean, shared std, sgd 0.05": _OURS(policy_lr=0.05),
    "client-mean, shared std, sgd 0.2": _OURS(policy_lr=0.2),
    "client-mean (decay 0.9), shared std, sgd 0.1": _OURS(baseline_decay=0.9),
    "client-mean (decay 0.97), shared std, sgd 0.1": _OURS(baseline_decay=0.97),
    "ours + entropy bonus 0.05": _OURS(entropy_bonus=0.05),
    "ours + warm-up 3 updates": _OURS(warmup_updates=3),
    "ours, measured time, lambda 0.01": _OURS(round_time_model="measured", lambda_time=0.01),
    "ours + commit, last 20 % of rounds": _commit_last(0.2),
    "ours (recommended)": _OURS(),
}


class SyntheticFederation:
    """The clients of a :class:`FederationSetting`: planted choices, offsets, noise."""

    def __init__(self, setting: FederationSetting, seed: int) -> None:
        self.setting = setting
        self.space = setting.search_space()
        rng = np.random.default_rng([int(seed), 14])
        self.clients = [f"client-{i:03d}" for i in range(setting.num_clients)]
        # Dimensions with one choice carry no decision: they are left out.
        self.searched = [d for d in self.space if len(d) > 1]
        self.planted = {
            c: {d.name: int(rng.integers(len(d))) for d in self.searched} for c in self.clients
        }
        sd = setting.client_offset_sd
        self.offsets = {
            c: float(np.clip(rng.normal(0.0, sd), -2 * sd, 2 * sd)) if sd else 0.0
            for c in self.clients
        }
        spread = sum(1 - 1 / len(d) for d in self.searched)
        self.per_dimension = setting.arch_gap / spread if spread else 0.0
        self.noise = np.random.default_rng([int(seed), 15])

    def effect(self, client_id: str, arch: Architecture) -> float:
        """Expected accuracy of ``arch`` minus that of a uniform architecture."""
        idx = self.space.indices(arch)
        planted = self.planted[client_id]
        return self.per_dimension * sum(
            float(idx[d.name] == planted[d.name]) - 1 / len(d) for d in self.searched
        )

    def compute_seconds(self) -> float:
        """One reported compute time: 5 s of pure wall-time noise."""
        if not self.setting.wall_time_sd:
            return 0.0
        return max(0.0, 5.0 + float(self.noise.normal(0.0, self.setting.wall_time_sd)))

    def accuracy(self, client_id: str, arch: Architecture, server_round: int) -> float:
        """One noisy reported accuracy."""
        s = self.setting
        trend = s.rise * (1 - math.exp(-server_round / max(s.rise_time * s.rounds, 1e-9)))
        acc = (
            s.base_accuracy
            + self.offsets[client_id]
            + trend
            + self.effect(client_id, arch)
            + self.noise.normal(0.0, s.noise_sd)
        )
        return float(min(max(acc, 0.0), 1.0))

    def recovered(self, client_id: str, arch: Architecture) -> list[bool]:
        """Per searched dimension: is ``arch``'s choice the planted one?"""
        idx = self.space.indices(arch)
        return [idx[d.name] == self.planted[client_id][d.name] for d in self.searched]

    def chance_recovery(self) -> float:
        """Expected fraction recovered by a uniformly random architecture."""
        return float(np.mean([1 / len(d) for d in self.searched])) if self.searched else 1.0


@dataclass
class VariantResult:
    """One run of one variant: final figures and the entropy of every round."""

    variant: str
    setting: str
    seed: int
    recovered: float
    chance: float
    regret_argmax: float
    regret_sampled: float
    entropy_fraction: float
    mean_updates: float
    min_updates: int
    entropy_by_round: list[float] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("entropy_by_round")
        return out


def run_variant(
    name: str, config: VariantSpec, setting: FederationSetting, seed: int
) -> VariantResult:
    """Drive the real search core through ``setting``'s rounds with ``config``."""
    fed = SyntheticFederation(setting, seed)
    family = SearchSpaceOnlyFamily([(d.name, d.choices) for d in fed.space])
    search = PerFedRLNASSearch(family, variant_config(config, setting).replace(seed=int(seed)))
    max_entropy = search.policy(fed.clients[0]).max_entropy()
    gap = setting.arch_gap
    sampled_regret: list[float] = []
    entropy: list[float] = []
    updates = dict.fromkeys(fed.clients, 0)
    for server_round in range(1, setting.rounds + 1):
        replies = []
        for cid in search.sample_clients(fed.clients, setting.clients_per_round):
            proposal = search.propose(cid, server_round)
            acc = fed.accuracy(cid, proposal.arch, server_round)
            sampled_regret.append(gap - fed.effect(cid, proposal.arch))
            secs = fed.compute_seconds()
            replies.append(
                # The one noisy measurement stands for whichever split the reward reads.
                ClientReply(
                    cid,
                    proposal.arch,
                    proposal.state,
                    100,
                    acc,
                    compute_seconds=secs,
                    val_accuracy=acc,
                    deployed_val_accuracy=acc,
                )
            )
            updates[cid] += 1
        outcome = search.incorporate(server_round, replies)
        if outcome.rejected:
            raise RuntimeError(f"synthetic replies rejected: {outcome.rejected}")
        entropy.append(
            float(np.mean([search.policy(c).entropy() for c in fed.clients])) / max_entropy
        )
    argmax = {c: search.policy(c).argmax() for c in fed.clients}
    return VariantResult(
        variant=name,
        setting=setting.name,
        seed=int(seed),
        recovered=float(np.mean([r for c in fed.clients for r in fed.recovered(c, argmax[c])])),
        chance=fed.chance_recovery(),
        regret_argmax=float(np.mean([gap - fed.effect(c, argmax[c]) for c in fed.clients])),
        regret_sampled=float(np.mean(sampled_regret)),
        entropy_fraction=entropy[-1],
        mean_updates=float(np.mean(list(updates.values()))),
        min_updates=min(updates.values()),
        entropy_by_round=entropy,
    )


def uniform_oracle(setting: FederationSetting, seed: int) -> VariantResult:
    """Reference, not a search: uniform sampling, then per dimension the choice
    with the highest mean of the client's centred accuracies.

    It knows that the effects add up, which the policies do not, so it shows
    how much the same number of noisy samples can reveal at all.
    """
    fed = SyntheticFederation(setting, seed)
    rng = np.random.default_rng([int(seed), 16])
    samples: dict[str, list[tuple[Architecture, float]]] = {c: [] for c in fed.clients}
    pool = sorted(fed.clients)
    for server_round in range(1, setting.rounds + 1):
        for i in sorted(rng.choice(len(pool), setting.clients_per_round, replace=False)):
            arch = fed.space.sample(rng)
            samples[pool[i]].append((arch, fed.accuracy(pool[i], arch, server_round)))
    recovered, regret = [], []
    for cid, seen in samples.items():
        mean_acc = float(np.mean([a for _, a in seen]))
        best = dict(fed.space.largest())
        for dim in fed.searched:
            sums = np.zeros(len(dim))
            counts = np.zeros(len(dim))
            for arch, acc in seen:
                j = dim.index(arch[dim.name])
                sums[j] += acc - mean_acc
                counts[j] += 1
            best[dim.name] = dim.choices[int(np.argmax(sums / np.maximum(counts, 1)))]
        recovered.extend(fed.recovered(cid, best))
        regret.append(setting.arch_gap - fed.effect(cid, best))
    counts = [len(v) for v in samples.values()]
    return VariantResult(
        variant="reference: uniform samples + additive estimate",
        setting=setting.name,
        seed=int(seed),
        recovered=float(np.mean(recovered)),
        chance=fed.chance_recovery(),
        regret_argmax=float(np.mean(regret)),
        regret_sampled=float(setting.arch_gap),
        entropy_fraction=1.0,
        mean_updates=float(np.mean(counts)),
        min_updates=min(counts),
        entropy_by_round=[1.0] * setting.rounds,
    )
