"""The Method interface: what one federated method decides; the driver does the rest."""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from flwr_pfedrlnas.core.rewards import DEFAULT_BANDWIDTH_BPS
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.driver import MethodDriver
from flwr_pfedrlnas.flower.replies import check_metrics
from flwr_pfedrlnas.protocol.results import RunRecorder
from flwr_pfedrlnas.protocol.rounds import DEFAULT_MACS_PER_SECOND, RoundSchedule
from flwr_pfedrlnas.protocol.settings import RoundSettings, RoundSettingsAttributes, check_ranges
from flwr_pfedrlnas.protocol.training_options import TrainingOptions

__all__ = ["Method"]

# The protocol's settings of a method beyond the shared round settings, and their ranges.
METHOD_RULES = {
    "min_available_nodes": lambda v: v >= 1,
    "bandwidth_down_bps": lambda v: v > 0,
    "bandwidth_up_bps": lambda v: v > 0,
    "query_timeout": lambda v: v > 0,
    "round_timeout": lambda v: v > 0,
}


class Method(RoundSettingsAttributes):
    """One method (a baseline, or a search) as a few hooks over the one round protocol.

    Each round the protocol learns who the connected clients are, calls
    :meth:`before_round`, samples ``clients_per_round`` clients by their stable
    id with :attr:`rng`, sends each :meth:`train_content`, keeps the replies
    that answer the message sent, name the right client and pass
    :meth:`check_train_reply`, folds them in with :meth:`aggregate`, and in
    evaluation rounds has every client test :meth:`evaluate_content`. It
    records bytes and simulated latency of each exchange, writes the row, the
    log line and the results, and checkpoints :meth:`state_dict` after every
    round so that every method resumes.

    Parameters
    ----------
    clients_per_round, local_epochs, lr, batch_size : (default: 5, 1, 0.05, 32)
    evaluate_every, bn_recalibration_batches : (default: 1, -1)
    results_dir, checkpoint_dir, resume, run_config, training : (default: None, None, False, ...)
        The round settings every method and strategy shares, checked and
        described once in :class:`~flwr_pfedrlnas.protocol.settings.RoundSettings`;
        held as :attr:`settings`, each one also an attribute. Sampling is
        seeded, by stable client id.
    min_available_nodes : int (default: 2)
        Wait for this many nodes before the first round.
    bandwidth_down_bps, bandwidth_up_bps : float (default: 100e6)
        Simulated link speed, server to client and back.
    seed : int (default: 0)
        Seed of the sampling and of the method's own draws.
    query_timeout, round_timeout : float (default: 120, 3600)
        Seconds to wait for the identity answers and for each exchange.
    arrayrecord_key, configrecord_key, metricrecord_key : str
        Record names of the messages (default: "arrays", "config", "metrics").
    """

    method = "method"
    label = "Method"

    def __init__(
        self,
        clients_per_round: int = 5,
        min_available_nodes: int = 2,
        local_epochs: int = 1,
        lr: float = 0.05,
        batch_size: int = 32,
        evaluate_every: int = 1,
        bn_recalibration_batches: int = -1,
        bandwidth_down_bps: float = DEFAULT_BANDWIDTH_BPS,
        bandwidth_up_bps: float = DEFAULT_BANDWIDTH_BPS,
        seed: int = 0,
        results_dir: str | None = None,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        run_config: Mapping[str, Any] | None = None,
        query_timeout: float = 120.0,
        round_timeout: float = 3600.0,
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        metricrecord_key: str = "metrics",
        training: TrainingOptions | None = None,
        device_macs_per_second: float = DEFAULT_MACS_PER_SECOND,
    ) -> None:
        self.settings = RoundSettings.from_kwargs(locals())
        check_ranges(locals(), METHOD_RULES)
        self.min_available_nodes = int(min_available_nodes)
        self.bandwidth_down_bps = float(bandwidth_down_bps)
        self.bandwidth_up_bps = float(bandwidth_up_bps)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.query_timeout, self.round_timeout = float(query_timeout), float(round_timeout)
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.metricrecord_key = metricrecord_key
        self.schedule = RoundSchedule(0, self.evaluate_every)
        self.driver = MethodDriver(self)

    @property
    def recorder(self) -> RunRecorder:
        """The rounds and the latest evaluation of every client."""
        return self.driver.recorder

    @property
    def node_to_client(self) -> dict[int, str]:
        """Flower node id -> stable client id, as learned by the identity query."""
        return self.driver.node_to_client

    def start(self, grid: Grid, num_rounds: int = 3) -> RunRecorder:
        """Run ``num_rounds`` rounds in all (the rest of them when resuming)."""
        return self.driver.start(grid, num_rounds)

    # ------------------------------------------------------------------ hooks
    def phase(self, server_round: int) -> str:
        """Name of the method's phase in ``server_round`` (recorded per round)."""
        return "train"

    def before_round(self, server_round: int, exchange: Any, clients: list[str]) -> None:
        """Extra exchanges at the start of a round (FedorAS's search); none by default.

        ``exchange(contents, message_type, check, timed)`` is the protocol's own.
        """

    def train_content(self, server_round: int, client_id: str) -> RecordDict:
        """What sampled client ``client_id`` is sent in a training round."""
        raise NotImplementedError

    def check_train_reply(self, server_round: int, client_id: str, content: RecordDict) -> None:
        """Raise ``ValueError`` naming the field and value if a training reply is unusable."""
        self.metrics_of(content)

    def aggregate(self, server_round: int, replies: dict[str, RecordDict]) -> dict[str, Any]:
        """Fold the round's accepted replies (at least one) into the state; extra row fields."""
        raise NotImplementedError

    def evaluate_content(self, server_round: int, client_id: str) -> RecordDict:
        """What client ``client_id`` tests in an evaluation round (its deployed model)."""
        raise NotImplementedError

    def check_evaluate_reply(self, server_round: int, client_id: str, content: RecordDict) -> None:
        """Raise ``ValueError`` naming the field and value if a test reply is unusable."""
        self.metrics_of(content, (m.ACCURACY,))

    def client_row(self, client_id: str) -> dict[str, Any]:
        """Extra per-client fields of clients.csv (e.g. the deployed architecture)."""
        return {}

    def round_fields(self, server_round: int) -> dict[str, Any]:
        """Extra fields of the round's row once its evaluation is in (none by default)."""
        return {}

    def after_round(self, server_round: int, row: Mapping[str, Any]) -> None:
        """Anything the method records once a round is done (e.g. per-tier ranges)."""

    def describe(self) -> dict[str, Any]:
        """The method's settings for config.json (beyond the protocol's)."""
        return {}

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The method's state as arrays and JSON (its checkpoint beyond the protocol's)."""
        return {}, {}

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; ``ValueError``, changing nothing, if it does not fit."""

    # ------------------------------------------------------------------ helpers
    def metrics_of(
        self, content: RecordDict, required: tuple[str, ...] = m.REQUIRED_TRAIN_METRICS
    ) -> dict[str, float]:
        """The reply's metrics as floats, checked (see :func:`~.replies.check_metrics`)."""
        return check_metrics(content, required, self.metricrecord_key)

    def base_config(self, server_round: int) -> dict[str, Any]:
        """Config entries every message of this method carries."""
        return {
            m.SERVER_ROUND: int(server_round),
            m.LOCAL_EPOCHS: self.local_epochs,
            **self.training.config(self.lr, server_round, self.schedule.num_rounds),
            m.BATCH_SIZE: self.batch_size,
            m.BN_RECALIBRATION_BATCHES: self.bn_recalibration_batches,
        }

    def summary(self) -> None:
        """Log the method's settings."""
        log(INFO, "%s:", self.label)
        log(INFO, "\t├──> %d clients per round, seed %d", self.clients_per_round, self.seed)
        log(
            INFO,
            "\t├──> %d local epochs, lr %.3g, batch %d",
            self.local_epochs,
            self.lr,
            self.batch_size,
        )
        for key, value in self.describe().items():
            log(INFO, "\t├──> %s: %s", key, value)
        log(INFO, "\t└──> evaluate every %d round(s)", self.evaluate_every)
