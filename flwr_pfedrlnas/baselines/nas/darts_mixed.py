"""DARTS's continuous relaxation over the ``darts`` family: mixed edges and derivation.

The ``darts`` supernet's forward takes per-edge operation weights
(``{"normal": [edges, ops], "reduce": [edges, ops]}``, rows in the family's
``operations`` order, 'none' included). :class:`MixedDARTS` wraps it with
either learnable architecture logits (FedNAS: ``softmax(alpha)`` per edge) or
fixed weights (SPIDER's partly discretised personal model); both keep the
supernet's own ``state_dict`` keys for the weights, so the server merges them
like any other state.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from flwr_pfedrlnas.core.search_space import Architecture
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = [
    "CELL_TYPES",
    "MixedDARTS",
    "alpha_shapes",
    "derive_architecture",
    "edge_inputs",
    "onehot_weights",
    "zero_alphas",
]

CELL_TYPES = ("normal", "reduce")


def _check_darts(family: SupernetFamily) -> None:
    if family.name != "darts":
        raise ValueError(f"this method searches the 'darts' family, not {family.name!r}")


def alpha_shapes(family: SupernetFamily) -> dict[str, tuple[int, int]]:
    """Shape ``(edges, operations)`` of each cell type's architecture parameters."""
    _check_darts(family)
    n_ops = len(family.config["operations"])
    return {t: (family.num_edges, n_ops) for t in CELL_TYPES}


def zero_alphas(family: SupernetFamily) -> dict[str, np.ndarray]:
    """All-zero logits (uniform mixing), float32, per cell type."""
    return {t: np.zeros(s, dtype=np.float32) for t, s in alpha_shapes(family).items()}


def edge_inputs(steps: int) -> list[tuple[int, int]]:
    """``(node, input)`` of every edge in DARTS's order (node ``j`` reads ``2 + j`` inputs)."""
    return [(j, i) for j in range(steps) for i in range(2 + j)]


def onehot_weights(
    family: SupernetFamily, arch: Mapping[str, str], undecided: float | None = None
) -> dict[str, np.ndarray]:
    """Mixing weights that select ``arch[dim]`` on each edge.

    Dimensions missing from ``arch`` get the uniform mean over every
    operation ('none' a zero term), as the supernet's own forward; this is
    how a partly discretised network is expressed.
    """
    ops = list(family.config["operations"])
    out = {}
    for t, (n_edges, n_ops) in alpha_shapes(family).items():
        w = np.full((n_edges, n_ops), 1.0 / n_ops if undecided is None else undecided)
        for k in range(n_edges):
            name = f"{t}.edge{k}"
            if name in arch:
                w[k] = 0.0
                w[k, ops.index(str(arch[name]))] = 1.0
        out[t] = w.astype(np.float32)
    return out


def derive_architecture(family: SupernetFamily, alphas: Mapping[str, np.ndarray]) -> Architecture:
    """DARTS's discretisation, written in the path-wise space.

    For each intermediate node keep the ``2`` incoming edges whose strongest
    operation other than 'none' has the largest softmax weight, with that
    operation; every other edge becomes 'none' (absent). Without 'none' among
    the operations every edge keeps its strongest operation. Ties: the first.
    """
    ops = list(family.config["operations"])
    steps = int(family.config["steps"])
    has_none = "none" in ops
    arch: dict[str, str] = {}
    for t in CELL_TYPES:
        logits = np.asarray(alphas[t], dtype=np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        if has_none:
            probs[:, ops.index("none")] = -1.0
        best_op = probs.argmax(axis=1)
        strength = probs.max(axis=1)
        inputs = edge_inputs(steps)
        for j in range(steps):
            edges = [k for k, (node, _) in enumerate(inputs) if node == j]
            keep = set(edges)
            if has_none:
                ranked = sorted(edges, key=lambda k: (-strength[k], k))
                keep = set(ranked[:2])
            for k in edges:
                arch[f"{t}.edge{k}"] = ops[int(best_op[k])] if k in keep else "none"
    return family.search_space.validate(arch)


class MixedDARTS(nn.Module):
    """The ``darts`` supernet with every edge a weighted mixture of its operations.

    Parameters
    ----------
    family : SupernetFamily
        A ``darts`` family.
    alphas : Mapping[str, np.ndarray] | None (default: None)
        Architecture logits per cell type; learnable (``self.alphas``), mixing
        with ``softmax`` over each edge's operations.
    weights : Mapping[str, np.ndarray] | None (default: None)
        Fixed mixing weights instead of logits (used as given).
    """

    def __init__(
        self,
        family: SupernetFamily,
        alphas: Mapping[str, np.ndarray] | None = None,
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        if (alphas is None) == (weights is None):
            raise ValueError("give exactly one of alphas and weights")
        shapes = alpha_shapes(family)
        given = alphas if alphas is not None else weights
        for t, shape in shapes.items():
            value = np.asarray(given[t])
            if value.shape != shape:
                raise ValueError(f"{t} architecture weights have shape {value.shape}, not {shape}")
        self.net = family.build_supernet()
        self.alphas: nn.ParameterDict | None = None
        if alphas is not None:
            self.alphas = nn.ParameterDict(
                {
                    t: nn.Parameter(torch.tensor(np.asarray(alphas[t]), dtype=torch.float32))
                    for t in CELL_TYPES
                }
            )
        else:
            for t in CELL_TYPES:
                self.register_buffer(
                    f"mix_{t}",
                    torch.tensor(np.asarray(weights[t]), dtype=torch.float32),
                    persistent=False,
                )

    def mixing(self) -> dict[str, torch.Tensor]:
        """The per-edge operation weights the forward uses."""
        if self.alphas is not None:
            return {t: torch.softmax(self.alphas[t], dim=-1) for t in CELL_TYPES}
        return {t: getattr(self, f"mix_{t}") for t in CELL_TYPES}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace the fixed mixing weights (fixed-weight instances only)."""
        if self.alphas is not None:
            raise ValueError("this instance learns its logits; it has no fixed weights")
        for t in CELL_TYPES:
            getattr(self, f"mix_{t}").copy_(
                torch.tensor(np.asarray(weights[t]), dtype=torch.float32)
            )

    def weight_parameters(self) -> list[nn.Parameter]:
        """The network's weights (not the architecture logits)."""
        return list(self.net.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, self.mixing())

    def weights_state(self) -> dict[str, torch.Tensor]:
        """The supernet's ``state_dict`` (its own keys, without the logits)."""
        return self.net.state_dict()

    def alphas_numpy(self) -> dict[str, np.ndarray]:
        if self.alphas is None:
            raise ValueError("this instance has no architecture logits")
        return {t: self.alphas[t].detach().cpu().numpy().copy() for t in CELL_TYPES}
