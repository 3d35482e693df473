"""PerFedRLNAS as a strategy of Flower's Message API."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO
from typing import Any

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from flwr_pfedrlnas.core.profiles import ProfileDistribution
from flwr_pfedrlnas.core.search import ClientReply, SearchConfig
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower import new_clients
from flwr_pfedrlnas.flower.deployed_export import record_batchnorm_replies
from flwr_pfedrlnas.flower.diagnostics import SearchDiagnostics
from flwr_pfedrlnas.flower.faces import SearchFace
from flwr_pfedrlnas.flower.failures import ErrorAnswers, check_usable_replies, raise_unidentified
from flwr_pfedrlnas.flower.identity import identify_clients
from flwr_pfedrlnas.flower.search_replies import (
    evaluation_accuracies,
    parse_train_reply,
    serialised_bytes,
)
from flwr_pfedrlnas.protocol.rounds import DEFAULT_MACS_PER_SECOND
from flwr_pfedrlnas.protocol.training_options import TrainingOptions
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = ["PerFedRLNAS"]


class PerFedRLNAS(SearchFace, Strategy):
    """Personalised federated NAS by reinforcement learning (Message API).

    The strategy owns the search state: the supernet and one architecture
    policy per client, keyed on the client's stable id (``client-id`` or
    ``partition-id`` of its node config, learnt once per node with a query
    message), never on Flower's node id. Each round it samples clients, sends
    each its own subnet and architecture, rewards and updates the policies of
    those that answer, and merges their subnets into the supernet with the
    count-normalised masked mean. Evaluation sends every client the subnet of
    its most probable architecture (its deployed model).

    A round in which too few train replies could be used (every client
    failed or was rejected; see ``min_usable_fraction``), an evaluation round
    in which no client's test could be used, or a round in which no node says
    who it is stops the run with an error naming the cause (``flwr ls``:
    failed). ``start()`` returns Flower's ``Result``; its ``arrays`` is the
    supernet (every shared weight), not anyone's deployed model: those are
    :meth:`deployed_models`, saved in ``deployed_dir`` at the end.

    Parameters
    ----------
    family : SupernetFamily
        The supernet family (``get_supernet(name, **knobs)``).
    clients_per_round : int (default: 5)
        ``N``, clients sampled for training each round (all when fewer exist).
    min_available_nodes : int (default: 2)
        Wait until this many nodes are connected before sampling.
    fraction_evaluate : float (default: 1.0)
        Fraction of the known clients evaluated in an evaluation round; 1.0
        evaluates every client (the personalised-accuracy protocol).
    evaluate_every : int (default: 1)
        Evaluate every this many rounds (and always at the last round).
    bn_recalibration_batches : int (default: -1)
        Before testing its deployed subnet, a client re-estimates BatchNorm
        statistics on this many local training batches (-1: all, 0: off).
        Shared running statistics are averages over different subnets; as in
        once-for-all, a subnet's own statistics are recomputed, weights untouched.
    finetune_epochs : int (default: 0)
        Epochs of local fine-tuning of each client's deployed subnet before
        the last round's test (sent as ``finetune-epochs``; the fine-tuned
        weights are not uploaded). 0 deploys the subnet as it is cut from the
        supernet, the paper's protocol; > 0 compares like for like with
        FedAvg + fine-tuning.
    search_config : SearchConfig | None (default: None)
        Policy, reward and merge settings; ``SearchConfig()`` when ``None``.
    local_epochs : int (default: 1)
        ``E``, local epochs per round (sent as ``local-epochs``).
    lr : float (default: 0.05)
        Client learning rate (sent as ``lr``).
    batch_size : int (default: 32)
        Client batch size (sent as ``batch-size``).
    results_dir : str | None (default: None)
        Where rounds.csv, clients.csv, config.json and accuracy.png go.
    checkpoint_dir : str | None (default: None)
        Where the search state is checkpointed after every round.
    resume : bool (default: False)
        Continue from the checkpoint in ``checkpoint_dir`` if there is one.
    run_config : dict | None (default: None)
        Settings recorded verbatim in config.json.
    arrayrecord_key : str (default: "arrays")
        Key of the ArrayRecord in messages.
    configrecord_key : str (default: "config")
        Key of the ConfigRecord in messages.
    metricrecord_key : str (default: "metrics")
        Key of the MetricRecord in replies.
    query_timeout : float (default: 120.0)
        Seconds to wait for new nodes to say who they are.
    profiles : ProfileDistribution | None (default: None)
        Simulated devices: each client's seeded speed factor and bandwidths
        enter its round time, its memory budget is sent as
        ``memory-budget-bytes`` (a node's own ``memory-budget-mb`` wins).
        ``None`` (deployment): measured compute and the configured bandwidth.
    num_new_clients : int (default: 0)
        Clients held out of training (the last ids in natural order); after
        the training rounds they get ``new_client_rounds`` search-only rounds.
    new_client_rounds : int (default: 0)
        ``R``, search-only rounds for the new clients (see
        :meth:`search_new_clients`).
    min_usable_fraction : float (default: 0.0)
        Share of a round's sampled clients whose train reply must be usable;
        fewer stops the run. At least one usable reply is always required. An
        over-budget reply (memory overrun) counts as usable: it rewards the policy.
    deployed_dir : str | None (default: None)
        Where every client's deployed model is saved at the end of :meth:`start`
        (format: :mod:`flwr_pfedrlnas.deployed`); ``None``: ``<results_dir>/deployed``
        when ``results_dir`` is set, else not saved.
    diagnostic_subnets, diagnose_every : int (default: 0, 0)
        Search diagnostics (:class:`~flwr_pfedrlnas.flower.diagnostics.SearchDiagnostics`):
        in the last round (and every ``diagnose_every`` evaluation rounds) each
        evaluated client also tests ``diagnostic_subnets`` random subnets and
        the largest; rounds.csv and clients.csv get ``search-gain`` (deployed
        minus the random subnets' mean), ``random-subnet-accuracy`` and
        ``largest-subnet-accuracy``. 0 subnets: off (the apps' run config turns
        them on with ``diagnostic-subnets = 2``).
    training : TrainingOptions | None (default: None)
        The clients' learning-rate schedule across rounds, optimiser and label
        smoothing (:class:`~flwr_pfedrlnas.protocol.training_options.TrainingOptions`),
        the same options every baseline takes.
    """

    def __init__(
        self,
        family: SupernetFamily,
        clients_per_round: int = 5,
        min_available_nodes: int = 2,
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
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        metricrecord_key: str = "metrics",
        query_timeout: float = 120.0,
        profiles: ProfileDistribution | None = None,
        num_new_clients: int = 0,
        new_client_rounds: int = 0,
        min_usable_fraction: float = 0.0,
        deployed_dir: str | None = None,
        diagnostic_subnets: int = 0,
        diagnose_every: int = 0,
        training: TrainingOptions | None = None,
        device_macs_per_second: float = DEFAULT_MACS_PER_SECOND,
    ) -> None:
        self._start_session(family, search_config, "PerFedRLNAS", locals())
        self.min_available_nodes = int(min_available_nodes)
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.metricrecord_key = metricrecord_key
        self.node_to_client: dict[int, str] = {}
        self.client_to_node: dict[str, int] = {}
        self._initial_loaded = self.session.resumed_from > 0
        self._sent: dict[int, str] = {}
        # This round's train message per node: a reply must answer that message.
        self._sent_messages: dict[int, Message] = {}
        self._stale: dict[str, str] = {}
        self._evaluated: list[str] = []
        self.diagnostics = SearchDiagnostics(
            family, diagnostic_subnets, diagnose_every, self.search.config.seed
        )

    def summary(self) -> None:
        """Log the strategy's settings as a small tree."""
        self.session.summary()
        log(
            INFO,
            "\t└──> Keys: arrays '%s', config '%s', metrics '%s'; evaluate fraction %.2f",
            self.arrayrecord_key,
            self.configrecord_key,
            self.metricrecord_key,
            self.fraction_evaluate,
        )

    # ------------------------------------------------------------------ identity
    def _identify(self, grid: Grid) -> list[str]:
        """Learn the client id of every new node; return the connected clients.

        Raises :class:`~flwr_pfedrlnas.flower.failures.UnidentifiedNodesError`
        when no connected node has said who it is.
        """
        answers = ErrorAnswers(grid)
        clients = identify_clients(
            answers,  # type: ignore[arg-type]
            self.node_to_client,
            self.client_to_node,
            self.min_available_nodes,
            self.query_timeout,
            self.configrecord_key,
        )
        if not clients:
            raise_unidentified(len(list(grid.get_node_ids())), self.query_timeout, answers.errors)
        return clients

    def _record_batchnorm(self, replies: Iterable[Message]) -> None:
        record_batchnorm_replies(
            self.deployed,
            replies,
            self.node_to_client,
            self.arrayrecord_key,
            self.configrecord_key,
        )

    # ------------------------------------------------------------------ Flower
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run ``num_rounds`` rounds in all (fewer when resuming part-way).

        ``initial_arrays``, when given and not empty, replaces the initial
        supernet (for example a pre-trained one); it is ignored on resume.
        ``evaluate_fn(server_round, arrays)`` receives the supernet as an
        ``ArrayRecord`` every time, round 0 included (the initial supernet, so
        ``family.build_supernet().load_state_dict(arrays.to_torch_state_dict())``
        works); the clients' deployed models are :meth:`deployed_models`.
        At the end every client's deployed model is saved in ``deployed_dir``.
        """
        remaining = self.session.remaining_rounds(num_rounds)
        if not self._initial_loaded and initial_arrays is not None and len(initial_arrays) > 0:
            self.search.supernet = self.search._checked_supernet(m.record_to_arrays(initial_arrays))
        self._initial_loaded = True
        result = super().start(
            grid,
            m.arrays_to_record(self.search.supernet),
            num_rounds=remaining,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
        )
        if self.session.num_new_clients > 0 and self.session.new_client_rounds > 0:
            self.search_new_clients(grid, timeout=timeout, evaluate_config=evaluate_config)
        if self.deployed_dir:
            self.save_deployed()
        return result

    # ------------------------------------------------------------------ new clients
    def search_new_clients(
        self,
        grid: Grid,
        num_rounds: int | None = None,
        timeout: float = 3600,
        evaluate_config: ConfigRecord | None = None,
    ) -> list[dict[str, Any]]:
        """Search-only rounds for the new (held-out) clients; one row per round.

        Each round every new client is sent the subnet of an architecture
        sampled from its policy in an evaluate-type message flagged
        ``search-only``; it tests it (after BatchNorm recalibration, as in
        evaluation), never trains and uploads no weights. The reward is the
        accuracy minus the new clients' running mean accuracy (eq. 8 without
        the time term and without a merge) and updates the policy (eq. 6).
        Then each new client tests its argmax subnet; the mean is the round's
        ``accuracy-mean`` (``new_clients.csv`` in ``results_dir``). The
        supernet is not changed.
        """
        rounds = self.session.new_client_rounds if num_rounds is None else int(num_rounds)
        return new_clients.search_new_clients(self, grid, rounds, timeout, evaluate_config)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients and send each its own sampled subnet and architecture."""
        if not self._initial_loaded:
            self._initial_loaded = True
            if len(arrays) > 0:
                self.search.supernet = self.search._checked_supernet(m.record_to_arrays(arrays))
        clients = self._identify(grid)
        proposals = self.session.propose_round(server_round, clients)
        extra = self.session.client_config(config, server_round)  # per client: + client_extras
        round_no = self.session.global_round(server_round)
        self._sent = {}
        self._sent_messages = {}
        messages = []
        for proposal in proposals:
            node_id = self.client_to_node[proposal.client_id]
            content = RecordDict(
                {
                    self.arrayrecord_key: m.arrays_to_record(proposal.state),
                    self.configrecord_key: m.subnet_config(
                        self.family,
                        proposal.arch,
                        round_no,
                        {**extra, **self.session.client_extras(proposal.client_id)},
                    ),
                }
            )
            if proposal.init_state:  # share-or-keep: a personal block's starting copy
                content[m.PERSONAL_INIT] = m.arrays_to_record(proposal.init_state)
            message = Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node_id)
            messages.append(message)
            self._sent[node_id] = proposal.client_id
            self._sent_messages[node_id] = message
        return messages

    def _parse(self, msg: Message) -> ClientReply | None:
        return parse_train_reply(self, msg)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Reward, update the policies and merge the returned subnets."""
        self._stale: dict[str, str] = {}
        replies = list(replies)
        parsed = [r for r in (self._parse(msg) for msg in replies) if r is not None]
        answered = {r.client_id for r in parsed}
        for cid, reason in self._stale.items():
            if cid not in answered and cid not in self.session.failures:
                self.session.record_failure(cid, reason)
        # Bytes as Flower carries them (serialised), the measure of every baseline.
        down, up = serialised_bytes(self._sent, self._sent_messages, replies, self.arrayrecord_key)
        outcome = self.session.incorporate(server_round, parsed, down, up)
        sampled = list(self._sent.values())
        self._sent = {}
        self._sent_messages = {}
        self._check_usable("train", server_round, sampled, outcome.accepted)
        return m.arrays_to_record(self.search.supernet), MetricRecord(self.session.train_metrics())

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send every client (or a fraction) the subnet of its argmax architecture."""
        if not self._evaluates(server_round):
            return []
        # New (held-out) clients are evaluated in their search-only rounds.
        clients = self._evaluation_sample(self.session.training_clients(self._identify(grid)))
        round_no = self.session.global_round(server_round)
        if self.diagnostics.due(self.session.is_last_round(server_round)):
            self.diagnostics.run(
                grid,
                round_no,
                self.search.supernet,
                self.client_to_node,
                clients,
                lambda arch: m.subnet_config(
                    self.family, arch, round_no, self.session.evaluate_config(config, server_round)
                ),
                arrayrecord_key=self.arrayrecord_key,
                configrecord_key=self.configrecord_key,
                # Share-or-keep: each client's record leaves out the blocks it keeps.
                subnet_for=(
                    (lambda cid, arch: self.search.subnet_for(cid, arch)[1])
                    if self.search.kept.active
                    else None
                ),
            )
        messages = []
        self._evaluated = list(clients)
        for cid in clients:
            arch, state = self.session.deploy(cid)
            content = RecordDict(
                {
                    self.arrayrecord_key: m.arrays_to_record(state),
                    self.configrecord_key: m.subnet_config(
                        self.family,
                        arch,
                        round_no,
                        self.session.evaluate_config(config, server_round),
                    ),
                }
            )
            messages.append(
                Message(
                    content=content,
                    message_type=MessageType.EVALUATE,
                    dst_node_id=self.client_to_node[cid],
                )
            )
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Record each client's personalised accuracy; log the round; checkpoint.

        A round whose evaluation replies were all unusable stops the run (after
        its row is written).
        """
        replies = list(replies)
        sent = [self.node_to_client.get(msg.metadata.src_node_id) for msg in replies]
        self._record_batchnorm(replies)
        accuracies, failures = evaluation_accuracies(self, server_round, replies)
        for cid, acc in accuracies.items():
            self.session.recorder.clients[cid].update(self.diagnostics.client_fields(cid, acc))
        self.session.finish_round(server_round, accuracies, self.diagnostics.row_fields(accuracies))
        expected = self._evaluated or [c for c in sent if c is not None]
        self._evaluated = []
        check_usable_replies("evaluate", server_round, expected, list(accuracies), failures)
        if not accuracies:
            return None
        return MetricRecord(self._evaluation_metrics(accuracies))
