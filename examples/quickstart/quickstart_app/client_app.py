"""quickstart_app: the ClientApp, with the handlers PerFedRLNAS needs."""

from flwr.app import Context
from flwr.clientapp import ClientApp

from flwr_pfedrlnas.flower.client import register_handlers
from quickstart_app.task import load_data

# Flower ClientApp
app = ClientApp()


def node_data(context: Context, batch_size: int):
    """This node's loaders; batch size from the server's message (else the run config)."""
    return load_data(
        partition_id=int(context.node_config["partition-id"]),
        num_partitions=int(context.node_config["num-partitions"]),
        batch_size=batch_size,
        alpha=float(context.run_config["dirichlet-alpha"]),
    )


# @app.train(), @app.evaluate() and @app.query(): train the subnet the server sends,
# test the deployed one, and say which client this node is (its partition-id).
register_handlers(app, node_data)
