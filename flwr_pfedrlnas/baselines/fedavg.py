"""FedAvg on one fixed architecture of a supernet family (e.g. its largest subnet).

Described in ``docs/baselines.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import RecordDict

from flwr_pfedrlnas.baselines.nas.base import checked_unprefixed, weighted_mean
from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.core.search_space import Architecture, architecture_from_json
from flwr_pfedrlnas.core.search_space import architecture_to_json as arch_json
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.method import Method
from flwr_pfedrlnas.flower.replies import check_shapes, reply_arrays
from flwr_pfedrlnas.protocol.checkpoint import prefixed
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = ["FedAvgFixedArch"]

WEIGHTS_PREFIX = "weights/"


class FedAvgFixedArch(Method):
    """FedAvg training one architecture for every client.

    Clients are the same as PerFedRLNAS's (they build whatever subnet the
    config names), so the comparison differs only in the server. Every client
    tests the global model on its own test split (personalised accuracy, no
    fine-tuning).

    Parameters
    ----------
    family : SupernetFamily
        Family whose subnet is trained.
    arch : Architecture | None (default: None)
        The architecture; the family's largest when ``None``.
    **kwargs
        The protocol's settings (see :class:`~flwr_pfedrlnas.flower.method.Method`).
    """

    method = "fedavg-largest"
    label = "FedAvg"

    def __init__(
        self, family: SupernetFamily, arch: Architecture | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.family = family
        self.arch = family.search_space.validate(arch or family.largest_architecture())
        # Seeded initial weights of the architecture (cut from a fresh supernet).
        self.weights = extract_subnet(family, family.init_supernet_state(self.seed), self.arch)

    def _content(self, server_round: int) -> RecordDict:
        base = self.base_config(server_round)
        config = m.subnet_config(self.family, self.arch, server_round, base)
        return RecordDict(
            {self.arrayrecord_key: m.arrays_to_record(self.weights), self.configrecord_key: config}
        )

    def train_content(self, server_round: int, client_id: str) -> RecordDict:
        return self._content(server_round)

    def check_train_reply(self, server_round: int, client_id: str, content: RecordDict) -> None:
        """Metrics in range, the architecture sent, finite weights of its shapes."""
        self.metrics_of(content)
        config = content.config_records.get(self.configrecord_key)
        if config is not None and m.ARCH in config:
            echoed = architecture_from_json(str(config[m.ARCH]), self.family.search_space)
            if echoed != self.arch:
                raise ValueError(f"arch is {config[m.ARCH]!r}, not {arch_json(self.arch)!r}")
        check_shapes(reply_arrays(content, self.arrayrecord_key), self.weights)

    def aggregate(self, server_round: int, replies: dict[str, RecordDict]) -> dict[str, Any]:
        states = [reply_arrays(c, self.arrayrecord_key) for c in replies.values()]
        weights = [
            float(c.metric_records[self.metricrecord_key][m.NUM_EXAMPLES]) for c in replies.values()
        ]
        self.weights = weighted_mean(states, weights)
        return {}

    def evaluate_content(self, server_round: int, client_id: str) -> RecordDict:
        return self._content(server_round)

    def client_row(self, client_id: str) -> dict[str, Any]:
        return {"arch": arch_json(self.arch)}

    def describe(self) -> dict[str, Any]:
        return {
            "supernet": self.family.name,
            "supernet-config": self.family.config,
            "arch": self.arch,
        }

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return prefixed(WEIGHTS_PREFIX, self.weights), {}

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self.weights = checked_unprefixed(WEIGHTS_PREFIX, arrays, self.weights)
