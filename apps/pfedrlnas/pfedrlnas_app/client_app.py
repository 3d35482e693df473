"""PerFedRLNAS ClientApp: builds, trains and tests whatever subnet it is sent."""

from flwr_pfedrlnas.flower.client import make_client_app
from flwr_pfedrlnas.flower.runconfig import load_data

app = make_client_app(load_data)
