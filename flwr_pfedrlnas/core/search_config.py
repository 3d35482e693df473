"""Settings of the search: the paper's (the default) and our measured preset."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from flwr_pfedrlnas.core.aggregation import Weighting
from flwr_pfedrlnas.core.rewards import BASELINE_MODES, DEFAULT_BANDWIDTH_BPS, STANDARDISE_MODES

__all__ = ["REWARD_ACCURACIES", "ROUND_TIME_MODELS", "SEARCH_PRESETS", "SearchConfig"]

# "measured": reported compute seconds (deployment); "macs": ours, deterministic.
ROUND_TIME_MODELS = ("measured", "macs")
# Chosen on the synthetic federation benchmark (results/search.md).
_OURS: dict[str, Any] = {
    "reward_baseline": "client-mean",
    "baseline_decay": 0.8,
    "reward_standardise": "shared",
    "policy_optimizer": "sgd",
    "policy_lr": 0.1,
    "round_time_model": "macs",
    "lambda_time": 0.001,
    "reward_accuracy": "validation",
}
# "test": the accuracy the client reports on its test split (the paper's code);
# "validation": on its validation split, which the tables never report (ours).
# "deployed": the received subnet before local training, BatchNorm re-estimated as the
# evaluation does, on the validation split: the model the client deploys (ours).
REWARD_ACCURACIES = ("test", "validation", "deployed")
SEARCH_PRESETS = ("paper", "ours")


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the search (the policy, the reward and the merge).

    ``SearchConfig()`` is the paper's setting (eq. 8, Adam at 0.5);
    :meth:`recommended` is ours, chosen by measurement.

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
    reward_baseline : {"global-mean", "client-mean"} (default: "global-mean")
        ``"global-mean"``: eq. 8, ``acc_i - mean_acc - lambda (RT_i - min RT)``
        with the mean over every client. ``"client-mean"`` (ours): the
        client's score ``acc_i - lambda RT_i (- phi_i)`` minus its own running
        mean of past scores, so no other client's data or speed enters it.
    baseline_decay : float (default: 0.9)
        Weight of the past in the running mean and variance of our baselines.
    reward_standardise : {"none", "client", "shared"} (default: "none")
        Ours: divide the reward by a running std of the rewards, the client's
        own or one shared by every client.
    entropy_bonus : float (default: 0.0)
        Ours: weight of the policy's entropy added to the ascended objective.
    warmup_updates : int (default: 0)
        Ours, per client: its first ``warmup_updates`` replies only feed the
        reward statistics; its policy (uniform until then) is not updated.
    round_time_model : {"measured", "macs"} (default: "measured")
        ``"measured"``: the reported compute seconds (times the profile's
        speed factor). ``"macs"`` (ours, deterministic): the subnet's MACs of
        one image x the speed factor x ``seconds_per_mac``; bytes over the
        bandwidth are added in both.
    seconds_per_mac : float (default: 1e-6)
        Seconds of a round's local training per MAC of one forward of the
        subnet on one image (absorbs examples, epochs and the backward pass).
    reward_accuracy : {"test", "validation", "deployed"} (default: "test")
        Which accuracy of a training reply the reward uses: ``accuracy`` on
        the client's test split after training (the paper's code; the tables
        report that split too), ``val-accuracy`` on its validation split
        after training (ours), or ``deployed-val-accuracy``: the subnet as
        received, before local training, BatchNorm re-estimated on the
        training data as the evaluation does, on the validation split, i.e.
        the model the client deploys (ours). The last two need a validation
        split (``val-fraction`` > 0 in the apps). A reply without the one
        asked for is rejected.
    commit_round : int (default: 0)
        Ours, explore then commit: from this server round on, every client
        trains the argmax of its policy (the architecture it deploys) instead
        of a sample, and no policy changes any more, so the last rounds train
        the deployed subnets and the blocks they keep. 0: never (the paper).
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
    reward_baseline: str = "global-mean"
    baseline_decay: float = 0.9
    reward_standardise: str = "none"
    entropy_bonus: float = 0.0
    warmup_updates: int = 0
    round_time_model: str = "measured"
    seconds_per_mac: float = 1e-6
    reward_accuracy: str = "test"
    commit_round: int = 0

    def __post_init__(self) -> None:
        for name in ("bandwidth_down_bps", "bandwidth_up_bps", "policy_lr", "seconds_per_mac"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("lambda_time", "entropy_bonus"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        choices = {
            "weighting": ("examples", "uniform"),
            "policy_optimizer": ("adam", "sgd"),
            "reward_baseline": BASELINE_MODES,
            "reward_standardise": STANDARDISE_MODES,
            "round_time_model": ROUND_TIME_MODELS,
            "reward_accuracy": REWARD_ACCURACIES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.reward_clip is not None and not self.reward_clip > 0:
            raise ValueError(f"reward_clip must be positive, got {self.reward_clip!r}")
        decay = self.baseline_decay
        if isinstance(decay, bool) or not (isinstance(decay, (int, float)) and 0 <= decay < 1):
            raise ValueError(f"baseline_decay must be in [0, 1), got {decay!r}")
        for name in ("warmup_updates", "commit_round"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")

    def committed(self, server_round: int) -> bool:
        """Whether ``server_round`` trains argmax architectures (see ``commit_round``)."""
        return 0 < self.commit_round <= server_round

    @classmethod
    def recommended(cls, **overrides: Any) -> SearchConfig:
        """Our preset, chosen on the synthetic benchmark; ``overrides`` replace fields."""
        return cls(**{**_OURS, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SearchConfig:
        """``"paper"`` (``SearchConfig()``) or ``"ours"`` (:meth:`recommended`)."""
        if name not in SEARCH_PRESETS:
            raise ValueError(f"search preset must be one of {SEARCH_PRESETS}, got {name!r}")
        return cls.recommended(**overrides) if name == "ours" else cls(**overrides)

    def replace(self, **changes: Any) -> SearchConfig:
        """A copy with ``changes`` (validated like a new one)."""
        return dataclasses.replace(self, **changes)
