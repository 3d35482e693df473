"""Federated-NAS ClientApp: runs whatever step (search, subnet, SPIDER, candidates) it is sent."""

from flwr_pfedrlnas.baselines.nas import make_nas_client_app
from flwr_pfedrlnas.flower.runconfig import load_data

app = make_nas_client_app(load_data)
