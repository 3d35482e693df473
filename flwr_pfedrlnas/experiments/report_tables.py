"""The summary table of a reproduction: each method's CSVs read, summarised, written as markdown."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "TABLE_COLUMNS",
    "MethodResult",
    "convergence",
    "evaluated_rounds",
    "format_cell",
    "load_method",
    "markdown_grid",
    "markdown_table",
    "summarise_method",
    "summary_table",
    "tier_lines",
    "trained_accuracy",
    "wall_seconds_from_log",
]

TABLE_COLUMNS = [
    "method",
    "label",
    "rounds",
    "acc-last-mean",
    "acc-last-std",
    "best-round",
    "acc-best-mean",
    "acc-best-std",
    "latency-total-s",
    "bytes-per-round",
    "round-wall-seconds",
    "wall-seconds",
    "last-10%-gain",
    "converged",
    "acc-trained-mean",
]
# The stopping rule of the converged tables: the mean accuracy over the evaluated rounds
# of the last 10 % of the run improves on that of the 10 % before by less than 1 point.
CONVERGENCE_WINDOW = 0.1
CONVERGENCE_TOLERANCE = 0.01


@dataclass
class MethodResult:
    """The CSVs and metadata of one method's run."""

    name: str
    label: str
    directory: Path
    rounds: pd.DataFrame
    clients: pd.DataFrame | None = None
    run_config: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float | None = None
    command: str | None = None


def wall_seconds_from_log(log: str | os.PathLike, method: str | None = None) -> float | None:
    """The ``wall-seconds [<method>] <seconds>`` line the run scripts append to a log."""
    path = Path(log)
    if not path.is_file():
        return None
    found = None
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"^wall-seconds\s+(?:(\S+)\s+)?([0-9.]+)\s*$", line.strip())
        if match and (method is None or match.group(1) in (None, method)):
            found = float(match.group(2))
    return found


def load_method(
    directory: str | os.PathLike,
    name: str,
    label: str | None = None,
    wall_seconds: float | None = None,
    command: str | None = None,
) -> MethodResult:
    """Read one method's ``rounds.csv``, ``clients.csv`` and ``config.json``.

    Parameters
    ----------
    directory : path
        The method's results directory.
    name, label : str
        Key and display name of the method.
    wall_seconds : float, optional
        Wall time of the run; when missing, the ``wall-seconds`` line of a
        ``<directory>.log`` beside the directory, else ``None``.
    command : str, optional
        The command that produced the run.

    Raises
    ------
    FileNotFoundError
        ``rounds.csv`` is missing.
    """
    directory = Path(directory)
    rounds = pd.read_csv(directory / "rounds.csv")
    clients_path = directory / "clients.csv"
    clients = pd.read_csv(clients_path) if clients_path.is_file() else None
    if clients is not None and "client-id" in clients.columns:
        clients["client-id"] = clients["client-id"].astype(str)
    run_config: dict[str, Any] = {}
    config_path = directory / "config.json"
    if config_path.is_file():
        try:
            run_config = dict(json.loads(config_path.read_text()).get("run-config", {}))
        except (json.JSONDecodeError, AttributeError):
            run_config = {}
    if wall_seconds is None:
        wall_seconds = wall_seconds_from_log(directory.with_name(directory.name + ".log"), name)
    return MethodResult(
        name=name,
        label=label or name,
        directory=directory,
        rounds=rounds,
        clients=clients,
        run_config=run_config,
        wall_seconds=wall_seconds,
        command=command,
    )


