"""Federated-NAS baselines of the paper's Table 3 on the DARTS space.

FedNAS, FedRLNAS, SPIDER and FedorAS are Methods on a supernet
(:class:`FederatedNASBaseline`) over the one round protocol; their client
steps register with :func:`register_step`, and
:func:`~flwr_pfedrlnas.baselines.app.make_baselines_client_app` serves them;
``apps/baselines`` runs them.
"""

from typing import Any

from flwr_pfedrlnas.baselines.nas.base import FederatedNASBaseline, content_bytes, weighted_mean
from flwr_pfedrlnas.baselines.nas.client import handle, register_step
from flwr_pfedrlnas.baselines.nas.darts_mixed import (
    MixedDARTS,
    derive_architecture,
    onehot_weights,
    zero_alphas,
)
from flwr_pfedrlnas.baselines.nas.fednas import FedNAS
from flwr_pfedrlnas.baselines.nas.fedoras import FedorAS
from flwr_pfedrlnas.baselines.nas.fedrlnas import FedRLNAS
from flwr_pfedrlnas.baselines.nas.spider import SPIDER
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = [
    "NAS_BASELINES",
    "SPIDER",
    "FedNAS",
    "FedRLNAS",
    "FederatedNASBaseline",
    "FedorAS",
    "MixedDARTS",
    "content_bytes",
    "derive_architecture",
    "handle",
    "make_nas_baseline",
    "onehot_weights",
    "register_step",
    "weighted_mean",
    "zero_alphas",
]

NAS_BASELINES: dict[str, type[FederatedNASBaseline]] = {
    cls.method: cls for cls in (FedNAS, FedRLNAS, SPIDER, FedorAS)
}


def make_nas_baseline(method: str, family: SupernetFamily, **kwargs: Any) -> FederatedNASBaseline:
    """The strategy of ``method`` ("fednas", "fedrlnas", "spider", "fedoras") on ``family``."""
    if method not in NAS_BASELINES:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(NAS_BASELINES)}")
    return NAS_BASELINES[method](family, **kwargs)
