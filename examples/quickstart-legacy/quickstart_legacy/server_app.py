"""quickstart_legacy: a ServerApp with PerFedRLNASLegacy as its strategy."""

from pathlib import Path

from flwr.common import Context
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from flwr_pfedrlnas import PerFedRLNASLegacy
from quickstart_legacy.task import load_family


def server_fn(context: Context) -> ServerAppComponents:
    """PerFedRLNAS for `num-server-rounds`; results and deployed models in results-dir."""
    cfg = context.run_config
    strategy = PerFedRLNASLegacy(
        load_family(str(cfg["supernet"]), str(cfg["supernet-config"])),
        clients_per_round=int(cfg["clients-per-round"]),
        min_available_clients=int(cfg["min-nodes"]),
        local_epochs=int(cfg["local-epochs"]),
        lr=float(cfg["lr"]),
        batch_size=int(cfg["batch-size"]),
        results_dir=str(Path(str(cfg["results-dir"])).expanduser().resolve()),
    )
    config = ServerConfig(num_rounds=int(cfg["num-server-rounds"]))
    return ServerAppComponents(strategy=strategy, config=config)


# Create ServerApp
app = ServerApp(server_fn=server_fn)
