"""Reusable clients: Message-API handlers, a ClientApp factory and a NumPyClient."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from torch import nn
from torch.utils.data import DataLoader

from flwr_pfedrlnas.core.search_space import (
    Architecture,
    architecture_from_json,
    architecture_to_json,
)
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.supernets import SupernetFamily, get_supernet
from flwr_pfedrlnas.training import evaluate, recalibrate_batchnorm, train, training_peak_memory

__all__ = [
    "LoadData",
    "SubnetClient",
    "build_subnet_from_config",
    "client_id_from_context",
    "evaluate_subnet",
    "identify",
    "make_client_app",
    "memory_budget_of",
    "train_subnet",
]

logger = logging.getLogger(__name__)

# load_data(context, batch_size) -> (train_loader, test_loader)
LoadData = Callable[[Context, int], tuple[DataLoader, DataLoader]]

DEFAULT_BATCH_SIZE = 32


def client_id_from_context(context: Context) -> str:
    """The client's stable identity.

    ``client-id`` from the node config (deployment), else ``partition-id``
    (simulation). Raises ``ValueError`` when neither is set.
    """
    node_config = context.node_config
    if m.CLIENT_ID in node_config:
        return str(node_config[m.CLIENT_ID])
    if m.PARTITION_ID in node_config:
        return str(node_config[m.PARTITION_ID])
    raise ValueError(
        "node config has neither 'client-id' nor 'partition-id'; start the "
        'SuperNode with --node-config "client-id=<id>"'
    )


@lru_cache(maxsize=16)
def _family(name: str, config_json: str) -> SupernetFamily:
    return get_supernet(name, **json.loads(config_json))


def build_subnet_from_config(
    config: ConfigRecord | dict[str, Any],
) -> tuple[SupernetFamily, Architecture, nn.Module]:
    """Family, architecture and a fresh subnet module from a server config."""
    for key in (m.ARCH, m.SUPERNET, m.SUPERNET_CONFIG):
        if key not in config:
            raise ValueError(f"config lacks {key!r}")
    family = _family(str(config[m.SUPERNET]), str(config[m.SUPERNET_CONFIG]))
    arch = architecture_from_json(str(config[m.ARCH]), family.search_space)
    return family, arch, family.build_subnet(arch)


def _device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def memory_budget_of(
    config: ConfigRecord | dict[str, Any], node_config: dict[str, Any] | None = None
) -> float | None:
    """The device's training memory budget in bytes, or ``None`` when unknown.

    The node's own ``memory-budget-mb`` (deployment: ``--node-config
    "memory-budget-mb=512"``) wins; else ``memory-budget-bytes`` sent by the
    server (simulation: the client's seeded device profile). An unusable
    value is ignored with a warning, never raised.
    """
    node_config = node_config or {}
    if m.MEMORY_BUDGET_MB in node_config:
        mb = _positive(node_config[m.MEMORY_BUDGET_MB])
        if mb is not None:
            return mb * 2**20
        logger.warning("node config memory-budget-mb=%r ignored", node_config[m.MEMORY_BUDGET_MB])
    if m.MEMORY_BUDGET_BYTES in config:
        budget = _positive(config[m.MEMORY_BUDGET_BYTES])
        if budget is not None:
            return budget
        logger.warning("memory-budget-bytes=%r ignored", config[m.MEMORY_BUDGET_BYTES])
    return None


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _overrun_metrics(
    peak: float, budget: float | None, seconds: float
) -> tuple[dict[str, float], None]:
    metrics = {
        m.NUM_EXAMPLES: 0,
        m.ACCURACY: 0.0,
        m.COMPUTE_SECONDS: float(seconds),
        m.PEAK_MEMORY_BYTES: float(peak),
        m.MEMORY_OVERRUN: 1,
    }
    if budget is not None:
        metrics[m.MEMORY_BUDGET_BYTES] = float(budget)
    return metrics, None


def _fit(
    model: nn.Module,
    config: ConfigRecord | dict[str, Any],
    train_loader: DataLoader,
    test_loader: DataLoader,
    device: torch.device,
    memory_budget: float | None = None,
) -> tuple[dict[str, float], dict[str, torch.Tensor] | None]:
    """Measure, train, test; the metrics a reply carries, and the trained weights.

    First the subnet's peak training memory is measured on the first batch
    (:func:`~flwr_pfedrlnas.training.training_peak_memory`). Over
    ``memory_budget``, or out of memory while measuring or training, the
    client does not train (on): it returns ``memory-overrun`` = 1 with the
    peak and the budget, accuracy 0 and no weights (``None``). It never raises
    for lack of memory.
    """
    epochs = int(config.get(m.LOCAL_EPOCHS, 1))
    lr = float(config.get(m.LR, 0.05))
    start = time.perf_counter()
    peak = 0.0
    try:
        model.to(device)
        first = next(iter(train_loader), None)
        if first is not None:
            peak = float(training_peak_memory(model, first[0], first[1], optimizer_slots=1))
        if memory_budget is not None and peak > memory_budget:
            return _overrun_metrics(peak, memory_budget, time.perf_counter() - start)
        result = train(
            model, train_loader, epochs=epochs, lr=lr, device=device, measure_memory=False
        )
        _, accuracy, _ = evaluate(model, test_loader, device=device)
    except Exception as err:  # only running out of memory is answered, not raised
        if not _is_out_of_memory(err):
            raise
        if device.type == "cuda":
            peak = max(peak, float(torch.cuda.max_memory_allocated(device)))
            torch.cuda.empty_cache()
        logger.warning("out of memory (%s): reported as a memory overrun", err)
        return _overrun_metrics(peak, memory_budget, time.perf_counter() - start)
    compute = time.perf_counter() - start
    metrics = {
        m.NUM_EXAMPLES: int(result.num_examples),
        m.ACCURACY: float(accuracy),
        m.TRAIN_LOSS: float(result.loss),
        m.COMPUTE_SECONDS: float(compute),
        m.PEAK_MEMORY_BYTES: peak,
        m.MEMORY_OVERRUN: 0,
    }
    if memory_budget is not None:
        metrics[m.MEMORY_BUDGET_BYTES] = float(memory_budget)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return metrics, state


def train_subnet(
    msg: Message,
    context: Context,
    train_loader: DataLoader,
    test_loader: DataLoader,
    device: str | None = None,
    arrayrecord_key: str = "arrays",
    configrecord_key: str = "config",
) -> Message:
    """Handle a train message: build the subnet, train, test, reply.

    The reply carries ``arrays`` (trained subnet), ``metrics`` (num-examples,
    accuracy on the client's own test split after training, train-loss,
    compute-seconds, peak-memory-bytes, memory-overrun and, when known,
    memory-budget-bytes) and ``config`` echoing the architecture and the
    client id. When the measured peak exceeds the budget (see
    :func:`memory_budget_of`) the client does not train and replies with an
    empty ``arrays`` record and ``memory-overrun`` = 1.
    """
    config = msg.content[configrecord_key]
    family, arch, model = build_subnet_from_config(config)
    model.load_state_dict(msg.content[arrayrecord_key].to_torch_state_dict(), strict=True)
    budget = memory_budget_of(config, dict(context.node_config))
    metrics, state = _fit(model, config, train_loader, test_loader, _device(device), budget)
    content = RecordDict(
        {
            arrayrecord_key: ArrayRecord(state) if state is not None else ArrayRecord(),
            "metrics": MetricRecord(metrics),
            configrecord_key: ConfigRecord(
                {m.ARCH: architecture_to_json(arch), m.CLIENT_ID: client_id_from_context(context)}
            ),
        }
    )
    return Message(content=content, reply_to=msg)


def _test(
    model: nn.Module,
    config: ConfigRecord | dict[str, Any],
    test_loader: DataLoader,
    train_loader: DataLoader | None,
    device: torch.device,
) -> tuple[float, float, int]:
    """Test, after local fine-tuning and BatchNorm re-estimation when the config asks.

    ``finetune-epochs`` > 0 (the strategy sends it in the final evaluation
    only, when configured): SGD on every weight of ``model`` over the local
    training data first, at the config's ``lr``; the fine-tuned weights serve
    this test and are never uploaded.
    """
    finetune = int(config.get(m.FINETUNE_EPOCHS, 0))
    if finetune > 0:
        if train_loader is None:
            raise ValueError(
                f"{m.FINETUNE_EPOCHS}={finetune} needs this client's training data, "
                "but the evaluate handler was given no train_loader"
            )
        lr = float(config.get(m.LR, 0.05))
        train(model, train_loader, epochs=finetune, lr=lr, device=device, measure_memory=False)
    batches = int(config.get(m.BN_RECALIBRATION_BATCHES, 0))
    if batches != 0 and train_loader is not None:
        recalibrate_batchnorm(model, train_loader, None if batches < 0 else batches, device)
    return evaluate(model, test_loader, device=device)


def evaluate_subnet(
    msg: Message,
    context: Context,
    test_loader: DataLoader,
    device: str | None = None,
    arrayrecord_key: str = "arrays",
    configrecord_key: str = "config",
    train_loader: DataLoader | None = None,
) -> Message:
    """Handle an evaluate message: test the given subnet on the own test split.

    When the config carries ``finetune-epochs`` (> 0), the subnet is first
    fine-tuned on the local training data (``train_loader``), weights not
    kept; when it carries ``bn-recalibration-batches`` (non-zero; -1 = all)
    and ``train_loader`` is given, BatchNorm statistics are then re-estimated
    on that many local training batches (no weight changes).
    """
    config = msg.content[configrecord_key]
    _, arch, model = build_subnet_from_config(config)
    model.load_state_dict(msg.content[arrayrecord_key].to_torch_state_dict(), strict=True)
    loss, accuracy, n = _test(model, config, test_loader, train_loader, _device(device))
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    m.NUM_EXAMPLES: n,
                    m.ACCURACY: float(accuracy),
                    "loss": float(loss),
                    m.FINETUNE_EPOCHS: int(config.get(m.FINETUNE_EPOCHS, 0)),
                }
            ),
            configrecord_key: ConfigRecord(
                {m.ARCH: architecture_to_json(arch), m.CLIENT_ID: client_id_from_context(context)}
            ),
        }
    )
    return Message(content=content, reply_to=msg)


def identify(msg: Message, context: Context) -> Message:
    """Handle the identity query: reply with the stable client id."""
    content = RecordDict({"config": ConfigRecord({m.CLIENT_ID: client_id_from_context(context)})})
    return Message(content=content, reply_to=msg)


def make_client_app(load_data: LoadData, device: str | None = None) -> ClientApp:
    """A ``ClientApp`` that trains and evaluates whatever subnet it is sent.

    Parameters
    ----------
    load_data : Callable[[Context, int], tuple[DataLoader, DataLoader]]
        Returns this node's train and test loaders for a batch size; called on
        every message, so it should cache.
    device : str | None (default: None)
        Torch device; CUDA when available if ``None``.
    """
    app = ClientApp()

    def _batch_size(msg: Message) -> int:
        config = msg.content.config_records.get("config", ConfigRecord())
        return int(config.get(m.BATCH_SIZE, DEFAULT_BATCH_SIZE))

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        train_loader, test_loader = load_data(context, _batch_size(msg))
        return train_subnet(msg, context, train_loader, test_loader, device)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        train_loader, test_loader = load_data(context, _batch_size(msg))
        return evaluate_subnet(msg, context, test_loader, device, train_loader=train_loader)

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        return identify(msg, context)

    return app


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
    """

    def __init__(
        self,
        client_id: str,
        train_loader: DataLoader,
        test_loader: DataLoader,
        device: str | None = None,
        node_config: dict[str, Any] | None = None,
    ) -> None:
        self.node_config = dict(node_config or {})
        self.client_id = str(client_id)
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.device = _device(device)

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
        _, arch, model = build_subnet_from_config(config)
        self._load(model, parameters)
        budget = memory_budget_of(config, self.node_config)
        metrics, state = _fit(
            model, config, self.train_loader, self.test_loader, self.device, budget
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
        _, _, model = build_subnet_from_config(config)
        self._load(model, parameters)
        loss, accuracy, n = _test(model, config, self.test_loader, self.train_loader, self.device)
        return float(loss), int(n), {m.ACCURACY: float(accuracy), m.CLIENT_ID: self.client_id}
