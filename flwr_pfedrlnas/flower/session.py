"""Round bookkeeping shared by both strategy faces: sampling, records, logs, checkpoints."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.common import log

from flwr_pfedrlnas.core.profiles import ProfileDistribution
from flwr_pfedrlnas.core.search import (
    ClientReply,
    PerFedRLNASSearch,
    Proposal,
    RoundOutcome,
    SearchConfig,
)
from flwr_pfedrlnas.core.search_space import architecture_to_json
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.identity import natural_sorted
from flwr_pfedrlnas.protocol.results import RunRecorder, summarise_accuracies, write_results
from flwr_pfedrlnas.protocol.training_options import TrainingOptions
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = ["SESSION_SETTINGS", "SearchSession", "natural_sorted", "session_from"]


class SearchSession:
    """One PerFedRLNAS run: the search core plus everything around a round.

    The Flower faces (:class:`~flwr_pfedrlnas.flower.strategy.PerFedRLNAS` and
    :class:`~flwr_pfedrlnas.flower.legacy.PerFedRLNASLegacy`) translate messages;
    this class samples, proposes, incorporates, records, logs and checkpoints.
    See :class:`~flwr_pfedrlnas.flower.strategy.PerFedRLNAS` for the parameters.
    """

    def __init__(
        self,
        family: SupernetFamily,
        search_config: SearchConfig | None = None,
        clients_per_round: int = 5,
        local_epochs: int = 1,
        lr: float = 0.05,
        batch_size: int = 32,
        evaluate_every: int = 1,
        bn_recalibration_batches: int = -1,
        finetune_epochs: int = 0,
        results_dir: str | None = None,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        run_config: Mapping[str, Any] | None = None,
        name: str = "PerFedRLNAS",
        profiles: ProfileDistribution | None = None,
        num_new_clients: int = 0,
        new_client_rounds: int = 0,
        training: TrainingOptions | None = None,
    ) -> None:
        checks = {
            "clients_per_round": clients_per_round >= 1,
            "local_epochs": local_epochs >= 0,
            "lr": lr > 0,
            "batch_size": batch_size >= 1,
            "evaluate_every": evaluate_every >= 1,
            "finetune_epochs": finetune_epochs >= 0,
            "num_new_clients": num_new_clients >= 0,
            "new_client_rounds": new_client_rounds >= 0,
        }
        for field_name, ok in checks.items():
            if not ok:
                raise ValueError(f"{field_name} is {locals()[field_name]!r}, out of range")
        self.family = family
        self.search = PerFedRLNASSearch(family, search_config)
        self.clients_per_round = int(clients_per_round)
        self.local_epochs = int(local_epochs)
        self.lr = float(lr)
        self.training = training or TrainingOptions()
        self.batch_size = int(batch_size)
        self.evaluate_every = int(evaluate_every)
        self.bn_recalibration_batches = int(bn_recalibration_batches)
        self.finetune_epochs = int(finetune_epochs)
        self.results_dir = results_dir
        self.checkpoint_dir = checkpoint_dir
        self.run_config = dict(run_config or {})
        self.name = name
        self.recorder = RunRecorder()
        self.latency_total = 0.0
        self.resumed_from = 0
        self.profile_distribution = profiles
        self.num_new_clients = int(num_new_clients)
        self.new_client_rounds = int(new_client_rounds)
        # Held out of training (decided once, at the first round): the last
        # ``num_new_clients`` client ids in natural order.
        self.new_clients: list[str] | None = None
        self.new_client_rows: list[dict[str, Any]] = []
        if resume and checkpoint_dir and (Path(checkpoint_dir) / "state.json").exists():
            self._restore(checkpoint_dir)
        self.round_offset = self.search.completed_rounds
        self.total_rounds: int | None = None
        self._reset_round()

    # ------------------------------------------------------------------ state
    def _reset_round(self) -> None:
        self.outcome: RoundOutcome | None = None
        self.failures: dict[str, str] = {}
        self.server_seconds = 0.0
        self.round_started = time.perf_counter()

    def _restore(self, directory: str) -> None:
        state = PerFedRLNASSearch.read_checkpoint(directory)
        self.search.load_state_dict(state)
        extra = state["meta"].get("extra", {})
        self.recorder.load_state_dict(extra.get("recorder", {}))
        self.latency_total = float(extra.get("latency_total", 0.0))
        if extra.get("new_clients") is not None:
            self.new_clients = [str(c) for c in extra["new_clients"]]
        self.resumed_from = self.search.completed_rounds
        log(INFO, "Resumed from %s after round %d", directory, self.resumed_from)

    def checkpoint(self) -> None:
        """Write the search state and the records (atomically) if configured."""
        if self.checkpoint_dir:
            self.search.save(
                self.checkpoint_dir,
                extra={
                    "recorder": self.recorder.state_dict(),
                    "latency_total": self.latency_total,
                    "new_clients": self.new_clients,
                },
            )

    def remaining_rounds(self, num_rounds: int) -> int:
        """Rounds still to run out of ``num_rounds`` in all (after a resume)."""
        self.total_rounds = int(num_rounds)
        remaining = max(0, int(num_rounds) - self.search.completed_rounds)
        if self.resumed_from:
            log(
                INFO,
                "%d of %d rounds already done; running %d",
                self.resumed_from,
                num_rounds,
                remaining,
            )
        return remaining

    def global_round(self, server_round: int) -> int:
        """Round number of the whole run (Flower restarts at 1 after a resume)."""
        return self.round_offset + int(server_round)

    def is_last_round(self, server_round: int) -> bool:
        """Whether ``server_round`` is the run's last training round (when known)."""
        return (
            self.total_rounds is not None and self.global_round(server_round) >= self.total_rounds
        )

    def is_evaluation_round(self, server_round: int) -> bool:
        round_no = self.global_round(server_round)
        return self.is_last_round(server_round) or round_no % self.evaluate_every == 0

    # ------------------------------------------------------------------ round
    def client_config(
        self, extra: Mapping[str, Any] | None = None, server_round: int | None = None
    ) -> dict[str, Any]:
        """Training settings sent to every client (user config overrides).

        The learning rate follows the training options' schedule across the
        run's (global) rounds; without ``server_round`` it is the base ``lr``.
        """
        config: dict[str, Any] = {
            m.LOCAL_EPOCHS: self.local_epochs,
            m.BATCH_SIZE: self.batch_size,
            **self.training.config(
                self.lr,
                1 if server_round is None else self.global_round(server_round),
                None if server_round is None else self.total_rounds,
            ),
        }
        config.update(dict(extra or {}))
        return config

    def finetune_epochs_at(self, server_round: int) -> int:
        """Fine-tuning epochs before the test of ``server_round``: only in the last round."""
        return self.finetune_epochs if self.is_last_round(server_round) else 0

    def evaluate_config(
        self, extra: Mapping[str, Any] | None = None, server_round: int | None = None
    ) -> dict[str, Any]:
        """Evaluation settings sent to every client (user config overrides).

        With ``finetune_epochs`` > 0, the evaluation of the last round (given
        ``server_round``) also asks each client to fine-tune its deployed
        subnet locally for that many epochs, at the training ``lr``, before
        its test.
        """
        config: dict[str, Any] = {
            m.BATCH_SIZE: self.batch_size,
            m.BN_RECALIBRATION_BATCHES: self.bn_recalibration_batches,
        }
        finetune = 0 if server_round is None else self.finetune_epochs_at(server_round)
        if finetune > 0:
            config[m.FINETUNE_EPOCHS] = finetune
            config[m.LR] = self.lr
        config.update(dict(extra or {}))
        return config

    def training_clients(self, client_ids: Sequence[str]) -> list[str]:
        """The clients that take part in training: all but the held-out new ones.

        The first call fixes the new clients (the last ``num_new_clients`` ids
        in natural order) and, with a profile distribution, every known
        client's simulated device profile.
        """
        ids = natural_sorted([str(c) for c in client_ids])
        if self.new_clients is None and self.num_new_clients > 0:
            if self.num_new_clients >= len(ids):
                raise ValueError(
                    f"num-new-clients is {self.num_new_clients}, but only {len(ids)} "
                    "clients are connected: none would be left to train"
                )
            self.new_clients = ids[-self.num_new_clients :]
            log(INFO, "new clients (held out of training): %s", self.new_clients)
        if self.profile_distribution is not None:
            for cid in ids:
                if cid not in self.search.profiles:
                    self.search.profiles[cid] = self.profile_distribution.profile(cid)
        held_out = set(self.new_clients or [])
        return [c for c in ids if c not in held_out]

    def client_extras(self, client_id: str) -> dict[str, Any]:
        """Per-client settings: the simulated memory budget, when there is one."""
        profile = self.search.profiles.get(str(client_id))
        if profile is None or profile.memory_budget_bytes is None:
            return {}
        return {m.MEMORY_BUDGET_BYTES: float(profile.memory_budget_bytes)}

    def propose_round(self, server_round: int, client_ids: Sequence[str]) -> list[Proposal]:
        """Sample this round's clients and propose each an architecture."""
        self._reset_round()
        t0 = time.perf_counter()
        pool = self.training_clients(client_ids)
        clients = self.search.sample_clients(pool, self.clients_per_round)
        proposals = [self.search.propose(cid) for cid in clients]
        self.server_seconds += time.perf_counter() - t0
        log(INFO, "round %d: sampled clients %s", self.global_round(server_round), clients)
        return proposals

    def record_failure(self, client_id: str, reason: str) -> None:
        self.failures[str(client_id)] = reason
        log(WARNING, "client %s: %s", client_id, reason)

    def incorporate(self, server_round: int, replies: list[ClientReply]) -> RoundOutcome:
        """Close the round's proposals: rewards, policy updates, merge."""
        t0 = time.perf_counter()
        answered = {r.client_id for r in replies} | set(self.failures)
        for cid in self.search.pending:
            if cid not in answered:
                self.record_failure(cid, "no reply (timeout or lost)")
        outcome = self.search.incorporate(self.global_round(server_round), replies)
        for cid, reason in outcome.rejected.items():
            self.failures[cid] = f"rejected: {reason}"
        self.server_seconds += time.perf_counter() - t0
        self.outcome = outcome
        return outcome

    def train_metrics(self) -> dict[str, float | int]:
        """Aggregated metrics of the round's training replies."""
        outcome = self.outcome or RoundOutcome(server_round=0)
        accs = list(outcome.accuracies.values())
        return {
            "num-accepted": len(outcome.accepted),
            "num-failed": len(self.failures),
            "train-accuracy-mean": sum(accs) / len(accs) if accs else 0.0,
            "latency-s": outcome.latency + self.server_seconds,
            "bytes-down": int(sum(outcome.bytes_down.values())),
            "bytes-up": int(sum(outcome.bytes_up.values())),
            "num-overruns": len(outcome.overruns),
        }

    def deploy(self, client_id: str):
        """Architecture and weights a client deploys (argmax of its policy)."""
        return self.search.deploy(client_id)

    def record_evaluation(
        self, server_round: int, client_id: str, accuracy: float, num_examples: int
    ) -> bool:
        """Store one client's personalised accuracy; ``False`` if it is invalid."""
        if (
            isinstance(accuracy, bool)
            or not isinstance(accuracy, (int, float))
            or not 0.0 <= accuracy <= 1.0
        ):
            log(WARNING, "client %s reported evaluation accuracy %r: ignored", client_id, accuracy)
            return False
        policy = self.search.policy(client_id)
        self.recorder.set_client(
            client_id,
            {
                "round": self.global_round(server_round),
                "accuracy": float(accuracy),
                "num-test-examples": int(num_examples),
                "arch": architecture_to_json(policy.argmax()),
                "policy-entropy": policy.entropy(),
                "policy-steps": policy.steps,
            },
        )
        return True

    def finish_round(
        self,
        server_round: int,
        accuracies: Mapping[str, float],
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append the round's row (with ``extra`` fields), log it, write results, checkpoint."""
        round_no = self.global_round(server_round)
        outcome = self.outcome or RoundOutcome(server_round=round_no)
        latency = outcome.latency + self.server_seconds
        self.latency_total += latency
        mean, std = summarise_accuracies(accuracies)
        nan = float("nan")
        row = {
            "round": round_no,
            "sampled": " ".join(outcome.accepted + sorted(self.failures)),
            "num-accepted": len(outcome.accepted),
            "num-failed": len(self.failures),
            "num-overruns": len(outcome.overruns),
            "overruns": " ".join(natural_sorted(outcome.overruns)),
            "failures": "; ".join(f"{c}: {r}" for c, r in sorted(self.failures.items())),
            "train-accuracy-mean": (
                sum(outcome.accuracies.values()) / len(outcome.accuracies)
                if outcome.accuracies
                else nan
            ),
            "reward-mean": sum(outcome.rewards.values()) / len(outcome.rewards)
            if outcome.rewards
            else nan,
            "accuracy-mean": mean,
            "accuracy-std": std,
            "num-evaluated": len(accuracies),
            "finetune-epochs": self.finetune_epochs_at(server_round) if accuracies else 0,
            "latency-round-s": latency,
            "latency-total-s": self.latency_total,
            "server-seconds": self.server_seconds,
            "bytes-down": int(sum(outcome.bytes_down.values())),
            "bytes-up": int(sum(outcome.bytes_up.values())),
            "wall-seconds": time.perf_counter() - self.round_started,
            **dict(extra or {}),
        }
        self.recorder.add_round(row)
        total = self.total_rounds or round_no
        if accuracies:
            what = f"accuracy {mean:.4f} ± {std:.4f} over {len(accuracies)} clients"
            gain = row.get("search-gain", float("nan"))
            if gain == gain:  # not NaN: a diagnostic round
                what += f" | search gain {gain:+.4f} over random subnets"
        else:
            what = f"train accuracy {row['train-accuracy-mean']:.4f}"
        log(
            INFO,
            "[round %d/%d] trained %s | %s | latency %.2f s (total %.2f s) | wall %.1f s",
            round_no,
            total,
            natural_sorted(outcome.accepted),
            what,
            latency,
            self.latency_total,
            row["wall-seconds"],
        )
        if self.results_dir:
            write_results(self.results_dir, self.recorder, self.config_record(), label=self.name)
        self.checkpoint()
        self._reset_round()
        return row

    def record_new_client_round(
        self,
        search_round: int,
        sampled: Mapping[str, float],
        deployed: Mapping[str, float],
        rewards: Mapping[str, float],
    ) -> dict[str, Any]:
        """Append one search-only round's row; written to ``new_clients.csv``."""
        nan = float("nan")
        mean, std = summarise_accuracies(dict(deployed))
        new = self.new_clients or []
        row = {
            "search-round": int(search_round),
            "num-new-clients": len(new),
            "sampled-accuracy-mean": sum(sampled.values()) / len(sampled) if sampled else nan,
            "accuracy-mean": mean,
            "accuracy-std": std,
            "num-evaluated": len(deployed),
            "reward-mean": sum(rewards.values()) / len(rewards) if rewards else nan,
            "entropy-mean": sum(self.search.policy(c).entropy() for c in new) / max(1, len(new)),
        }
        self.new_client_rows.append(row)
        log(
            INFO,
            "[new clients, search round %d] deployed accuracy %.4f ± %.4f over %d clients",
            search_round,
            mean,
            std,
            len(deployed),
        )
        if self.results_dir:
            import pandas as pd

            Path(self.results_dir).mkdir(parents=True, exist_ok=True)
            pd.DataFrame(self.new_client_rows).to_csv(
                Path(self.results_dir) / "new_clients.csv", index=False
            )
        return row

    # ------------------------------------------------------------------ report
    def summary(self) -> None:
        """Log the settings as a small tree."""
        cfg = self.search.config
        space = self.family.search_space
        log(INFO, "\t├──> Supernet: %r", self.family)
        log(INFO, "\t│\t└── %d dimensions, %d architectures", len(space), space.num_architectures())
        log(
            INFO, "\t├──> Sampling: %d clients per round, seed %d", self.clients_per_round, cfg.seed
        )
        log(
            INFO,
            "\t├──> Policy: %s lr %.3g betas %s",
            cfg.policy_optimizer,
            cfg.policy_lr,
            cfg.policy_betas,
        )
        log(
            INFO,
            "\t├──> Reward: %s, lambda-time %.3g, bandwidth %.3g/%.3g bit/s",
            "eq. 9 (memory)" if cfg.memory_aware else "eq. 8",
            cfg.lambda_time,
            cfg.bandwidth_down_bps,
            cfg.bandwidth_up_bps,
        )
        log(INFO, "\t├──> Merge: count-normalised, weighted by %s", cfg.weighting)
        log(
            INFO,
            "\t└──> Clients: %d local epochs, lr %.3g, batch %d; final fine-tuning %d epochs",
            self.local_epochs,
            self.lr,
            self.batch_size,
            self.finetune_epochs,
        )

    def config_record(self) -> dict[str, Any]:
        """Settings of the run as written to config.json."""
        cfg = self.search.config
        return {
            "strategy": self.name,
            "supernet": self.family.name,
            "supernet-config": self.family.config,
            "clients-per-round": self.clients_per_round,
            "local-epochs": self.local_epochs,
            "lr": self.lr,
            "batch-size": self.batch_size,
            "bn-recalibration-batches": self.bn_recalibration_batches,
            "finetune-epochs": self.finetune_epochs,
            "search": {
                "policy-lr": cfg.policy_lr,
                "policy-optimizer": cfg.policy_optimizer,
                "policy-betas": list(cfg.policy_betas),
                "lambda-time": cfg.lambda_time,
                "bandwidth-down-bps": cfg.bandwidth_down_bps,
                "bandwidth-up-bps": cfg.bandwidth_up_bps,
                "weighting": cfg.weighting,
                "memory-aware": cfg.memory_aware,
                "reward-clip": cfg.reward_clip,
                "seed": cfg.seed,
            },
            "device-profiles": (
                None
                if self.profile_distribution is None
                else {
                    "seed": self.profile_distribution.seed,
                    "speed-factor-range": [
                        self.profile_distribution.speed_factor_min,
                        self.profile_distribution.speed_factor_max,
                    ],
                    "bandwidth-choices-mbps": list(
                        self.profile_distribution.bandwidth_choices_mbps
                    ),
                    "memory-budget-choices-mb": list(
                        self.profile_distribution.memory_budget_choices_mb
                    ),
                }
            ),
            "new-clients": self.new_clients,
            "new-client-rounds": self.new_client_rounds,
            "resumed-from-round": self.resumed_from,
            "run-config": self.run_config,
        }


# The strategies' constructor arguments that are the session's own settings.
SESSION_SETTINGS = (
    "clients_per_round",
    "local_epochs",
    "lr",
    "batch_size",
    "evaluate_every",
    "bn_recalibration_batches",
    "finetune_epochs",
    "results_dir",
    "checkpoint_dir",
    "resume",
    "run_config",
    "profiles",
    "num_new_clients",
    "new_client_rounds",
    "training",
)


def session_from(
    family: SupernetFamily,
    search_config: SearchConfig | None,
    name: str,
    settings: Mapping[str, Any],
) -> SearchSession:
    """The session of a strategy: the ``SESSION_SETTINGS`` found in ``settings``."""
    kwargs = {k: settings[k] for k in SESSION_SETTINGS if k in settings}
    return SearchSession(family, search_config, name=name, **kwargs)
