"""quickstart_legacy: a ClientApp of NumPyClients that train whatever subnet they are sent."""

from flwr.client import ClientApp
from flwr.common import Context

from flwr_pfedrlnas.flower.numpy_client import SubnetClient
from quickstart_legacy.task import load_data


def client_fn(context: Context):
    """A SubnetClient on this node's partition; it says who it is by its partition-id."""
    partition_id = int(context.node_config["partition-id"])
    train_loader, test_loader = load_data(
        partition_id=partition_id,
        num_partitions=int(context.node_config["num-partitions"]),
        batch_size=int(context.run_config["batch-size"]),
        alpha=float(context.run_config["dirichlet-alpha"]),
    )
    return SubnetClient(str(partition_id), train_loader, test_loader).to_client()


# Flower ClientApp
app = ClientApp(client_fn=client_fn)
