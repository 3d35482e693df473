"""Rows run at several seeds (methods named ``<row>-s<seed>``), as mean ± std over seeds."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from flwr_pfedrlnas.experiments.report_plots import _pyplot, _save
from flwr_pfedrlnas.experiments.report_tables import (
    MethodResult,
    convergence,
    evaluated_rounds,
    format_cell,
    markdown_grid,
    trained_accuracy,
)

__all__ = [
    "SEED_COLUMNS",
    "plot_seed_curves",
    "seed_groups",
    "seed_markdown",
    "seed_table",
    "time_to_reach",
]

_SEED = re.compile(r"^(?P<row>.+)-s(?P<seed>\d+)$")
_LABEL_SEED = re.compile(r"\s*\(seed \d+\)\s*$")

SEED_COLUMNS = [
    "row",
    "label",
    "seeds",
    "deployed-mean",
    "deployed-std-seeds",
    "std-clients",
    "trained-mean",
    "trained-std-seeds",
    "converged",
    "latency-total-s",
    "target",
    "time-to-target-s",
    "modelled-latency-total-s",
    "modelled-time-to-target-s",
    "modelled-seeds",
    "search-gain",
]
MEASURED, MODELLED = "latency-total-s", "modelled-latency-total-s"


def seed_groups(results: Sequence[MethodResult]) -> dict[str, list[tuple[int, MethodResult]]]:
    """``row -> [(seed, result), ...]`` for the methods named ``<row>-s<seed>``, in order."""
    groups: dict[str, list[tuple[int, MethodResult]]] = {}
    for result in results:
        match = _SEED.match(result.name)
        if match:
            groups.setdefault(match["row"], []).append((int(match["seed"]), result))
    return groups


def _final(result: MethodResult) -> pd.Series | None:
    data = evaluated_rounds(result.rounds)
    return data.iloc[-1] if len(data) else None


def _total_latency(result: MethodResult, column: str = MEASURED) -> float:
    """The run's simulated time (the last ``column``); NaN without the column."""
    rounds = result.rounds
    if column not in rounds.columns or not len(rounds):
        return float("nan")
    return float(rounds[column].iloc[-1])


def time_to_reach(rounds: pd.DataFrame, target: float, column: str = MEASURED) -> float:
    """Simulated time (``column``) of the first evaluation with mean >= ``target``.

    ``column``: ``latency-total-s`` (measured compute) or ``modelled-latency-total-s``
    (compute from MACs). NaN when no evaluation reaches it or the run lacks the column.
    """
    data = evaluated_rounds(rounds)
    if column not in data.columns:
        return float("nan")
    hit = data[data["accuracy-mean"] >= target]
    return float(hit[column].iloc[0]) if len(hit) else float("nan")


def _rival(result: MethodResult) -> bool:
    """A baseline (anything but a PerFedRLNAS search) sets the accuracy to reach."""
    return str(result.run_config.get("method", "")) != "pfedrlnas"


