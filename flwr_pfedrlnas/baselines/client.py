"""Client side of the personalised-FL baselines: the Message-API train and test steps.

Personal tensors (FedRep's and FedBABU's heads, Local's whole model) live in
``context.state`` under ``personal-<method>`` and never travel; with a
``client-state-dir`` in the config they are mirrored to
``<dir>/<client-id>.<method>.npz`` on the client's own disk so that they
survive a restart of the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch import nn
from torch.utils.data import DataLoader

from flwr_pfedrlnas.baselines.models import build_model, is_head_key
from flwr_pfedrlnas.core.cost import ComputeCounter
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.identity import client_id_from_context
from flwr_pfedrlnas.flower.personal import (
    load_personal,
    personal_file,
    personal_record_key,
    save_personal,
)
from flwr_pfedrlnas.training import (
    evaluate,
    make_optimizer,
    recalibrate_as_configured,
    resolve_device,
    run_epochs,
    training_options,
)

__all__ = [
    "FINETUNE_EPOCHS",
    "HEAD_EPOCHS",
    "METHOD",
    "METHODS",
    "MODEL",
    "MODEL_CONFIG",
    "baseline_evaluate",
    "baseline_train",
    "build_from_config",
    "personal_key",
    "train_parts",
]

METHODS = ("fedavg-ft", "local", "fedrep", "fedbabu", "fedtp")
# ConfigRecord keys, server -> client (besides those of flwr_pfedrlnas.flower.messages).
METHOD = "method"
MODEL = "model"
MODEL_CONFIG = "model-config"
NUM_CLASSES = "num-classes"
IN_CHANNELS = "in-channels"
SEED = "seed"
HEAD_EPOCHS = "head-epochs"
FINETUNE_EPOCHS = m.FINETUNE_EPOCHS
CLIENT_STATE_DIR = m.CLIENT_STATE_DIR

# load_data(context, batch_size) -> (train_loader, test_loader)
LoadData = Callable[[Context, int], tuple[DataLoader, DataLoader]]
BuildModel = Callable[[ConfigRecord], nn.Module]


def personal_key(method: str) -> str:
    """Key of the method's personal ArrayRecord in ``context.state``."""
    return personal_record_key(method)


def build_from_config(config: ConfigRecord | dict[str, Any]) -> nn.Module:
    """The seeded initial model named by a server config (same on every client)."""
    return build_model(
        str(config[MODEL]),
        num_classes=int(config[NUM_CLASSES]),
        in_channels=int(config[IN_CHANNELS]),
        model_config=str(config.get(MODEL_CONFIG, "")),
        seed=int(config.get(SEED, 0)),
    )


def train_parts(
    model: nn.Module,
    loader: DataLoader,
    epochs: int,
    lr: float,
    trainable: Callable[[str], bool],
    device: torch.device | str = "cpu",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    optimizer: str = "sgd",
    label_smoothing: float = 0.0,
) -> tuple[float, int]:
    """Train the parameters whose name satisfies ``trainable``; the rest stays bit-for-bit.

    Frozen parameters get no gradient and are left out of the optimiser (no
    weight decay either). A BatchNorm layer whose parameters are all frozen
    still normalises with the batch's statistics, as in training, but stops
    tracking them, so its running statistics do not move. (Running it in eval
    mode instead would feed the trained part features normalised by stale
    running statistics, which the test, after BatchNorm re-estimation, never
    sees: torchvision's MobileNetV3 tracks with momentum 0.01, so after a
    round its statistics are still near their initial values, and a head
    trained on such features is of little use at test time.)
    Returns (mean loss, examples seen).
    """
    model.to(device)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(bool(trainable(name)))
        if p.requires_grad:
            params.append(p)
    if epochs <= 0 or not params:
        return float("nan"), 0
    opt = make_optimizer(params, optimizer, lr, momentum, weight_decay)
    model.train()
    frozen_norms = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            own = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
            if own and not any(trainable(k) for k in own):
                module.track_running_stats = False  # batch statistics, buffers untouched
                frozen_norms.append(module)
    try:
        total, n = run_epochs(model, loader, opt, epochs, device, label_smoothing=label_smoothing)
    finally:
        for module in frozen_norms:
            module.track_running_stats = True
        for p in model.parameters():
            p.requires_grad_(True)
    return (total / n if n else float("nan")), n


def _state_file(config, context: Context, method: str) -> Path | None:
    directory = str(config.get(CLIENT_STATE_DIR, ""))
    return personal_file(directory, client_id_from_context(context), method)


def _load_personal(context: Context, config, method: str) -> dict[str, torch.Tensor] | None:
    return load_personal(context, method, _state_file(config, context, method))


def _save_personal(context: Context, config, method: str, state: dict[str, torch.Tensor]) -> None:
    save_personal(context, method, state, _state_file(config, context, method))


def _head_of(model_name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if is_head_key(model_name, k)}


