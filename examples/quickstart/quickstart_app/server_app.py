"""quickstart_app: the ServerApp, PerFedRLNAS in place of FedAvg."""

from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from flwr_pfedrlnas import PerFedRLNAS
from quickstart_app.task import load_family, load_server_test, test

# Create ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    cfg = context.run_config
    results_dir = Path(str(cfg["results-dir"])).expanduser().resolve()
    log(INFO, "Results go to %s", results_dir)

    # Initialize PerFedRLNAS strategy
    strategy = PerFedRLNAS(
        load_family(str(cfg["supernet"]), str(cfg["supernet-config"])),
        clients_per_round=int(cfg["clients-per-round"]),
        min_available_nodes=int(cfg["min-nodes"]),
        local_epochs=int(cfg["local-epochs"]),
        lr=float(cfg["lr"]),
        batch_size=int(cfg["batch-size"]),
        results_dir=str(results_dir),
    )
    server_test = load_server_test()

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Every client's deployed model on the server's test set (``arrays``: the supernet)."""
        models = strategy.deployed_models()
        if not models:  # round 0: no client known yet
            return MetricRecord({"supernet-tensors": len(arrays)})
        accuracies = [test(model.build(), server_test)[1] for model in models.values()]
        return MetricRecord(
            {
                "deployed-accuracy-mean": sum(accuracies) / len(accuracies),
                "num-clients": len(accuracies),
                "supernet-tensors": len(arrays),
            }
        )

    # Start strategy, run PerFedRLNAS for `num-server-rounds`
    result = strategy.start(
        grid=grid, num_rounds=int(cfg["num-server-rounds"]), evaluate_fn=global_evaluate
    )

    # result.arrays is the supernet; each client's deployed model is in results-dir/deployed
    log(INFO, "Deployed models: %s", strategy.deployed_dir)
    log(INFO, "Final server-side metrics: %s", result.evaluate_metrics_serverapp)
