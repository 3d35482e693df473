"""SPIDER's client steps: the global update, the local search and the personal training.

The method is described in ``docs/baselines.md``; the server side is :mod:`.spider`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from functools import lru_cache
from logging import WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import log
from torch import nn
from torch.utils.data import DataLoader

from flwr_pfedrlnas.baselines.nas.client import register_step
from flwr_pfedrlnas.baselines.nas.darts_mixed import MixedDARTS, alpha_shapes, onehot_weights
from flwr_pfedrlnas.baselines.nas.spider_search import (
    DECIDED_EDGES,
    EDGES_PER_STEP,
    LAMBDA,
    META_KEY,
    PARTICIPATIONS,
    PERSONAL_KEY,
    SEED,
    STEP,
    VAL_BATCHES,
    WARMUP,
    edge_order,
    parse_decided,
    proximal_train,
    select_edges,
)
from flwr_pfedrlnas.core.cost import ComputeCounter
from flwr_pfedrlnas.core.search_space import Architecture, architecture_to_json
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.identity import client_id_from_context
from flwr_pfedrlnas.supernets import SupernetFamily, get_supernet
from flwr_pfedrlnas.training import evaluate, recalibrate_as_configured, train

__all__ = ["personal_module", "spider_evaluate", "spider_train"]


@lru_cache(maxsize=8)
def _family(name: str, config_json: str) -> SupernetFamily:
    return get_supernet(name, **json.loads(config_json))


def _family_of(config: ConfigRecord) -> SupernetFamily:
    for key in (m.SUPERNET, m.SUPERNET_CONFIG):
        if key not in config:
            raise ValueError(f"config lacks {key!r}")
    family = _family(str(config[m.SUPERNET]), str(config[m.SUPERNET_CONFIG]))
    alpha_shapes(family)  # ValueError unless the darts family
    return family


def personal_module(
    family: SupernetFamily, state: Mapping[str, torch.Tensor], decided: Architecture
) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """The personal network: a plain subnet once every edge is decided, else MixedDARTS.

    Returns the module (weights loaded from the supernet-shaped ``state``) and
    its parameters keyed by supernet key.
    """
    if len(decided) == len(family.search_space):
        arch = family.search_space.validate(decided)
        subnet = family.build_subnet(arch)
        own = subnet.state_dict()
        subnet.load_state_dict({k: state[k] for k in own}, strict=True)
        return subnet, dict(subnet.named_parameters())
    model = MixedDARTS(family, weights=onehot_weights(family, decided))
    model.net.load_state_dict(dict(state), strict=True)
    return model, dict(model.net.named_parameters())


def _module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    net = module.net if isinstance(module, MixedDARTS) else module
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def _load_personal(
    context: Context, family: SupernetFamily, keys: set[str]
) -> tuple[dict[str, torch.Tensor] | None, Architecture, int]:
    """The kept personal weights, decided edges and participations (None: none kept)."""
    if PERSONAL_KEY not in context.state.array_records or META_KEY not in context.state:
        return None, {}, 0
    meta = context.state.config_records[META_KEY]
    state = context.state.array_records[PERSONAL_KEY].to_torch_state_dict()
    if str(meta.get(m.SUPERNET_CONFIG, "")) != family.config_json() or set(state) != keys:
        log(WARNING, "SPIDER: kept personal model is for another supernet; starting afresh")
        return None, {}, 0
    return state, parse_decided(family, str(meta[m.ARCH])), int(meta[PARTICIPATIONS])


def _save_personal(
    context: Context,
    family: SupernetFamily,
    state: Mapping[str, torch.Tensor],
    decided: Architecture,
    participations: int,
) -> None:
    context.state[PERSONAL_KEY] = ArrayRecord({k: v.detach().cpu() for k, v in state.items()})
    context.state[META_KEY] = ConfigRecord(
        {
            m.ARCH: architecture_to_json(decided),
            PARTICIPATIONS: int(participations),
            m.SUPERNET_CONFIG: family.config_json(),
        }
    )


def _nonnegative_int(config: ConfigRecord, key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"config {key!r} is {value!r}, not an integer")
    if value < 0:
        raise ValueError(f"config {key!r} is {value!r}, negative")
    return int(value)


@register_step("train", STEP)
def spider_train(
    msg: Message,
    context: Context,
    train_loader: DataLoader,
    test_loader: DataLoader,
    device: torch.device,
) -> Message:
    """One SPIDER participation: global update, local search, personal training.

    1. The received supernet (uniform mixing) is trained ``local-epochs``
       epochs; these weights are the reply's ``arrays`` (the global update).
    2. After ``spider-warmup`` participations, up to ``spider-edges-per-step``
       undecided edges of the personal architecture are decided by
       perturbation (on the personal weights, training batches only).
    3. The personal network (kept in ``context.state``, initialised from the
       first received supernet) is trained ``local-epochs`` epochs with the
       proximal term towards the received supernet, then tested on the own
       test split.

    Metrics: num-examples, accuracy (personal model, own test split),
    train-loss (personal), global-train-loss, compute-seconds; config:
    client-id, arch (JSON of the decided edges), decided-edges.
    """
    start = time.perf_counter()
    config = msg.content["config"]
    family = _family_of(config)
    cid = client_id_from_context(context)
    epochs = _nonnegative_int(config, m.LOCAL_EPOCHS, 1)
    lr = float(config.get(m.LR, 0.05))
    lam = float(config.get(LAMBDA, 0.1))
    per_step = _nonnegative_int(config, EDGES_PER_STEP, 1)
    val_batches = _nonnegative_int(config, VAL_BATCHES, 2)
    warmup = _nonnegative_int(config, WARMUP, 1)
    seed = _nonnegative_int(config, SEED, 0)
    server_round = _nonnegative_int(config, m.SERVER_ROUND, 0)
    received = msg.content["arrays"].to_torch_state_dict()

    with ComputeCounter() as counted:  # MACs of the work timed (modelled latency)
        # (1) Global part: the whole supernet, every edge an equal mixture.
        global_model = MixedDARTS(family, weights=onehot_weights(family, {}))
        global_model.net.load_state_dict(received, strict=True)
        result = train(global_model, train_loader, epochs, lr, device=device, measure_memory=False)
        global_state = _module_state(global_model)
        del global_model

        # (2) Local search on the personal model.
        personal, decided, participations = _load_personal(context, family, set(received))
        if personal is None:
            personal = {k: v.clone() for k, v in received.items()}
        participations += 1
        if participations > warmup:
            undecided = [n for n in family.search_space.names if n not in decided]
            edges = edge_order(undecided, seed, cid, server_round)[:per_step]
            decided = select_edges(
                family, personal, decided, edges, train_loader, val_batches, device
            )

        # (3) Personal training with the proximal pull towards the received supernet.
        model, params = personal_module(family, personal, decided)
        loss, _ = proximal_train(model, params, received, train_loader, epochs, lr, lam, device)
        personal.update(_module_state(model))
        _, accuracy, _ = evaluate(model, test_loader, device=device)
    _save_personal(context, family, personal, decided, participations)

    num_examples = result.num_examples or len(getattr(train_loader, "dataset", []))
    metrics = {
        m.NUM_EXAMPLES: int(num_examples),
        m.ACCURACY: float(accuracy),
        m.TRAIN_LOSS: float(loss),
        "global-train-loss": float(result.loss),
        m.COMPUTE_SECONDS: float(time.perf_counter() - start),
        m.COMPUTE_MACS: int(counted.macs),
    }
    content = RecordDict(
        {
            "arrays": ArrayRecord(global_state),
            "metrics": MetricRecord(metrics),
            "config": ConfigRecord(
                {
                    m.CLIENT_ID: cid,
                    m.ARCH: architecture_to_json(decided),
                    DECIDED_EDGES: len(decided),
                }
            ),
        }
    )
    return Message(content=content, reply_to=msg)


@register_step("evaluate", STEP)
def spider_evaluate(
    msg: Message,
    context: Context,
    train_loader: DataLoader,
    test_loader: DataLoader,
    device: torch.device,
) -> Message:
    """Test the personal model (never trained: the received supernet) on the own test split.

    BatchNorm statistics are first re-estimated on local training batches
    when ``bn-recalibration-batches`` is non-zero (-1: all); the kept personal
    model is not changed.
    """
    config = msg.content["config"]
    family = _family_of(config)
    personal, decided, _ = _load_personal(context, family, set(family.supernet_shapes()))
    if personal is None:
        received = msg.content["arrays"].to_torch_state_dict()
        model, _ = personal_module(family, received, {})
    else:
        model, _ = personal_module(family, personal, decided)
    recalibrate_as_configured(
        model, train_loader, int(config.get(m.BN_RECALIBRATION_BATCHES, 0)), device
    )
    loss, accuracy, n = evaluate(model, test_loader, device=device)
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {m.NUM_EXAMPLES: int(n), m.ACCURACY: float(accuracy), "loss": float(loss)}
            ),
            "config": ConfigRecord(
                {
                    m.CLIENT_ID: client_id_from_context(context),
                    m.ARCH: architecture_to_json(decided),
                    DECIDED_EDGES: len(decided),
                }
            ),
        }
    )
    return Message(content=content, reply_to=msg)
