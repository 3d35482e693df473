"""Federated-NAS ServerApp: one of FedNAS, FedRLNAS, SPIDER, FedorAS, chosen by ``method``."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flwr_pfedrlnas.baselines.nas import make_nas_baseline
from flwr_pfedrlnas.core.profiles import ProfileDistribution
from flwr_pfedrlnas.flower.runconfig import family_from_run_config, output_dir
from flwr_pfedrlnas.protocol.rounds import bandwidth_bps_of

app = ServerApp()


def _rounds(value) -> int | None:
    """-1 in the run config: the method's own default split of the rounds."""
    return None if int(value) < 0 else int(value)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    method = str(cfg["method"])
    common = {
        "clients_per_round": int(cfg["clients-per-round"]),
        "min_available_nodes": int(cfg["num-clients"]),
        "local_epochs": int(cfg["local-epochs"]),
        "lr": float(cfg["lr"]),
        "batch_size": int(cfg["batch-size"]),
        "evaluate_every": int(cfg["evaluate-every"]),
        "bn_recalibration_batches": int(cfg["bn-recalibration-batches"]),
        "bandwidth_down_bps": bandwidth_bps_of(cfg["bandwidth-mbps"]),
        "bandwidth_up_bps": bandwidth_bps_of(cfg["bandwidth-mbps"]),
        "seed": int(cfg["seed"]),
        "results_dir": output_dir(str(cfg["results-dir"])),
        "run_config": dict(cfg),
    }
    knobs = {
        "fednas": {
            "search_rounds": _rounds(cfg["search-rounds"]),
            "arch_lr": float(cfg["arch-lr"]),
            "arch_weight_decay": float(cfg["arch-weight-decay"]),
        },
        "fedrlnas": {
            "warmup_rounds": _rounds(cfg["warmup-rounds"]),
            "search_rounds": _rounds(cfg["search-rounds"]),
            "policy_lr": float(cfg["policy-lr"]),
            "policy_optimizer": str(cfg["policy-optimizer"]),
            "baseline_decay": float(cfg["baseline-decay"]),
        },
        "spider": {
            "proximal_lambda": float(cfg["spider-lambda"]),
            "edges_per_step": int(cfg["spider-edges-per-step"]),
            "val_batches": int(cfg["spider-val-batches"]),
            "warmup": int(cfg["spider-warmup"]),
        },
        "fedoras": {
            "num_tiers": int(cfg["num-tiers"]),
            "supernet_rounds": _rounds(cfg["supernet-rounds"]),
            "num_candidates": int(cfg["num-candidates"]),
            "candidate_batches": int(cfg["candidate-batches"]),
            "profiles": ProfileDistribution.from_run_config(cfg),
        },
    }
    if method not in knobs:
        raise ValueError(f"method is {method!r}; choose one of {sorted(knobs)}")
    strategy = make_nas_baseline(method, family_from_run_config(cfg), **common, **knobs[method])
    strategy.start(grid, num_rounds=int(cfg["num-server-rounds"]))
