"""SPIDER: personalised architectures by local perturbation-based search, on the DARTS space.

SPIDER (searching personalised neural architectures in federated learning)
gives every client two models over the same weight-sharing supernet:

- a **global** model, the whole supernet with every edge an equal mixture of
  its operations, trained by every sampled client and averaged by the server
  (FedAvg of the whole supernet, weighted by examples);
- a **personal** model, kept on the client and never sent: supernet-shaped
  weights and a partly discretised architecture. It inherits the global
  weights (initialised from the first global supernet the client receives)
  and is trained with a proximal term ``lambda / 2 * ||w_personal -
  w_global||^2`` that pulls it towards the freshly received global weights.
  Its architecture is searched locally: after ``spider-warmup``
  participations, every participation decides up to
  ``spider-edges-per-step`` undecided edges (a seeded order per client and
  round) by **perturbation-based operation selection**: for each candidate
  operation except 'none', the personal network's accuracy is measured on
  ``spider-val-batches`` batches of the client's training data with that
  operation masked out of the edge (the remaining weights renormalised); the
  operation whose removal costs the most accuracy is kept and the edge
  becomes one-hot. The personal network is then trained (which also lets it
  recover from the discretisation). Once every edge is decided the personal
  model is a plain subnet of its architecture and is trained and tested as
  one.

The client's deployed model is its personal model; a client that never
trained tests the global supernet (uniform mixing). The server records each
client's decided edges (reported in the training replies) for clients.csv.

Differences from the published method, all adaptations to this package:
the search space is the ``darts`` family (an operation per edge; no
topology pruning to two inputs per node, so a finished architecture has one
operation other than 'none' on every edge); the selection measures accuracy
on the client's training batches (the package has no separate local
validation split; the test split is never used for it) with BatchNorm in
batch-statistics mode and the stored statistics restored afterwards; the
proximal term is applied as its exact proximal step after every SGD step,
which is stable for any ``lambda`` (a very large ``lambda`` keeps the
personal weights at the global ones).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import log
from torch import nn
from torch.utils.data import DataLoader

from flwr_pfedrlnas.baselines.nas.base import FederatedNASBaseline, weighted_mean
from flwr_pfedrlnas.baselines.nas.client import register_step
from flwr_pfedrlnas.baselines.nas.darts_mixed import (
    CELL_TYPES,
    MixedDARTS,
    alpha_shapes,
    onehot_weights,
)
from flwr_pfedrlnas.core.search_space import Architecture, architecture_to_json
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.client import client_id_from_context
from flwr_pfedrlnas.supernets import SupernetFamily, get_supernet
from flwr_pfedrlnas.training import evaluate, recalibrate_batchnorm, run_epochs, train

__all__ = [
    "DECIDED_EDGES",
    "EDGES_PER_STEP",
    "LAMBDA",
    "META_KEY",
    "PERSONAL_KEY",
    "SEED",
    "SPIDER",
    "VAL_BATCHES",
    "WARMUP",
    "candidate_operations",
    "edge_order",
    "masked_weights",
    "parse_decided",
    "personal_module",
    "proximal_train",
    "select_operation",
    "spider_evaluate",
    "spider_train",
]

# ConfigRecord keys, server -> client.
LAMBDA = "spider-lambda"
EDGES_PER_STEP = "spider-edges-per-step"
VAL_BATCHES = "spider-val-batches"
WARMUP = "spider-warmup"
SEED = "spider-seed"
# ConfigRecord key, client -> server: how many edges the personal architecture has decided.
DECIDED_EDGES = "decided-edges"
# context.state keys of the personal model (weights) and its search state.
PERSONAL_KEY = "personal-spider"
META_KEY = "personal-spider-meta"
PARTICIPATIONS = "participations"

STEP = "spider"
_NONE = "none"


# ---------------------------------------------------------------------- pure parts
def candidate_operations(family: SupernetFamily) -> list[str]:
    """The operations an edge may be decided to: all but 'none', in the family's order."""
    return [str(op) for op in family.config["operations"] if op != _NONE]


