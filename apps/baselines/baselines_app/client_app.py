"""Baselines ClientApp: trains and tests the personalised model of the method it is sent."""

from flwr_pfedrlnas.baselines import make_baseline_client_app
from flwr_pfedrlnas.flower.runconfig import load_data

app = make_baseline_client_app(load_data)
