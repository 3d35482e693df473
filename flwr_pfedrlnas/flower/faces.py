"""What both Flower faces of the search share: the session, evaluation sampling, failure stops."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr_pfedrlnas.core.search import PerFedRLNASSearch, SearchConfig
from flwr_pfedrlnas.deployed import DeployedModels
from flwr_pfedrlnas.flower.deployed_export import ExportsDeployedModels
from flwr_pfedrlnas.flower.failures import check_usable_replies, validate_min_usable_fraction
from flwr_pfedrlnas.flower.session import SearchSession, session_from
from flwr_pfedrlnas.protocol.results import summarise_accuracies
from flwr_pfedrlnas.protocol.settings import RoundSettings
from flwr_pfedrlnas.supernets import SupernetFamily

__all__ = ["SearchFace"]


class SearchFace(ExportsDeployedModels):
    """Strategy mixin: the part both faces of the search share.

    :class:`~flwr_pfedrlnas.flower.strategy.PerFedRLNAS` (Message API) and
    :class:`~flwr_pfedrlnas.flower.legacy.PerFedRLNASLegacy` each translate
    their framework's messages; the rounds are the session's
    (:class:`~flwr_pfedrlnas.flower.session.SearchSession`), built from the
    shared round settings among the face's keyword arguments.
    """

    session: SearchSession
    family: SupernetFamily
    fraction_evaluate: float
    min_usable_fraction: float
    query_timeout: float

    def _start_session(
        self,
        family: SupernetFamily,
        search_config: SearchConfig | None,
        name: str,
        kwargs: Mapping[str, Any],
    ) -> None:
        """Check the face's own settings; build its session from ``kwargs`` (its ``locals()``)."""
        self.min_usable_fraction = validate_min_usable_fraction(kwargs["min_usable_fraction"])
        fraction_evaluate = kwargs["fraction_evaluate"]
        if not 0.0 <= fraction_evaluate <= 1.0:
            raise ValueError(f"fraction_evaluate must be in [0, 1], got {fraction_evaluate!r}")
        self.session = session_from(family, search_config, name, kwargs)
        self.family = family
        self.fraction_evaluate = float(fraction_evaluate)
        self.query_timeout = float(kwargs["query_timeout"])
        self.deployed = DeployedModels(self.session.search)
        results_dir = kwargs["results_dir"]
        self.deployed_dir = kwargs["deployed_dir"] or (
            results_dir and str(Path(results_dir) / "deployed")
        )

    @property
    def search(self) -> PerFedRLNASSearch:
        """The search core (supernet, policies, accuracy history)."""
        return self.session.search

    @property
    def settings(self) -> RoundSettings:
        """The shared round settings (the session's)."""
        return self.session.settings

    def _evaluates(self, server_round: int) -> bool:
        """Whether clients test their deployed model in ``server_round``."""
        return self.fraction_evaluate != 0.0 and self.session.is_evaluation_round(server_round)

    def _evaluation_sample(self, clients: list[str]) -> list[str]:
        """The clients tested: all, or ``fraction_evaluate`` of them (the search's RNG)."""
        if self.fraction_evaluate < 1.0:
            num = max(1, int(round(len(clients) * self.fraction_evaluate)))
            clients = self.search.sample_clients(clients, num)
        return clients

    def _check_usable(
        self, what: str, server_round: int, sampled: Sequence[str], usable: Sequence[str]
    ) -> None:
        """Stop the run (after writing the round's row) when too few replies were usable."""
        try:
            failures = dict(self.session.failures)
            check_usable_replies(
                what, server_round, sampled, usable, failures, self.min_usable_fraction
            )
        except RuntimeError:
            self.session.finish_round(server_round, {})
            raise

    @staticmethod
    def _evaluation_metrics(accuracies: Mapping[str, float]) -> dict[str, float | int]:
        """An evaluation round's aggregate: mean and std over clients, and their number."""
        mean, std = summarise_accuracies(accuracies)
        return {"accuracy-mean": mean, "accuracy-std": std, "num-clients": len(accuracies)}
