"""The round loop shared by the federated-NAS baselines (FedNAS, FedRLNAS, SPIDER, FedorAS).

Each method is a :class:`FederatedNASBaseline` subclass that says what a
sampled client is sent (:meth:`~FederatedNASBaseline.train_content`), how the
replies change the server state (:meth:`~FederatedNASBaseline.aggregate`) and
what every client tests (:meth:`~FederatedNASBaseline.evaluate_content`). The
base runs the protocol every method of the project follows: clients known by
their stable id (the identity query), a seeded sample of
``clients_per_round`` clients per round, every reply checked before it is
used (a bad one is logged with the field and the value and left out), every
client testing the model it would deploy on its own test split (BatchNorm
statistics re-estimated on local data first), one logged and recorded row per
round with accuracy mean ± std over clients, the bytes actually moved and the
simulated latency (the slowest client's compute + transfer time of each
exchange, plus the server's own time), and rounds.csv / clients.csv /
config.json / accuracy.png written by :func:`~flwr_pfedrlnas.protocol.results.write_results`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from flwr_pfedrlnas.core.aggregation import state_num_bytes
from flwr_pfedrlnas.core.rewards import DEFAULT_BANDWIDTH_BPS, round_time
from flwr_pfedrlnas.core.search_space import Architecture
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.identity import identify_clients
from flwr_pfedrlnas.protocol.results import RunRecorder, summarise_accuracies, write_results
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = ["NAS_STEP", "FederatedNASBaseline", "content_bytes", "weighted_mean"]

# ConfigRecord key naming what the client does with a message (see .client).
NAS_STEP = "nas-step"

ReplyCheck = Callable[[str, RecordDict], None]


def content_bytes(content: RecordDict) -> int:
    """Bytes of every array a message carries (what goes over the wire)."""
    return int(sum(record.count_bytes() for record in content.array_records.values()))


def weighted_mean(
    states: list[Mapping[str, np.ndarray]], weights: list[float]
) -> dict[str, np.ndarray]:
    """Entry-wise ``sum_i w_i x_i / sum_i w_i`` (float64 accumulation, dtypes kept)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(states) == 0 or not np.all(w > 0):
        raise ValueError(f"weights must be positive and non-empty, got {weights!r}")
    w = w / w.sum()
    out = {}
    for key, first in states[0].items():
        acc = np.asarray(sum(wi * np.asarray(s[key], dtype=np.float64) for wi, s in zip(w, states)))
        out[key] = (np.rint(acc) if first.dtype.kind in "iu" else acc).astype(first.dtype)
    return out


