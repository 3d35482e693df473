"""Baselines ClientApp: runs whatever step of whichever baseline it is sent."""

from flwr_pfedrlnas.baselines.app import make_baselines_client_app
from flwr_pfedrlnas.flower.runconfig import load_data

app = make_baselines_client_app(load_data)
