"""Personalised-FL baselines of the paper (FedAvg+FT, Local, FedRep, FedBABU, FedTP)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from torch import nn

from flwr_pfedrlnas.baselines import client as bc
from flwr_pfedrlnas.baselines.models import (
    attention_keys,
    build_model,
    is_head_key,
    parse_model_config,
)
from flwr_pfedrlnas.core.rewards import DEFAULT_BANDWIDTH_BPS, round_time
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.identity import identify_clients
from flwr_pfedrlnas.protocol.results import RunRecorder, summarise_accuracies, write_results

__all__ = [
    "BASELINES",
    "AttentionHypernetwork",
    "FedAvgFineTune",
    "FedBABU",
    "FedRep",
    "FedTP",
    "LocalOnly",
    "PersonalisedFedAvg",
    "make_baseline",
]


class PersonalisedFedAvg(FedAvg):
    """FedAvg over a method-defined shared part of a fixed model; personal parts elsewhere.

    The base runs the common protocol: seeded client sampling, the shared
    arrays averaged with example weights, every client testing its
    personalised model every ``evaluate_every`` rounds (and in the last one),
    one recorded and logged row per round (accuracy mean ± std over all
    clients, bytes moved, simulated latency), results written with
    :func:`~flwr_pfedrlnas.protocol.results.write_results`, and a checkpoint after
    every round. Subclasses choose what is shared (:meth:`is_shared`), what
    a client is sent (:meth:`arrays_for`), how replies merge
    (:meth:`aggregate_arrays`) and whether the final evaluation fine-tunes.

    Parameters
    ----------
    model : str (default: "mobilenetv3-large")
        "mobilenetv3-large" or "vit" (see :mod:`.models`).
    model_config : str | dict | None (default: None)
        Size knobs of the model (JSON or dict).
    num_classes, in_channels : int (default: 10, 1)
    clients_per_round : int (default: 4)
        Clients sampled per round (seeded).
    min_available_nodes : int (default: 2)
    local_epochs, lr, batch_size : int, float, int (default: 1, 0.05, 32)
    head_epochs : int (default: 1)
        FedRep's head epochs before the body epochs.
    bn_recalibration_batches : int (default: 0)
        Before its personalised test a client re-estimates BatchNorm statistics
        on this many local training batches (-1: all, 0: off), the protocol
        PerFedRLNAS's clients follow; weights untouched.
    finetune_epochs : int (default: 10)
        Local fine-tuning epochs before the final test (FedAvg+FT, FedBABU).
    evaluate_every : int (default: 1)
        Evaluate every client every this many rounds (always in the last).
    bandwidth_bps : float (default: 100e6)
    seed : int (default: 0)
        Seed of sampling and of the initial model (the same on every client).
    results_dir, checkpoint_dir : str | None (default: None)
    resume : bool (default: False)
        Continue from ``checkpoint_dir`` when it holds a checkpoint.
    client_state_dir : str | None (default: None)
        Where clients mirror their personal state (on their own disk).
    run_config : dict | None (default: None)
        Recorded verbatim in config.json.
    """

    method = "fedavg"
    label = "FedAvg"

    def __init__(
        self,
        model: str = "mobilenetv3-large",
        model_config: str | Mapping[str, Any] | None = None,
        num_classes: int = 10,
        in_channels: int = 1,
        clients_per_round: int = 4,
        min_available_nodes: int = 2,
        local_epochs: int = 1,
        lr: float = 0.05,
        batch_size: int = 32,
        head_epochs: int = 1,
        finetune_epochs: int = 10,
        evaluate_every: int = 1,
        bn_recalibration_batches: int = 0,
        bandwidth_bps: float = DEFAULT_BANDWIDTH_BPS,
        seed: int = 0,
        results_dir: str | None = None,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        client_state_dir: str | None = None,
        run_config: dict[str, Any] | None = None,
        query_timeout: float = 120.0,
    ) -> None:
        super().__init__(min_available_nodes=min_available_nodes)
        self.model_name = str(model)
        self.model_config = parse_model_config(model_config)
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)
        self.clients_per_round = int(clients_per_round)
        self.local_epochs, self.lr, self.batch_size = int(local_epochs), float(lr), int(batch_size)
        self.head_epochs, self.finetune_epochs = int(head_epochs), int(finetune_epochs)
        if evaluate_every < 1:
            raise ValueError(f"evaluate_every must be >= 1, got {evaluate_every}")
        self.evaluate_every = int(evaluate_every)
        self.bn_recalibration_batches = int(bn_recalibration_batches)
        self.bandwidth_bps = float(bandwidth_bps)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.results_dir, self.checkpoint_dir = results_dir, checkpoint_dir
        self.resume = bool(resume)
        self.client_state_dir = client_state_dir
        self.run_config = dict(run_config or {})
        self.query_timeout = float(query_timeout)
        self.recorder = RunRecorder()
        self.latency_total = 0.0
        self.rounds_done = 0
        self.node_to_client: dict[int, str] = {}
        self.client_to_node: dict[str, int] = {}
        self._round: dict[str, Any] = {}
        self._total_rounds = 0
        self._sent: dict[str, dict[str, np.ndarray]] = {}
        self._template = build_model(
            self.model_name, self.num_classes, self.in_channels, self.model_config, self.seed
        )
        self.keys = list(self._template.state_dict())

    # ---------------------------------------------------------------- hooks
    def is_shared(self, key: str) -> bool:
        """Whether ``key`` is averaged on the server (all keys for FedAvg)."""
        return True

    def finetunes(self) -> bool:
        """Whether the final evaluation fine-tunes locally first."""
        return False

    def arrays_for(self, client_id: str, arrays: ArrayRecord) -> ArrayRecord:
        """What client ``client_id`` is sent: the shared arrays."""
        return arrays

    def aggregate_arrays(
        self, server_round: int, replies: list[tuple[str, Message]]
    ) -> ArrayRecord | None:
        """Example-weighted mean of the shared tensors of the replies."""
        states, weights = [], []
        for _, r in replies:
            state = m.record_to_arrays(r.content[self.arrayrecord_key])
            states.append({k: v for k, v in state.items() if self.is_shared(k)})
            weights.append(float(r.content["metrics"][m.NUM_EXAMPLES]))
        if not states:
            return None
        return m.arrays_to_record(_weighted_mean(states, weights))

    def extra_state(self) -> dict[str, Any]:
        """Method state for the checkpoint (beyond the shared arrays)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    # ---------------------------------------------------------------- helpers
    def initial_arrays(self) -> ArrayRecord:
        """The seeded initial shared tensors (every client builds the same init)."""
        state = self._template.state_dict()
        return m.arrays_to_record(
            {k: v.detach().cpu().numpy() for k, v in state.items() if self.is_shared(k)}
        )

    def summary(self) -> None:
        log(INFO, "\t├──> %s on %s %s", self.label, self.model_name, self.model_config)
        log(INFO, "\t├──> %d clients per round, seed %d", self.clients_per_round, self.seed)
        log(
            INFO,
            "\t└──> %d local epochs (head %d, fine-tune %d), lr %.3g, batch %d",
            self.local_epochs,
            self.head_epochs,
            self.finetune_epochs if self.finetunes() else 0,
            self.lr,
            self.batch_size,
        )

    def global_round(self, server_round: int) -> int:
        return self.rounds_done_at_start + server_round

    def is_evaluation_round(self, server_round: int) -> bool:
        g = self.global_round(server_round)
        return g % self.evaluate_every == 0 or g == self._total_rounds

    def client_config(self, server_round: int, finetune: bool = False) -> ConfigRecord:
        return ConfigRecord(
            {
                bc.METHOD: self.method,
                bc.MODEL: self.model_name,
                bc.MODEL_CONFIG: _json(self.model_config),
                bc.NUM_CLASSES: self.num_classes,
                bc.IN_CHANNELS: self.in_channels,
                bc.SEED: self.seed,
                m.SERVER_ROUND: self.global_round(server_round),
                m.LOCAL_EPOCHS: self.local_epochs,
                m.LR: self.lr,
                m.BATCH_SIZE: self.batch_size,
                bc.HEAD_EPOCHS: self.head_epochs,
                bc.FINETUNE_EPOCHS: self.finetune_epochs if finetune else 0,
                bc.CLIENT_STATE_DIR: self.client_state_dir or "",
                m.BN_RECALIBRATION_BATCHES: self.bn_recalibration_batches,
            }
        )

    def _identify(self, grid: Grid) -> list[str]:
        """Learn the client id of every new node; return the connected clients."""
        return identify_clients(
            grid,
            self.node_to_client,
            self.client_to_node,
            self.min_available_nodes,
            self.query_timeout,
        )

    def _messages(self, arrays, client_ids, kind, config) -> list[Message]:
        msgs = []
        for cid in client_ids:
            record = self.arrays_for(cid, arrays)
            msgs.append(
                Message(
                    content=RecordDict({self.arrayrecord_key: record, "config": config}),
                    message_type=kind,
                    dst_node_id=self.client_to_node[cid],
                )
            )
        return msgs

    # ---------------------------------------------------------------- Flower
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int = 3,
        timeout: float = 3600,
        **kw: Any,
    ) -> Result:
        """Run ``num_rounds`` rounds in all (fewer when resuming part-way)."""
        self._total_rounds = int(num_rounds)
        arrays = initial_arrays if initial_arrays is not None else self.initial_arrays()
        if self.resume and self.checkpoint_dir and self._checkpoint_path().exists():
            arrays = self.load_checkpoint()
            log(INFO, "Resumed %s after round %d", self.label, self.rounds_done)
        self.rounds_done_at_start = self.rounds_done
        remaining = max(self._total_rounds - self.rounds_done, 0)
        return super().start(grid, arrays, num_rounds=remaining, timeout=timeout, **kw)

    rounds_done_at_start = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Seeded sample of ``clients_per_round`` clients (by stable id)."""
        clients = self._identify(grid)
        k = min(self.clients_per_round, len(clients))
        picked = [clients[i] for i in sorted(self.rng.choice(len(clients), k, replace=False))]
        msgs = self._messages(arrays, picked, MessageType.TRAIN, self.client_config(server_round))
        self._sent = {
            cid: m.record_to_arrays(msg.content[self.arrayrecord_key])
            for cid, msg in zip(picked, msgs)
        }
        self._round = {
            "started": time.perf_counter(),
            "picked": picked,
            "bytes-down": {
                cid: msg.content[self.arrayrecord_key].count_bytes()
                for cid, msg in zip(picked, msgs)
            },
        }
        return msgs

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Merge the shared parts; time and bytes of the round."""
        t0 = time.perf_counter()
        ok: list[tuple[str, Message]] = []
        replies = list(replies)
        for r in replies:
            if r.has_error():
                log(WARNING, "node %s failed: %s", r.metadata.src_node_id, r.error.reason)
                continue
            cid = self.node_to_client.get(r.metadata.src_node_id)
            if cid is None:
                log(WARNING, "reply from unknown node %s: ignored", r.metadata.src_node_id)
                continue
            ok.append((cid, r))
        arrays = self.aggregate_arrays(server_round, ok)
        times, accs, up = [], [], 0
        down = self._round.get("bytes-down", {})
        for cid, r in ok:
            metrics = r.content["metrics"]
            nbytes = r.content[self.arrayrecord_key].count_bytes()
            up += nbytes
            compute = float(metrics.get(m.COMPUTE_SECONDS, 0.0))
            times.append(
                round_time(
                    compute, down.get(cid, 0), nbytes, self.bandwidth_bps, self.bandwidth_bps
                )
            )
            accs.append(float(metrics.get(m.ACCURACY, float("nan"))))
        self._round.update(
            {
                "latency": max(times, default=0.0) + (time.perf_counter() - t0),
                "num-accepted": len(ok),
                "num-failed": len(replies) - len(ok),
                "train-accuracy-mean": float(np.mean(accs)) if accs else float("nan"),
                "bytes-down-total": int(sum(down.values())),
                "bytes-up-total": int(up),
            }
        )
        return arrays, None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """In evaluation rounds every client tests its personalised model."""
        self._round["arrays"] = arrays
        if not self.is_evaluation_round(server_round):
            return []
        clients = self._identify(grid)
        final = self.global_round(server_round) == self._total_rounds
        cfg = self.client_config(server_round, finetune=final and self.finetunes())
        return self._messages(arrays, clients, MessageType.EVALUATE, cfg)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Unweighted mean and std over clients; record, log, write, checkpoint."""
        g = self.global_round(server_round)
        accuracies: dict[str, float] = {}
        finetuned = 0
        for r in replies:
            if r.has_error():
                continue
            metrics = r.content["metrics"]
            cid = str(r.content["config"].get(m.CLIENT_ID, r.metadata.src_node_id))
            acc = metrics.get(m.ACCURACY)
            if isinstance(acc, (int, float)) and 0.0 <= acc <= 1.0:
                accuracies[cid] = float(acc)
                finetuned = max(finetuned, int(metrics.get(bc.FINETUNE_EPOCHS, 0)))
                self.recorder.set_client(
                    cid, {"round": g, "accuracy": float(acc), "method": self.method}
                )
        mean, std = summarise_accuracies(accuracies)
        latency = float(self._round.get("latency", 0.0))
        self.latency_total += latency
        row = {
            "round": g,
            "num-accepted": self._round.get("num-accepted", 0),
            "num-failed": self._round.get("num-failed", 0),
            "train-accuracy-mean": self._round.get("train-accuracy-mean", float("nan")),
            "accuracy-mean": mean,
            "accuracy-std": std,
            "num-evaluated": len(accuracies),
            "finetune-epochs": finetuned,
            "latency-round-s": latency,
            "latency-total-s": self.latency_total,
            "bytes-down": self._round.get("bytes-down-total", 0),
            "bytes-up": self._round.get("bytes-up-total", 0),
            "wall-seconds": time.perf_counter() - self._round.get("started", time.perf_counter()),
        }
        self.recorder.add_round(row)
        self.rounds_done = g
        log(
            INFO,
            "[round %d/%d] %s | trained %s | accuracy %.4f ± %.4f over %d clients | "
            "%.0f kB moved | latency %.2f s (total %.2f s) | wall %.1f s",
            g,
            self._total_rounds,
            self.label,
            self._round.get("picked", []),
            mean,
            std,
            len(accuracies),
            (row["bytes-down"] + row["bytes-up"]) / 1e3,
            latency,
            self.latency_total,
            row["wall-seconds"],
        )
        if self.results_dir:
            write_results(
                self.results_dir,
                self.recorder,
                {
                    "strategy": self.label,
                    "method": self.method,
                    "model": self.model_name,
                    "model-config": self.model_config,
                    "seed": self.seed,
                    "run-config": self.run_config,
                },
                title=f"Personalised accuracy ({self.label})",
                label=self.label,
            )
        if self.checkpoint_dir:
            self.save_checkpoint(self._round.get("arrays", ArrayRecord()))
        return MetricRecord({"accuracy-mean": mean, "accuracy-std": std}) if accuracies else None

    # ---------------------------------------------------------------- checkpoint
    def _checkpoint_path(self) -> Path:
        return Path(str(self.checkpoint_dir)) / "baseline.pt"

    def save_checkpoint(self, arrays: ArrayRecord) -> Path:
        """Shared arrays, sampling RNG, records and method state, written atomically."""
        path = self._checkpoint_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "method": self.method,
            "rounds-done": self.rounds_done,
            "arrays": m.record_to_arrays(arrays),
            "rng": self.rng.bit_generator.state,
            "recorder": self.recorder.state_dict(),
            "latency-total": self.latency_total,
            "extra": self.extra_state(),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        return path

    def load_checkpoint(self) -> ArrayRecord:
        """Restore the state :meth:`save_checkpoint` wrote; return the shared arrays."""
        state = torch.load(self._checkpoint_path(), weights_only=False)
        if state["method"] != self.method:
            raise ValueError(f"checkpoint is of {state['method']!r}, not {self.method!r}")
        self.rounds_done = int(state["rounds-done"])
        self.rng.bit_generator.state = state["rng"]
        self.recorder.load_state_dict(state["recorder"])
        self.latency_total = float(state["latency-total"])
        self.load_extra_state(state["extra"])
        return m.arrays_to_record(state["arrays"])


class FedAvgFineTune(PersonalisedFedAvg):
    """FedAvg of the whole model; clients fine-tune it ``finetune_epochs`` before the final test."""

    method = "fedavg-ft"
    label = "FedAvg+FT"

    def finetunes(self) -> bool:
        return self.finetune_epochs > 0


class LocalOnly(PersonalisedFedAvg):
    """Local training only: sampled clients train their own model (kept in ``context.state``)."""

    method = "local"
    label = "Local"

    def is_shared(self, key: str) -> bool:
        return False

    def aggregate_arrays(self, server_round, replies) -> ArrayRecord | None:
        return None  # nothing is averaged, nothing moves


class FedRep(PersonalisedFedAvg):
    """FedRep: the body is averaged; each client's head stays on the client."""

    method = "fedrep"
    label = "FedRep"

    def is_shared(self, key: str) -> bool:
        return not is_head_key(self.model_name, key)


