"""Baselines, run under the same protocol and results writer as PerFedRLNAS."""

from flwr_pfedrlnas.baselines.app import make_baselines_client_app
from flwr_pfedrlnas.baselines.client import (
    baseline_evaluate,
    baseline_train,
    train_parts,
)
from flwr_pfedrlnas.baselines.fedavg import FedAvgFixedArch
from flwr_pfedrlnas.baselines.fedtp import AttentionHypernetwork, FedTP
from flwr_pfedrlnas.baselines.models import SmallViT, build_model, mobilenet_v3_large_small_input
from flwr_pfedrlnas.baselines.personalised import (
    FedAvgFineTune,
    FedBABU,
    FedRep,
    LocalOnly,
    PersonalisedFedAvg,
)
from flwr_pfedrlnas.baselines.registry import BASELINES, make_baseline

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
    "make_baselines_client_app",
    "mobilenet_v3_large_small_input",
    "train_parts",
]
