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
from flwr_pfedrlnas.flower import session_records as records
from flwr_pfedrlnas.flower.identity import natural_sorted
from flwr_pfedrlnas.protocol.results import RunRecorder, write_results
from flwr_pfedrlnas.protocol.rounds import DEFAULT_MACS_PER_SECOND, ExchangeLedger, RoundSchedule
from flwr_pfedrlnas.protocol.settings import (
    ROUND_SETTINGS,
    RoundSettings,
    RoundSettingsAttributes,
    check_ranges,
)
from flwr_pfedrlnas.protocol.training_options import TrainingOptions
from flwr_pfedrlnas.supernets import SupernetFamily
from flwr_pfedrlnas.supernets.keep import kept_blocks

__all__ = ["SESSION_SETTINGS", "SearchSession", "natural_sorted", "session_from"]

# The search's own settings beyond the shared round settings, and their ranges.
SEARCH_RULES = {
    "finetune_epochs": lambda v: v >= 0,
    "num_new_clients": lambda v: v >= 0,
    "new_client_rounds": lambda v: v >= 0,
}


class SearchSession(RoundSettingsAttributes):
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
        device_macs_per_second: float = DEFAULT_MACS_PER_SECOND,
    ) -> None:
        self.settings = RoundSettings.from_kwargs(locals())
        check_ranges(locals(), SEARCH_RULES)
        self.family = family
        self.search = PerFedRLNASSearch(family, search_config)
        self.finetune_epochs = int(finetune_epochs)
        self.name = name
        self.recorder = RunRecorder()
        self.latency_total = 0.0
        self.modelled_latency_total = 0.0
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
        # Rounds done before this start, and of the whole run (known once started).
        self.round_offset = self.search.completed_rounds
        self.total_rounds: int | None = None
        self._reset_round()

    # ------------------------------------------------------------------ state
    def _reset_round(self) -> None:
        self.outcome: RoundOutcome | None = None
        self.failures: dict[str, str] = {}
        cfg = self.search.config
        # The round's bytes and simulated time (the server's own included).
        self.ledger = ExchangeLedger(
            cfg.bandwidth_down_bps, cfg.bandwidth_up_bps, self.device_macs_per_second
        )
        self.round_started = time.perf_counter()

    def _restore(self, directory: str) -> None:
        state = PerFedRLNASSearch.read_checkpoint(directory)
        self.search.load_state_dict(state)
        extra = state["meta"].get("extra", {})
        self.recorder.load_state_dict(extra.get("recorder", {}))
        self.latency_total = float(extra.get("latency_total", 0.0))
        self.modelled_latency_total = float(extra.get("modelled_latency_total", 0.0))
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
                    "modelled_latency_total": self.modelled_latency_total,
                    "new_clients": self.new_clients,
                },
            )

    @property
    def server_seconds(self) -> float:
        """The server's own time in the round so far (part of its simulated latency)."""
        return self.ledger.server_seconds

    @property
    def schedule(self) -> RoundSchedule:
        """The run's rounds as the protocol numbers them (the last one once started)."""
        return RoundSchedule(self.total_rounds, self.evaluate_every, self.round_offset)

    def remaining_rounds(self, num_rounds: int) -> int:
        """Rounds still to run out of ``num_rounds`` in all (after a resume)."""
        done = self.search.completed_rounds
        remaining = len(RoundSchedule(int(num_rounds), self.evaluate_every, done).remaining())
        self.total_rounds = int(num_rounds)
        commit = self.search.config.commit_round
        if commit > self.total_rounds:
            log(
                WARNING,
                "commit-round is %d, after the run's last round (num-server-rounds %d): "
                "no round of this run trains the argmax architectures",
                commit,
                self.total_rounds,
            )
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
        return self.schedule.global_round(server_round)

    def is_last_round(self, server_round: int) -> bool:
        """Whether ``server_round`` is the run's last training round (when known)."""
        return self.schedule.is_last_round(self.global_round(server_round))

    def is_evaluation_round(self, server_round: int) -> bool:
        return self.schedule.is_evaluation_round(self.global_round(server_round))

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
        config.update(self.personal_state_config())
        if self.search.config.reward_accuracy == "deployed":
            # The reward reads the received subnet as the evaluation deploys it.
            config[m.REWARD_DEPLOYED] = 1
            config[m.BN_RECALIBRATION_BATCHES] = self.bn_recalibration_batches
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
        config.update(self.personal_state_config())
        finetune = 0 if server_round is None else self.finetune_epochs_at(server_round)
        if finetune > 0:
            config[m.FINETUNE_EPOCHS] = finetune
            config[m.LR] = self.lr
        config.update(dict(extra or {}))
        return config

    def personal_state_config(self) -> dict[str, Any]:
        """Where clients mirror their kept blocks: ``<checkpoint_dir>/clients``.

        Only with share-or-keep blocks and a checkpoint, so that a restarted
        run (``resume``) finds each client's personal copies on its own disk,
        as the personalised baselines do; a node's own ``client-state-dir``
        and a user config's still win.
        """
        if not (kept_blocks(self.family) and self.checkpoint_dir):
            return {}
        return {m.CLIENT_STATE_DIR: f"{self.checkpoint_dir}/clients"}

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
        proposals = [self.search.propose(cid, self.global_round(server_round)) for cid in clients]
        self.ledger.server_seconds += time.perf_counter() - t0
        log(INFO, "round %d: sampled clients %s", self.global_round(server_round), clients)
        return proposals

    def record_failure(self, client_id: str, reason: str) -> None:
        self.failures[str(client_id)] = reason
        log(WARNING, "client %s: %s", client_id, reason)

    def incorporate(
        self,
        server_round: int,
        replies: list[ClientReply],
        bytes_down: Mapping[str, int] | None = None,
        bytes_up: Mapping[str, int] | None = None,
    ) -> RoundOutcome:
        """Close the round's proposals: rewards, policy updates, merge; record the exchange.

        ``bytes_down`` / ``bytes_up`` (client id -> bytes), where given, are the
        bytes as the framework carried them (serialised), in place of the bare
        array bytes the core's reward uses; an upload the core counts as 0
        (a memory overrun) stays 0.
        """
        t0 = time.perf_counter()
        answered = {r.client_id for r in replies} | set(self.failures)
        for cid in self.search.pending:
            if cid not in answered:
                self.record_failure(cid, "no reply (timeout or lost)")
        outcome = self.search.incorporate(self.global_round(server_round), replies)
        for cid, reason in outcome.rejected.items():
            self.failures[cid] = f"rejected: {reason}"
        self.ledger.server_seconds += time.perf_counter() - t0
        for cid in outcome.bytes_down:
            if bytes_down is not None and cid in bytes_down:
                outcome.bytes_down[cid] = int(bytes_down[cid])
            if bytes_up is not None and outcome.bytes_up.get(cid, 0) > 0 and cid in bytes_up:
                outcome.bytes_up[cid] = int(bytes_up[cid])
        macs = {r.client_id: r.compute_macs for r in replies}
        modelled = [
            self._modelled_time(
                cid, macs.get(cid), outcome.bytes_down.get(cid, 0), outcome.bytes_up.get(cid, 0)
            )
            for cid in outcome.round_times
        ]
        self.ledger.add_exchange(
            sum(outcome.bytes_down.values()),
            sum(outcome.bytes_up.values()),
            outcome.round_times.values(),
            modelled,
        )
        self.outcome = outcome
        return outcome

    def _modelled_time(self, client_id: str, macs: float | None, down: int, up: int) -> float:
        """A client's modelled time on its simulated device (NaN without a MAC count)."""
        profile = self.search.device_profile(client_id)
        return self.ledger.modelled_time(
            float("nan") if macs is None else macs,
            down,
            up,
            profile.speed_factor,
            profile.bandwidth_down_bps,
            profile.bandwidth_up_bps,
        )

    def train_metrics(self) -> dict[str, float | int]:
        """Aggregated metrics of the round's training replies."""
        outcome = self.outcome or RoundOutcome(server_round=0)
        accs = list(outcome.accuracies.values())
        return {
            "num-accepted": len(outcome.accepted),
            "num-failed": len(self.failures),
            "train-accuracy-mean": records.mean_or(accs, 0.0),
            "latency-s": self.ledger.latency,
            "bytes-down": self.ledger.bytes_down,
            "bytes-up": self.ledger.bytes_up,
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
        self.latency_total += self.ledger.latency
        self.modelled_latency_total += self.ledger.modelled_latency
        row = records.round_row(self, server_round, accuracies, extra)
        self.recorder.add_round(row)
        records.log_round(self, row, len(accuracies))
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
        row = records.new_client_row(self, search_round, sampled, deployed, rewards)
        self.new_client_rows.append(row)
        if self.results_dir:
            records.write_new_clients(self.results_dir, self.new_client_rows)
        return row

    # ------------------------------------------------------------------ report
    def summary(self) -> None:
        """Log the settings as a small tree."""
        records.log_settings(self)

    def config_record(self) -> dict[str, Any]:
        """Settings of the run as written to config.json."""
        return records.config_record(self)


# The strategies' constructor arguments that are the session's own settings.
SESSION_SETTINGS = (
    *ROUND_SETTINGS,
    "finetune_epochs",
    "profiles",
    "num_new_clients",
    "new_client_rounds",
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
