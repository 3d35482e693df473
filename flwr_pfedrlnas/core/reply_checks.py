"""What makes one client's training reply unusable, named by field and value."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from flwr_pfedrlnas.core.aggregation import check_subnet_state
from flwr_pfedrlnas.core.replies import ClientReply, reward_accuracy_of
from flwr_pfedrlnas.core.search_config import SearchConfig
from flwr_pfedrlnas.core.search_space import Architecture, architecture_to_json
from flwr_pfedrlnas.supernets.base import SupernetFamily

__all__ = ["MAX_NUM_EXAMPLES", "is_overrun", "reply_problem"]

# num-examples above this is treated as a corrupt reply, not a large client.
MAX_NUM_EXAMPLES = 10**9


def is_overrun(reply: ClientReply) -> bool:
    """Over budget: flagged by the client, or its peak above its budget."""
    budget = reply.memory_budget_bytes
    over = (
        budget is not None
        and isinstance(budget, (int, float, np.number))
        and budget > 0
        and isinstance(reply.peak_memory_bytes, (int, float, np.number))
        and reply.peak_memory_bytes > budget
    )
    return bool(reply.memory_overrun) or bool(over)


def reply_problem(
    reply: ClientReply,
    sent: Architecture,
    family: SupernetFamily,
    config: SearchConfig,
    supernet: Mapping[str, np.ndarray],
) -> str | None:
    """Why ``reply`` (to a proposal of ``sent``) cannot be used; ``None`` when it can.

    The echoed architecture must be the one sent; the metrics numbers in range
    (``val-accuracy`` too when the reward reads it); the state the subnet's
    (keys, shapes, dtypes, finite values), unless the client ran over its
    memory budget, whose state is never used.
    """
    try:
        arch = family.search_space.validate(sent if reply.arch is None else reply.arch)
    except ValueError as err:
        return str(err)
    if architecture_to_json(arch) != architecture_to_json(sent):
        return f"arch is {architecture_to_json(arch)}, but {architecture_to_json(sent)} was sent"
    overrun = is_overrun(reply)
    checks = [
        ("num-examples", reply.num_examples, lambda v: 0 <= v <= MAX_NUM_EXAMPLES),
        ("accuracy", reply.accuracy, lambda v: 0.0 <= v <= 1.0),
        ("compute-seconds", reply.compute_seconds, lambda v: v >= 0),
        ("peak-memory-bytes", reply.peak_memory_bytes, lambda v: v >= 0),
    ]
    if reply.compute_macs is not None:
        checks.append(("compute-macs", reply.compute_macs, lambda v: v >= 0))
    reward_field = {"validation": "val-accuracy", "deployed": "deployed-val-accuracy"}
    if config.reward_accuracy in reward_field and not overrun:
        name = reward_field[config.reward_accuracy]
        value = reward_accuracy_of(reply, config.reward_accuracy)
        if value is None:
            return (
                f"{name} is missing: the reward uses the validation split "
                f"(reward_accuracy={config.reward_accuracy!r}); give the clients one "
                "(val-fraction > 0)"
            )
        checks.append((name, value, lambda v: 0.0 <= v <= 1.0))
    for name, value, ok in checks:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            return f"{name} is {value!r}, not a number"
        if not math.isfinite(value) or not ok(value):
            return f"{name} is {value!r}, out of range"
    if overrun:
        return None  # nothing of its state is used: it is not merged
    if reply.num_examples == 0:
        return "num-examples is 0, out of range"
    if config.memory_aware and not (
        reply.memory_budget_bytes is not None and reply.memory_budget_bytes > 0
    ):
        return f"memory-budget-bytes is {reply.memory_budget_bytes!r}, not positive"
    try:
        check_subnet_state(family, arch, reply.state, supernet)
    except ValueError as err:
        return str(err)
    return None
