"""PerFedRLNAS ClientApp: builds, trains and tests whatever subnet it is sent."""

from flwr_pfedrlnas.client import make_client_app
from flwr_pfedrlnas.runconfig import load_data

app = make_client_app(load_data)
