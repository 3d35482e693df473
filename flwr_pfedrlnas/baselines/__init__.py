"""Baselines, run under the same protocol and results writer as PerFedRLNAS."""

from .client import baseline_evaluate, baseline_train, make_baseline_client_app, train_parts
from .fedavg import FedAvgFixedArch
from .models import SmallViT, build_model, mobilenet_v3_large_small_input
from .personalised import (
    BASELINES,
    AttentionHypernetwork,
    FedAvgFineTune,
    FedBABU,
    FedRep,
    FedTP,
    LocalOnly,
    PersonalisedFedAvg,
    make_baseline,
)

__all__ = [
    "BASELINES",
    "AttentionHypernetwork",
    "FedAvgFineTune",
    "FedAvgFixedArch",
    "FedBABU",
    "FedRep",
    "FedTP",
    "LocalOnly",
    "PersonalisedFedAvg",
    "SmallViT",
    "baseline_evaluate",
    "baseline_train",
    "build_model",
    "make_baseline",
    "make_baseline_client_app",
    "mobilenet_v3_large_small_input",
    "train_parts",
]
