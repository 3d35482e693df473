"""Federated-NAS baselines Flower app (FedNAS, FedRLNAS, SPIDER, FedorAS)."""
