"""The plots of a reproduction: accuracy curves, per-client accuracy and the Theorem-1 scatter."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from flwr_pfedrlnas.experiments.report_tables import MethodResult, evaluated_rounds, format_cell
from flwr_pfedrlnas.experiments.report_theorem1 import theorem1_statistics

__all__ = [
    "plot_accuracy_vs_latency",
    "plot_accuracy_vs_round",
    "plot_client_accuracy",
    "plot_theorem1",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    """Lay out, write at 120 dpi and close ``fig``; the path written."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _plot_curves(
    results: Sequence[MethodResult], path: Path, x_column: str, xlabel: str, title: str
) -> Path | None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    drawn = 0
    for result in results:
        data = evaluated_rounds(result.rounds)
        if data.empty or x_column not in data.columns:
            continue
        x = data[x_column].to_numpy(dtype=float)
        mean = data["accuracy-mean"].to_numpy(dtype=float)
        std = (
            data["accuracy-std"].fillna(0.0).to_numpy(dtype=float)
            if "accuracy-std" in data.columns
            else np.zeros_like(mean)
        )
        (line,) = ax.plot(x, mean, marker="o", ms=2.5, lw=1.4, label=result.label)
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel(xlabel)
    ax.set_ylabel("personalised accuracy (mean ± std over clients)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_accuracy_vs_round(
    results: Sequence[MethodResult], path: str | os.PathLike, title: str = ""
) -> Path | None:
    """Accuracy (mean with a ±std band) against round, every method on one figure."""
    return _plot_curves(results, Path(path), "round", "round", title or "Accuracy against round")


# The time axes a report can plot accuracy against: column, axis label, title.
TIME_AXES = {
    "latency-total-s": ("simulated wall clock, latency-total-s (s)", "simulated wall clock"),
    "modelled-latency-total-s": (
        "modelled time, modelled-latency-total-s (s)",
        "modelled time (MACs)",
    ),
}


def plot_accuracy_vs_latency(
    results: Sequence[MethodResult],
    path: str | os.PathLike,
    title: str = "",
    column: str = "latency-total-s",
) -> Path | None:
    """Accuracy (mean with a ±std band) against a time axis of :data:`TIME_AXES`.

    ``column``: the simulated wall clock (default) or the modelled time; ``None``
    when no run records the column.
    """
    xlabel, name = TIME_AXES[column]
    return _plot_curves(results, Path(path), column, xlabel, title or f"Accuracy against {name}")


def plot_client_accuracy(
    results: Sequence[MethodResult], path: str | os.PathLike, title: str = ""
) -> Path | None:
    """Per-client accuracy at the last round per method: box plot and the points."""
    data = [
        (r.label, r.clients["accuracy"].dropna().to_numpy(dtype=float))
        for r in results
        if r.clients is not None and "accuracy" in r.clients.columns
    ]
    data = [(label, values) for label, values in data if values.size]
    if not data:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(data) + 2), 4.5))
    ax.boxplot(
        [values for _, values in data],
        showfliers=False,
        widths=0.5,
        medianprops={"color": "black"},
    )
    rng = np.random.default_rng(0)
    for i, (_, values) in enumerate(data, start=1):
        jitter = rng.uniform(-0.12, 0.12, size=values.size)
        ax.scatter(i + jitter, values, s=14, alpha=0.7, zorder=3)
    ax.set_xticks(range(1, len(data) + 1))
    ax.set_xticklabels([label for label, _ in data], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("client accuracy, last round")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title or "Per-client accuracy at the last round", fontsize=10)
    return _save(fig, path)


def plot_theorem1(
    pairs: Mapping[str, pd.DataFrame], path: str | os.PathLike, title: str = ""
) -> Path | None:
    """Architecture similarity against label-mix similarity (1 - TV), one panel per method."""
    pairs = {label: frame for label, frame in pairs.items() if len(frame)}
    if not pairs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.0 * len(pairs), 4.3), squeeze=False)
    for ax, (label, frame) in zip(axes[0], pairs.items()):
        x = frame["label-similarity-tv"].to_numpy(dtype=float)
        y = frame["arch-similarity"].to_numpy(dtype=float)
        ax.scatter(x, y, s=16, alpha=0.7)
        if x.size >= 2 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 2)
            ax.plot(xs, slope * xs + intercept, color="black", lw=1, ls="--")
        stats = theorem1_statistics(frame)
        ax.set_title(
            f"{label}: Pearson {format_cell(stats['pearson-tv'], 2)}, "
            f"Spearman {format_cell(stats['spearman-tv'], 2)}",
            fontsize=9,
        )
        ax.set_xlabel("label-mix similarity, 1 - TV distance")
        ax.set_ylabel("architecture similarity (same choice / dimensions)")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    fig.suptitle(
        title or "Theorem 1: similar data, similar architectures (client pairs)", fontsize=10
    )
    return _save(fig, path)
