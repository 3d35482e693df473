"""FedAvg on one fixed architecture of a supernet family (e.g. its largest subnet)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from flwr_pfedrlnas.core.rewards import DEFAULT_BANDWIDTH_BPS, round_time
from flwr_pfedrlnas.core.search_space import Architecture, architecture_to_json
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.protocol.results import RunRecorder, summarise_accuracies, write_results
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = ["FedAvgFixedArch"]


class FedAvgFixedArch(FedAvg):
    """Flower's FedAvg training one architecture for every client.

    Clients are the same as PerFedRLNAS's (they build whatever subnet the
    config names), so the comparison differs only in the server. Every
    client tests the global model on its own test split (personalised
    accuracy, no fine-tuning); rounds are recorded, logged and written like
    PerFedRLNAS's.

    Parameters
    ----------
    family : SupernetFamily
        Family whose subnet is trained.
    arch : Architecture | None (default: None)
        The architecture; the family's largest when ``None``.
    clients_per_round : int (default: 5)
        Clients sampled per round (seeded).
    local_epochs, lr, batch_size : int, float, int (default: 1, 0.05, 32)
        Client training settings.
    bandwidth_bps : float (default: 100e6)
        Link speed each way for the simulated round time.
    bn_recalibration_batches : int (default: 0)
        Clients re-estimate BatchNorm statistics on this many local training
        batches before testing (-1: all, 0: off, plain FedAvg).
    evaluate_every : int (default: 1)
        Every client tests the global model every ``evaluate_every`` rounds
        and in the last one; other rounds are recorded without accuracy.
    seed : int (default: 0)
        Seed of client sampling and of the initial weights.
    results_dir : str | None (default: None)
        Where rounds.csv, clients.csv, config.json and accuracy.png go.
    run_config : dict | None (default: None)
        Settings recorded verbatim in config.json.
    """

    def __init__(
        self,
        family: SupernetFamily,
        arch: Architecture | None = None,
        clients_per_round: int = 5,
        min_available_nodes: int = 2,
        local_epochs: int = 1,
        lr: float = 0.05,
        batch_size: int = 32,
        bandwidth_bps: float = DEFAULT_BANDWIDTH_BPS,
        bn_recalibration_batches: int = 0,
        evaluate_every: int = 1,
        seed: int = 0,
        results_dir: str | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(min_available_nodes=min_available_nodes)
        if int(evaluate_every) < 1:
            raise ValueError(f"evaluate_every must be >= 1, got {evaluate_every!r}")
        self.evaluate_every = int(evaluate_every)
        self.family = family
        self.arch = family.search_space.validate(arch or family.largest_architecture())
        self.clients_per_round = int(clients_per_round)
        self.local_epochs = int(local_epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.bandwidth_bps = float(bandwidth_bps)
        self.bn_recalibration_batches = int(bn_recalibration_batches)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self.results_dir = results_dir
        self.run_config = dict(run_config or {})
        self.recorder = RunRecorder()
        self.latency_total = 0.0
        self._round: dict[str, Any] = {}
        self._total_rounds: int | None = None

    def initial_arrays(self) -> ArrayRecord:
        """Seeded initial weights of the architecture (cut from a fresh supernet)."""
        from flwr_pfedrlnas.core.aggregation import extract_subnet

        state = extract_subnet(self.family, self.family.init_supernet_state(self.seed), self.arch)
        return m.arrays_to_record(state)

    def start(
        self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int = 3, **kw
    ):
        """Run ``num_rounds`` rounds from ``initial_arrays`` (seeded weights if ``None``)."""
        self._total_rounds = int(num_rounds)
        arrays = initial_arrays if initial_arrays is not None else self.initial_arrays()
        return super().start(grid, arrays, num_rounds=num_rounds, **kw)

    def summary(self) -> None:
        log(INFO, "\t├──> Architecture: %s of %r", architecture_to_json(self.arch), self.family)
        log(INFO, "\t├──> %d clients per round, seed %d", self.clients_per_round, self.seed)
        log(
            INFO,
            "\t└──> %d local epochs, lr %.3g, batch %d",
            self.local_epochs,
            self.lr,
            self.batch_size,
        )

    def _config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        extra = {
            m.LOCAL_EPOCHS: self.local_epochs,
            m.LR: self.lr,
            m.BATCH_SIZE: self.batch_size,
            m.BN_RECALIBRATION_BATCHES: self.bn_recalibration_batches,
        }
        extra.update(dict(config))
        return m.subnet_config(self.family, self.arch, server_round, extra)

    def _messages(self, arrays, config, node_ids, kind) -> list[Message]:
        return [
            Message(
                content=RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config}),
                message_type=kind,
                dst_node_id=node_id,
            )
            for node_id in node_ids
        ]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Seeded sample of ``clients_per_round`` nodes; all get the global model."""
        while len(nodes := sorted(grid.get_node_ids())) < self.min_available_nodes:
            time.sleep(1)
        picked = sorted(
            self.rng.choice(len(nodes), size=min(self.clients_per_round, len(nodes)), replace=False)
        )
        node_ids = [nodes[i] for i in picked]
        self._round = {"started": time.perf_counter(), "bytes_down": arrays.count_bytes()}
        return self._messages(
            arrays, self._config(server_round, config), node_ids, MessageType.TRAIN
        )

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        """FedAvg of the replies; the round time of the slowest client."""
        replies = list(replies)
        t0 = time.perf_counter()
        ok = [r for r in replies if not r.has_error()]
        for r in replies:
            if r.has_error():
                log(WARNING, "node %s failed: %s", r.metadata.src_node_id, r.error.reason)
        arrays, metrics = super().aggregate_train(server_round, replies)
        times, accs, up = [], [], 0
        for r in ok:
            rec = r.content.metric_records.get("metrics", MetricRecord())
            nbytes = r.content.array_records[self.arrayrecord_key].count_bytes()
            up += nbytes
            times.append(
                round_time(
                    float(rec.get(m.COMPUTE_SECONDS, 0.0)),
                    self._round["bytes_down"],
                    nbytes,
                    self.bandwidth_bps,
                    self.bandwidth_bps,
                )
            )
            accs.append(float(rec.get(m.ACCURACY, float("nan"))))
        self._round.update(
            {
                "latency": max(times, default=0.0) + (time.perf_counter() - t0),
                "num-accepted": len(ok),
                "num-failed": len(replies) - len(ok),
                "train-accuracy-mean": float(np.mean(accs)) if accs else float("nan"),
                "bytes-down": self._round["bytes_down"] * len(replies),
                "bytes-up": up,
            }
        )
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Every client tests the global model on its own test split (evaluation rounds)."""
        last = self._total_rounds is not None and server_round >= self._total_rounds
        if not last and server_round % self.evaluate_every:
            return []
        nodes = sorted(grid.get_node_ids())
        return self._messages(
            arrays, self._config(server_round, config), nodes, MessageType.EVALUATE
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Mean and std of the clients' accuracies (unweighted); log and write."""
        accuracies: dict[str, float] = {}
        for r in replies:
            if r.has_error():
                continue
            cfg = r.content.config_records.get(self.configrecord_key, ConfigRecord())
            cid = str(cfg.get(m.CLIENT_ID, r.metadata.src_node_id))
            acc = r.content.metric_records.get("metrics", MetricRecord()).get(m.ACCURACY)
            if isinstance(acc, (int, float)) and 0.0 <= acc <= 1.0:
                accuracies[cid] = float(acc)
                self.recorder.set_client(
                    cid,
                    {
                        "round": server_round,
                        "accuracy": float(acc),
                        "arch": architecture_to_json(self.arch),
                    },
                )
        mean, std = summarise_accuracies(accuracies)
        latency = float(self._round.get("latency", 0.0))
        self.latency_total += latency
        row = {
            "round": server_round,
            "num-accepted": self._round.get("num-accepted", 0),
            "num-failed": self._round.get("num-failed", 0),
            "train-accuracy-mean": self._round.get("train-accuracy-mean", float("nan")),
            "accuracy-mean": mean,
            "accuracy-std": std,
            "num-evaluated": len(accuracies),
            "latency-round-s": latency,
            "latency-total-s": self.latency_total,
            "bytes-down": self._round.get("bytes-down", 0),
            "bytes-up": self._round.get("bytes-up", 0),
            "wall-seconds": time.perf_counter() - self._round.get("started", time.perf_counter()),
        }
        self.recorder.add_round(row)
        if accuracies:
            what = f"accuracy {mean:.4f} ± {std:.4f} over {len(accuracies)} clients"
        else:
            what = f"train accuracy {row['train-accuracy-mean']:.4f}"
        log(
            INFO,
            "[round %d/%d] FedAvg | %s | latency %.2f s (total %.2f s) | wall %.1f s",
            server_round,
            self._total_rounds or server_round,
            what,
            latency,
            self.latency_total,
            row["wall-seconds"],
        )
        if self.results_dir:
            write_results(
                self.results_dir,
                self.recorder,
                {
                    "strategy": "FedAvg (fixed architecture)",
                    "supernet": self.family.name,
                    "supernet-config": self.family.config,
                    "arch": self.arch,
                    "run-config": self.run_config,
                },
                label="FedAvg",
            )
        return MetricRecord({"accuracy-mean": mean, "accuracy-std": std}) if accuracies else None
