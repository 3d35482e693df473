"""What a search session writes: the round rows, their log lines, config.json and the summary."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from logging import INFO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.common import log

from flwr_pfedrlnas.core.search import RoundOutcome
from flwr_pfedrlnas.protocol.results import summarise_accuracies
from flwr_pfedrlnas.protocol.rounds import natural_sorted

if TYPE_CHECKING:
    from flwr_pfedrlnas.flower.session import SearchSession

__all__ = [
    "config_record",
    "log_round",
    "log_settings",
    "mean_or",
    "new_client_row",
    "round_row",
    "write_new_clients",
]

NAN = float("nan")


def mean_or(values: Iterable[float], empty: float = NAN) -> float:
    """``sum / count`` of ``values`` (``empty`` when there are none)."""
    values = list(values)
    return sum(values) / len(values) if values else empty


def round_row(
    session: SearchSession,
    server_round: int,
    accuracies: Mapping[str, float],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The round's row of rounds.csv (``extra`` fields last), its latency counted in the total."""
    round_no = session.global_round(server_round)
    outcome = session.outcome or RoundOutcome(server_round=round_no)
    ledger, failures = session.ledger, session.failures
    mean, std = summarise_accuracies(accuracies)
    return {
        "round": round_no,
        "sampled": " ".join(outcome.accepted + sorted(failures)),
        "num-accepted": len(outcome.accepted),
        "num-failed": len(failures),
        "num-overruns": len(outcome.overruns),
        "overruns": " ".join(natural_sorted(outcome.overruns)),
        "failures": "; ".join(f"{c}: {r}" for c, r in sorted(failures.items())),
        "train-accuracy-mean": mean_or(outcome.accuracies.values()),
        "reward-mean": mean_or(outcome.rewards.values()),
        "accuracy-mean": mean,
        "accuracy-std": std,
        "num-evaluated": len(accuracies),
        "finetune-epochs": session.finetune_epochs_at(server_round) if accuracies else 0,
        "latency-round-s": ledger.latency,
        "latency-total-s": session.latency_total,
        "modelled-latency-round-s": ledger.modelled_latency,
        "modelled-latency-total-s": session.modelled_latency_total,
        "server-seconds": ledger.server_seconds,
        "bytes-down": ledger.bytes_down,
        "bytes-up": ledger.bytes_up,
        "wall-seconds": time.perf_counter() - session.round_started,
        **dict(extra or {}),
    }


def log_round(session: SearchSession, row: Mapping[str, Any], num_evaluated: int) -> None:
    """The round's log line: what trained, the accuracy (and search gain), the latency."""
    outcome = session.outcome or RoundOutcome(server_round=row["round"])
    if num_evaluated:
        what = (
            f"accuracy {row['accuracy-mean']:.4f} ± {row['accuracy-std']:.4f} "
            f"over {num_evaluated} clients"
        )
        gain = row.get("search-gain", NAN)
        if gain == gain:  # not NaN: a diagnostic round
            what += f" | search gain {gain:+.4f} over random subnets"
    else:
        what = f"train accuracy {row['train-accuracy-mean']:.4f}"
    log(
        INFO,
        "[round %d/%d] trained %s | %s | latency %.2f s (total %.2f s) | wall %.1f s",
        row["round"],
        session.total_rounds or row["round"],
        natural_sorted(outcome.accepted),
        what,
        row["latency-round-s"],
        session.latency_total,
        row["wall-seconds"],
    )


def log_settings(session: SearchSession) -> None:
    """Log the session's settings as a small tree."""
    cfg = session.search.config
    space = session.family.search_space
    log(INFO, "\t├──> Supernet: %r", session.family)
    log(INFO, "\t│\t└── %d dimensions, %d architectures", len(space), space.num_architectures())
    log(INFO, "\t├──> Sampling: %d clients per round, seed %d", session.clients_per_round, cfg.seed)
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
        session.local_epochs,
        session.lr,
        session.batch_size,
        session.finetune_epochs,
    )


def config_record(session: SearchSession) -> dict[str, Any]:
    """Settings of the run as written to config.json."""
    cfg = session.search.config
    profiles = session.profile_distribution
    return {
        "strategy": session.name,
        "supernet": session.family.name,
        "supernet-config": session.family.config,
        "clients-per-round": session.clients_per_round,
        "local-epochs": session.local_epochs,
        "lr": session.lr,
        "batch-size": session.batch_size,
        "bn-recalibration-batches": session.bn_recalibration_batches,
        "finetune-epochs": session.finetune_epochs,
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
            if profiles is None
            else {
                "seed": profiles.seed,
                "speed-factor-range": [profiles.speed_factor_min, profiles.speed_factor_max],
                "bandwidth-choices-mbps": list(profiles.bandwidth_choices_mbps),
                "memory-budget-choices-mb": list(profiles.memory_budget_choices_mb),
            }
        ),
        "new-clients": session.new_clients,
        "new-client-rounds": session.new_client_rounds,
        "resumed-from-round": session.resumed_from,
        "run-config": session.run_config,
    }


def new_client_row(
    session: SearchSession,
    search_round: int,
    sampled: Mapping[str, float],
    deployed: Mapping[str, float],
    rewards: Mapping[str, float],
) -> dict[str, Any]:
    """One search-only round's row of ``new_clients.csv``, logged."""
    mean, std = summarise_accuracies(dict(deployed))
    new = session.new_clients or []
    entropy = sum(session.search.policy(c).entropy() for c in new) / max(1, len(new))
    row = {
        "search-round": int(search_round),
        "num-new-clients": len(new),
        "sampled-accuracy-mean": mean_or(sampled.values()),
        "accuracy-mean": mean,
        "accuracy-std": std,
        "num-evaluated": len(deployed),
        "reward-mean": mean_or(rewards.values()),
        "entropy-mean": entropy,
    }
    log(
        INFO,
        "[new clients, search round %d] deployed accuracy %.4f ± %.4f over %d clients",
        search_round,
        mean,
        std,
        len(deployed),
    )
    return row


def write_new_clients(results_dir: str, rows: list[dict[str, Any]]) -> None:
    """Write the search-only rounds' rows to ``<results_dir>/new_clients.csv``."""
    import pandas as pd

    Path(results_dir).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(Path(results_dir) / "new_clients.csv", index=False)