class FederatedNASBaseline:
    """Base of the federated-NAS baselines on one supernet family.

    Parameters
    ----------
    family : SupernetFamily
        The search space and its supernet (the DARTS family in the paper's Table 3).
    clients_per_round : int (default: 4)
        Clients sampled per training round (seeded, by stable client id).
    min_available_nodes : int (default: 2)
        Wait for this many nodes before the first round.
    local_epochs, lr, batch_size : int, float, int (default: 1, 0.05, 32)
        Local training of the clients.
    evaluate_every : int (default: 1)
        Every client tests its model every this many rounds (always in the last).
    bn_recalibration_batches : int (default: -1)
        Before the test a client re-estimates BatchNorm statistics on this many
        local training batches (-1: all, 0: off), the protocol of PerFedRLNAS.
    bandwidth_bps : float (default: 100e6)
        Simulated link speed, each way.
    seed : int (default: 0)
        Seed of the sampling, of the initial supernet and of the method's draws.
    results_dir : str | None (default: None)
        Where rounds.csv, clients.csv, config.json and accuracy.png go.
    run_config : dict | None (default: None)
        Recorded verbatim in config.json.
    """

    method = "nas"
    label = "NAS"

    def __init__(
        self,
        family: SupernetFamily,
        clients_per_round: int = 4,
        min_available_nodes: int = 2,
        local_epochs: int = 1,
        lr: float = 0.05,
        batch_size: int = 32,
        evaluate_every: int = 1,
        bn_recalibration_batches: int = -1,
        bandwidth_bps: float = DEFAULT_BANDWIDTH_BPS,
        seed: int = 0,
        results_dir: str | None = None,
        run_config: dict[str, Any] | None = None,
        query_timeout: float = 120.0,
        round_timeout: float = 3600.0,
    ) -> None:
        if clients_per_round < 1:
            raise ValueError(f"clients_per_round must be >= 1, got {clients_per_round}")
        if evaluate_every < 1:
            raise ValueError(f"evaluate_every must be >= 1, got {evaluate_every}")
        self.family = family
        self.clients_per_round = int(clients_per_round)
        self.min_available_nodes = int(min_available_nodes)
        self.local_epochs, self.lr, self.batch_size = int(local_epochs), float(lr), int(batch_size)
        self.evaluate_every = int(evaluate_every)
        self.bn_recalibration_batches = int(bn_recalibration_batches)
        self.bandwidth_bps = float(bandwidth_bps)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.results_dir = results_dir
        self.run_config = dict(run_config or {})
        self.query_timeout, self.round_timeout = float(query_timeout), float(round_timeout)
        self.supernet: dict[str, np.ndarray] = family.init_supernet_state(self.seed)
        self.recorder = RunRecorder()
        self.node_to_client: dict[int, str] = {}
        self.client_to_node: dict[str, int] = {}
        self.num_rounds = 0
        self.latency_total = 0.0
        self._exchange_times: list[float] = []
        self._bytes = {"down": 0, "up": 0}
        self._failures: list[str] = []
        self._exchange_wall = 0.0  # seconds spent waiting for clients (not server time)

    # ------------------------------------------------------------------ hooks
    def phase(self, server_round: int) -> str:
        """Name of the method's phase in ``server_round`` (recorded per round)."""
        return "train"

    def train_content(self, server_round: int, client_id: str) -> RecordDict:
        """What sampled client ``client_id`` is sent in a training round."""
        raise NotImplementedError

    def check_train_reply(self, server_round: int, client_id: str, content: RecordDict) -> None:
        """Raise ``ValueError`` naming the field if a training reply is unusable."""
        self.check_metrics(content)

    def aggregate(self, server_round: int, replies: dict[str, RecordDict]) -> dict[str, Any]:
        """Fold the round's accepted replies into the server state; extra row fields."""
        raise NotImplementedError

    def before_round(self, server_round: int, grid: Grid, clients: list[str]) -> None:
        """Extra exchanges at the start of a round (FedorAS's search); none by default."""

    def evaluate_content(self, server_round: int, client_id: str) -> RecordDict:
        """What client ``client_id`` tests in an evaluation round (its deployed model)."""
        raise NotImplementedError

    def client_row(self, client_id: str) -> dict[str, Any]:
        """Extra per-client fields of clients.csv (e.g. the deployed architecture)."""
        return {}

    # ------------------------------------------------------------------ helpers
    def base_config(self, server_round: int, step: str) -> dict[str, Any]:
        """Config entries every message of this method carries."""
        return {
            NAS_STEP: step,
            m.SUPERNET: self.family.name,
            m.SUPERNET_CONFIG: self.family.config_json(),
            m.SERVER_ROUND: int(server_round),
            m.LOCAL_EPOCHS: self.local_epochs,
            m.LR: self.lr,
            m.BATCH_SIZE: self.batch_size,
            m.BN_RECALIBRATION_BATCHES: self.bn_recalibration_batches,
        }

    def subnet_content(
        self,
        server_round: int,
        arch: Architecture,
        state: Mapping[str, np.ndarray],
        extra: Mapping[str, Any] | None = None,
    ) -> RecordDict:
        """A message with one subnet: its weights and its architecture."""
        base = {**self.base_config(server_round, "subnet"), **(extra or {})}
        config = m.subnet_config(self.family, arch, server_round, base)
        return RecordDict({"arrays": m.arrays_to_record(state), "config": config})

    @staticmethod
    def check_metrics(
        content: RecordDict, required: Iterable[str] = m.REQUIRED_TRAIN_METRICS
    ) -> dict[str, float]:
        """The reply's metrics as floats; ``ValueError`` naming a missing or bad one."""
        metrics = content.metric_records.get("metrics")
        if metrics is None:
            raise ValueError("reply has no MetricRecord 'metrics'")
        out = {}
        for key in required:
            if key not in metrics:
                raise ValueError(f"metrics lack {key!r}")
            value = metrics[key]
            if isinstance(value, list) or not math.isfinite(float(value)):
                raise ValueError(f"metrics {key!r} is {value!r}, not a finite number")
            out[key] = float(value)
        if m.ACCURACY in out and not 0.0 <= out[m.ACCURACY] <= 1.0:
            raise ValueError(f"metrics 'accuracy' is {out[m.ACCURACY]!r}, outside 0..1")
        if m.NUM_EXAMPLES in out and not out[m.NUM_EXAMPLES] > 0:
            raise ValueError(f"metrics 'num-examples' is {out[m.NUM_EXAMPLES]!r}, not positive")
        if m.COMPUTE_SECONDS in out and out[m.COMPUTE_SECONDS] < 0:
            raise ValueError(f"metrics 'compute-seconds' is {out[m.COMPUTE_SECONDS]!r}, negative")
        return out

    @staticmethod
    def reply_arrays(content: RecordDict, key: str = "arrays") -> dict[str, np.ndarray]:
        """The named ArrayRecord as numpy arrays; ``ValueError`` if absent or not finite."""
        record = content.array_records.get(key)
        if record is None:
            raise ValueError(f"reply has no ArrayRecord {key!r}")
        state = m.record_to_arrays(record)
        for name, value in state.items():
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise ValueError(f"tensor {name!r} has NaN or infinite values")
        return state

    @staticmethod
    def check_shapes(state: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> None:
        """``ValueError`` naming the tensor unless ``state`` has ``expected``'s keys,
        shapes and dtypes."""
        missing = [k for k in expected if k not in state]
        extra = [k for k in state if k not in expected]
        if missing:
            raise ValueError(f"reply is missing tensor(s) {missing[:5]}")
        if extra:
            raise ValueError(f"reply has unexpected tensor(s) {extra[:5]}")
        for key, ref in expected.items():
            if tuple(state[key].shape) != tuple(ref.shape):
                raise ValueError(
                    f"tensor {key!r} has shape {tuple(state[key].shape)}, "
                    f"expected {tuple(ref.shape)}"
                )
            if state[key].dtype != ref.dtype:
                raise ValueError(
                    f"tensor {key!r} has dtype {state[key].dtype}, expected {ref.dtype}"
                )

    # ------------------------------------------------------------------ identity
    def connected_clients(self, grid: Grid) -> list[str]:
        """Learn the client id of every new node; the connected clients in natural order."""
        return identify_clients(
            grid,
            self.node_to_client,
            self.client_to_node,
            self.min_available_nodes,
            self.query_timeout,
        )

    def sample(self, clients: list[str]) -> list[str]:
        """A seeded sample of ``clients_per_round`` of ``clients`` (in natural order)."""
        k = min(self.clients_per_round, len(clients))
        return [clients[i] for i in sorted(self.rng.choice(len(clients), k, replace=False))]

    # ------------------------------------------------------------------ exchange
    def exchange(
        self,
        grid: Grid,
        contents: Mapping[str, RecordDict],
        message_type: str = MessageType.TRAIN,
        check: ReplyCheck | None = None,
        timed: bool = True,
    ) -> dict[str, RecordDict]:
        """Send each client its content, wait, return the accepted replies by client id.

        A reply is accepted if it answers the message sent to that node, carries
        no error, echoes the right client id and passes ``check(client_id,
        content)`` (which raises ``ValueError`` naming the field); refused ones
        are logged and left out, in client-id order. With ``timed`` the bytes
        of both directions count towards the round, and the slowest accepted
        client's compute + transfer time is one term of the round's simulated
        latency.
        """
        sent = {
            cid: Message(
                content=content, message_type=message_type, dst_node_id=self.client_to_node[cid]
            )
            for cid, content in contents.items()
        }
        node_to_cid = {self.client_to_node[cid]: cid for cid in sent}
        t0 = time.perf_counter()
        replies = list(grid.send_and_receive(list(sent.values()), timeout=self.round_timeout))
        self._exchange_wall += time.perf_counter() - t0
        accepted: dict[str, RecordDict] = {}
        times = []
        for reply in sorted(replies, key=lambda r: str(node_to_cid.get(r.metadata.src_node_id))):
            cid = node_to_cid.get(reply.metadata.src_node_id)
            if cid is None or cid in accepted:
                self._refuse(str(reply.metadata.src_node_id), "a reply nobody asked for")
                continue
            # The grid stamps each sent message with its id: a reply must answer it.
            want = sent[cid].metadata.message_id
            if want and reply.metadata.reply_to_message_id != want:
                got = reply.metadata.reply_to_message_id
                self._refuse(cid, f"reply-to-message-id is {got!r}, not {want!r}")
                continue
            if reply.has_error():
                self._refuse(cid, f"client error {reply.error.reason!r}")
                continue
            try:
                config = reply.content.config_records.get("config")
                echoed = None if config is None else config.get(m.CLIENT_ID)
                if echoed is not None and str(echoed) != cid:
                    raise ValueError(f"client-id is {echoed!r}, the message went to {cid!r}")
                if check is not None:
                    check(cid, reply.content)
            except (ValueError, KeyError, TypeError) as err:
                self._refuse(cid, str(err))
                continue
            accepted[cid] = reply.content
            if timed:
                down, up = content_bytes(contents[cid]), content_bytes(reply.content)
                self._bytes["down"] += down
                self._bytes["up"] += up
                metrics = reply.content.metric_records.get("metrics", {})
                compute = float(metrics.get(m.COMPUTE_SECONDS, 0.0))
                times.append(round_time(compute, down, up, self.bandwidth_bps, self.bandwidth_bps))
        if timed:
            self._exchange_times.append(max(times, default=0.0))
        return accepted

    def _refuse(self, who: str, reason: str) -> None:
        log(WARNING, "%s: reply of client %s refused: %s", self.label, who, reason)
        self._failures.append(f"{who}: {reason}")

    # ------------------------------------------------------------------ loop
    def is_evaluation_round(self, server_round: int) -> bool:
        return server_round % self.evaluate_every == 0 or server_round == self.num_rounds

    def summary(self) -> None:
        log(
            INFO,
            "%s on %s %s: %d clients per round, %d local epochs, lr %.3g, batch %d, seed %d",
            self.label,
            self.family.name,
            self.family.config_json(),
            self.clients_per_round,
            self.local_epochs,
            self.lr,
            self.batch_size,
            self.seed,
        )

    def start(self, grid: Grid, num_rounds: int = 3) -> RunRecorder:
        """Run ``num_rounds`` rounds; returns the recorder (rounds and clients)."""
        self.num_rounds = int(num_rounds)
        self.summary()
        for rnd in range(1, self.num_rounds + 1):
            self.run_round(grid, rnd)
        return self.recorder

    def run_round(self, grid: Grid, rnd: int) -> dict[str, Any]:
        """One round: extra exchanges, training, aggregation, evaluation, records."""
        started = time.perf_counter()
        self._exchange_times, self._bytes, self._failures = [], {"down": 0, "up": 0}, []
        clients = self.connected_clients(grid)
        t0, wall0 = time.perf_counter(), self._exchange_wall
        self.before_round(rnd, grid, clients)
        picked = self.sample(clients)
        contents = {cid: self.train_content(rnd, cid) for cid in picked}
        server_seconds = time.perf_counter() - t0 - (self._exchange_wall - wall0)
        replies = self.exchange(
            grid, contents, MessageType.TRAIN, lambda cid, c: self.check_train_reply(rnd, cid, c)
        )
        t0 = time.perf_counter()
        extra = self.aggregate(rnd, replies) if replies else {}
        server_seconds += time.perf_counter() - t0
        train_acc = [
            float(c.metric_records["metrics"][m.ACCURACY])
            for c in replies.values()
            if m.ACCURACY in c.metric_records["metrics"]
        ]
        latency = sum(self._exchange_times) + server_seconds
        self.latency_total += latency
        accuracies: dict[str, float] = {}
        if self.is_evaluation_round(rnd):
            evaluated = self.exchange(
                grid,
                {cid: self.evaluate_content(rnd, cid) for cid in clients},
                MessageType.EVALUATE,
                lambda cid, c: self.check_metrics(c, (m.ACCURACY,)),
                timed=False,
            )
            for cid, content in evaluated.items():
                acc = float(content.metric_records["metrics"][m.ACCURACY])
                accuracies[cid] = acc
                row = {"round": rnd, "accuracy": acc, "method": self.method}
                self.recorder.set_client(cid, {**row, **self.client_row(cid)})
        mean, std = summarise_accuracies(accuracies)
        row = {
            "round": rnd,
            "phase": self.phase(rnd),
            "sampled": " ".join(picked),
            "num-accepted": len(replies),
            "num-failed": len(picked) - len(replies),
            "failures": "; ".join(self._failures),
            "train-accuracy-mean": float(np.mean(train_acc)) if train_acc else float("nan"),
            "accuracy-mean": mean,
            "accuracy-std": std,
            "num-evaluated": len(accuracies),
            "latency-round-s": latency,
            "latency-total-s": self.latency_total,
            "server-seconds": server_seconds,
            "bytes-down": self._bytes["down"],
            "bytes-up": self._bytes["up"],
            "wall-seconds": time.perf_counter() - started,
            **extra,
        }
        self.recorder.add_round(row)
        log(
            INFO,
            "[round %d/%d] %s (%s) | trained %s | accuracy %.4f ± %.4f over %d clients | "
            "%.0f kB moved | latency %.2f s (total %.2f s) | wall %.1f s",
            rnd,
            self.num_rounds,
            self.label,
            row["phase"],
            picked,
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
                    "supernet": self.family.name,
                    "supernet-config": json.loads(self.family.config_json()),
                    "seed": self.seed,
                    "run-config": self.run_config,
                },
                title=f"Personalised accuracy ({self.label})",
                label=self.label,
            )
        return row

    def supernet_bytes(self) -> int:
        """Bytes of the whole supernet state (one transfer of it)."""
        return state_num_bytes(self.supernet)
