"""Round and client records -> pandas frames -> CSV, markdown and plots."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flwr_pfedrlnas.protocol.rounds import natural_key

__all__ = [
    "RunRecorder",
    "plot_accuracy",
    "summarise_accuracies",
    "write_results",
]


def summarise_accuracies(accuracies: Mapping[str, float]) -> tuple[float, float]:
    """Unweighted mean and (population) standard deviation over clients."""
    values = np.asarray(list(accuracies.values()), dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std())


class RunRecorder:
    """Collects one row per round and the latest evaluation of every client.

    Rows are plain dicts of scalars so that they go to CSV and JSON (the
    checkpoint) unchanged.
    """

    def __init__(self) -> None:
        self.rounds: list[dict[str, Any]] = []
        self.clients: dict[str, dict[str, Any]] = {}

    def add_round(self, row: Mapping[str, Any]) -> None:
        self.rounds.append(dict(row))

    def set_client(self, client_id: str, row: Mapping[str, Any]) -> None:
        self.clients[str(client_id)] = dict(row, **{"client-id": str(client_id)})

    def rounds_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rounds)

    def clients_frame(self) -> pd.DataFrame:
        rows = [self.clients[k] for k in sorted(self.clients, key=natural_key)]
        return pd.DataFrame(rows)

    def state_dict(self) -> dict[str, Any]:
        """Rows and clients, with the columns' order (a JSON writer may sort the keys)."""
        columns = list(dict.fromkeys(k for r in self.rounds for k in r))
        client_columns = list(dict.fromkeys(k for r in self.clients.values() for k in r))
        return {
            "rounds": self.rounds,
            "clients": self.clients,
            "columns": columns,
            "client-columns": client_columns,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s rows, each in the recorded column order."""

        def ordered(row: Mapping[str, Any], columns: list[str]) -> dict[str, Any]:
            first = {k: row[k] for k in columns if k in row}
            return {**first, **{k: v for k, v in row.items() if k not in first}}

        columns = list(state.get("columns", []))
        client_columns = list(state.get("client-columns", []))
        self.rounds = [ordered(r, columns) for r in state.get("rounds", [])]
        self.clients = {
            str(k): ordered(v, client_columns) for k, v in state.get("clients", {}).items()
        }


def plot_accuracy(
    rounds: pd.DataFrame,
    path: str | os.PathLike,
    title: str = "Personalised accuracy",
    label: str = "PerFedRLNAS",
) -> Path | None:
    """Mean ± std personalised accuracy against round and against simulated time.

    Where the rounds carry search diagnostics (``random-subnet-accuracy`` and
    ``largest-subnet-accuracy``), both are drawn beside the deployed accuracy
    on the round axis, so the search gain is the gap a reader sees.
    """
    needed = {"round", "accuracy-mean", "accuracy-std", "latency-total-s"}
    if rounds.empty or not needed <= set(rounds.columns):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = rounds.dropna(subset=["accuracy-mean"])
    if data.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, x, xlabel in (
        (axes[0], data["round"], "round"),
        (axes[1], data["latency-total-s"], "simulated wall clock (s)"),
    ):
        mean, std = data["accuracy-mean"], data["accuracy-std"].fillna(0.0)
        ax.plot(x, mean, marker="o", ms=3, label=label)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (mean ± std over clients)")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
    for column, style, name in (
        ("random-subnet-accuracy", "s", "random subnets (mean)"),
        ("largest-subnet-accuracy", "^", "largest subnet"),
    ):
        if column in data.columns and data[column].notna().any():
            diag = data.dropna(subset=[column])
            axes[0].plot(diag["round"], diag[column], style, ms=6, ls="none", label=name)
    axes[0].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(
    directory: str | os.PathLike,
    recorder: RunRecorder,
    config: Mapping[str, Any] | None = None,
    title: str = "Personalised accuracy",
    label: str = "PerFedRLNAS",
) -> dict[str, Path]:
    """Write rounds.csv, clients.csv, config.json and accuracy.png."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    rounds = recorder.rounds_frame()
    written["rounds"] = directory / "rounds.csv"
    rounds.to_csv(written["rounds"], index=False)
    written["clients"] = directory / "clients.csv"
    recorder.clients_frame().to_csv(written["clients"], index=False)
    if config is not None:
        written["config"] = directory / "config.json"
        written["config"].write_text(json.dumps(_jsonable(config), indent=2, sort_keys=True))
    plot = plot_accuracy(rounds, directory / "accuracy.png", title=title, label=label)
    if plot is not None:
        written["plot"] = plot
    return written


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value
