"""The legacy API's client: a ``NumPyClient`` that trains whatever subnet it is sent."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient
from torch import nn
from torch.utils.data import DataLoader

from flwr_pfedrlnas.core.search_space import architecture_to_json
from flwr_pfedrlnas.flower import client as _client
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.memory import memory_budget_of
from flwr_pfedrlnas.training import resolve_device

__all__ = ["SubnetClient"]


class SubnetClient(NumPyClient):
    """A ``NumPyClient`` for the legacy strategy API.

    Parameters arrive as a list of arrays in the subnet's ``state_dict`` key
    order; the architecture and family come in the fit/evaluate config.

    Parameters
    ----------
    client_id : str
        Stable identity (answers ``get_properties``).
    train_loader, test_loader : DataLoader
        This client's data.
    device : str | None (default: None)
        Torch device; CUDA when available if ``None``.
    node_config : dict | None (default: None)
        The node's config; its ``memory-budget-mb`` is the training budget.
    image_key, label_key : str | None (default: None)
        Keys of dict batches; ``None`` finds the common names (see
        :func:`~flwr_pfedrlnas.training.split_batch`).
    val_loader : DataLoader | None (default: None)
        This client's validation split: each fit's metrics then carry
        ``val-accuracy``, which the search's reward may use instead of the test.
    """

    def __init__(
        self,
        client_id: str,
        train_loader: DataLoader,
        test_loader: DataLoader,
        device: str | None = None,
        node_config: dict[str, Any] | None = None,
        image_key: str | None = None,
        label_key: str | None = None,
        val_loader: DataLoader | None = None,
    ) -> None:
        self.node_config = dict(node_config or {})
        self.val_loader = val_loader
        self.client_id = str(client_id)
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.device = resolve_device(device)
        self.batch_keys = (image_key, label_key)

    def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
        return {m.CLIENT_ID: self.client_id}

    @staticmethod
    def _load(model: nn.Module, parameters: list[np.ndarray]) -> None:
        keys = list(model.state_dict().keys())
        if len(keys) != len(parameters):
            raise ValueError(
                f"received {len(parameters)} arrays, the subnet has {len(keys)} tensors"
            )
        state = {k: torch.from_numpy(np.array(v)) for k, v in zip(keys, parameters)}
        model.load_state_dict(state, strict=True)

    def fit(self, parameters, config):
        _, arch, model = _client.build_subnet_from_config(config)
        self._load(model, parameters)
        budget = memory_budget_of(config, self.node_config)
        metrics, state = _client._fit(
            model,
            config,
            self.train_loader,
            self.test_loader,
            self.device,
            budget,
            self.batch_keys,
            self.val_loader,
        )
        # Over budget: the received weights go back unchanged (the server ignores them).
        arrays = (
            [np.asarray(p) for p in parameters]
            if state is None
            else [v.numpy() for v in state.values()]
        )
        metrics[m.ARCH] = architecture_to_json(arch)
        metrics[m.CLIENT_ID] = self.client_id
        return arrays, int(metrics[m.NUM_EXAMPLES]), metrics

    def evaluate(self, parameters, config):
        _, _, model = _client.build_subnet_from_config(config)
        self._load(model, parameters)
        loss, accuracy, n, _ = _client._test(
            model, config, self.test_loader, self.train_loader, self.device, self.batch_keys
        )
        return float(loss), int(n), {m.ACCURACY: float(accuracy), m.CLIENT_ID: self.client_id}
