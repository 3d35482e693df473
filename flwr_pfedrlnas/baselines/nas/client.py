"""Client side of the federated-NAS baselines: steps chosen by the message.

Every message names its step in ``config["nas-step"]``; the step's handler
gets the message, the node's ``Context``, its train and test loaders and the
torch device, and returns the reply. ``"subnet"`` (train or test one subnet,
the same handlers as PerFedRLNAS's clients) is built in; each method module
registers its own steps with :func:`register_step`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ConfigRecord, Context, Message
from torch.utils.data import DataLoader

from flwr_pfedrlnas.baselines.nas.base import NAS_STEP
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.client import LoadData, evaluate_subnet, train_subnet
from flwr_pfedrlnas.training import resolve_device as device_of

__all__ = ["StepHandler", "device_of", "register_step", "steps"]

StepHandler = Callable[[Message, Context, DataLoader, DataLoader, torch.device], Message]

_STEPS: dict[tuple[str, str], StepHandler] = {}


def register_step(kind: str, step: str) -> Callable[[StepHandler], StepHandler]:
    """Decorator: ``fn`` handles messages of ``kind`` ("train"/"evaluate") and ``step``."""
    if kind not in ("train", "evaluate"):
        raise ValueError(f"kind must be 'train' or 'evaluate', got {kind!r}")

    def deco(fn: StepHandler) -> StepHandler:
        _STEPS[(kind, step)] = fn
        return fn

    return deco


def steps() -> dict[tuple[str, str], StepHandler]:
    """The registered ``(kind, step) -> handler`` table (a copy)."""
    return dict(_STEPS)


@register_step("train", "subnet")
def _train_subnet(msg, context, train_loader, test_loader, device) -> Message:
    return train_subnet(msg, context, train_loader, test_loader, str(device))


@register_step("evaluate", "subnet")
def _evaluate_subnet(msg, context, train_loader, test_loader, device) -> Message:
    return evaluate_subnet(msg, context, test_loader, str(device), train_loader=train_loader)


def handle(
    kind: str, msg: Message, context: Context, load_data: LoadData, device: str | None = None
) -> Message:
    """Run the handler of the message's step; ``ValueError`` naming an unknown step."""
    config = msg.content.config_records.get("config", ConfigRecord())
    step = str(config.get(NAS_STEP, "subnet"))
    handler = _STEPS.get((kind, step))
    if handler is None:
        known = sorted(s for k, s in _STEPS if k == kind)
        raise ValueError(f"{NAS_STEP} {step!r} unknown for {kind} messages; known: {known}")
    train_loader, test_loader, *_ = load_data(context, int(config.get(m.BATCH_SIZE, 32)))
    return handler(msg, context, train_loader, test_loader, device_of(device))
