"""The Flower-free core: search space, policy, rewards, aggregation, search, profiles."""

from flwr_pfedrlnas.core.aggregation import extract_subnet, merge_subnets
from flwr_pfedrlnas.core.policy import ArchitecturePolicy
from flwr_pfedrlnas.core.profiles import DeviceProfile, ProfileDistribution
from flwr_pfedrlnas.core.search import ClientReply, PerFedRLNASSearch, SearchConfig
from flwr_pfedrlnas.core.search_space import Architecture, Dimension, SearchSpace

__all__ = [
    "Architecture",
    "ArchitecturePolicy",
    "ClientReply",
    "DeviceProfile",
    "Dimension",
    "PerFedRLNASSearch",
    "ProfileDistribution",
    "SearchConfig",
    "SearchSpace",
    "extract_subnet",
    "merge_subnets",
]
