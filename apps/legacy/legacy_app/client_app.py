"""Legacy ClientApp: a SubnetClient (NumPyClient) behind ClientApp(client_fn=...)."""

from __future__ import annotations

from flwr.app import Context
from flwr.client import Client
from flwr.clientapp import ClientApp

from flwr_pfedrlnas.flower.identity import client_id_from_context
from flwr_pfedrlnas.flower.numpy_client import SubnetClient
from flwr_pfedrlnas.flower.runconfig import load_data


def client_fn(context: Context) -> Client:
    """This node's client: its stable id and its (cached) data loaders."""
    train_loader, test_loader, *val = load_data(context, int(context.run_config["batch-size"]))
    return SubnetClient(
        client_id_from_context(context),
        train_loader,
        test_loader,
        node_config=dict(context.node_config),
        val_loader=val[0] if val else None,
    ).to_client()


app = ClientApp(client_fn=client_fn)
