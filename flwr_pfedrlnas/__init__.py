"""PerFedRLNAS: personalised federated neural architecture search for Flower."""

from flwr_pfedrlnas.core.aggregation import extract_subnet, merge_subnets
from flwr_pfedrlnas.core.policy import ArchitecturePolicy
from flwr_pfedrlnas.core.search import ClientReply, PerFedRLNASSearch, SearchConfig
from flwr_pfedrlnas.core.search_space import Architecture, Dimension, SearchSpace
from flwr_pfedrlnas.supernets import (
    SupernetFamily,
    available_supernets,
    get_supernet,
    register_supernet,
)

__all__ = [
    "Architecture",
    "ArchitecturePolicy",
    "ClientReply",
    "Dimension",
    "PerFedRLNAS",
    "PerFedRLNASLegacy",
    "PerFedRLNASSearch",
    "SearchConfig",
    "SearchSpace",
    "SupernetFamily",
    "available_supernets",
    "extract_subnet",
    "get_supernet",
    "merge_subnets",
    "register_supernet",
]

__version__ = "0.1.0"


def __getattr__(name: str):
    # The Flower layers load on first use so that the core imports no Flower.
    if name == "PerFedRLNAS":
        from flwr_pfedrlnas.flower.strategy import PerFedRLNAS

        return PerFedRLNAS
    if name == "PerFedRLNASLegacy":
        from flwr_pfedrlnas.flower.legacy import PerFedRLNASLegacy

        return PerFedRLNASLegacy
    raise AttributeError(f"module 'flwr_pfedrlnas' has no attribute {name!r}")