class FedBABU(FedRep):
    """FedBABU: the body is averaged; the head stays at its random init during
    federated training and is fine-tuned locally before the final test."""

    method = "fedbabu"
    label = "FedBABU"

    def finetunes(self) -> bool:
        return self.finetune_epochs > 0


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
    """FedTP: a server-side hypernetwork generates each client's attention projections.

    Everything except the q/k/v weights is averaged. The hypernetwork is
    updated by the chain rule from the clients' updates of the generated
    weights (FedTP): ``grad_W = -(W_trained - W_sent)`` is back-propagated
    through the hypernetwork to its parameters and the client's embedding.
    The output biases (the part every client shares) move with ``lr = 1``
    (i.e. they follow the example-weighted mean update, as FedAvg would);
    embeddings and the other parameters with SGD at ``hn_lr``.
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
        super().__init__(*args, **kwargs)
        if self.model_name != "vit":
            raise ValueError("FedTP runs on the ViT only (model='vit')")
        self.attention = attention_keys(self._template)
        state = self._template.state_dict()
        self.hypernetwork = AttentionHypernetwork(
            num_clients, {k: state[k] for k in self.attention}, hn_embed_dim, hn_hidden, self.seed
        )
        self.hn_lr = float(hn_lr)
        biases = [
            p
            for n, p in self.hypernetwork.named_parameters()
            if n.endswith("bias") and n.startswith("outs.")
        ]
        others = [
            p
            for n, p in self.hypernetwork.named_parameters()
            if not (n.endswith("bias") and n.startswith("outs."))
        ]
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

    def arrays_for(self, client_id: str, arrays: ArrayRecord) -> ArrayRecord:
        state = m.record_to_arrays(arrays)
        state.update(self.projections(client_id))
        return m.arrays_to_record({k: state[k] for k in self.keys})

    def aggregate_arrays(self, server_round, replies) -> ArrayRecord | None:
        merged = super().aggregate_arrays(server_round, replies)
        if not replies:
            return merged
        weights = np.array([float(r.content["metrics"][m.NUM_EXAMPLES]) for _, r in replies])
        weights = weights / weights.sum()
        self.hn_optimizer.zero_grad(set_to_none=True)
        for (cid, r), w in zip(replies, weights):
            trained = m.record_to_arrays(r.content[self.arrayrecord_key])
            sent = self._sent[cid]
            generated = self.hypernetwork(self.index_of(cid))
            names = list(generated)
            grads = [torch.from_numpy(w * -(trained[k] - sent[k])).float() for k in names]
            torch.autograd.backward([generated[k] for k in names], grads)
        self.hn_optimizer.step()
        return merged

    def extra_state(self) -> dict[str, Any]:
        return {
            "hypernetwork": self.hypernetwork.state_dict(),
            "optimizer": self.hn_optimizer.state_dict(),
            "client-index": dict(self.client_index),
        }

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.hypernetwork.load_state_dict(state["hypernetwork"])
        self.hn_optimizer.load_state_dict(state["optimizer"])
        self.client_index = dict(state["client-index"])


BASELINES: dict[str, type[PersonalisedFedAvg]] = {
    cls.method: cls for cls in (FedAvgFineTune, LocalOnly, FedRep, FedBABU, FedTP)
}


def make_baseline(method: str, **kwargs: Any) -> PersonalisedFedAvg:
    """The strategy of ``method`` ("fedavg-ft", "local", "fedrep", "fedbabu", "fedtp").

    ``num_clients``, ``hn_lr``, ``hn_embed_dim`` and ``hn_hidden`` go to FedTP
    only; the other methods ignore them.
    """
    if method not in BASELINES:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(BASELINES)}")
    fedtp_only = {
        k: kwargs.pop(k)
        for k in ("num_clients", "hn_lr", "hn_embed_dim", "hn_hidden")
        if k in kwargs
    }
    if method == "fedtp":
        return FedTP(**kwargs, **fedtp_only)
    return BASELINES[method](**kwargs)


def _weighted_mean(
    states: list[dict[str, np.ndarray]], weights: list[float]
) -> dict[str, np.ndarray]:
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    out = {}
    for key, first in states[0].items():
        acc = sum(wi * s[key].astype(np.float64) for wi, s in zip(w, states))
        out[key] = np.asarray(acc).astype(first.dtype)  # integer buffers (BN counters) round down
    return out


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)
