"""Names and conversions of what travels between the strategy and the clients."""

from __future__ import annotations

import io
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
    "CLIENT_STATE_DIR",
    "CLIENT_ID",
    "COMPUTE_MACS",
    "DEPLOYED_VAL_ACCURACY",
    "COMPUTE_SECONDS",
    "FINETUNE_EPOCHS",
    "LOCAL_EPOCHS",
    "LR",
    "MEMORY_BUDGET_BYTES",
    "MEMORY_BUDGET_MB",
    "MEMORY_OVERRUN",
    "NUM_EXAMPLES",
    "PERSONAL_INIT",
    "PEAK_MEMORY_BYTES",
    "REWARD_DEPLOYED",
    "SEARCH_ONLY",
    "SERVER_ROUND",
    "SUPERNET",
    "SUPERNET_CONFIG",
    "TRAIN_LOSS",
    "VAL_ACCURACY",
    "arrays_to_record",
    "npy_bytes_to_array",
    "optional_number",
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
# Train message: 1 asks the client to test the received subnet before training, BatchNorm
# re-estimated (bn-recalibration-batches), on its validation split (the reward "deployed").
REWARD_DEPLOYED = "reward-deployed"
# Evaluate-type message of a search-only round (new clients): test, never train or upload.
SEARCH_ONLY = "search-only"
# ArrayRecord key, server -> client: the whole shared tensors of the blocks a client
# starts keeping personal (share-or-keep), sent once per client and block.
PERSONAL_INIT = "personal-init"
# Node config key (or config key) of the folder where a client mirrors its personal
# tensors, so that they survive a restart of the run.
CLIENT_STATE_DIR = "client-state-dir"
# MetricRecord keys, client -> server.
NUM_EXAMPLES = "num-examples"
ACCURACY = "accuracy"
# Accuracy on the client's validation split after training (what the reward may see).
VAL_ACCURACY = "val-accuracy"
# The received subnet before training, BatchNorm re-estimated, on the validation split.
DEPLOYED_VAL_ACCURACY = "deployed-val-accuracy"
TRAIN_LOSS = "train-loss"
COMPUTE_SECONDS = "compute-seconds"
# MACs of that work, backward passes included (core.cost.ComputeCounter): the modelled latency.
COMPUTE_MACS = "compute-macs"
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


def _c_order(value: np.ndarray) -> np.ndarray:
    # np.save writes any other layout in C order itself (no copy of ours needed);
    # only a Fortran-contiguous array would travel in Fortran order.
    array = np.asarray(value)
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        return np.ascontiguousarray(array)
    return array


def arrays_to_record(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Name -> numpy array as an ``ArrayRecord`` (order kept, C-ordered data)."""
    return ArrayRecord({k: Array(_c_order(v)) for k, v in state.items()})


# .npy header bytes -> (shape, fortran_order, dtype, data offset): a reply's headers
# repeat every round (same keys, same shapes), and numpy parses each with a literal_eval.
_NPY_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype, int]] = {}
_NPY_HEADERS_SIZE = 1 << 14
_NPY_MAGIC = b"\x93NUMPY"


def _npy_header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int] | None:
    """The parsed header of ``.npy`` bytes (format 1.0 or 2.0), ``None`` for others."""
    key = None
    if data[:6] == _NPY_MAGIC and data[6:8] in (b"\x01\x00", b"\x02\x00"):
        width = 2 if data[6] == 1 else 4
        key = data[: 8 + width + int.from_bytes(data[8 : 8 + width], "little")]
        found = _NPY_HEADERS.get(key)
        if found is not None:
            return found
    stream = io.BytesIO(data)  # shares the bytes until written: no copy
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        return None
    parsed = (tuple(shape), bool(fortran_order), dtype, stream.tell())
    if key is not None and len(key) == parsed[3]:
        if len(_NPY_HEADERS) >= _NPY_HEADERS_SIZE:
            _NPY_HEADERS.clear()
        _NPY_HEADERS[key] = parsed
    return parsed


def npy_bytes_to_array(data: bytes) -> np.ndarray:
    """The array that ``np.save`` wrote into ``data``, as a read-only view of it.

    Reads the ``.npy`` header as ``np.load`` does (object dtypes refused: no
    pickles) and wraps the payload without copying it. Raises ``ValueError``
    on a malformed header or a payload shorter than the header's shape needs.
    """
    if not isinstance(data, bytes):
        raise ValueError(f"array data is a {type(data).__name__}, not bytes")
    header = _npy_header(data)
    if header is None:  # format 3.0 (unicode field names): let numpy read it
        return np.load(io.BytesIO(data), allow_pickle=False)
    shape, fortran_order, dtype, offset = header
    if dtype.hasobject:
        raise ValueError(f"Object arrays cannot be loaded when allow_pickle=False (dtype {dtype})")
    count = math.prod(shape)
    if len(data) - offset < count * dtype.itemsize:
        raise ValueError(
            f"array data holds {len(data) - offset} bytes, "
            f"shape {tuple(shape)} of {dtype} needs {count * dtype.itemsize}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    if fortran_order:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)


def record_to_arrays(record: ArrayRecord, copy: bool = True) -> dict[str, np.ndarray]:
    """``ArrayRecord`` -> name -> numpy array; ``ValueError`` naming a bad entry.

    Parameters
    ----------
    record : ArrayRecord
        The record to decode.
    copy : bool (default: True)
        ``True``: writable arrays of their own (``Array.numpy()``). ``False``:
        read-only views of the record's bytes, decoded once and never copied
        (what the server does with a reply it only reads).
    """
    out = {}
    for key, array in record.items():
        try:
            if copy:
                out[key] = array.numpy()
            elif array.stype != "numpy.ndarray":
                raise ValueError(f"serialisation type is {array.stype!r}, not 'numpy.ndarray'")
            else:
                out[key] = npy_bytes_to_array(array.data)
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
        state=record_to_arrays(arrays, copy=False),  # only read: the merge makes new arrays
        num_examples=num_examples,
        accuracy=float(metrics[ACCURACY]),
        train_loss=float(metrics.get(TRAIN_LOSS, float("nan"))),
        compute_seconds=float(metrics[COMPUTE_SECONDS]),
        compute_macs=optional_number(metrics, COMPUTE_MACS),
        peak_memory_bytes=float(metrics.get(PEAK_MEMORY_BYTES, 0.0)),
        memory_budget_bytes=None if budget is None else float(budget),
        memory_overrun=bool(overrun),
        val_accuracy=optional_number(metrics, VAL_ACCURACY),
        deployed_val_accuracy=optional_number(metrics, DEPLOYED_VAL_ACCURACY),
    )


def optional_number(metrics: Mapping[str, Any], key: str) -> float | None:
    """``metrics[key]`` as a float, ``None`` when absent; ``ValueError`` for a list."""
    if key not in metrics:
        return None
    value = metrics[key]
    if isinstance(value, list):
        raise ValueError(f"metrics {key!r} is a list {value!r}, not a number")
    return float(value)
