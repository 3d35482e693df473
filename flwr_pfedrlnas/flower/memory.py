"""A client's training memory: its budget, and the reply when a subnet does not fit."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ConfigRecord

from flwr_pfedrlnas.flower import messages as m

__all__ = ["is_out_of_memory", "memory_budget_of", "overrun_metrics"]

logger = logging.getLogger(__name__)


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def memory_budget_of(
    config: ConfigRecord | Mapping[str, Any], node_config: Mapping[str, Any] | None = None
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


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def overrun_metrics(
    peak: float, budget: float | None, seconds: float, macs: int = 0
) -> tuple[dict[str, float], None]:
    metrics = {
        m.NUM_EXAMPLES: 0,
        m.ACCURACY: 0.0,
        m.COMPUTE_SECONDS: float(seconds),
        m.COMPUTE_MACS: int(macs),
        m.PEAK_MEMORY_BYTES: float(peak),
        m.MEMORY_OVERRUN: 1,
    }
    if budget is not None:
        metrics[m.MEMORY_BUDGET_BYTES] = float(budget)
    return metrics, None
