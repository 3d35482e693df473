"""SPIDER: personalised architectures by local perturbation-based search, on the DARTS space.

The server side: FedAvg of the whole supernet and each client's reported
decided edges. The client steps are in :mod:`.spider_client`, the local
search in :mod:`.spider_search`; the method, our adaptations and the
differences from the published method are in ``docs/baselines.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from flwr_pfedrlnas.baselines.nas import spider_client, spider_search
from flwr_pfedrlnas.baselines.nas.base import FederatedNASBaseline, weighted_mean
from flwr_pfedrlnas.baselines.nas.darts_mixed import alpha_shapes
from flwr_pfedrlnas.baselines.nas.fedoras_tiers import check_min_ints

# The client steps and the local search are re-exported from here, so that their
# names keep their old import path.
from flwr_pfedrlnas.baselines.nas.spider_client import *  # noqa: F403
from flwr_pfedrlnas.baselines.nas.spider_search import *  # noqa: F403
from flwr_pfedrlnas.baselines.nas.spider_search import (
    DECIDED_EDGES,
    EDGES_PER_STEP,
    LAMBDA,
    SEED,
    STEP,
    VAL_BATCHES,
    WARMUP,
    parse_decided,
)
from flwr_pfedrlnas.core.search_space import Architecture, architecture_to_json
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = ["SPIDER", *spider_client.__all__, *spider_search.__all__]


class SPIDER(FederatedNASBaseline):
    """SPIDER on the ``darts`` family: FedAvg of the whole supernet, personal search on clients.

    Every sampled client gets the whole global supernet and SPIDER's knobs;
    it returns its update of the global supernet, and the server's new
    supernet is the example-weighted mean of the accepted updates. Personal
    weights and the local search stay on the clients (see
    ``docs/baselines.md``); the server keeps only each client's reported decided edges.

    Parameters
    ----------
    family : SupernetFamily
        A ``darts`` family.
    proximal_lambda : float (default: 0.1)
        Strength of the pull of the personal weights towards the global ones.
    edges_per_step : int (default: 2)
        Edges a client decides per participation after the warm-up.
    val_batches : int (default: 2)
        Training batches the perturbation measures accuracy on.
    warmup : int (default: 1)
        Participations of a client before its first selection.
    **kwargs
        Those of :class:`FederatedNASBaseline`.
    """

    method = "spider"
    label = "SPIDER"

    def __init__(
        self,
        family: SupernetFamily,
        proximal_lambda: float = 0.1,
        edges_per_step: int = 2,
        val_batches: int = 2,
        warmup: int = 1,
        **kwargs: Any,
    ) -> None:
        alpha_shapes(family)  # ValueError unless the darts family
        if not float(proximal_lambda) >= 0:
            raise ValueError(f"proximal_lambda must be >= 0, got {proximal_lambda!r}")
        check_min_ints(
            ("edges_per_step", edges_per_step, 1),
            ("val_batches", val_batches, 1),
            ("warmup", warmup, 0),
        )
        super().__init__(family, **kwargs)
        self.proximal_lambda = float(proximal_lambda)
        self.edges_per_step = int(edges_per_step)
        self.val_batches = int(val_batches)
        self.warmup = int(warmup)
        self.decided: dict[str, Architecture] = {}

    def _config(self, server_round: int) -> ConfigRecord:
        return ConfigRecord(
            {
                **self.base_config(server_round, STEP),
                LAMBDA: self.proximal_lambda,
                EDGES_PER_STEP: self.edges_per_step,
                VAL_BATCHES: self.val_batches,
                WARMUP: self.warmup,
                SEED: self.seed,
            }
        )

    def train_content(self, server_round: int, client_id: str) -> RecordDict:
        """The whole global supernet and SPIDER's knobs."""
        return RecordDict(
            {
                self.arrayrecord_key: m.arrays_to_record(self.supernet),
                self.configrecord_key: self._config(server_round),
            }
        )

    def evaluate_content(self, server_round: int, client_id: str) -> RecordDict:
        """The whole supernet (what a never-trained client tests) and the config."""
        return self.train_content(server_round, client_id)

    def _reply_decided(self, content: RecordDict) -> Architecture:
        config = content.config_records.get(self.configrecord_key)
        if config is None:
            raise ValueError("reply has no ConfigRecord 'config'")
        if m.ARCH not in config:
            raise ValueError(f"config lacks {m.ARCH!r}")
        decided = parse_decided(self.family, config[m.ARCH])
        count = config.get(DECIDED_EDGES)
        if isinstance(count, bool) or not isinstance(count, int) or count != len(decided):
            raise ValueError(
                f"config {DECIDED_EDGES!r} is {count!r}, the arch decides {len(decided)} edges"
            )
        return decided

    def check_train_reply(self, server_round: int, client_id: str, content: RecordDict) -> None:
        """Metrics in range, a finite supernet of the right shapes, valid decided edges."""
        self.check_metrics(content)
        self.check_shapes(self.reply_arrays(content), self.supernet)
        self._reply_decided(content)

    def aggregate(self, server_round: int, replies: dict[str, RecordDict]) -> dict[str, Any]:
        """FedAvg of the returned supernets (example-weighted); keep the decided edges."""
        states, weights = [], []
        for cid, content in replies.items():
            states.append(self.reply_arrays(content))
            weights.append(float(content.metric_records[self.metricrecord_key][m.NUM_EXAMPLES]))
            self.decided[cid] = self._reply_decided(content)
        self.supernet = weighted_mean(states, weights)
        counts = [len(a) for a in self.decided.values()]
        return {"decided-edges-mean": float(np.mean(counts)) if counts else 0.0}

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = super().state_dict()
        decided = {cid: architecture_to_json(a) for cid, a in self.decided.items()}
        return arrays, {**meta, "decided": decided}

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        decided = {str(c): parse_decided(self.family, a) for c, a in meta["decided"].items()}
        super().load_state_dict(arrays, meta)
        self.decided = decided

    def client_row(self, client_id: str) -> dict[str, Any]:
        """The client's latest reported decided edges (JSON) and their number."""
        decided = self.decided.get(client_id, {})
        return {"arch": architecture_to_json(decided), DECIDED_EDGES: len(decided)}
