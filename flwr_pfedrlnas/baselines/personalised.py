"""Personalised-FL baselines of the paper on a fixed model: FedAvg+FT, Local, FedRep, FedBABU.

Described in ``docs/baselines.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from flwr_pfedrlnas.baselines import client as bc
from flwr_pfedrlnas.baselines.models import build_model, is_head_key, parse_model_config
from flwr_pfedrlnas.baselines.nas.base import checked_unprefixed, weighted_mean
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.method import Method
from flwr_pfedrlnas.flower.replies import check_shapes, reply_arrays
from flwr_pfedrlnas.protocol.checkpoint import prefixed

__all__ = [
    "FedAvgFineTune",
    "FedBABU",
    "FedRep",
    "LocalOnly",
    "PersonalisedFedAvg",
    "json_text",
]

SHARED_PREFIX = "shared/"


class PersonalisedFedAvg(Method):
    """FedAvg over a method-defined shared part of a fixed model; personal parts on the clients.

    Subclasses choose what is shared (:meth:`is_shared`), what a client is sent
    (:meth:`arrays_for`), how replies merge (:meth:`aggregate_arrays`) and
    whether the final evaluation fine-tunes (:meth:`finetunes`); the round
    protocol is the one every method runs.

    Parameters
    ----------
    model : str (default: "mobilenetv3-large")
        "mobilenetv3-large" or "vit" (see :mod:`.models`).
    model_config : str | dict | None (default: None)
        Size knobs of the model (JSON or dict).
    num_classes, in_channels : int (default: 10, 1)
    head_epochs : int (default: 1)
        FedRep's head epochs before the body epochs.
    finetune_epochs : int (default: 10)
        Local fine-tuning epochs before the final test (FedAvg+FT, FedBABU).
    client_state_dir : str | None (default: None)
        Where clients mirror their personal state (on their own disk).
    **kwargs
        The protocol's settings (see :class:`~flwr_pfedrlnas.flower.method.Method`).
    """

    method = "fedavg"
    label = "FedAvg"

    def __init__(
        self,
        model: str = "mobilenetv3-large",
        model_config: str | Mapping[str, Any] | None = None,
        num_classes: int = 10,
        in_channels: int = 1,
        head_epochs: int = 1,
        finetune_epochs: int = 10,
        client_state_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if head_epochs < 0 or finetune_epochs < 0:
            raise ValueError(
                f"head_epochs and finetune_epochs must be >= 0, got {head_epochs!r}, "
                f"{finetune_epochs!r}"
            )
        self.model_name = str(model)
        self.model_config = parse_model_config(model_config)
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)
        self.head_epochs, self.finetune_epochs = int(head_epochs), int(finetune_epochs)
        self.client_state_dir = client_state_dir
        self._template = build_model(
            self.model_name, self.num_classes, self.in_channels, self.model_config, self.seed
        )
        self.keys = list(self._template.state_dict())
        # The seeded initial shared tensors (every client builds the same init).
        self.shared: dict[str, np.ndarray] = {
            k: v.detach().cpu().numpy().copy()
            for k, v in self._template.state_dict().items()
            if self.is_shared(k)
        }
        self._sent: dict[str, dict[str, np.ndarray]] = {}
        self._finetuned: dict[str, int] = {}
        self._finetuned_round: dict[int, list[int]] = {}

    # ---------------------------------------------------------------- method hooks
    def is_shared(self, key: str) -> bool:
        """Whether ``key`` is averaged on the server (all keys for FedAvg)."""
        return True

    def finetunes(self) -> bool:
        """Whether the final evaluation fine-tunes locally first."""
        return False

    def arrays_for(self, client_id: str) -> dict[str, np.ndarray]:
        """What client ``client_id`` is sent: the shared arrays."""
        return self.shared

    def aggregate_arrays(
        self, server_round: int, replies: dict[str, RecordDict]
    ) -> dict[str, np.ndarray] | None:
        """Example-weighted mean of the shared tensors of the replies (``None``: nothing shared)."""
        if not self.shared:
            return None
        states = [
            {k: v for k, v in reply_arrays(c, self.arrayrecord_key).items() if self.is_shared(k)}
            for c in replies.values()
        ]
        weights = [
            float(c.metric_records[self.metricrecord_key][m.NUM_EXAMPLES]) for c in replies.values()
        ]
        return weighted_mean(states, weights)

    # ---------------------------------------------------------------- protocol hooks
    def client_config(self, server_round: int, finetune: bool = False) -> ConfigRecord:
        return ConfigRecord(
            {
                **self.base_config(server_round),
                bc.METHOD: self.method,
                bc.MODEL: self.model_name,
                bc.MODEL_CONFIG: json_text(self.model_config),
                bc.NUM_CLASSES: self.num_classes,
                bc.IN_CHANNELS: self.in_channels,
                bc.SEED: self.seed,
                bc.HEAD_EPOCHS: self.head_epochs,
                bc.FINETUNE_EPOCHS: self.finetune_epochs if finetune else 0,
                bc.CLIENT_STATE_DIR: self.client_state_dir or "",
            }
        )

    def _content(self, client_id: str, config: ConfigRecord) -> RecordDict:
        return RecordDict(
            {
                self.arrayrecord_key: m.arrays_to_record(self.arrays_for(client_id)),
                self.configrecord_key: config,
            }
        )

    def train_content(self, server_round: int, client_id: str) -> RecordDict:
        content = self._content(client_id, self.client_config(server_round))
        self._sent[client_id] = m.record_to_arrays(content[self.arrayrecord_key])
        return content

    def check_train_reply(self, server_round: int, client_id: str, content: RecordDict) -> None:
        """Metrics in range; finite arrays with exactly the sent tensors' names and shapes."""
        self.metrics_of(content)
        check_shapes(reply_arrays(content, self.arrayrecord_key), self._sent[client_id])

    def aggregate(self, server_round: int, replies: dict[str, RecordDict]) -> dict[str, Any]:
        merged = self.aggregate_arrays(server_round, replies)
        if merged is not None:
            self.shared = merged
        return {}

    def evaluate_content(self, server_round: int, client_id: str) -> RecordDict:
        final = self.schedule.is_last_round(server_round) and self.finetunes()
        return self._content(client_id, self.client_config(server_round, finetune=final))

    def check_evaluate_reply(self, server_round: int, client_id: str, content: RecordDict) -> None:
        super().check_evaluate_reply(server_round, client_id, content)
        metrics = content.metric_records[self.metricrecord_key]
        self._finetuned[client_id] = int(metrics.get(bc.FINETUNE_EPOCHS, 0))
        self._finetuned_round.setdefault(server_round, []).append(self._finetuned[client_id])

    def client_row(self, client_id: str) -> dict[str, Any]:
        """The fine-tuning epochs the client reports for its latest test."""
        return {bc.FINETUNE_EPOCHS: self._finetuned.get(client_id, 0)}

    def round_fields(self, server_round: int) -> dict[str, Any]:
        """The most fine-tuning epochs any client reported in this round's test."""
        done = self._finetuned_round.pop(server_round, [])
        return {bc.FINETUNE_EPOCHS: max(done, default=0)}

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "model-config": self.model_config,
            "head-epochs": self.head_epochs,
            "finetune-epochs": self.finetune_epochs if self.finetunes() else 0,
        }

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return prefixed(SHARED_PREFIX, self.shared), {}

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self.shared = checked_unprefixed(SHARED_PREFIX, arrays, self.shared)


class FedAvgFineTune(PersonalisedFedAvg):
    """FedAvg of the whole model; clients fine-tune it ``finetune_epochs`` before the final test."""

    method = "fedavg-ft"
    label = "FedAvg+FT"

    def finetunes(self) -> bool:
        return self.finetune_epochs > 0


class LocalOnly(PersonalisedFedAvg):
    """Local training only: sampled clients train their own model (kept in ``context.state``)."""

    method = "local"
    label = "Local"

    def is_shared(self, key: str) -> bool:
        return False


class FedRep(PersonalisedFedAvg):
    """FedRep: the body is averaged; each client's head stays on the client."""

    method = "fedrep"
    label = "FedRep"

    def is_shared(self, key: str) -> bool:
        return not is_head_key(self.model_name, key)


class FedBABU(FedRep):
    """FedBABU: the body is averaged; the head stays at its random init during
    federated training and is fine-tuned locally before the final test."""

    method = "fedbabu"
    label = "FedBABU"

    def finetunes(self) -> bool:
        return self.finetune_epochs > 0


def json_text(value: Any) -> str:
    """A model config as the JSON text a ConfigRecord carries."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
