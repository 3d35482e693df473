"""PerFedRLNAS ServerApp: the search over every client's architecture."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flwr_pfedrlnas.methods import make_method

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    # "fedavg-largest": the reference point, FedAvg on the family's largest subnet, same clients.
    strategy = make_method(cfg, allowed=("pfedrlnas", "fedavg-largest"))
    strategy.start(grid, num_rounds=int(cfg["num-server-rounds"]))
