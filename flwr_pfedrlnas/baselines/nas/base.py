"""The base of the federated-NAS baselines (FedNAS, FedRLNAS, SPIDER, FedorAS) on one supernet.

Each method is a :class:`FederatedNASBaseline`, a
:class:`~flwr_pfedrlnas.flower.method.Method` that holds a supernet; the
round protocol (identity, seeded sampling, reply checks, evaluation, bytes,
latency, results, checkpoint and resume) is the one every method runs
(:class:`~flwr_pfedrlnas.flower.driver.MethodDriver`).
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import RecordDict
from flwr.common import log

from flwr_pfedrlnas.core.aggregation import state_num_bytes
from flwr_pfedrlnas.core.search_space import Architecture
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.driver import content_bytes
from flwr_pfedrlnas.flower.method import Method
from flwr_pfedrlnas.flower.replies import check_shapes, reply_arrays
from flwr_pfedrlnas.protocol.checkpoint import prefixed, unprefixed
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = [
    "NAS_STEP",
    "FederatedNASBaseline",
    "checked_unprefixed",
    "content_bytes",
    "weighted_mean",
]

# ConfigRecord key naming what the client does with a message (see .client).
NAS_STEP = "nas-step"
SUPERNET_PREFIX = "supernet/"


def weighted_mean(
    states: list[Mapping[str, np.ndarray]], weights: list[float]
) -> dict[str, np.ndarray]:
    """Entry-wise ``sum_i w_i x_i / sum_i w_i`` (float64 accumulation, dtypes kept)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(states) == 0 or not np.all(w > 0):
        raise ValueError(f"weights must be positive and non-empty, got {weights!r}")
    w = w / w.sum()
    out = {}
    for key, first in states[0].items():
        acc = np.asarray(sum(wi * np.asarray(s[key], dtype=np.float64) for wi, s in zip(w, states)))
        out[key] = (np.rint(acc) if first.dtype.kind in "iu" else acc).astype(first.dtype)
    return out


def checked_unprefixed(
    prefix: str, arrays: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The checkpoint's arrays under ``prefix``, once they have ``expected``'s names and shapes.

    ``ValueError`` (from :func:`~flwr_pfedrlnas.flower.replies.check_shapes`)
    when they do not: a checkpoint of another model is refused before any
    state is replaced.
    """
    restored = unprefixed(prefix, arrays)
    check_shapes(restored, expected)
    return restored


class FederatedNASBaseline(Method):
    """Base of the federated-NAS baselines on one supernet family.

    Parameters
    ----------
    family : SupernetFamily
        The search space and its supernet (the DARTS family in the paper's Table 3).
    **kwargs
        The protocol's settings (see :class:`~flwr_pfedrlnas.flower.method.Method`).
    """

    method = "nas"
    label = "NAS"

    def __init__(self, family: SupernetFamily, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.family = family
        self.supernet: dict[str, np.ndarray] = family.init_supernet_state(self.seed)

    @property
    def num_rounds(self) -> int:
        """Rounds of the whole run (known once the run starts)."""
        return self.schedule.num_rounds

    # ------------------------------------------------------------------ helpers
    def base_config(self, server_round: int, step: str = "subnet") -> dict[str, Any]:
        """Config entries every message of this method carries."""
        return {
            NAS_STEP: step,
            m.SUPERNET: self.family.name,
            m.SUPERNET_CONFIG: self.family.config_json(),
            **super().base_config(server_round),
        }

    def subnet_content(
        self,
        server_round: int,
        arch: Architecture,
        state: Mapping[str, np.ndarray],
        extra: Mapping[str, Any] | None = None,
    ) -> RecordDict:
        """A message with one subnet: its weights and its architecture."""
        base = {**self.base_config(server_round, "subnet"), **(extra or {})}
        config = m.subnet_config(self.family, arch, server_round, base)
        return RecordDict(
            {self.arrayrecord_key: m.arrays_to_record(state), self.configrecord_key: config}
        )

    def check_metrics(
        self, content: RecordDict, required: tuple[str, ...] = m.REQUIRED_TRAIN_METRICS
    ) -> dict[str, float]:
        return self.metrics_of(content, required)

    def reply_arrays(self, content: RecordDict, key: str | None = None) -> dict[str, np.ndarray]:
        return reply_arrays(content, key or self.arrayrecord_key)

    check_shapes = staticmethod(check_shapes)

    def supernet_bytes(self) -> int:
        """Bytes of the whole supernet state (one transfer of it)."""
        return state_num_bytes(self.supernet)

    def describe(self) -> dict[str, Any]:
        return {"supernet": self.family.name, "supernet-config": self.family.config}

    def summary(self) -> None:
        log(INFO, "%s on %s %s", self.label, self.family.name, self.family.config_json())
        super().summary()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return prefixed(SUPERNET_PREFIX, self.supernet), {}

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self.supernet = checked_unprefixed(SUPERNET_PREFIX, arrays, self.supernet)
