"""Baselines ServerApp: the baseline the run config's ``method`` names."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flwr_pfedrlnas.methods import make_method

app = ServerApp()
SERVED = ("fedavg-ft", "local", "fedrep", "fedbabu", "fedtp", "fednas", "fedrlnas", "spider")
SERVED += ("fedoras", "fedavg-largest")


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    make_method(cfg, allowed=SERVED).start(grid, num_rounds=int(cfg["num-server-rounds"]))