def seed_table(results: Sequence[MethodResult]) -> pd.DataFrame:
    """One row per seed group (:data:`SEED_COLUMNS`).

    ``deployed-*``: the last evaluation's mean over clients (the deployed model, or
    after fine-tuning for the methods that fine-tune), mean and population std over
    seeds; ``std-clients``: that evaluation's std across clients, mean over seeds;
    ``trained-*``: :func:`trained_accuracy`; ``converged``: seeds meeting the stopping
    rule, as ``k/n`` (and how many are undetermined); ``target``: the best deployed
    mean of the baselines (rows whose run-config method is not ``pfedrlnas``), and
    ``time-to-target-s`` the mean over seeds of :func:`time_to_reach` (NaN if a seed
    never reaches it); the ``modelled-*`` columns the same on the modelled latency,
    over the ``modelled-seeds`` runs that record it.
    """
    groups = seed_groups(results)
    finals: dict[str, list[pd.Series]] = {}
    for row, runs in groups.items():
        finals[row] = [f for f in (_final(r) for _, r in runs) if f is not None]
    rival_means = [
        float(np.mean([f["accuracy-mean"] for f in finals[row]]))
        for row, runs in groups.items()
        if finals[row] and _rival(runs[0][1])
    ]
    target = max(rival_means) if rival_means else float("nan")
    rows = []
    for row, runs in groups.items():
        deployed = np.array([f["accuracy-mean"] for f in finals[row]], dtype=float)
        spread = np.array([f.get("accuracy-std", math.nan) for f in finals[row]], dtype=float)
        trained = np.array([trained_accuracy(r.rounds) for _, r in runs], dtype=float)
        rules = [convergence(r.rounds)[1] for _, r in runs]
        # The modelled columns over the seeds whose runs record the modelled latency.
        timed = [r for _, r in runs if MODELLED in r.rounds.columns]
        reach = [time_to_reach(r.rounds, target) for _, r in runs]
        modelled_reach = [time_to_reach(r.rounds, target, MODELLED) for r in timed]
        gains = [float(f["search-gain"]) for f in finals[row] if not pd.isna(f.get("search-gain"))]
        first = runs[0][1]
        rows.append(
            {
                "row": row,
                "label": _LABEL_SEED.sub("", first.label),
                "seeds": " ".join(str(s) for s, _ in runs),
                "deployed-mean": _mean(deployed),
                "deployed-std-seeds": _std(deployed),
                "std-clients": _mean(spread),
                "trained-mean": _mean(trained),
                "trained-std-seeds": _std(trained),
                "converged": _rule_cell(rules),
                "latency-total-s": _mean(np.array([_total_latency(r) for _, r in runs])),
                "target": target,
                "time-to-target-s": _mean_all(np.array(reach)),
                "modelled-latency-total-s": _mean(
                    np.array([_total_latency(r, MODELLED) for r in timed])
                ),
                "modelled-time-to-target-s": _mean_all(np.array(modelled_reach)),
                "modelled-seeds": len(timed),
                "search-gain": float(np.mean(gains)) if gains else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=SEED_COLUMNS)


def _rule_cell(rules: Sequence[bool | None]) -> str:
    """``k/n`` seeds converged, and how many a too-sparse evaluation leaves undetermined."""
    cell = f"{sum(r is True for r in rules)}/{len(rules)}"
    undetermined = sum(r is None for r in rules)
    return cell + (f" ({undetermined} undetermined)" if undetermined else "")


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


def _mean_all(values: np.ndarray) -> float:
    """The mean, NaN if any value is (a seed that never got there, or lacks the column)."""
    return float(values.mean()) if len(values) else float("nan")


def _std(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.std()) if len(values) > 1 else float("nan")


def seed_markdown(table: pd.DataFrame) -> list[str]:
    """The markdown lines of :func:`seed_table`'s frame, with a line that defines it."""
    header = (
        "row | seeds | deployed accuracy (mean ± std over seeds) | std across clients | after "
        "local training (mean ± std over seeds) | converged (seeds) | simulated time (s) | "
        "simulated time to the best baseline's accuracy (s) | modelled time (s) | modelled "
        "time to the best baseline's accuracy (s) | search gain"
    ).split(" | ")
    lines = markdown_grid(header, (_seed_cells(row) for row in table.to_dict("records")))
    target = table["target"].iloc[0] if len(table) else float("nan")
    lines += [
        "",
        "Deployed accuracy: the last evaluation's unweighted mean over all clients (for the "
        "rows that fine-tune, after their fine-tuning), mean ± population std over seeds; "
        "std across clients: that evaluation's std, mean over seeds. After local training: "
        "each sampled client's test accuracy right after its local training, with the "
        "BatchNorm statistics training left (what the authors' code logs), mean over the "
        "last 10 % of rounds. Converged: seeds whose "
        "evaluations of the last 10 % of rounds improve on the 10 % before by less than one "
        "point (fine-tuned evaluations left out). Best baseline's accuracy: "
        f"{format_cell(target, 3)} (the highest deployed mean of a row that is not a "
        "PerFedRLNAS search); the time is the first evaluation at or above it, mean over "
        'seeds, "not reached" if a seed never gets there. Simulated time: the clients\' '
        "measured compute seconds plus bytes over bandwidth and the server's time, so it "
        "moves with the machine's load; modelled time: each client's counted MACs (backward "
        "passes included) at `device-macs-per-second` plus the same transfers, the server "
        'left out, which no load changes ("—": a run that predates it).',
    ]
    return lines


def _seed_cells(row: dict) -> list[str]:
    reach = row["time-to-target-s"]
    return [
        str(row["label"]),
        str(row["seeds"]),
        _pm(row["deployed-mean"], row["deployed-std-seeds"]),
        format_cell(row["std-clients"], 3),
        _pm(row["trained-mean"], row["trained-std-seeds"]),
        str(row["converged"]),
        format_cell(row["latency-total-s"], 0),
        "not reached" if not math.isfinite(reach) else format_cell(reach, 0),
        _of_seeds(format_cell(row["modelled-latency-total-s"], 0), row),
        _of_seeds(
            _reach_cell(row["modelled-time-to-target-s"], row["modelled-latency-total-s"]), row
        ),
        format_cell(row["search-gain"], 3),
    ]


def _of_seeds(cell: str, row: dict) -> str:
    """A modelled cell, naming its seeds where not every seed's run records the model."""
    timed, seeds = int(row["modelled-seeds"]), len(str(row["seeds"]).split())
    return cell if timed in (0, seeds) else f"{cell} ({timed} of {seeds} seeds)"


def _reach_cell(reach: float, total: float) -> str:
    if math.isfinite(reach):
        return format_cell(reach, 0)
    return "not reached" if math.isfinite(total) else "—"


def _pm(mean: float, std: float) -> str:
    if not math.isfinite(std):
        return format_cell(mean, 3)
    return f"{format_cell(mean, 3)} ± {format_cell(std, 3)}"


def plot_seed_curves(
    results: Sequence[MethodResult], path: str | os.PathLike, title: str
) -> Path | None:
    """Mean over seeds of each row's accuracy against round, simulated and modelled time.

    The modelled-time panel takes, per row, the seeds whose runs record it.
    """
    groups = seed_groups(results)
    if not groups:
        return None
    plt = _pyplot()
    fig, (by_round, by_time, by_model) = plt.subplots(1, 3, figsize=(18, 4.8))
    drawn_model = 0
    for runs in groups.values():
        curves = [
            evaluated_rounds(r.rounds).reindex(
                columns=["round", "accuracy-mean", MEASURED, MODELLED]
            )
            for _, r in runs
        ]
        curves = [c for c in curves if len(c)]
        if not curves:
            continue
        joined = pd.concat(curves).groupby("round").mean().reset_index()
        label = f"{_LABEL_SEED.sub('', runs[0][1].label)} ({len(curves)} seeds)"
        (line,) = by_round.plot(joined["round"], joined["accuracy-mean"], marker=".", label=label)
        by_time.plot(joined[MEASURED], joined["accuracy-mean"], marker=".", color=line.get_color())
        modelled = [c for c in curves if c[MODELLED].notna().all()]
        if modelled:
            model = pd.concat(modelled).groupby("round").mean().reset_index()
            by_model.plot(
                model[MODELLED],
                model["accuracy-mean"],
                marker=".",
                color=line.get_color(),
                label=f"{len(modelled)} seeds",
            )
            drawn_model += 1
    by_round.set_xlabel("round")
    by_time.set_xlabel("simulated time (s), measured compute")
    by_model.set_xlabel("modelled time (s), compute from MACs")
    if drawn_model:
        by_model.legend(fontsize=7, loc="lower right")
    else:
        by_model.text(0.5, 0.5, "no run records a modelled time", ha="center", va="center")
    for ax in (by_round, by_time, by_model):
        ax.set_ylabel("mean accuracy over clients (mean over seeds)")
        ax.grid(alpha=0.3)
    by_round.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    return _save(fig, path)