def select_operation(
    candidates: Sequence[str],
    accuracy_without: Callable[[str], float],
    loss_without: Callable[[str], float] | None = None,
) -> str:
    """Perturbation-based operation selection for one edge.

    Parameters
    ----------
    candidates : Sequence[str]
        The operations that may be kept.
    accuracy_without : Callable[[str], float]
        Accuracy of the network with that operation masked out of the edge.
    loss_without : Callable[[str], float] | None (default: None)
        Its loss; breaks ties in accuracy (the larger loss wins).

    Returns
    -------
    str
        The operation whose removal lowers the accuracy the most (ties: the
        larger loss, then the first candidate).
    """
    if len(candidates) == 0:
        raise ValueError("no candidate operation to select from")
    best, best_key = None, None
    for i, op in enumerate(candidates):
        loss = float(loss_without(op)) if loss_without is not None else 0.0
        key = (float(accuracy_without(op)), -loss, i)
        if best_key is None or key < best_key:
            best, best_key = op, key
    return str(best)


def masked_weights(
    weights: Mapping[str, np.ndarray], ops: Sequence[str], edge: str, operation: str
) -> dict[str, np.ndarray]:
    """``weights`` with ``operation`` masked out of ``edge`` (``"<cell>.edge<k>"``).

    The edge's remaining weights are renormalised to their former sum; every
    other edge is unchanged.
    """
    cell, k = _split_edge(edge)
    out = {t: np.array(w, dtype=np.float32, copy=True) for t, w in weights.items()}
    if k >= len(out[cell]):
        raise ValueError(f"edge {edge!r} does not exist: a cell has {len(out[cell])} edges")
    row = out[cell][k].astype(np.float64)
    total = row.sum()
    row[list(ops).index(operation)] = 0.0
    rest = row.sum()
    if rest > 0:
        row *= total / rest
    out[cell][k] = row.astype(np.float32)
    return out


def edge_order(undecided: Sequence[str], seed: int, client_id: str, server_round: int) -> list[str]:
    """The undecided edges in the seeded order this client decides them in this round."""
    rng = np.random.default_rng([int(seed), zlib.crc32(str(client_id).encode()), int(server_round)])
    return [undecided[i] for i in rng.permutation(len(undecided))]


def parse_decided(family: SupernetFamily, text: Any) -> Architecture:
    """The decided edges from their JSON; ``ValueError`` naming a bad field or value."""
    if not isinstance(text, str):
        raise ValueError(f"config {m.ARCH!r} is {text!r}, not a JSON string")
    try:
        arch = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"config {m.ARCH!r} is not valid JSON: {text!r}") from err
    if not isinstance(arch, dict):
        raise ValueError(f"config {m.ARCH!r} must be a JSON object, got {text!r}")
    space = family.search_space
    names = set(space.names)
    out = {}
    for name, value in arch.items():
        if name not in names:
            raise ValueError(f"config {m.ARCH!r} has unknown edge {name!r}")
        dim = space[name]
        out[name] = dim.choices[dim.index(value)]  # ValueError naming field and value
    return {n: out[n] for n in space.names if n in out}


def _split_edge(edge: str) -> tuple[str, int]:
    cell, _, k = edge.partition(".edge")
    if cell not in CELL_TYPES or not k.isdigit():
        raise ValueError(f"{edge!r} is not an edge name '<normal|reduce>.edge<k>'")
    return cell, int(k)


