"""Reusable clients: Message-API handlers, a ClientApp factory and a NumPyClient."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn
from torch.utils.data import DataLoader

from flwr_pfedrlnas.core.cost import ComputeCounter
from flwr_pfedrlnas.core.search_space import (
    Architecture,
    architecture_from_json,
    architecture_to_json,
)
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.identity import client_id_from_context, identify
from flwr_pfedrlnas.flower.memory import is_out_of_memory, memory_budget_of, overrun_metrics
from flwr_pfedrlnas.flower.personal import KeptOnClient
from flwr_pfedrlnas.supernets import SupernetFamily, get_supernet
from flwr_pfedrlnas.training import (
    TrainResult,
    deployed_accuracy_of,
    evaluate,
    recalibrate_as_configured,
    resolve_device,
    split_batch,
    train,
    training_options,
    training_peak_memory,
)

__all__ = [
    "LoadData",
    "build_subnet_from_config",
    "client_id_from_context",
    "evaluate_subnet",
    "identify",
    "make_client_app",
    "memory_budget_of",
    "register_handlers",
    "train_subnet",
]

logger = logging.getLogger(__name__)

# load_data(context, batch_size) -> (train_loader, test_loader[, val_loader])
LoadData = Callable[[Context, int], tuple[DataLoader, DataLoader]]

DEFAULT_BATCH_SIZE = 32
# Run-config names (Flower's quickstart apps use them in [tool.flwr.app.config]) that
# the handlers read when the server's message does not carry the setting.
RUN_CONFIG_SETTINGS = (m.LOCAL_EPOCHS, m.LR, m.BATCH_SIZE)


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


def _local_train(
    model: nn.Module,
    train_loader: DataLoader,
    epochs: int,
    lr: float,
    device: torch.device,
    keys: tuple[str | None, str | None],
    **options: Any,
) -> TrainResult:
    """:func:`~flwr_pfedrlnas.training.train` on dict or tuple batches, memory not measured."""
    return train(
        model,
        train_loader,
        epochs=epochs,
        lr=lr,
        device=device,
        measure_memory=False,
        image_key=keys[0],
        label_key=keys[1],
        **options,
    )


def _fit(
    model: nn.Module,
    config: ConfigRecord | Mapping[str, Any],
    train_loader: DataLoader,
    test_loader: DataLoader,
    device: torch.device,
    memory_budget: float | None = None,
    keys: tuple[str | None, str | None] = (None, None),
    val_loader: DataLoader | None = None,
) -> tuple[dict[str, float], dict[str, torch.Tensor] | None]:
    """Measure, train, test; the metrics a reply carries, and the trained weights.

    First the subnet's peak training memory is measured on the first batch
    (:func:`~flwr_pfedrlnas.training.training_peak_memory`). Over
    ``memory_budget``, or out of memory while measuring or training, the
    client does not train (on): it returns ``memory-overrun`` = 1 with the
    peak and the budget, accuracy 0 and no weights (``None``). It never raises
    for lack of memory. ``keys`` are the image and label keys of dict batches.
    With a ``val_loader`` the trained subnet is also tested on the validation
    split (``val-accuracy``, what the search's reward may use instead of the test);
    when the config asks (``reward-deployed`` = 1), the received subnet is first
    tested there as it would be deployed (``deployed-val-accuracy``, see
    :func:`~flwr_pfedrlnas.training.deployed_accuracy_of`).
    """
    epochs = int(config.get(m.LOCAL_EPOCHS, 1))
    lr = float(config.get(m.LR, 0.05))
    start = time.perf_counter()
    peak = 0.0
    counted = ComputeCounter()
    with counted:  # the MACs of the work timed, for the modelled latency
        try:
            model.to(device)
            first = next(iter(train_loader), None)
            if first is not None:
                images, labels = split_batch(first, *keys)
                peak = float(training_peak_memory(model, images, labels, optimizer_slots=1))
            if memory_budget is not None and peak > memory_budget:
                seconds = time.perf_counter() - start
                return overrun_metrics(peak, memory_budget, seconds, counted.macs)
            deployed_accuracy = None
            if int(config.get(m.REWARD_DEPLOYED, 0)) and val_loader is not None:
                batches = int(config.get(m.BN_RECALIBRATION_BATCHES, 0))
                deployed_accuracy = deployed_accuracy_of(
                    model, train_loader, val_loader, batches, device, *keys
                )
            result = _local_train(
                model, train_loader, epochs, lr, device, keys, **training_options(config)
            )
            _, accuracy, _ = evaluate(model, test_loader, device, *keys)
            val_accuracy = None
            if val_loader is not None:
                _, val_accuracy, _ = evaluate(model, val_loader, device, *keys)
        except Exception as err:  # only running out of memory is answered, not raised
            if not is_out_of_memory(err):
                raise
            if device.type == "cuda":
                peak = max(peak, float(torch.cuda.max_memory_allocated(device)))
                torch.cuda.empty_cache()
            logger.warning("out of memory (%s): reported as a memory overrun", err)
            return overrun_metrics(peak, memory_budget, time.perf_counter() - start, counted.macs)
    compute = time.perf_counter() - start
    metrics = {
        m.NUM_EXAMPLES: int(result.num_examples),
        m.ACCURACY: float(accuracy),
        m.TRAIN_LOSS: float(result.loss),
        m.COMPUTE_SECONDS: float(compute),
        m.COMPUTE_MACS: int(counted.macs),
        m.PEAK_MEMORY_BYTES: peak,
        m.MEMORY_OVERRUN: 0,
    }
    if memory_budget is not None:
        metrics[m.MEMORY_BUDGET_BYTES] = float(memory_budget)
    if val_accuracy is not None:
        metrics[m.VAL_ACCURACY] = float(val_accuracy)
    if deployed_accuracy is not None:
        metrics[m.DEPLOYED_VAL_ACCURACY] = float(deployed_accuracy)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return metrics, state


def _settings(
    msg: Message, configrecord_key: str, defaults: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The message's config over ``defaults``: the server's setting wins."""
    return {**dict(defaults or {}), **dict(msg.content[configrecord_key])}


def train_subnet(
    msg: Message,
    context: Context,
    train_loader: DataLoader,
    test_loader: DataLoader,
    device: str | None = None,
    arrayrecord_key: str = "arrays",
    configrecord_key: str = "config",
    defaults: Mapping[str, Any] | None = None,
    image_key: str | None = None,
    label_key: str | None = None,
    val_loader: DataLoader | None = None,
) -> Message:
    """Handle a train message: build the subnet, train, test, reply.

    The reply carries ``arrays`` (trained subnet), ``metrics`` (num-examples,
    accuracy on the client's own test split after training, train-loss,
    compute-seconds, peak-memory-bytes, memory-overrun and, when known,
    memory-budget-bytes) and ``config`` echoing the architecture and the
    client id. When the measured peak exceeds the budget (see
    :func:`memory_budget_of`) the client does not train and replies with an
    empty ``arrays`` record and ``memory-overrun`` = 1. ``defaults`` are
    settings (``local-epochs``, ``lr``) used where the message has none;
    ``image_key`` / ``label_key`` name the columns of dict batches (see
    :func:`~flwr_pfedrlnas.training.split_batch`). With a ``val_loader`` the
    metrics also carry ``val-accuracy`` (the trained subnet on the validation split).
    """
    config = _settings(msg, configrecord_key, defaults)
    family, arch, model = build_subnet_from_config(config)
    kept = KeptOnClient(family, arch, msg, context, config, client_id_from_context(context))
    model.load_state_dict(kept.state(msg.content[arrayrecord_key]), strict=True)
    budget = memory_budget_of(config, dict(context.node_config))
    metrics, state = _fit(
        model,
        config,
        train_loader,
        test_loader,
        resolve_device(device),
        budget,
        (image_key, label_key),
        val_loader,
    )
    state = kept.trained(state)
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


def _batchnorm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The running statistics of every BatchNorm layer, by ``state_dict`` key."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for buffer_name, buffer in module.named_buffers(recurse=False):
                out[f"{name}.{buffer_name}" if name else buffer_name] = buffer.detach().cpu()
    return out


def _test(
    model: nn.Module,
    config: ConfigRecord | Mapping[str, Any],
    test_loader: DataLoader,
    train_loader: DataLoader | None,
    device: torch.device,
    keys: tuple[str | None, str | None] = (None, None),
) -> tuple[float, float, int, bool]:
    """Test, after local fine-tuning and BatchNorm re-estimation when the config asks.

    ``finetune-epochs`` > 0 (the strategy sends it in the final evaluation
    only, when configured): SGD on every weight of ``model`` over the local
    training data first, at the config's ``lr``; the fine-tuned weights serve
    this test and are never uploaded. Returns loss, accuracy, examples and
    whether BatchNorm statistics were re-estimated.
    """
    finetune = int(config.get(m.FINETUNE_EPOCHS, 0))
    if finetune > 0:
        if train_loader is None:
            raise ValueError(
                f"{m.FINETUNE_EPOCHS}={finetune} needs this client's training data, "
                "but the evaluate handler was given no train_loader"
            )
        _local_train(model, train_loader, finetune, float(config.get(m.LR, 0.05)), device, keys)
    batches = int(config.get(m.BN_RECALIBRATION_BATCHES, 0))
    recalibrated = batches != 0 and train_loader is not None
    if recalibrated:
        recalibrate_as_configured(model, train_loader, batches, device, *keys)
    return (*evaluate(model, test_loader, device, *keys), recalibrated)


def evaluate_subnet(
    msg: Message,
    context: Context,
    test_loader: DataLoader,
    device: str | None = None,
    arrayrecord_key: str = "arrays",
    configrecord_key: str = "config",
    train_loader: DataLoader | None = None,
    defaults: Mapping[str, Any] | None = None,
    image_key: str | None = None,
    label_key: str | None = None,
) -> Message:
    """Handle an evaluate message: test the given subnet on the own test split.

    When the config carries ``finetune-epochs`` (> 0), the subnet is first
    fine-tuned on the local training data (``train_loader``), weights not
    kept; when it carries ``bn-recalibration-batches`` (non-zero; -1 = all)
    and ``train_loader`` is given, BatchNorm statistics are then re-estimated
    on that many local training batches (no weight changes). Without
    fine-tuning, the reply's ``arrays`` then carries the re-estimated
    BatchNorm buffers: with the weights the server sent they are exactly the
    model this client tested, which the server saves as its deployed model.
    """
    config = _settings(msg, configrecord_key, defaults)
    family, arch, model = build_subnet_from_config(config)
    kept = KeptOnClient(family, arch, msg, context, config, client_id_from_context(context))
    model.load_state_dict(kept.state(msg.content[arrayrecord_key]), strict=True)
    keys = (image_key, label_key)
    loss, accuracy, n, recalibrated = _test(
        model, config, test_loader, train_loader, resolve_device(device), keys
    )
    finetune = int(config.get(m.FINETUNE_EPOCHS, 0))
    statistics = _batchnorm_buffers(model) if recalibrated and finetune <= 0 else {}
    # The statistics of a personal block are the client's own: they stay.
    statistics = {k: v for k, v in statistics.items() if k not in kept.used}
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    m.NUM_EXAMPLES: n,
                    m.ACCURACY: float(accuracy),
                    "loss": float(loss),
                    m.FINETUNE_EPOCHS: finetune,
                }
            ),
            configrecord_key: ConfigRecord(
                {m.ARCH: architecture_to_json(arch), m.CLIENT_ID: client_id_from_context(context)}
            ),
        }
    )
    if statistics:
        content[arrayrecord_key] = ArrayRecord(statistics)
    return Message(content=content, reply_to=msg)


