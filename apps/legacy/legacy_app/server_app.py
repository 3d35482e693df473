"""Legacy ServerApp: PerFedRLNASLegacy behind ServerApp(server_fn=...)."""

from __future__ import annotations

from flwr.app import Context
from flwr.server import ServerAppComponents, ServerConfig
from flwr.serverapp import ServerApp

from flwr_pfedrlnas.legacy import PerFedRLNASLegacy

from .task import family_from_run_config, output_dir, search_config_from_run_config


def server_fn(context: Context) -> ServerAppComponents:
    """Build the strategy from the run config; run the rounds still to do."""
    cfg = context.run_config
    results_dir = output_dir(str(cfg["results-dir"]))
    checkpoint_dir = output_dir(str(cfg["checkpoint-dir"])) or (
        results_dir and f"{results_dir}/checkpoint"
    )
    strategy = PerFedRLNASLegacy(
        family_from_run_config(cfg),
        clients_per_round=int(cfg["clients-per-round"]),
        min_available_clients=int(cfg["num-clients"]),
        evaluate_every=int(cfg["evaluate-every"]),
        bn_recalibration_batches=int(cfg["bn-recalibration-batches"]),
        search_config=search_config_from_run_config(cfg),
        local_epochs=int(cfg["local-epochs"]),
        lr=float(cfg["lr"]),
        batch_size=int(cfg["batch-size"]),
        results_dir=results_dir,
        checkpoint_dir=checkpoint_dir,
        resume=bool(cfg["resume"]),
        run_config=dict(cfg),
    )
    num_rounds = strategy.remaining_rounds(int(cfg["num-server-rounds"]))
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=num_rounds))


app = ServerApp(server_fn=server_fn)