class _ProximalSGD(torch.optim.SGD):
    """SGD whose every step ends with the exact proximal step of ``lam / 2 * ||w - a||^2``."""

    def __init__(
        self,
        pairs: Sequence[tuple[nn.Parameter, torch.Tensor]],
        lr: float,
        lam: float,
        momentum: float,
        weight_decay: float,
    ) -> None:
        super().__init__([p for p, _ in pairs], lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.anchors = [a.to(device=p.device, dtype=p.dtype) for p, a in pairs]
        self.params_in_order = [p for p, _ in pairs]
        self.shrink = 1.0 / (1.0 + lr * lam)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = super().step(closure)
        if self.shrink < 1.0:
            for p, a in zip(self.params_in_order, self.anchors):
                p.mul_(self.shrink).add_(a, alpha=1.0 - self.shrink)
        return loss


def proximal_train(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    anchor: Mapping[str, torch.Tensor],
    loader: DataLoader,
    epochs: int,
    lr: float,
    lam: float,
    device: torch.device | str = "cpu",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> tuple[float, int]:
    """SGD on the cross-entropy with the proximal term ``lam / 2 * ||w - anchor||^2``.

    After every SGD step each parameter takes the term's exact proximal step
    ``w <- (w + lr * lam * anchor) / (1 + lr * lam)``, stable for any ``lam``
    (``lam`` = 0: plain SGD; ``lam`` -> inf: the parameters stay at ``anchor``).

    Parameters
    ----------
    model : nn.Module
        Trained in train mode on ``loader``.
    params : Mapping[str, nn.Parameter]
        The parameters to train, by the key their anchor has.
    anchor : Mapping[str, torch.Tensor]
        The weights the term pulls towards (the received global ones).

    Returns
    -------
    tuple[float, int]
        Mean cross-entropy and the number of examples seen.
    """
    if not lam >= 0:
        raise ValueError(f"{LAMBDA} must be >= 0, got {lam!r}")
    model.to(device)
    optimizer = _ProximalSGD(
        [(p, anchor[k]) for k, p in params.items()], lr, lam, momentum, weight_decay
    )
    model.train()
    total, n = run_epochs(model, loader, optimizer, epochs, device)
    return (total / n if n else float("nan")), n


# ---------------------------------------------------------------------- client
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


def _batch_stats_accuracy(
    model: MixedDARTS, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> tuple[float, float]:
    """Accuracy and mean loss on ``batches``, BatchNorm on batch statistics.

    The stored running statistics are restored afterwards.
    """
    saved = {k: b.detach().clone() for k, b in model.named_buffers()}
    model.train()
    correct, total, loss = 0, 0, 0.0
    try:
        with torch.no_grad():
            for images, labels in batches:
                images, labels = images.to(device), labels.to(device)
                logits = model(images)
                loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
                correct += int((logits.argmax(dim=1) == labels).sum())
                total += int(labels.shape[0])
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(saved[k])
    if total == 0:
        return 0.0, 0.0
    return correct / total, loss / total


def _select_edges(
    family: SupernetFamily,
    state: Mapping[str, torch.Tensor],
    decided: Architecture,
    edges: Sequence[str],
    loader: DataLoader,
    val_batches: int,
    device: torch.device,
) -> Architecture:
    """Decide ``edges`` one after another by perturbation; the new decided edges."""
    decided = dict(decided)
    if not edges:
        return decided
    batches = []
    for i, batch in enumerate(loader):
        if i >= max(val_batches, 1):
            break
        batches.append(batch)
    ops = [str(o) for o in family.config["operations"]]
    candidates = candidate_operations(family)
    model = MixedDARTS(family, weights=onehot_weights(family, decided)).to(device)
    model.net.load_state_dict(dict(state), strict=True)
    for edge in edges:
        base = onehot_weights(family, decided)
        scores: dict[str, tuple[float, float]] = {}
        for op in candidates:
            model.set_weights(masked_weights(base, ops, edge, op))
            scores[op] = _batch_stats_accuracy(model, batches, device)
        decided[edge] = select_operation(
            candidates, lambda o, s=scores: s[o][0], lambda o, s=scores: s[o][1]
        )
    return {n: decided[n] for n in family.search_space.names if n in decided}


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
        decided = _select_edges(family, personal, decided, edges, train_loader, val_batches, device)

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
    batches = int(config.get(m.BN_RECALIBRATION_BATCHES, 0))
    if batches != 0:
        recalibrate_batchnorm(model, train_loader, None if batches < 0 else batches, device)
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


# ---------------------------------------------------------------------- server
class SPIDER(FederatedNASBaseline):
    """SPIDER on the ``darts`` family: FedAvg of the whole supernet, personal search on clients.

    Every sampled client gets the whole global supernet and SPIDER's knobs;
    it returns its update of the global supernet, and the server's new
    supernet is the example-weighted mean of the accepted updates. Personal
    weights and the local search stay on the clients (see the module
    docstring); the server keeps only each client's reported decided edges.

    Parameters
    ----------
    family : SupernetFamily
        A ``darts`` family.
    proximal_lambda : float (default: 0.1)
        Strength of the pull of the personal weights towards the global ones.
    edges_per_step : int (default: 2)
        Edges a client decides per participation after the warm-up.
    val_batches : int (default: 2)
        Training batches the perturbation measures accuracy on.
    warmup : int (default: 1)
        Participations of a client before its first selection.
    **kwargs
        Those of :class:`FederatedNASBaseline`.
    """

    method = "spider"
    label = "SPIDER"

    def __init__(
        self,
        family: SupernetFamily,
        proximal_lambda: float = 0.1,
        edges_per_step: int = 2,
        val_batches: int = 2,
        warmup: int = 1,
        **kwargs: Any,
    ) -> None:
        alpha_shapes(family)  # ValueError unless the darts family
        if not float(proximal_lambda) >= 0:
            raise ValueError(f"proximal_lambda must be >= 0, got {proximal_lambda!r}")
        for name, value, low in (
            ("edges_per_step", edges_per_step, 1),
            ("val_batches", val_batches, 1),
            ("warmup", warmup, 0),
        ):
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        super().__init__(family, **kwargs)
        self.proximal_lambda = float(proximal_lambda)
        self.edges_per_step = int(edges_per_step)
        self.val_batches = int(val_batches)
        self.warmup = int(warmup)
        self.decided: dict[str, Architecture] = {}

    def _config(self, server_round: int) -> ConfigRecord:
        return ConfigRecord(
            {
                **self.base_config(server_round, STEP),
                LAMBDA: self.proximal_lambda,
                EDGES_PER_STEP: self.edges_per_step,
                VAL_BATCHES: self.val_batches,
                WARMUP: self.warmup,
                SEED: self.seed,
            }
        )

    def train_content(self, server_round: int, client_id: str) -> RecordDict:
        """The whole global supernet and SPIDER's knobs."""
        return RecordDict(
            {
                self.arrayrecord_key: m.arrays_to_record(self.supernet),
                self.configrecord_key: self._config(server_round),
            }
        )

    def evaluate_content(self, server_round: int, client_id: str) -> RecordDict:
        """The whole supernet (what a never-trained client tests) and the config."""
        return self.train_content(server_round, client_id)

    def _reply_decided(self, content: RecordDict) -> Architecture:
        config = content.config_records.get(self.configrecord_key)
        if config is None:
            raise ValueError("reply has no ConfigRecord 'config'")
        if m.ARCH not in config:
            raise ValueError(f"config lacks {m.ARCH!r}")
        decided = parse_decided(self.family, config[m.ARCH])
        count = config.get(DECIDED_EDGES)
        if isinstance(count, bool) or not isinstance(count, int) or count != len(decided):
            raise ValueError(
                f"config {DECIDED_EDGES!r} is {count!r}, the arch decides {len(decided)} edges"
            )
        return decided

    def check_train_reply(self, server_round: int, client_id: str, content: RecordDict) -> None:
        """Metrics in range, a finite supernet of the right shapes, valid decided edges."""
        self.check_metrics(content)
        self.check_shapes(self.reply_arrays(content), self.supernet)
        self._reply_decided(content)

    def aggregate(self, server_round: int, replies: dict[str, RecordDict]) -> dict[str, Any]:
        """FedAvg of the returned supernets (example-weighted); keep the decided edges."""
        states, weights = [], []
        for cid, content in replies.items():
            states.append(self.reply_arrays(content))
            weights.append(float(content.metric_records[self.metricrecord_key][m.NUM_EXAMPLES]))
            self.decided[cid] = self._reply_decided(content)
        self.supernet = weighted_mean(states, weights)
        counts = [len(a) for a in self.decided.values()]
        return {"decided-edges-mean": float(np.mean(counts)) if counts else 0.0}

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = super().state_dict()
        decided = {cid: architecture_to_json(a) for cid, a in self.decided.items()}
        return arrays, {**meta, "decided": decided}

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        decided = {str(c): parse_decided(self.family, a) for c, a in meta["decided"].items()}
        super().load_state_dict(arrays, meta)
        self.decided = decided

    def client_row(self, client_id: str) -> dict[str, Any]:
        """The client's latest reported decided edges (JSON) and their number."""
        decided = self.decided.get(client_id, {})
        return {"arch": architecture_to_json(decided), DECIDED_EDGES: len(decided)}
