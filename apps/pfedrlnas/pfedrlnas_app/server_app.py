"""PerFedRLNAS ServerApp: the search over every client's architecture."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flwr_pfedrlnas.baselines import FedAvgFixedArch
from flwr_pfedrlnas.flower.runconfig import (
    family_from_run_config,
    message_api_kwargs,
    output_dir,
    strategy_kwargs,
)
from flwr_pfedrlnas.flower.strategy import PerFedRLNAS

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    family = family_from_run_config(cfg)
    num_rounds = int(cfg["num-server-rounds"])
    method = str(cfg["method"])
    if method == "fedavg-largest":
        # The reference point: Flower's FedAvg on the family's largest subnet, same clients.
        FedAvgFixedArch(
            family,
            clients_per_round=int(cfg["clients-per-round"]),
            min_available_nodes=int(cfg["num-clients"]),
            local_epochs=int(cfg["local-epochs"]),
            lr=float(cfg["lr"]),
            batch_size=int(cfg["batch-size"]),
            bn_recalibration_batches=int(cfg["bn-recalibration-batches"]),
            evaluate_every=int(cfg["evaluate-every"]),
            bandwidth_bps=float(cfg["bandwidth-mbps"]) * 1e6,
            seed=int(cfg["seed"]),
            results_dir=output_dir(str(cfg["results-dir"])),
            run_config=dict(cfg),
        ).start(grid, num_rounds=num_rounds)
        return
    if method != "pfedrlnas":
        raise ValueError(f"method is {method!r}; choose 'pfedrlnas' or 'fedavg-largest'")
    strategy = PerFedRLNAS(
        family,
        min_available_nodes=int(cfg["num-clients"]),
        **strategy_kwargs(cfg),
        **message_api_kwargs(cfg),
    )
    strategy.start(grid, num_rounds=num_rounds)
