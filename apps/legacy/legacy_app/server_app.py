"""Legacy ServerApp: PerFedRLNASLegacy behind ServerApp(server_fn=...)."""

from __future__ import annotations

from flwr.app import Context
from flwr.server import ServerAppComponents, ServerConfig
from flwr.serverapp import ServerApp

from flwr_pfedrlnas.core.profiles import ProfileDistribution
from flwr_pfedrlnas.flower.legacy import PerFedRLNASLegacy
from flwr_pfedrlnas.flower.runconfig import family_from_run_config, strategy_kwargs


def server_fn(context: Context) -> ServerAppComponents:
    """Build the strategy from the run config; run the rounds still to do."""
    cfg = context.run_config
    strategy = PerFedRLNASLegacy(
        family_from_run_config(cfg, share_or_keep=True),
        min_available_clients=int(cfg["num-clients"]),
        profiles=ProfileDistribution.from_run_config(cfg),
        **strategy_kwargs(cfg),
    )
    num_rounds = strategy.remaining_rounds(int(cfg["num-server-rounds"]))
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=num_rounds))


app = ServerApp(server_fn=server_fn)
