"""PerFedRLNAS behind Flower's legacy strategy API (configure_fit / aggregate_fit)."""

from __future__ import annotations

from logging import WARNING
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesIns,
    Parameters,
    Scalar,
    log,
    ndarrays_to_parameters,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from flwr_pfedrlnas.core.profiles import ProfileDistribution
from flwr_pfedrlnas.core.search import ClientReply, SearchConfig
from flwr_pfedrlnas.core.search_space import Architecture, architecture_from_json
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.faces import SearchFace
from flwr_pfedrlnas.flower.failures import check_usable_replies, raise_unidentified
from flwr_pfedrlnas.flower.session import natural_sorted
from flwr_pfedrlnas.protocol.rounds import DEFAULT_MACS_PER_SECOND
from flwr_pfedrlnas.protocol.training_options import TrainingOptions
from flwr_pfedrlnas.supernets import SupernetFamily
from flwr_pfedrlnas.supernets.keep import kept_blocks

__all__ = ["PerFedRLNASLegacy"]


class PerFedRLNASLegacy(SearchFace, Strategy):
    """PerFedRLNAS for apps built on ``NumPyClient`` and ``ServerApp(server_fn=...)``.

    The same search as :class:`~flwr_pfedrlnas.flower.strategy.PerFedRLNAS`, behind
    ``flwr.server.strategy.Strategy``. Arrays travel as a list in the subnet's
    ``state_dict`` key order; the architecture, family and training settings
    travel in the fit config. A client says who it is through
    ``get_properties`` (``client-id``), asked once per connected proxy. Use it
    with :class:`~flwr_pfedrlnas.flower.numpy_client.SubnetClient`. When resuming,
    run for ``strategy.remaining_rounds(num_rounds)`` rounds so that the run
    stops where an uninterrupted one would.

    Too few usable train replies, no usable evaluation reply, or no client
    saying who it is stops the run with an error, as in the Message API. The
    legacy API has no end-of-run hook and carries no arrays in evaluation
    results: every client's deployed model (BatchNorm statistics: the
    supernet's) is saved in ``deployed_dir`` after every evaluation round.

    Parameters are those of :class:`~flwr_pfedrlnas.flower.strategy.PerFedRLNAS`
    (``min_available_nodes`` is ``min_available_clients`` here), simulated
    device ``profiles`` included. Not here: new clients' search-only rounds
    and the search diagnostics, which need messages outside the legacy
    ``configure_fit`` / ``configure_evaluate`` loop.
    """

    def __init__(
        self,
        family: SupernetFamily,
        clients_per_round: int = 5,
        min_available_clients: int = 2,
        fraction_evaluate: float = 1.0,
        evaluate_every: int = 1,
        bn_recalibration_batches: int = -1,
        finetune_epochs: int = 0,
        search_config: SearchConfig | None = None,
        local_epochs: int = 1,
        lr: float = 0.05,
        batch_size: int = 32,
        results_dir: str | None = None,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        run_config: dict[str, Any] | None = None,
        query_timeout: float = 120.0,
        min_usable_fraction: float = 0.0,
        deployed_dir: str | None = None,
        training: TrainingOptions | None = None,
        profiles: ProfileDistribution | None = None,
        device_macs_per_second: float = DEFAULT_MACS_PER_SECOND,
    ) -> None:
        super().__init__()
        if kept_blocks(family):
            raise ValueError(
                f"family has share-or-keep blocks {list(kept_blocks(family))}: a client's "
                "personal blocks need the Message-API strategy (PerFedRLNAS); the legacy "
                'strategy serves the paper\'s setting (keep-blocks = "")'
            )
        self._start_session(family, search_config, "PerFedRLNAS (legacy API)", locals())
        self.min_available_clients = int(min_available_clients)
        self.proxy_to_client: dict[str, str] = {}
        self._sent: dict[str, tuple[str, Architecture]] = {}

    def __repr__(self) -> str:
        return f"PerFedRLNASLegacy({self.family!r})"

    def remaining_rounds(self, num_rounds: int) -> int:
        """Rounds to configure in ``ServerConfig`` for ``num_rounds`` in all."""
        return self.session.remaining_rounds(num_rounds)

    # ------------------------------------------------------------------ helpers
    def _supernet_parameters(self) -> Parameters:
        return ndarrays_to_parameters(list(self.search.supernet.values()))

    def _identify(self, client_manager: ClientManager, server_round: int) -> dict[str, ClientProxy]:
        """Ask each new proxy for its client id; return client id -> proxy."""
        client_manager.wait_for(self.min_available_clients, timeout=self.query_timeout)
        proxies = client_manager.all()
        errors: dict[str, str] = {}
        for proxy_id, proxy in proxies.items():
            if proxy_id in self.proxy_to_client:
                continue
            try:
                res = proxy.get_properties(GetPropertiesIns({}), self.query_timeout, server_round)
                cid = res.properties.get(m.CLIENT_ID)
            except Exception as err:  # a node that cannot answer is skipped this round
                log(WARNING, "client proxy %s did not say who it is: %s", proxy_id, err)
                errors[proxy_id] = repr(err)
                continue
            if isinstance(cid, bool) or not isinstance(cid, (str, int)) or str(cid) == "":
                log(
                    WARNING,
                    "client proxy %s answered get_properties with %r: ignored",
                    proxy_id,
                    cid,
                )
                continue
            self.proxy_to_client[proxy_id] = str(cid)
        by_client: dict[str, ClientProxy] = {}
        for proxy_id, proxy in proxies.items():
            cid = self.proxy_to_client.get(proxy_id)
            if cid is None:
                continue
            if cid in by_client:
                log(
                    WARNING,
                    "client proxy %s claims client id %r, already connected: ignored",
                    proxy_id,
                    cid,
                )
                continue
            by_client[cid] = proxy
        if not by_client:
            raise_unidentified(len(proxies), self.query_timeout, errors)
        return by_client

    def _config(
        self, arch: Architecture, server_round: int, extra: dict[str, Any]
    ) -> dict[str, Scalar]:
        record = m.subnet_config(self.family, arch, self.session.global_round(server_round), extra)
        return dict(record)

    # ------------------------------------------------------------------ Flower
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The initial supernet (so that no client is asked for parameters)."""
        return self._supernet_parameters()

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Sample clients; each gets its own subnet and architecture."""
        by_client = self._identify(client_manager, server_round)
        clients = self.session.training_clients(list(by_client))  # fixes the device profiles
        proposals = self.session.propose_round(server_round, clients)
        extra = self.session.client_config(server_round=server_round)
        self._sent = {}
        instructions = []
        for p in proposals:
            proxy = by_client[p.client_id]
            ins = FitIns(
                ndarrays_to_parameters(list(p.state.values())),
                self._config(
                    p.arch, server_round, {**extra, **self.session.client_extras(p.client_id)}
                ),
            )
            instructions.append((proxy, ins))
            self._sent[proxy.cid] = (p.client_id, p.arch)
        return instructions

    def _parse(self, proxy: ClientProxy, res: FitRes) -> ClientReply | None:
        sent = self._sent.get(proxy.cid)
        if sent is None:
            log(WARNING, "result from client proxy %s, which was sent nothing: ignored", proxy.cid)
            return None
        cid, arch = sent
        try:
            # Read-only views of the reply's bytes: decoded once, never copied.
            arrays = [m.npy_bytes_to_array(t) for t in res.parameters.tensors]
            keys = list(self.family.subnet_shapes(arch))
            if len(arrays) != len(keys):
                raise ValueError(
                    f"reply has {len(arrays)} arrays, the subnet has {len(keys)} tensors"
                )
            metrics = dict(res.metrics)
            for key in (m.ACCURACY, m.COMPUTE_SECONDS):
                if key not in metrics:
                    raise ValueError(f"metrics lack {key!r}")
            claimed = metrics.get(m.CLIENT_ID)
            if claimed is not None and str(claimed) != cid:
                raise ValueError(
                    f"client-id is {claimed!r}, but the reply came from client {cid!r}"
                )
            echoed = metrics.get(m.ARCH)
            return ClientReply(
                client_id=cid,
                arch=None
                if echoed is None
                else architecture_from_json(str(echoed), self.family.search_space),
                state={k: np.asarray(v) for k, v in zip(keys, arrays)},
                num_examples=res.num_examples,
                accuracy=float(metrics.get(m.ACCURACY, float("nan"))),
                train_loss=float(metrics.get(m.TRAIN_LOSS, float("nan"))),
                compute_seconds=float(metrics.get(m.COMPUTE_SECONDS, float("nan"))),
                compute_macs=m.optional_number(metrics, m.COMPUTE_MACS),
                peak_memory_bytes=float(metrics.get(m.PEAK_MEMORY_BYTES, 0.0)),
                memory_budget_bytes=m.optional_number(metrics, m.MEMORY_BUDGET_BYTES),
                memory_overrun=bool(metrics.get(m.MEMORY_OVERRUN, 0)),
                val_accuracy=m.optional_number(metrics, m.VAL_ACCURACY),
                deployed_val_accuracy=m.optional_number(metrics, m.DEPLOYED_VAL_ACCURACY),
            )
        except (ValueError, TypeError) as err:
            self.session.record_failure(cid, f"rejected: {err}")
            return None

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Reward, update the policies and merge the returned subnets."""
        for failure in failures:
            if isinstance(failure, BaseException):
                log(WARNING, "a client failed: %r", failure)
            else:
                cid = self._sent.get(failure[0].cid, ("proxy " + failure[0].cid, None))[0]
                self.session.record_failure(cid, f"client error: {failure[1].status.message}")
        parsed = [r for r in (self._parse(proxy, res) for proxy, res in results) if r is not None]
        outcome = self.session.incorporate(server_round, parsed)
        sampled = [cid for cid, _ in self._sent.values()]
        self._sent = {}
        metrics = dict(self.session.train_metrics())
        self._check_usable("train", server_round, sampled, outcome.accepted)
        if not self._evaluates(server_round):
            # Flower skips aggregate_evaluate when nobody is evaluated: close the round here.
            self.session.finish_round(server_round, {})
        return self._supernet_parameters(), metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Every client (or a fraction) tests the subnet of its argmax architecture."""
        if not self._evaluates(server_round):
            return []
        by_client = self._identify(client_manager, server_round)
        clients = self._evaluation_sample(natural_sorted(list(by_client)))
        instructions = []
        for cid in clients:
            arch, state = self.session.deploy(cid)
            ins = EvaluateIns(
                ndarrays_to_parameters(list(state.values())),
                self._config(
                    arch, server_round, self.session.evaluate_config(server_round=server_round)
                ),
            )
            instructions.append((by_client[cid], ins))
        return instructions

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Record each client's personalised accuracy; log the round; checkpoint."""
        accuracies: dict[str, float] = {}
        losses = []
        for proxy, res in results:
            cid = self.proxy_to_client.get(proxy.cid)
            if cid is None:
                continue
            acc = res.metrics.get(m.ACCURACY)
            if self.session.record_evaluation(server_round, cid, acc, res.num_examples):
                accuracies[cid] = float(acc)
                losses.append(res.loss)
        reasons = {}
        for i, failure in enumerate(failures):
            log(WARNING, "an evaluation failed: %r", failure)
            if isinstance(failure, BaseException):  # Flower does not say whose it was
                reasons[f"(unknown {i + 1})"] = repr(failure)
            else:
                cid = self.proxy_to_client.get(failure[0].cid, f"proxy {failure[0].cid}")
                reasons[cid] = f"client error: {failure[1].status.message}"
        self.session.finish_round(server_round, accuracies)
        if self.deployed_dir:
            self.save_deployed()
        evaluated = [self.proxy_to_client.get(p.cid, f"proxy {p.cid}") for p, _ in results]
        evaluated += list(reasons)
        check_usable_replies("evaluate", server_round, evaluated, list(accuracies), reasons)
        if not accuracies:
            return None, {}
        return float(np.mean(losses)), self._evaluation_metrics(accuracies)

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """No centralised evaluation: accuracy is personal."""
        return None
