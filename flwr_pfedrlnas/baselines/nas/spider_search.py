"""SPIDER's message keys and local search: perturbation-based operation selection, proximal SGD.

:mod:`.spider_client` runs the search on a client, :mod:`.spider` is the
server side; the method is described in ``docs/baselines.md``.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from flwr_pfedrlnas.baselines.nas.darts_mixed import CELL_TYPES, MixedDARTS, onehot_weights
from flwr_pfedrlnas.core.search_space import Architecture
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.supernets import SupernetFamily
from flwr_pfedrlnas.training import run_epochs

__all__ = [
    "DECIDED_EDGES",
    "EDGES_PER_STEP",
    "LAMBDA",
    "META_KEY",
    "PERSONAL_KEY",
    "SEED",
    "STEP",
    "VAL_BATCHES",
    "WARMUP",
    "candidate_operations",
    "edge_order",
    "masked_weights",
    "parse_decided",
    "proximal_train",
    "select_edges",
    "select_operation",
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


def select_edges(
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
