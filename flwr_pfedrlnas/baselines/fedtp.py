"""FedTP: a server-side hypernetwork generates each client's attention projections.

Described in ``docs/baselines.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict
from torch import nn

from flwr_pfedrlnas.baselines.models import attention_keys
from flwr_pfedrlnas.baselines.nas.base import checked_unprefixed
from flwr_pfedrlnas.baselines.personalised import PersonalisedFedAvg
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.replies import reply_arrays

__all__ = ["AttentionHypernetwork", "FedTP"]

HYPERNETWORK_PREFIX = "hypernetwork/"


class AttentionHypernetwork(nn.Module):
    """FedTP's hypernetwork: client embedding -> q, k, v weights of every ViT block.

    The output layers' biases start at the seeded model's q/k/v weights and
    their weights near zero, so at the start every client gets (almost) the
    common initialisation, personalised through its embedding as training goes.
    """

    def __init__(
        self,
        num_clients: int,
        targets: Mapping[str, torch.Tensor],
        embed_dim: int = 16,
        hidden: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(int(seed))
        self.shapes = {k: tuple(v.shape) for k, v in targets.items()}
        self.names = list(targets)
        self.embeddings = nn.Embedding(num_clients, embed_dim)
        with torch.no_grad():
            self.embeddings.weight.copy_(torch.randn(num_clients, embed_dim, generator=gen))
        self.trunk = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden)
        )
        self.outs = nn.ModuleList(nn.Linear(hidden, v.numel()) for v in targets.values())
        with torch.no_grad():
            for out, target in zip(self.outs, targets.values()):
                out.weight.normal_(0.0, 1e-3, generator=gen)
                out.bias.copy_(target.reshape(-1))

    def forward(self, index: int) -> dict[str, torch.Tensor]:
        h = self.trunk(self.embeddings(torch.tensor([int(index)]))[0])
        return {k: out(h).view(self.shapes[k]) for k, out in zip(self.names, self.outs)}


class FedTP(PersonalisedFedAvg):
    """FedTP: everything except the q/k/v weights is averaged; a hypernetwork makes those.

    The hypernetwork is updated by the chain rule from the clients' updates of
    the generated weights: ``grad_W = -(W_trained - W_sent)`` is
    back-propagated through the hypernetwork to its parameters and the
    client's embedding. The output biases (the part every client shares) move
    with ``lr = 1`` (they follow the example-weighted mean update, as FedAvg
    would); embeddings and the other parameters with SGD at ``hn_lr``.

    Parameters
    ----------
    num_clients : int (default: 10)
        Rows of the client-embedding table.
    hn_lr, hn_embed_dim, hn_hidden : float, int, int (default: 0.01, 16, 32)
        The hypernetwork's learning rate, embedding and hidden sizes.
    *args, **kwargs
        As :class:`~flwr_pfedrlnas.baselines.personalised.PersonalisedFedAvg` (model "vit").
    """

    method = "fedtp"
    label = "FedTP"

    def __init__(
        self,
        *args: Any,
        num_clients: int = 10,
        hn_lr: float = 0.01,
        hn_embed_dim: int = 16,
        hn_hidden: int = 32,
        **kwargs: Any,
    ) -> None:
        self.attention: list[str] = []
        super().__init__(*args, **kwargs)
        if self.model_name != "vit":
            raise ValueError(f"FedTP runs on the ViT only (model='vit'), got {self.model_name!r}")
        self.attention = attention_keys(self._template)
        self.shared = {k: v for k, v in self.shared.items() if k not in self.attention}
        state = self._template.state_dict()
        self.hypernetwork = AttentionHypernetwork(
            num_clients, {k: state[k] for k in self.attention}, hn_embed_dim, hn_hidden, self.seed
        )
        self.hn_lr = float(hn_lr)
        named = list(self.hypernetwork.named_parameters())
        biases = [p for n, p in named if n.endswith("bias") and n.startswith("outs.")]
        others = [p for n, p in named if not (n.endswith("bias") and n.startswith("outs."))]
        # Plain SGD (no momentum): the optimiser has no state to checkpoint.
        self.hn_optimizer = torch.optim.SGD(
            [{"params": biases, "lr": 1.0}, {"params": others}], lr=self.hn_lr
        )
        self.client_index: dict[str, int] = {}
        self.num_clients = int(num_clients)

    def is_shared(self, key: str) -> bool:
        return key not in self.attention

    def index_of(self, client_id: str) -> int:
        """The client's embedding row (``int(id)`` for ids 0..K-1, else in order of arrival)."""
        if client_id not in self.client_index:
            taken = set(self.client_index.values())
            if (
                client_id.isdigit()
                and int(client_id) < self.num_clients
                and int(client_id) not in taken
            ):
                index = int(client_id)
            else:
                free = [i for i in range(self.num_clients) if i not in taken]
                if not free:
                    raise ValueError(f"more than num_clients={self.num_clients} clients")
                index = free[0]
            self.client_index[client_id] = index
        return self.client_index[client_id]

    @torch.no_grad()
    def projections(self, client_id: str) -> dict[str, np.ndarray]:
        """The q/k/v weights the hypernetwork generates for ``client_id``."""
        return {k: v.numpy().copy() for k, v in self.hypernetwork(self.index_of(client_id)).items()}

    def arrays_for(self, client_id: str) -> dict[str, np.ndarray]:
        state = {**self.shared, **self.projections(client_id)}
        return {k: state[k] for k in self.keys}

    def aggregate_arrays(
        self, server_round: int, replies: dict[str, RecordDict]
    ) -> dict[str, np.ndarray] | None:
        merged = super().aggregate_arrays(server_round, replies)
        weights = np.array(
            [
                float(c.metric_records[self.metricrecord_key][m.NUM_EXAMPLES])
                for c in replies.values()
            ]
        )
        weights = weights / weights.sum()
        self.hn_optimizer.zero_grad(set_to_none=True)
        for (cid, content), w in zip(replies.items(), weights):
            trained = reply_arrays(content, self.arrayrecord_key)
            sent = self._sent[cid]
            generated = self.hypernetwork(self.index_of(cid))
            names = list(generated)
            grads = [torch.from_numpy(w * -(trained[k] - sent[k])).float() for k in names]
            torch.autograd.backward([generated[k] for k in names], grads)
        self.hn_optimizer.step()
        return merged

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "hn-lr": self.hn_lr, "num-clients": self.num_clients}

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = super().state_dict()
        for name, value in self.hypernetwork.state_dict().items():
            arrays[HYPERNETWORK_PREFIX + name] = value.detach().cpu().numpy().copy()
        return arrays, {**meta, "client-index": dict(self.client_index)}

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        own = {k: v.detach().cpu().numpy() for k, v in self.hypernetwork.state_dict().items()}
        hn = checked_unprefixed(HYPERNETWORK_PREFIX, arrays, own)
        index = {str(c): int(i) for c, i in meta["client-index"].items()}
        super().load_state_dict(arrays, meta)
        self.hypernetwork.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in hn.items()})
        self.client_index = index
