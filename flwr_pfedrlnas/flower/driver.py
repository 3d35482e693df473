"""The one Message-API driver: runs any :class:`~flwr_pfedrlnas.flower.method.Method` on a Grid."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.identity import identify_clients
from flwr_pfedrlnas.flower.replies import answer_problem
from flwr_pfedrlnas.protocol.checkpoint import (
    prefixed,
    read_checkpoint,
    unprefixed,
    write_checkpoint,
)
from flwr_pfedrlnas.protocol.results import RunRecorder, summarise_accuracies, write_results
from flwr_pfedrlnas.protocol.rounds import ExchangeLedger, RoundSchedule, seeded_sample

if TYPE_CHECKING:
    from flwr_pfedrlnas.flower.method import Method

__all__ = ["MethodDriver", "content_bytes"]

ReplyCheck = Callable[[str, RecordDict], None]
METHOD_PREFIX = "method/"


def content_bytes(content: RecordDict) -> int:
    """Bytes of every array a message carries, as Flower serialises them."""
    return int(sum(record.count_bytes() for record in content.array_records.values()))


class MethodDriver:
    """Runs the round protocol for one method over Flower's Message API.

    Parameters
    ----------
    method : Method
        The method whose hooks say what is sent and how replies fold in.
    """

    def __init__(self, method: Method) -> None:
        self.method = method
        self.recorder = RunRecorder()
        self.node_to_client: dict[int, str] = {}
        self.client_to_node: dict[str, int] = {}
        self.latency_total = 0.0
        self.modelled_latency_total = 0.0
        self.ledger = self._new_ledger()
        self._waited = 0.0  # seconds spent waiting for clients this round (not server time)

    def _new_ledger(self) -> ExchangeLedger:
        meth = self.method
        return ExchangeLedger(
            meth.bandwidth_down_bps, meth.bandwidth_up_bps, meth.device_macs_per_second
        )

    # ------------------------------------------------------------------ identity
    def connected_clients(self, grid: Grid) -> list[str]:
        """Learn the client id of every new node; the connected clients in natural order."""
        meth = self.method
        clients = identify_clients(
            grid,
            self.node_to_client,
            self.client_to_node,
            meth.min_available_nodes,
            meth.query_timeout,
            meth.configrecord_key,
        )
        if not clients:
            raise RuntimeError(
                f"{meth.label}: no connected node said who it is within "
                f"{meth.query_timeout:g} s (is the client's query handler registered?)"
            )
        return clients

    # ------------------------------------------------------------------ exchange
    def exchange(
        self,
        grid: Grid,
        contents: Mapping[str, RecordDict],
        message_type: str = MessageType.TRAIN,
        check: ReplyCheck | None = None,
        timed: bool = True,
    ) -> dict[str, RecordDict]:
        """Send each client its content; the usable replies by client id, in client order.

        A reply is usable if it answers the message sent to that node, carries
        no error, names the client the message went to (see
        :func:`~flwr_pfedrlnas.flower.replies.answer_problem`) and passes
        ``check(client_id, content)``, which raises ``ValueError`` (or
        ``KeyError`` / ``TypeError``) naming the field. Refused replies are
        logged and listed in the round's failures; a sampled client that did
        not answer is a failure too. With ``timed`` every byte sent and
        received (``ArrayRecord.count_bytes``) and the slowest usable client's
        compute + transfer time count towards the round.
        """
        sent = {
            cid: Message(
                content=content, message_type=message_type, dst_node_id=self.client_to_node[cid]
            )
            for cid, content in contents.items()
        }
        node_to_cid = {self.client_to_node[cid]: cid for cid in sent}
        t0 = time.perf_counter()
        replies = list(
            grid.send_and_receive(list(sent.values()), timeout=self.method.round_timeout)
        )
        self._waited += time.perf_counter() - t0
        accepted: dict[str, RecordDict] = {}
        answered: set[str] = set()
        seconds: list[float] = []
        modelled: list[float] = []
        for reply in sorted(replies, key=lambda r: str(node_to_cid.get(r.metadata.src_node_id))):
            cid = node_to_cid.get(reply.metadata.src_node_id)
            if cid is None or cid in answered:
                self._refuse(str(reply.metadata.src_node_id), "a reply nobody asked for")
                accepted.pop(str(cid), None)  # two answers: neither can be trusted
                continue
            answered.add(cid)
            problem = answer_problem(reply, sent[cid], cid, self.method.configrecord_key)
            if problem is None and check is not None:
                try:
                    check(cid, reply.content)
                except (ValueError, KeyError, TypeError) as err:
                    problem = str(err)
            if problem is not None:
                self._refuse(cid, problem)
                continue
            accepted[cid] = reply.content
            if timed:
                metrics = reply.content.metric_records.get(self.method.metricrecord_key, {})
                compute = float(metrics.get(m.COMPUTE_SECONDS, 0.0))
                down, up = content_bytes(contents[cid]), content_bytes(reply.content)
                seconds.append(self.ledger.client_time(compute, down, up))
                macs = float(metrics.get(m.COMPUTE_MACS, float("nan")))
                modelled.append(self.ledger.modelled_time(macs, down, up))
        for cid in sorted(set(sent) - answered):
            self._refuse(cid, "no reply")
        if timed:
            self.ledger.add_exchange(
                sum(content_bytes(c) for c in contents.values()),
                sum(content_bytes(r.content) for r in replies if not r.has_error()),
                seconds,
                modelled,
            )
        return accepted

    def _refuse(self, who: str, reason: str) -> None:
        log(WARNING, "%s: reply of client %s refused: %s", self.method.label, who, reason)
        self.ledger.fail(who, reason)

    # ------------------------------------------------------------------ loop
    def start(self, grid: Grid, num_rounds: int) -> RunRecorder:
        """Run the rounds up to ``num_rounds`` in all (the rest of them after a resume)."""
        meth = self.method
        rounds_done = self.restore() if meth.resume else 0
        meth.schedule = RoundSchedule(int(num_rounds), meth.evaluate_every, rounds_done)
        if rounds_done:
            log(INFO, "Resumed %s after round %d", meth.label, rounds_done)
        meth.summary()
        for rnd in meth.schedule.remaining():
            self.run_round(grid, rnd)
        return self.recorder

    def run_round(self, grid: Grid, rnd: int) -> dict[str, Any]:
        """One round: extra exchanges, training, aggregation, evaluation, records."""
        meth = self.method
        started = time.perf_counter()
        self.ledger = self._new_ledger()
        self._waited = 0.0
        clients = self.connected_clients(grid)

        def exchange(contents, message_type=MessageType.TRAIN, check=None, timed=True):
            return self.exchange(grid, contents, message_type, check, timed)

        t0 = time.perf_counter()
        meth.before_round(rnd, exchange, clients)
        picked = seeded_sample(meth.rng, clients, meth.clients_per_round)
        contents = {cid: meth.train_content(rnd, cid) for cid in picked}
        server = time.perf_counter() - t0 - self._waited
        replies = exchange(
            contents, MessageType.TRAIN, lambda c, x: meth.check_train_reply(rnd, c, x)
        )
        if not replies:
            raise RuntimeError(
                f"{meth.label} round {rnd}: none of the {len(picked)} sampled clients sent a "
                f"usable reply: {'; '.join(self.ledger.failures)}"
            )
        t0 = time.perf_counter()
        extra = dict(meth.aggregate(rnd, replies))
        server += time.perf_counter() - t0
        self.ledger.server_seconds = server
        train_acc = [
            float(c.metric_records[meth.metricrecord_key][m.ACCURACY])
            for c in replies.values()
            if m.ACCURACY in c.metric_records[meth.metricrecord_key]
        ]
        latency = self.ledger.latency
        self.latency_total += latency
        self.modelled_latency_total += self.ledger.modelled_latency
        accuracies = (
            self.evaluate(grid, rnd, clients) if meth.schedule.is_evaluation_round(rnd) else {}
        )
        mean, std = summarise_accuracies(accuracies)
        row = {
            "round": rnd,
            "phase": meth.phase(rnd),
            "sampled": " ".join(picked),
            "num-accepted": len(replies),
            "num-failed": len(picked) - len(replies),
            "failures": "; ".join(self.ledger.failures),
            "train-accuracy-mean": float(np.mean(train_acc)) if train_acc else float("nan"),
            "accuracy-mean": mean,
            "accuracy-std": std,
            "num-evaluated": len(accuracies),
            "latency-round-s": latency,
            "latency-total-s": self.latency_total,
            "modelled-latency-round-s": self.ledger.modelled_latency,
            "modelled-latency-total-s": self.modelled_latency_total,
            "server-seconds": server,
            "bytes-down": self.ledger.bytes_down,
            "bytes-up": self.ledger.bytes_up,
            "wall-seconds": time.perf_counter() - started,
            **extra,
            **meth.round_fields(rnd),
        }
        self.recorder.add_round(row)
        self._log(rnd, row, picked)
        meth.after_round(rnd, row)
        if meth.results_dir:
            self.write_results()
        if meth.checkpoint_dir:
            self.save(rnd)
        return row

    def evaluate(self, grid: Grid, rnd: int, clients: list[str]) -> dict[str, float]:
        """Every connected client tests its deployed model; accuracies by client id."""
        meth = self.method
        evaluated = self.exchange(
            grid,
            {cid: meth.evaluate_content(rnd, cid) for cid in clients},
            MessageType.EVALUATE,
            lambda cid, c: meth.check_evaluate_reply(rnd, cid, c),
            timed=False,
        )
        accuracies = {}
        for cid, content in evaluated.items():
            acc = float(content.metric_records[meth.metricrecord_key][m.ACCURACY])
            accuracies[cid] = acc
            row = {"round": rnd, "accuracy": acc, "method": meth.method}
            self.recorder.set_client(cid, {**row, **meth.client_row(cid)})
        return accuracies

    def _log(self, rnd: int, row: Mapping[str, Any], picked: list[str]) -> None:
        log(
            INFO,
            "[round %d/%d] %s (%s) | trained %s | accuracy %.4f ± %.4f over %d clients | "
            "%.0f kB moved | latency %.2f s (total %.2f s) | wall %.1f s",
            rnd,
            self.method.schedule.num_rounds,
            self.method.label,
            row["phase"],
            picked,
            row["accuracy-mean"],
            row["accuracy-std"],
            row["num-evaluated"],
            (row["bytes-down"] + row["bytes-up"]) / 1e3,
            row["latency-round-s"],
            self.latency_total,
            row["wall-seconds"],
        )

    def write_results(self) -> None:
        meth = self.method
        config = {
            "strategy": meth.label,
            "method": meth.method,
            "seed": meth.seed,
            "run-config": meth.run_config,
            **meth.describe(),
        }
        write_results(
            str(meth.results_dir),
            self.recorder,
            config,
            title=f"Personalised accuracy ({meth.label})",
            label=meth.label,
        )

    # ------------------------------------------------------------------ checkpoint
    def save(self, rnd: int) -> None:
        """Checkpoint after round ``rnd``: the method's state and the protocol's."""
        meth = self.method
        arrays, meta = meth.state_dict()
        write_checkpoint(
            str(meth.checkpoint_dir),
            prefixed(METHOD_PREFIX, arrays),
            {
                "method": meth.method,
                "rounds-done": int(rnd),
                "rng": meth.rng.bit_generator.state,
                "recorder": self.recorder.state_dict(),
                "latency-total": self.latency_total,
                "modelled-latency-total": self.modelled_latency_total,
                "method-state": json.loads(json.dumps(meta)),
            },
            tag=f"{rnd:06d}",
        )

    def restore(self) -> int:
        """Load the checkpoint of ``checkpoint_dir`` if there is one; rounds it had done."""
        meth = self.method
        saved = read_checkpoint(str(meth.checkpoint_dir)) if meth.checkpoint_dir else None
        if saved is None:
            return 0
        arrays, meta = saved
        if meta.get("method") != meth.method:
            raise ValueError(
                f"checkpoint in {meth.checkpoint_dir} is of method {meta.get('method')!r}, "
                f"not {meth.method!r}"
            )
        own = unprefixed(METHOD_PREFIX, arrays)
        meth.load_state_dict(own, meta["method-state"])  # raises, changing nothing, if unfit
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["rng"]
        meth.rng = rng
        self.recorder.load_state_dict(meta["recorder"])
        self.latency_total = float(meta["latency-total"])
        self.modelled_latency_total = float(meta.get("modelled-latency-total", 0.0))
        return int(meta["rounds-done"])
