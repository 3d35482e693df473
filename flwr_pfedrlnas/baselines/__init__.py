"""Baselines, run under the same protocol and results writer as PerFedRLNAS."""

from .fedavg import FedAvgFixedArch

__all__ = ["FedAvgFixedArch"]