def _run_config_defaults(context: Context) -> dict[str, Any]:
    return {k: context.run_config[k] for k in RUN_CONFIG_SETTINGS if k in context.run_config}


def register_handlers(
    app: ClientApp,
    load_data: LoadData,
    device: str | None = None,
    image_key: str | None = None,
    label_key: str | None = None,
) -> ClientApp:
    """Register on ``app`` every handler the strategy needs: train, evaluate, query.

    The handlers are Flower's default ones (``@app.train()``,
    ``@app.evaluate()``, ``@app.query()``): the subnet training, the deployed
    subnet's test and the identity answer. ``local-epochs``, ``lr`` and
    ``batch-size`` come from the server's message; where a message lacks one
    (another strategy, or an older one), the run config's value of the same
    name is used, then the defaults (1, 0.05, 32). The server's message wins.

    Parameters
    ----------
    app : ClientApp
        The user's ``ClientApp``; it must have no handler of those names yet
        (Flower raises ``ValueError`` otherwise).
    load_data : Callable[[Context, int], tuple[DataLoader, DataLoader]]
        Returns this node's train and test loaders for a batch size, or train,
        test and validation loaders (the validation split then gives each
        training reply a ``val-accuracy`` for the search's reward); called on
        every message, so it should cache. Batches may be dicts (flwr-datasets)
        or ``(images, labels)`` pairs.
    device : str | None (default: None)
        Torch device; CUDA when available if ``None``.
    image_key, label_key : str | None (default: None)
        Keys of dict batches; ``None`` finds the common names (see
        :func:`~flwr_pfedrlnas.training.split_batch`).

    Returns
    -------
    ClientApp
        ``app`` itself.
    """

    def _loaders(msg: Message, context: Context) -> tuple[DataLoader, DataLoader, Any]:
        config = msg.content.config_records.get("config", ConfigRecord())
        batch_size = config.get(
            m.BATCH_SIZE, context.run_config.get(m.BATCH_SIZE, DEFAULT_BATCH_SIZE)
        )
        # (train, test) or (train, test, validation).
        train_loader, test_loader, *rest = load_data(context, int(batch_size))
        return train_loader, test_loader, rest[0] if rest else None

    def _options(context: Context) -> dict[str, Any]:
        """Both handlers' settings besides the data: run-config defaults, batch keys."""
        return {
            "defaults": _run_config_defaults(context),
            "image_key": image_key,
            "label_key": label_key,
        }

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        train_loader, test_loader, val_loader = _loaders(msg, context)
        return train_subnet(
            msg,
            context,
            train_loader,
            test_loader,
            device,
            val_loader=val_loader,
            **_options(context),
        )

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        train_loader, test_loader, _ = _loaders(msg, context)
        return evaluate_subnet(
            msg, context, test_loader, device, train_loader=train_loader, **_options(context)
        )

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        return identify(msg, context)

    return app


def make_client_app(
    load_data: LoadData,
    device: str | None = None,
    image_key: str | None = None,
    label_key: str | None = None,
) -> ClientApp:
    """A new ``ClientApp`` with :func:`register_handlers`' handlers (same parameters)."""
    return register_handlers(ClientApp(), load_data, device, image_key, label_key)