def evaluated_rounds(rounds: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``rounds.csv`` with an evaluation (a non-NaN ``accuracy-mean``)."""
    if "accuracy-mean" not in rounds.columns:
        return rounds.iloc[0:0]
    return rounds.dropna(subset=["accuracy-mean"])


def convergence(
    rounds: pd.DataFrame,
    window: float = CONVERGENCE_WINDOW,
    tolerance: float = CONVERGENCE_TOLERANCE,
) -> tuple[float, bool | None]:
    """The stopping rule: (gain of the last window over the one before, converged?).

    With ``R`` the last round, the last window is the rounds in ``(R(1 - w), R]``
    and the one before ``(R(1 - 2w), R(1 - w)]``; each is the mean of
    ``accuracy-mean`` over its evaluated rounds. Converged: the gain is below
    ``tolerance``. ``(nan, None)`` when a window has no evaluated round (evaluate
    more often, or run longer). Evaluations after local fine-tuning
    (``finetune-epochs`` > 0) are left out.
    """
    data = evaluated_rounds(rounds)
    if "finetune-epochs" in data.columns:
        # A fine-tuned evaluation is a method's last step, not a point of its training curve.
        data = data[data["finetune-epochs"].fillna(0) <= 0]
    if not len(data):
        return float("nan"), None
    edge, start = _window_edge(rounds, window), _window_edge(rounds, 2 * window)
    late = data[data["round"] > edge]["accuracy-mean"]
    early = data[(data["round"] > start) & (data["round"] <= edge)]["accuracy-mean"]
    if not len(late) or not len(early):
        return float("nan"), None
    gain = float(late.mean() - early.mean())
    return gain, bool(gain < tolerance)


def _window_edge(rounds: pd.DataFrame, fraction: float) -> float:
    """The round after which the last ``fraction`` of the run begins: ``R (1 - fraction)``."""
    return float(rounds["round"].max()) * (1 - fraction)


def trained_accuracy(rounds: pd.DataFrame, window: float = CONVERGENCE_WINDOW) -> float:
    """The accuracy after local training, as the authors' code logs it.

    The mean of ``train-accuracy-mean`` (each sampled client's test accuracy right
    after its local training, averaged over the round's replies) over the rounds
    of the last ``window`` of the run; NaN without that column.
    """
    if "train-accuracy-mean" not in rounds.columns or not len(rounds):
        return float("nan")
    late = rounds[rounds["round"] > _window_edge(rounds, window)]
    values = late["train-accuracy-mean"].dropna()
    return float(values.mean()) if len(values) else float("nan")


def summarise_method(
    rounds: pd.DataFrame, wall_seconds: float | None = None
) -> dict[str, float | int | None]:
    """The table's numbers of one method.

    Parameters
    ----------
    rounds : pandas.DataFrame
        The method's ``rounds.csv``; rounds without an evaluation (NaN
        ``accuracy-mean``) are skipped for the accuracy columns.
    wall_seconds : float, optional
        Wall time of the run.

    Returns
    -------
    dict
        ``rounds`` (last round number), ``acc-last-mean`` / ``acc-last-std``
        (the last evaluated round), ``best-round`` (the first round with the
        highest mean) with ``acc-best-mean`` / ``acc-best-std``,
        ``latency-total-s`` (last round), ``bytes-per-round`` (mean over rounds
        of ``bytes-down + bytes-up``), ``round-wall-seconds`` (median over
        rounds of the wall time of a round, ``wall-seconds`` of ``rounds.csv``:
        the simulation's own round time, without the run's start-up),
        ``wall-seconds`` (the whole run), ``last-10%-gain`` and ``converged``
        (:func:`convergence`), ``acc-trained-mean`` (:func:`trained_accuracy`).
    """
    nan = float("nan")
    out: dict[str, float | int | None] = {
        "rounds": int(rounds["round"].max()) if len(rounds) else 0,
        "acc-last-mean": nan,
        "acc-last-std": nan,
        "best-round": None,
        "acc-best-mean": nan,
        "acc-best-std": nan,
        "latency-total-s": nan,
        "bytes-per-round": nan,
        "round-wall-seconds": nan,
        "wall-seconds": nan if wall_seconds is None else float(wall_seconds),
    }
    out["last-10%-gain"], out["converged"] = convergence(rounds)
    out["acc-trained-mean"] = trained_accuracy(rounds)
    data = evaluated_rounds(rounds)
    if len(data):
        last = data.iloc[-1]
        best = data.loc[data["accuracy-mean"].idxmax()]
        std = "accuracy-std" if "accuracy-std" in data.columns else None
        out["acc-last-mean"] = float(last["accuracy-mean"])
        out["acc-last-std"] = float(last[std]) if std else nan
        out["best-round"] = int(best["round"])
        out["acc-best-mean"] = float(best["accuracy-mean"])
        out["acc-best-std"] = float(best[std]) if std else nan
    if len(rounds) and "latency-total-s" in rounds.columns:
        out["latency-total-s"] = float(rounds["latency-total-s"].iloc[-1])
    if len(rounds) and {"bytes-down", "bytes-up"} <= set(rounds.columns):
        moved = rounds["bytes-down"].fillna(0) + rounds["bytes-up"].fillna(0)
        out["bytes-per-round"] = float(moved.mean())
    if len(rounds) and "wall-seconds" in rounds.columns:
        out["round-wall-seconds"] = float(rounds["wall-seconds"].median())
    return out


def summary_table(results: Sequence[MethodResult]) -> pd.DataFrame:
    """One row per method with :data:`TABLE_COLUMNS` (``table.csv``)."""
    rows = [
        {"method": r.name, "label": r.label, **summarise_method(r.rounds, r.wall_seconds)}
        for r in results
    ]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def format_cell(value: Any, digits: int) -> str:
    """``value`` with ``digits`` decimals for a markdown cell; "—" for None, NaN or inf."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def markdown_grid(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table's lines: the header, its rule, one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def markdown_table(table: pd.DataFrame) -> list[str]:
    """The lines of the markdown table of :func:`summary_table`'s frame."""
    header = [
        "method",
        "rounds",
        "accuracy, last round (mean ± std)",
        "best round",
        "accuracy, best round (mean ± std)",
        "simulated latency (s)",
        "MB moved / round",
        "wall s / round (median)",
        "wall time (s)",
        "last 10 % gain (converged?)",
        "after local training, last 10 % of rounds",
    ]
    return markdown_grid(header, (_summary_cells(row) for row in table.to_dict("records")))


def _summary_cells(row: dict[str, Any]) -> list[str]:
    best = row["best-round"]
    return [
        str(row["label"]),
        str(row["rounds"]),
        f"{format_cell(row['acc-last-mean'], 3)} ± {format_cell(row['acc-last-std'], 3)}",
        "—" if best is None or pd.isna(best) else str(int(best)),
        f"{format_cell(row['acc-best-mean'], 3)} ± {format_cell(row['acc-best-std'], 3)}",
        format_cell(row["latency-total-s"], 1),
        format_cell(row["bytes-per-round"] / 1e6, 2),
        format_cell(row["round-wall-seconds"], 1),
        format_cell(row["wall-seconds"], 0),
        _convergence_cell(row.get("last-10%-gain"), row.get("converged")),
        format_cell(row.get("acc-trained-mean"), 3),
    ]


def _convergence_cell(gain: Any, converged: Any) -> str:
    if converged is None or (isinstance(converged, float) and math.isnan(converged)):
        return "— (too few evaluations)"
    return f"{format_cell(gain, 3)} ({'yes' if converged else 'no'})"


def tier_lines(results: Sequence[MethodResult]) -> list[str]:
    """Markdown of each tiered method's last-round accuracy range per tier (``tiers.csv``).

    FedorAS reports one model per device tier; the paper gives its accuracy as a
    range over tiers, so the table of the tiers is shown beside the summary.
    """
    lines: list[str] = []
    for result in results:
        path = result.directory / "tiers.csv"
        if not path.is_file():
            continue
        tiers = pd.read_csv(path)
        if tiers.empty or "round" not in tiers.columns:
            continue
        last = tiers[tiers["round"] == tiers["round"].max()]
        lines += [
            "",
            f"## {result.label}: accuracy per device tier (round {int(last['round'].iloc[0])})",
            "",
            "| tier | parameter budget | clients | architecture parameters "
            "| accuracy min | accuracy mean | accuracy max |",
            "|---|---|---|---|---|---|---|",
        ]
        for _, row in last.sort_values("tier").iterrows():
            lines.append(
                f"| {int(row['tier'])} | {int(row['budget-params']):,} | {int(row['clients'])} "
                f"| {int(row['arch-params']):,} | {format_cell(row['accuracy-min'], 3)} "
                f"| {format_cell(row['accuracy-mean'], 3)} "
                f"| {format_cell(row['accuracy-max'], 3)} |"
            )
        means = last["accuracy-mean"].dropna()
        if len(means):
            lines += [
                "",
                f"Tier means range from {means.min():.3f} to {means.max():.3f} "
                f"(`{result.name}/tiers.csv`).",
            ]
    return lines
