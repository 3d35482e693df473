"""FedNAS: federated DARTS search of one shared architecture, then federated training of it.

The method, and where this package's version differs, is described in
``docs/baselines.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from flwr_pfedrlnas.baselines.nas.base import (
    FederatedNASBaseline,
    checked_unprefixed,
    weighted_mean,
)
from flwr_pfedrlnas.baselines.nas.client import register_step
from flwr_pfedrlnas.baselines.nas.darts_mixed import MixedDARTS, derive_architecture, zero_alphas
from flwr_pfedrlnas.core.aggregation import check_subnet_state, extract_subnet, merge_subnets
from flwr_pfedrlnas.core.cost import ComputeCounter
from flwr_pfedrlnas.core.search_space import Architecture, architecture_to_json
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.identity import client_id_from_context
from flwr_pfedrlnas.protocol.checkpoint import prefixed
from flwr_pfedrlnas.supernets import get_supernet
from flwr_pfedrlnas.training import evaluate

__all__ = ["FedNAS", "darts_search_train"]

ALPHAS = "alphas"  # ArrayRecord key of the architecture logits
ALPHAS_PREFIX = "alphas/"  # their names in the checkpoint
ARCH_LR = "arch-lr"
ARCH_WEIGHT_DECAY = "arch-weight-decay"


class FedNAS(FederatedNASBaseline):
    """FedNAS on the ``darts`` family.

    Parameters
    ----------
    family : SupernetFamily
        A ``darts`` family.
    search_rounds : int | None (default: None)
        Rounds of federated search; ``None``: half of the run's rounds (at least 1).
    arch_lr, arch_weight_decay : float (default: 3e-4, 1e-3)
        The clients' Adam on the architecture logits (DARTS's settings).
    **kwargs
        The base's settings (:class:`FederatedNASBaseline`).
    """

    method = "fednas"
    label = "FedNAS"

    def __init__(
        self,
        family,
        search_rounds: int | None = None,
        arch_lr: float = 3e-4,
        arch_weight_decay: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(family, **kwargs)
        self.alphas = zero_alphas(family)
        if search_rounds is not None and search_rounds < 0:
            raise ValueError(f"search_rounds must be >= 0, got {search_rounds}")
        self._search_rounds = search_rounds
        self.arch_lr, self.arch_weight_decay = float(arch_lr), float(arch_weight_decay)
        self.arch: Architecture | None = None  # fixed once the search ends

    @property
    def search_rounds(self) -> int:
        if self._search_rounds is not None:
            return self._search_rounds
        return max(1, self.num_rounds // 2)

    def phase(self, server_round: int) -> str:
        return "search" if server_round <= self.search_rounds else "train"

    def current_architecture(self) -> Architecture:
        """The derived architecture: fixed after the search, else from the current logits."""
        return self.arch if self.arch is not None else derive_architecture(self.family, self.alphas)

    # ------------------------------------------------------------------ train
    def train_content(self, server_round: int, client_id: str) -> RecordDict:
        if self.phase(server_round) == "search":
            config = self.base_config(server_round, "darts-search")
            config.update({ARCH_LR: self.arch_lr, ARCH_WEIGHT_DECAY: self.arch_weight_decay})
            return RecordDict(
                {
                    self.arrayrecord_key: m.arrays_to_record(self.supernet),
                    ALPHAS: m.arrays_to_record(self.alphas),
                    self.configrecord_key: ConfigRecord(config),
                }
            )
        arch = self._fix_architecture()
        return self.subnet_content(
            server_round, arch, extract_subnet(self.family, self.supernet, arch)
        )

    def _fix_architecture(self) -> Architecture:
        if self.arch is None:
            self.arch = derive_architecture(self.family, self.alphas)
        return self.arch

    def check_train_reply(self, server_round: int, client_id: str, content: RecordDict) -> None:
        self.check_metrics(content)
        state = self.reply_arrays(content)
        if self.phase(server_round) == "search":
            self.check_shapes(state, self.supernet)
            self.check_shapes(self.reply_arrays(content, ALPHAS), self.alphas)
        else:
            check_subnet_state(self.family, self._fix_architecture(), state, self.supernet)

    def aggregate(self, server_round: int, replies: dict[str, RecordDict]) -> dict[str, Any]:
        weights = [
            float(c.metric_records[self.metricrecord_key][m.NUM_EXAMPLES]) for c in replies.values()
        ]
        if self.phase(server_round) == "search":
            self.supernet = weighted_mean([self.reply_arrays(c) for c in replies.values()], weights)
            self.alphas = weighted_mean(
                [self.reply_arrays(c, ALPHAS) for c in replies.values()], weights
            )
            if server_round == self.search_rounds:
                self._fix_architecture()
        else:
            arch = self._fix_architecture()
            updates = [(arch, self.reply_arrays(c), w) for c, w in zip(replies.values(), weights)]
            self.supernet = merge_subnets(self.family, self.supernet, updates)
        return {"arch": architecture_to_json(self.current_architecture())}

    # ------------------------------------------------------------------ evaluate
    def evaluate_content(self, server_round: int, client_id: str) -> RecordDict:
        arch = self.current_architecture()
        return self.subnet_content(
            server_round, arch, extract_subnet(self.family, self.supernet, arch)
        )

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = super().state_dict()
        arrays.update(prefixed(ALPHAS_PREFIX, self.alphas))
        return arrays, {**meta, "arch": self.arch}

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        alphas = checked_unprefixed(ALPHAS_PREFIX, arrays, self.alphas)
        arch = meta.get("arch")
        arch = None if arch is None else self.family.search_space.validate(arch)
        super().load_state_dict(arrays, meta)
        self.alphas, self.arch = alphas, arch

    def client_row(self, client_id: str) -> dict[str, Any]:
        return {"arch": architecture_to_json(self.current_architecture())}


@register_step("train", "darts-search")
def darts_search_train(
    msg: Message, context: Context, train_loader, test_loader, device: torch.device
) -> Message:
    """First-order DARTS on the local data: weights and architecture logits, alternating.

    Reply: ``arrays`` (the supernet weights), ``alphas`` (the logits),
    metrics num-examples (training examples), accuracy (the mixed network on
    the own test split after the search), train-loss, compute-seconds.
    """
    config = msg.content["config"]
    family = get_supernet(str(config[m.SUPERNET]), **_json(config[m.SUPERNET_CONFIG]))
    alphas = m.record_to_arrays(msg.content[ALPHAS])
    model = MixedDARTS(family, alphas=alphas)
    model.net.load_state_dict(msg.content["arrays"].to_torch_state_dict(), strict=True)
    model.to(device)
    epochs, lr = int(config.get(m.LOCAL_EPOCHS, 1)), float(config.get(m.LR, 0.05))
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=lr, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(
        model.alphas.parameters(),
        lr=float(config.get(ARCH_LR, 3e-4)),
        betas=(0.5, 0.999),
        weight_decay=float(config.get(ARCH_WEIGHT_DECAY, 1e-3)),
    )
    start = time.perf_counter()
    with ComputeCounter() as counted:  # MACs of the work timed (modelled latency)
        model.train()
        total, n_weight = 0.0, 0
        for _ in range(epochs):
            for i, (images, labels) in enumerate(train_loader):
                images, labels = images.to(device), labels.to(device)
                if i % 2 == 1:  # architecture step on a held-out batch (first order)
                    a_opt.zero_grad(set_to_none=True)
                    torch.nn.functional.cross_entropy(model(images), labels).backward()
                    a_opt.step()
                    continue
                w_opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(images), labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.weight_parameters(), 5.0)
                w_opt.step()
                total += float(loss.detach()) * labels.shape[0]
                n_weight += int(labels.shape[0])
        _, accuracy, _ = evaluate(model, test_loader, device=device)
    compute = time.perf_counter() - start
    num_examples = len(getattr(train_loader, "dataset", [])) or n_weight
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: v.detach().cpu() for k, v in model.weights_state().items()}),
            ALPHAS: m.arrays_to_record(model.alphas_numpy()),
            "metrics": MetricRecord(
                {
                    m.NUM_EXAMPLES: int(num_examples),
                    m.ACCURACY: float(accuracy),
                    m.TRAIN_LOSS: total / n_weight if n_weight else float("nan"),
                    m.COMPUTE_SECONDS: float(compute),
                    m.COMPUTE_MACS: int(counted.macs),
                }
            ),
            "config": ConfigRecord({m.CLIENT_ID: client_id_from_context(context)}),
        }
    )
    return Message(content=content, reply_to=msg)


def _json(text: Any) -> dict[str, Any]:
    return json.loads(str(text) or "{}")
