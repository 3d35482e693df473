"""Search diagnostics: each client's deployed subnet against random subnets and the largest."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.core.search_space import Architecture
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.replies import answer_problem, check_metrics
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = ["SearchDiagnostics"]

LARGEST = "largest"
ConfigFor = Callable[[Architecture], Any]


class SearchDiagnostics:
    """What the search gained over chance, measured on the clients' own test splits.

    In the rounds it is due, every evaluated client also tests ``num_random``
    uniformly random subnets of the current supernet and its largest subnet,
    each cut and tested exactly like its deployed one (BatchNorm re-estimated,
    the same fine-tuning when the round has any). The client's *search gain*
    is its deployed accuracy minus the mean over its random subnets. The
    random architectures come from their own generator (seeded by the seed
    and the round), so diagnostics never change the search.

    Parameters
    ----------
    family : SupernetFamily
        The searched family.
    num_random : int (default: 2)
        Random subnets per client and diagnostic round (0: off).
    every : int (default: 0)
        Every this many evaluation rounds, and always in the last one; 0: the
        last round only. The cost of a diagnostic round is ``num_random + 1``
        more tests per evaluated client.
    seed : int (default: 0)
        Seed of the random architectures.
    """

    def __init__(
        self, family: SupernetFamily, num_random: int = 2, every: int = 0, seed: int = 0
    ) -> None:
        for name, value in (("diagnostic-subnets", num_random), ("diagnose-every", every)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.family = family
        self.num_random, self.every, self.seed = int(num_random), int(every), int(seed)
        self.results: dict[str, dict[str, Any]] = {}
        self._evaluations = 0

    def due(self, is_last_round: bool) -> bool:
        """Whether this evaluation round runs the diagnostics (counts evaluation rounds)."""
        self._evaluations += 1
        if self.num_random == 0:
            return False
        return is_last_round or (self.every > 0 and self._evaluations % self.every == 0)

    def architectures(self, round_no: int) -> list[tuple[str, Architecture]]:
        """The round's random architectures (the same for every client) and the largest."""
        rng = np.random.default_rng([self.seed, int(round_no), 7])
        archs = [
            (f"random-{i}", self.family.search_space.sample(rng)) for i in range(self.num_random)
        ]
        return [*archs, (LARGEST, self.family.largest_architecture())]

    def run(
        self,
        grid: Grid,
        round_no: int,
        supernet: Mapping[str, np.ndarray],
        client_to_node: Mapping[str, int],
        clients: Sequence[str],
        config_for: ConfigFor,
        timeout: float = 3600.0,
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        subnet_for: Callable[[str, Architecture], Mapping[str, np.ndarray]] | None = None,
    ) -> None:
        """Send each client the diagnostic subnets, collect the accuracies they report.

        A reply that does not answer its message, names another client, or
        whose accuracy is not in [0, 1], is logged and left out. ``subnet_for(client,
        arch)``, when given, is what each client is sent (share-or-keep: without
        the blocks it keeps); else every client gets the subnet cut from ``supernet``.
        """
        archs = self.architectures(round_no)
        if subnet_for is None:  # one record per architecture serves every client
            shared = {
                name: m.arrays_to_record(extract_subnet(self.family, supernet, arch))
                for name, arch in archs
            }

        def record(cid: str, name: str, arch: Architecture):
            if subnet_for is None:
                return shared[name]
            return m.arrays_to_record(subnet_for(cid, arch))

        outgoing = [
            (
                cid,
                name,
                Message(
                    RecordDict(
                        {
                            arrayrecord_key: record(cid, name, arch),
                            configrecord_key: config_for(arch),
                        }
                    ),
                    dst_node_id=client_to_node[cid],
                    message_type=MessageType.EVALUATE,
                ),
            )
            for cid in clients
            for name, arch in archs
        ]
        replies = list(grid.send_and_receive([msg for *_, msg in outgoing], timeout=timeout))
        # The grid stamps each message with its id on sending; a reply names the one it answers.
        sent = {msg.metadata.message_id: (cid, name, msg) for cid, name, msg in outgoing}
        self.results = {cid: {"random": [], LARGEST: float("nan")} for cid in clients}
        for reply in replies:
            key = reply.metadata.reply_to_message_id
            if key not in sent:
                log(
                    WARNING,
                    "diagnostics: a reply nobody asked for (node %s)",
                    reply.metadata.src_node_id,
                )
                continue
            cid, name, msg = sent.pop(key)
            problem = answer_problem(reply, msg, cid, configrecord_key)
            if problem is None:
                try:
                    acc = check_metrics(reply.content, (m.ACCURACY,))[m.ACCURACY]
                except (ValueError, KeyError, TypeError) as err:
                    problem = str(err)
            if problem is not None:
                log(
                    WARNING, "diagnostics: reply of client %s (%s) left out: %s", cid, name, problem
                )
                continue
            if name == LARGEST:
                self.results[cid][LARGEST] = acc
            else:
                self.results[cid]["random"].append(acc)

    def client_fields(self, client_id: str, deployed: float) -> dict[str, float]:
        """clients.csv fields of one client (empty if it was not diagnosed)."""
        result = self.results.get(client_id)
        if result is None:
            return {}
        random_mean = float(np.mean(result["random"])) if result["random"] else float("nan")
        return {
            "random-subnet-accuracy": random_mean,
            "largest-subnet-accuracy": float(result[LARGEST]),
            "search-gain": float(deployed) - random_mean,
        }

    def row_fields(self, deployed: Mapping[str, float]) -> dict[str, float]:
        """rounds.csv fields: means over the diagnosed clients (NaN in other rounds)."""
        fields = [self.client_fields(c, a) for c, a in deployed.items() if c in self.results]
        self.results = {}
        out = {}
        for key in ("search-gain", "random-subnet-accuracy", "largest-subnet-accuracy"):
            values = [f[key] for f in fields if not math.isnan(f[key])]
            out[key] = float(np.mean(values)) if values else float("nan")
        return out
