"""Every check a reply passes before a method may use it, in one place."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Message, RecordDict

from flwr_pfedrlnas.core.aggregation import check_tensors
from flwr_pfedrlnas.core.reply_checks import MAX_NUM_EXAMPLES
from flwr_pfedrlnas.flower import messages as m

__all__ = ["answer_problem", "check_metrics", "check_shapes", "reply_arrays"]


def answer_problem(
    reply: Message,
    sent: Message,
    client_id: str,
    configrecord_key: str = "config",
) -> str | None:
    """Why ``reply`` is not a usable answer of client ``client_id`` to ``sent`` (or ``None``).

    A usable answer replies to the message id the grid stamped on ``sent``,
    carries no error, and, where it names a client id, names the one the
    message went to: one node cannot report for another, and a stale or
    replayed reply of an earlier round is refused.
    """
    want = sent.metadata.message_id
    got = reply.metadata.reply_to_message_id
    if want and got != want:
        return f"reply-to-message-id is {got!r}, not {want!r}"
    if reply.has_error():
        return f"client error {reply.error.reason!r}"
    config = reply.content.config_records.get(configrecord_key)
    echoed = None if config is None else config.get(m.CLIENT_ID)
    if echoed is not None and str(echoed) != str(client_id):
        return f"client-id is {echoed!r}, the message went to {client_id!r}"
    return None


def check_metrics(
    content: RecordDict,
    required: Iterable[str] = m.REQUIRED_TRAIN_METRICS,
    metricrecord_key: str = "metrics",
) -> dict[str, float]:
    """The reply's metrics as floats; ``ValueError`` naming a missing or bad one."""
    metrics = content.metric_records.get(metricrecord_key)
    if metrics is None:
        raise ValueError(f"reply has no MetricRecord {metricrecord_key!r}")
    out = {}
    for key in required:
        if key not in metrics:
            raise ValueError(f"metrics lack {key!r}")
        value = metrics[key]
        if isinstance(value, (list, bool)) or not math.isfinite(float(value)):
            raise ValueError(f"metrics {key!r} is {value!r}, not a finite number")
        out[key] = float(value)
    if m.ACCURACY in out and not 0.0 <= out[m.ACCURACY] <= 1.0:
        raise ValueError(f"metrics 'accuracy' is {out[m.ACCURACY]!r}, outside 0..1")
    if m.NUM_EXAMPLES in out:
        n = out[m.NUM_EXAMPLES]
        if not (n.is_integer() and 0 < n <= MAX_NUM_EXAMPLES):
            raise ValueError(f"metrics 'num-examples' is {n!r}, not a positive whole number")
    if m.COMPUTE_SECONDS in out and out[m.COMPUTE_SECONDS] < 0:
        raise ValueError(f"metrics 'compute-seconds' is {out[m.COMPUTE_SECONDS]!r}, negative")
    if m.COMPUTE_MACS in metrics:  # optional: only the modelled latency reads it
        macs = metrics[m.COMPUTE_MACS]
        if isinstance(macs, (list, bool)) or not (math.isfinite(float(macs)) and macs >= 0):
            raise ValueError(f"metrics 'compute-macs' is {macs!r}, not a count >= 0")
    return out


def reply_arrays(content: RecordDict, key: str = "arrays") -> dict[str, np.ndarray]:
    """The named ArrayRecord as numpy arrays; ``ValueError`` if absent or not finite."""
    record = content.array_records.get(key)
    if record is None:
        raise ValueError(f"reply has no ArrayRecord {key!r}")
    state = m.record_to_arrays(record)
    for name, value in state.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ValueError(f"tensor {name!r} has NaN or infinite values")
    return state


def check_shapes(state: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> None:
    """``ValueError`` naming the tensor unless ``state`` has ``expected``'s keys, shapes, dtypes."""
    shapes = {k: tuple(v.shape) for k, v in expected.items()}
    check_tensors(state, shapes, {k: v.dtype for k, v in expected.items()}, "reply")
