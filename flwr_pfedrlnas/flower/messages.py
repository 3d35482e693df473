"""Names and conversions of what travels between the strategy and the clients."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from flwr_pfedrlnas.core.search import ClientReply
from flwr_pfedrlnas.core.search_space import (
    Architecture,
    architecture_from_json,
    architecture_to_json,
)
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = [
    "ACCURACY",
    "ARCH",
    "BATCH_SIZE",
    "BN_RECALIBRATION_BATCHES",
    "CLIENT_ID",
    "COMPUTE_SECONDS",
    "FINETUNE_EPOCHS",
    "LOCAL_EPOCHS",
    "LR",
    "MEMORY_BUDGET_BYTES",
    "MEMORY_BUDGET_MB",
    "MEMORY_OVERRUN",
    "NUM_EXAMPLES",
    "PEAK_MEMORY_BYTES",
    "SEARCH_ONLY",
    "SERVER_ROUND",
    "SUPERNET",
    "SUPERNET_CONFIG",
    "TRAIN_LOSS",
    "arrays_to_record",
    "record_to_arrays",
    "reply_from_records",
    "subnet_config",
]

# ConfigRecord keys, server -> client.
ARCH = "arch"
SUPERNET = "supernet"
SUPERNET_CONFIG = "supernet-config"
SERVER_ROUND = "server-round"
LOCAL_EPOCHS = "local-epochs"
LR = "lr"
BATCH_SIZE = "batch-size"
BN_RECALIBRATION_BATCHES = "bn-recalibration-batches"
# Epochs of local fine-tuning before a test (final evaluation only); the result is not kept.
FINETUNE_EPOCHS = "finetune-epochs"
# Evaluate-type message of a search-only round (new clients): test, never train or upload.
SEARCH_ONLY = "search-only"
# MetricRecord keys, client -> server.
NUM_EXAMPLES = "num-examples"
ACCURACY = "accuracy"
TRAIN_LOSS = "train-loss"
COMPUTE_SECONDS = "compute-seconds"
PEAK_MEMORY_BYTES = "peak-memory-bytes"
# Also server -> client: a simulated device's budget (a node's own setting wins).
MEMORY_BUDGET_BYTES = "memory-budget-bytes"
# 1 when the measured peak exceeded the budget and the client did not train.
MEMORY_OVERRUN = "memory-overrun"
# Node config key of a deployed device's training memory budget, in MiB.
MEMORY_BUDGET_MB = "memory-budget-mb"
# Identity: node config key in deployment, and the key of the identity reply.
CLIENT_ID = "client-id"
PARTITION_ID = "partition-id"

REQUIRED_TRAIN_METRICS = (NUM_EXAMPLES, ACCURACY, COMPUTE_SECONDS)


def arrays_to_record(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Name -> numpy array as an ``ArrayRecord`` (order kept)."""
    return ArrayRecord({k: Array(np.array(v, order="C")) for k, v in state.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """``ArrayRecord`` -> name -> numpy array; ``ValueError`` naming a bad entry."""
    out = {}
    for key, array in record.items():
        try:
            out[key] = array.numpy()
        except Exception as err:  # any decoding failure is a bad reply
            raise ValueError(f"tensor {key!r} cannot be decoded: {err}") from err
    return out


def subnet_config(
    family: SupernetFamily,
    arch: Architecture,
    server_round: int,
    extra: Mapping[str, Any] | None = None,
) -> ConfigRecord:
    """The ``ConfigRecord`` that tells a client which subnet to build."""
    config = ConfigRecord(dict(extra or {}))
    config[ARCH] = architecture_to_json(arch)
    config[SUPERNET] = family.name
    config[SUPERNET_CONFIG] = family.config_json()
    config[SERVER_ROUND] = int(server_round)
    return config


def reply_from_records(
    client_id: str,
    arrays: ArrayRecord | None,
    metrics: MetricRecord | None,
    arch_json: str | None,
    family: SupernetFamily,
    memory_budget_bytes: float | None = None,
) -> ClientReply:
    """Turn a client's records into a :class:`ClientReply`.

    Raises ``ValueError`` naming the field when something required is absent or
    has the wrong type; range checks happen in the search core.
    """
    if arrays is None:
        raise ValueError("reply has no ArrayRecord 'arrays'")
    if metrics is None:
        raise ValueError("reply has no MetricRecord 'metrics'")
    for key in REQUIRED_TRAIN_METRICS:
        if key not in metrics:
            raise ValueError(f"metrics lack {key!r}")
        if isinstance(metrics[key], list):
            raise ValueError(f"metrics {key!r} is a list {metrics[key]!r}, not a number")
    # A client may echo the architecture it trained; the core compares it with
    # the one it sent. Without an echo the sent one is assumed.
    arch = None if arch_json is None else architecture_from_json(arch_json, family.search_space)
    num_examples = metrics[NUM_EXAMPLES]
    if isinstance(num_examples, float):
        if not (math.isfinite(num_examples) and num_examples.is_integer()):
            raise ValueError(f"num-examples is {num_examples!r}, not a whole number")
        num_examples = int(num_examples)
    budget = metrics.get(MEMORY_BUDGET_BYTES, memory_budget_bytes)
    overrun = metrics.get(MEMORY_OVERRUN, 0)
    if isinstance(overrun, list):
        raise ValueError(f"metrics {MEMORY_OVERRUN!r} is a list {overrun!r}, not a number")
    return ClientReply(
        client_id=str(client_id),
        arch=arch,
        state=record_to_arrays(arrays),
        num_examples=num_examples,
        accuracy=float(metrics[ACCURACY]),
        train_loss=float(metrics.get(TRAIN_LOSS, float("nan"))),
        compute_seconds=float(metrics[COMPUTE_SECONDS]),
        peak_memory_bytes=float(metrics.get(PEAK_MEMORY_BYTES, 0.0)),
        memory_budget_bytes=None if budget is None else float(budget),
        memory_overrun=bool(overrun),
    )