def _personal_model(
    msg: Message, context: Context, build: BuildModel, arrayrecord_key: str
) -> tuple[nn.Module, str, str]:
    """The client's model for this method: shared arrays from the message + personal state."""
    config = msg.content["config"]
    method, model_name = str(config[METHOD]), str(config[MODEL])
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    model = build(config)
    state = model.state_dict()
    personal = _load_personal(context, config, method)
    if method == "local":
        if personal is not None:
            state.update(personal)
    else:
        shared = msg.content[arrayrecord_key].to_torch_state_dict()
        unknown = set(shared) - set(state)
        if unknown:
            raise ValueError(f"message carries tensors the model lacks: {sorted(unknown)[:5]}")
        state.update(shared)
        if method in ("fedrep", "fedbabu"):
            if personal is None:  # the seeded initial head, kept from now on
                personal = _head_of(model_name, state)
                _save_personal(context, config, method, personal)
            state.update(personal)
        elif set(shared) != set(state):
            missing = sorted(set(state) - set(shared))[:5]
            raise ValueError(f"{method}: message lacks tensors {missing}")
    model.load_state_dict(state, strict=True)
    return model, method, model_name


def baseline_train(
    msg: Message,
    context: Context,
    train_loader: DataLoader,
    test_loader: DataLoader,
    device: str | None = None,
    build: BuildModel = build_from_config,
    arrayrecord_key: str = "arrays",
) -> Message:
    """One round of local training for the message's ``method``.

    - fedavg-ft, fedtp: train every parameter; reply with all of them.
    - local: train the own model kept in ``context.state``; reply with no arrays.
    - fedrep: ``head-epochs`` on the head (body frozen), then ``local-epochs``
      on the body (head frozen); the head stays in ``context.state``, the
      reply carries the body only.
    - fedbabu: ``local-epochs`` on the body; the head is the seeded random one,
      frozen, kept in ``context.state``; the reply carries the body only.

    Metrics: num-examples, accuracy (own test split, after training),
    train-loss, compute-seconds.
    """
    config = msg.content["config"]
    dev = resolve_device(device)
    model, method, model_name = _personal_model(msg, context, build, arrayrecord_key)
    epochs, lr = int(config.get(m.LOCAL_EPOCHS, 1)), float(config.get(m.LR, 0.05))
    options = training_options(config)

    def head(k: str) -> bool:
        return is_head_key(model_name, k)

    def body(k: str) -> bool:
        return not is_head_key(model_name, k)

    start = time.perf_counter()
    with ComputeCounter() as counted:  # MACs of the work timed (modelled latency)
        if method == "fedrep":
            head_epochs = int(config.get(HEAD_EPOCHS, 1))
            train_parts(model, train_loader, head_epochs, lr, head, dev, **options)
            loss, n = train_parts(model, train_loader, epochs, lr, body, dev, **options)
        elif method == "fedbabu":
            loss, n = train_parts(model, train_loader, epochs, lr, body, dev, **options)
        else:
            loss, n = train_parts(model, train_loader, epochs, lr, lambda k: True, dev, **options)
        _, accuracy, _ = evaluate(model, test_loader, device=dev)
    compute = time.perf_counter() - start
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if method == "local":
        _save_personal(context, config, method, state)
        reply_state: dict[str, torch.Tensor] = {}
    elif method == "fedrep":
        _save_personal(context, config, method, _head_of(model_name, state))
        reply_state = {k: v for k, v in state.items() if not head(k)}
    elif method == "fedbabu":
        reply_state = {k: v for k, v in state.items() if not head(k)}
    else:
        reply_state = state
    num_examples = n // max(epochs, 1) if n else len(getattr(train_loader, "dataset", []))
    metrics = {
        m.NUM_EXAMPLES: int(num_examples),
        m.ACCURACY: float(accuracy),
        m.TRAIN_LOSS: float(loss),
        m.COMPUTE_SECONDS: float(compute),
        m.COMPUTE_MACS: int(counted.macs),
    }
    content = RecordDict(
        {
            arrayrecord_key: ArrayRecord(reply_state),
            "metrics": MetricRecord(metrics),
            "config": ConfigRecord({m.CLIENT_ID: client_id_from_context(context)}),
        }
    )
    return Message(content=content, reply_to=msg)


def baseline_evaluate(
    msg: Message,
    context: Context,
    train_loader: DataLoader,
    test_loader: DataLoader,
    device: str | None = None,
    build: BuildModel = build_from_config,
    arrayrecord_key: str = "arrays",
) -> Message:
    """Test the client's personalised model on its own test split.

    With ``finetune-epochs`` > 0 in the config (the server sends it in the
    final evaluation only) the model is first fine-tuned on the local training
    data: every parameter for fedavg-ft, the head only for fedbabu. The
    fine-tuned weights are used for this test and not kept.
    """
    config = msg.content["config"]
    dev = resolve_device(device)
    model, method, model_name = _personal_model(msg, context, build, arrayrecord_key)
    finetune = int(config.get(FINETUNE_EPOCHS, 0))
    lr = float(config.get(m.LR, 0.05))
    options = training_options(config)
    if finetune > 0 and method == "fedavg-ft":
        train_parts(model, train_loader, finetune, lr, lambda k: True, dev, **options)
    elif finetune > 0 and method == "fedbabu":
        train_parts(
            model, train_loader, finetune, lr, lambda k: is_head_key(model_name, k), dev, **options
        )
    else:
        finetune = 0
    recalibrate_as_configured(
        model, train_loader, int(config.get(m.BN_RECALIBRATION_BATCHES, 0)), dev
    )
    loss, accuracy, n = evaluate(model, test_loader, device=dev)
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    m.NUM_EXAMPLES: int(n),
                    m.ACCURACY: float(accuracy),
                    "loss": float(loss),
                    FINETUNE_EPOCHS: int(finetune),
                }
            ),
            "config": ConfigRecord({m.CLIENT_ID: client_id_from_context(context)}),
        }
    )
    return Message(content=content, reply_to=msg)
