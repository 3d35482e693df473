"""Tables and plots of a reproduction: pure functions on the runs' CSV files.

Every method of an experiment writes ``rounds.csv`` (one row per round) and
``clients.csv`` (each client's last evaluation; PerFedRLNAS and the NAS
baselines add the client's deployed architecture as a JSON ``arch`` column)
into its own directory. This module turns those files into

- ``table.md`` and ``table.csv``: per method, the personalised accuracy
  (mean ± std over clients) at the last round and at the best round (the
  round with the highest mean), the simulated latency (``latency-total-s`` of
  the last round), the bytes moved per round (mean of ``bytes-down`` +
  ``bytes-up``) and the wall time of the run;
- ``accuracy_vs_round.png``, ``accuracy_vs_latency.png`` (mean with a ±std
  band, every method on one figure), ``client_accuracy.png`` (the per-client
  accuracies of the last round, box plot and points);
- ``theorem1.png``: for every pair of clients of a method that deploys
  per-client architectures, the similarity of their architectures against
  the similarity of their label mixes, with the Pearson and Spearman
  correlations written into ``table.md``.

Nothing here runs Flower; :mod:`flwr_pfedrlnas.experiments.reproduce` calls
:func:`write_report` after its runs, and ``--report-only`` calls it alone.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "MethodResult",
    "arch_similarity",
    "label_mixes",
    "label_similarity",
    "load_method",
    "pairwise_similarities",
    "pearson",
    "plot_accuracy_vs_latency",
    "plot_accuracy_vs_round",
    "plot_client_accuracy",
    "plot_theorem1",
    "spearman",
    "summarise_method",
    "summary_table",
    "theorem1_statistics",
    "total_variation",
    "wall_seconds_from_log",
    "write_report",
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
]


# ------------------------------------------------------------------ similarity
def parse_arch(value: Any) -> dict[str, Any] | None:
    """An architecture of ``clients.csv``'s ``arch`` column as a dict, or ``None``.

    Parameters
    ----------
    value : Any
        A JSON object string (or an already parsed mapping); empty, NaN or
        non-object values give ``None``.

    Returns
    -------
    dict or None
    """
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) and parsed else None


def arch_similarity(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Fraction of search dimensions on which two architectures make the same choice.

    Parameters
    ----------
    a, b : Mapping[str, Any]
        Architectures, dimension name -> choice. A dimension present in only
        one of them counts as different.

    Returns
    -------
    float
        In ``[0, 1]``; 1 for identical architectures.

    Raises
    ------
    ValueError
        Both architectures are empty.
    """
    dims = set(a) | set(b)
    if not dims:
        raise ValueError("cannot compare two empty architectures")
    same = sum(1 for d in dims if d in a and d in b and a[d] == b[d])
    return same / len(dims)


def _distribution(counts: Sequence[float] | np.ndarray) -> np.ndarray:
    p = np.asarray(counts, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"not a non-empty, non-negative histogram: {counts!r}")
    return p / p.sum()


def total_variation(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """Total-variation distance ``0.5 * sum |p - q|`` of two label histograms.

    Parameters
    ----------
    p, q : array-like
        Label counts or probabilities of the same length; each is normalised
        to sum to 1 first.

    Returns
    -------
    float
        In ``[0, 1]``: 0 for the same mix, 1 for disjoint labels.
    """
    p, q = _distribution(p), _distribution(q)
    if p.shape != q.shape:
        raise ValueError(f"histograms of different lengths: {p.size} and {q.size}")
    return float(0.5 * np.abs(p - q).sum())


def label_similarity(
    p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray, metric: str = "tv"
) -> float:
    """Similarity of two clients' label mixes.

    Parameters
    ----------
    p, q : array-like
        Label counts (or probabilities) of the two clients.
    metric : {"tv", "cosine"}
        ``"tv"``: ``1 - total_variation(p, q)``; ``"cosine"``: cosine of the
        two count vectors.

    Returns
    -------
    float
        In ``[0, 1]``; 1 for the same mix.
    """
    if metric == "tv":
        return 1.0 - total_variation(p, q)
    if metric == "cosine":
        a, b = _distribution(p), _distribution(q)
        if a.shape != b.shape:
            raise ValueError(f"histograms of different lengths: {a.size} and {b.size}")
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    raise ValueError(f"unknown metric {metric!r}; use 'tv' or 'cosine'")


def pairwise_similarities(
    archs: Mapping[str, Mapping[str, Any]], mixes: Mapping[str, Sequence[float] | np.ndarray]
) -> pd.DataFrame:
    """Architecture and label-mix similarity of every pair of clients.

    Parameters
    ----------
    archs : Mapping[str, Mapping]
        Client id -> deployed architecture.
    mixes : Mapping[str, array-like]
        Client id -> label counts. Only clients present in both are paired.

    Returns
    -------
    pandas.DataFrame
        One row per unordered pair: ``client-a``, ``client-b``,
        ``arch-similarity``, ``label-similarity-tv``, ``label-similarity-cosine``.
    """
    ids = sorted(set(archs) & set(mixes), key=_natural_key)
    rows = [
        {
            "client-a": a,
            "client-b": b,
            "arch-similarity": arch_similarity(archs[a], archs[b]),
            "label-similarity-tv": label_similarity(mixes[a], mixes[b], "tv"),
            "label-similarity-cosine": label_similarity(mixes[a], mixes[b], "cosine"),
        }
        for a, b in itertools.combinations(ids, 2)
    ]
    columns = [
        "client-a",
        "client-b",
        "arch-similarity",
        "label-similarity-tv",
        "label-similarity-cosine",
    ]
    return pd.DataFrame(rows, columns=columns)


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant or has < 2 values."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or x.size != y.size:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy / denom) if denom > 0 else float("nan")


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (Pearson of average ranks, so ties are handled)."""
    rx = pd.Series(np.asarray(x, dtype=np.float64)).rank(method="average").to_numpy()
    ry = pd.Series(np.asarray(y, dtype=np.float64)).rank(method="average").to_numpy()
    return pearson(rx, ry)


def theorem1_statistics(pairs: pd.DataFrame) -> dict[str, float]:
    """Correlations of architecture similarity with label-mix similarity.

    Parameters
    ----------
    pairs : pandas.DataFrame
        From :func:`pairwise_similarities`.

    Returns
    -------
    dict
        ``pairs`` and, for ``tv`` and ``cosine``, ``pearson-<metric>`` and
        ``spearman-<metric>``.
    """
    stats: dict[str, float] = {"pairs": float(len(pairs))}
    for metric in ("tv", "cosine"):
        x = pairs[f"label-similarity-{metric}"] if len(pairs) else []
        y = pairs["arch-similarity"] if len(pairs) else []
        stats[f"pearson-{metric}"] = pearson(x, y)
        stats[f"spearman-{metric}"] = spearman(x, y)
    return stats


def label_mixes(
    dataset: str,
    num_clients: int,
    alpha: float,
    seed: int,
    data_dir: str | None = None,
) -> dict[str, np.ndarray]:
    """Each client's label counts under the partition a run used.

    The apps give client ``i`` (``partition-id`` ``i``, client id ``str(i)``)
    partition ``i`` of :func:`flwr_pfedrlnas.data.datasets.partition_indices` with
    the run's ``dataset``, ``num-clients``, ``dirichlet-alpha`` and ``seed``
    (and ``data-dir``); its train and test splits share that partition's label
    mix, so the whole partition's histogram is the client's label mix.

    Returns
    -------
    dict
        Client id -> ``int64`` label counts (length = the dataset's classes).
    """
    from flwr_pfedrlnas.data.datasets import label_distribution, load_source, partition_indices

    pool = load_source(dataset, data_dir or None)
    parts = partition_indices(dataset, int(num_clients), float(alpha), int(seed), data_dir or None)
    hist = label_distribution([pool.labels[idx] for idx in parts], pool.info.num_classes)
    return {str(i): hist[i] for i in range(len(parts))}


# -------------------------------------------------------------------- methods
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


def _evaluated(rounds: pd.DataFrame) -> pd.DataFrame:
    if "accuracy-mean" not in rounds.columns:
        return rounds.iloc[0:0]
    return rounds.dropna(subset=["accuracy-mean"])


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
        ``wall-seconds`` (the whole run).
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
    data = _evaluated(rounds)
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


def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def _markdown_table(table: pd.DataFrame) -> list[str]:
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
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.to_dict("records"):
        best = row["best-round"]
        cells = [
            str(row["label"]),
            str(row["rounds"]),
            f"{_fmt(row['acc-last-mean'], 3)} ± {_fmt(row['acc-last-std'], 3)}",
            "—" if best is None or pd.isna(best) else str(int(best)),
            f"{_fmt(row['acc-best-mean'], 3)} ± {_fmt(row['acc-best-std'], 3)}",
            _fmt(row["latency-total-s"], 1),
            _fmt(row["bytes-per-round"] / 1e6, 2),
            _fmt(row["round-wall-seconds"], 1),
            _fmt(row["wall-seconds"], 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_curves(
    results: Sequence[MethodResult], path: Path, x_column: str, xlabel: str, title: str
) -> Path | None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    drawn = 0
    for result in results:
        data = _evaluated(result.rounds)
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy_vs_round(
    results: Sequence[MethodResult], path: str | os.PathLike, title: str = ""
) -> Path | None:
    """Accuracy (mean with a ±std band) against round, every method on one figure."""
    return _plot_curves(results, Path(path), "round", "round", title or "Accuracy against round")


def plot_accuracy_vs_latency(
    results: Sequence[MethodResult], path: str | os.PathLike, title: str = ""
) -> Path | None:
    """Accuracy (mean with a ±std band) against the simulated wall clock."""
    return _plot_curves(
        results,
        Path(path),
        "latency-total-s",
        "simulated wall clock, latency-total-s (s)",
        title or "Accuracy against simulated wall clock",
    )


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
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
            f"{label}: Pearson {_fmt(stats['pearson-tv'], 2)}, "
            f"Spearman {_fmt(stats['spearman-tv'], 2)}",
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
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------- report
def client_archs(clients: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    """Client id -> deployed architecture from a ``clients.csv`` frame (may be empty)."""
    if clients is None or "arch" not in clients.columns or "client-id" not in clients.columns:
        return {}
    archs = {}
    for cid, value in zip(clients["client-id"].astype(str), clients["arch"]):
        arch = parse_arch(value)
        if arch is not None:
            archs[cid] = arch
    return archs


def _personalised_archs(result: MethodResult) -> dict[str, dict[str, Any]]:
    """Deployed architectures if they differ between clients, else ``{}``."""
    archs = client_archs(result.clients)
    distinct = {json.dumps(a, sort_keys=True, default=str) for a in archs.values()}
    return archs if len(distinct) > 1 else {}


def _mixes_for(
    result: MethodResult, defaults: Mapping[str, Any], cache: dict[tuple, Any]
) -> dict[str, np.ndarray]:
    cfg = {**defaults, **result.run_config}
    key = (
        str(cfg.get("dataset", "embedded")),
        int(cfg["num-clients"]),
        float(cfg.get("dirichlet-alpha", 0.5)),
        int(cfg.get("seed", 0)),
        str(cfg.get("data-dir", "") or ""),
    )
    if key not in cache:
        cache[key] = label_mixes(*key[:4], data_dir=key[4] or None)
    return cache[key]


def write_report(
    out: str | os.PathLike,
    results: Sequence[MethodResult],
    title: str = "Reproduction",
    header: Sequence[str] = (),
    run_config_defaults: Mapping[str, Any] | None = None,
    missing: Sequence[str] = (),
    plot_title: str | None = None,
) -> dict[str, Path]:
    """Write ``table.md``, ``table.csv`` and the plots of an experiment.

    Parameters
    ----------
    out : path
        Output directory (created).
    results : sequence of MethodResult
        The methods, in table order.
    title : str
        Heading of ``table.md`` and the plots.
    header : sequence of str
        Markdown lines written above the table (the command, the seed, the
        per-method commands).
    run_config_defaults : Mapping, optional
        Run-config values (``dataset``, ``num-clients``, ``dirichlet-alpha``,
        ``seed``, ``data-dir``) used where a run's ``config.json`` lacks them,
        to rebuild its label mixes for the Theorem-1 plot.
    missing : sequence of str
        Methods of the experiment without results (listed under the table).
    plot_title : str, optional
        Short name that starts the plots' titles (default ``title``).

    Returns
    -------
    dict
        Name -> path of every file written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    table = summary_table(results)
    written["table.csv"] = out / "table.csv"
    table.to_csv(written["table.csv"], index=False)

    short = plot_title or title
    plots = {
        "accuracy_vs_round.png": plot_accuracy_vs_round(
            results, out / "accuracy_vs_round.png", f"{short}: accuracy against round"
        ),
        "accuracy_vs_latency.png": plot_accuracy_vs_latency(
            results, out / "accuracy_vs_latency.png", f"{short}: accuracy against simulated time"
        ),
        "client_accuracy.png": plot_client_accuracy(
            results, out / "client_accuracy.png", f"{short}: per-client accuracy, last round"
        ),
    }

    theorem_lines: list[str] = []
    pairs_by_label: dict[str, pd.DataFrame] = {}
    cache: dict[tuple, Any] = {}
    for result in results:
        archs = _personalised_archs(result)
        if not archs:
            continue
        try:
            mixes = _mixes_for(result, run_config_defaults or {}, cache)
        except Exception as exc:  # noqa: BLE001 - e.g. a hub dataset without a network
            theorem_lines.append(
                f"| {result.label} | — | label mixes unavailable: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''} | | | |"
            )
            continue
        pairs = pairwise_similarities(archs, mixes)
        pairs.to_csv(out / f"theorem1_{result.name}.csv", index=False)
        written[f"theorem1_{result.name}.csv"] = out / f"theorem1_{result.name}.csv"
        pairs_by_label[result.label] = pairs
        stats = theorem1_statistics(pairs)
        theorem_lines.append(
            f"| {result.label} | {int(stats['pairs'])} | "
            f"{_fmt(stats['pearson-tv'], 3)} | {_fmt(stats['spearman-tv'], 3)} | "
            f"{_fmt(stats['pearson-cosine'], 3)} | {_fmt(stats['spearman-cosine'], 3)} |"
        )
    plots["theorem1.png"] = plot_theorem1(
        pairs_by_label, out / "theorem1.png", f"{short}: architecture vs label-mix similarity"
    )
    written.update({name: path for name, path in plots.items() if path is not None})

    lines = [f"# {title}", ""]
    lines += list(header)
    if header:
        lines.append("")
    lines += _markdown_table(table)
    lines += [
        "",
        "Accuracy: unweighted mean ± std (population) over all clients of each one's "
        "personalised model on its own test split (`rounds.csv`); best round = the round "
        "with the highest mean. Simulated latency: `latency-total-s` of the last round "
        "(sum over rounds of the slowest sampled client's compute + transfer, plus server "
        "time). MB moved / round: mean over rounds of `bytes-down + bytes-up` (10^6 B). "
        "Wall time: the whole `flwr run`, start-up included.",
    ]
    if missing:
        lines += ["", "No results for: " + ", ".join(f"`{m}`" for m in missing) + "."]
    if theorem_lines:
        lines += [
            "",
            "## Theorem 1: architecture similarity against label-mix similarity",
            "",
            "Every pair of clients: the fraction of search dimensions on which their deployed "
            "architectures (`clients.csv`, `arch`) agree, against the similarity of their "
            "label mixes (the Dirichlet partition of the run: dataset, num-clients, "
            "dirichlet-alpha, seed), as 1 - total-variation distance and as the cosine of "
            "the label histograms. Pairs: `theorem1_<method>.csv`; plot: `theorem1.png`.",
            "",
            "| method | pairs | Pearson (1 - TV) | Spearman (1 - TV) | Pearson (cosine) "
            "| Spearman (cosine) |",
            "|---|---|---|---|---|---|",
            *theorem_lines,
        ]
    lines += tier_lines(results)
    shown = [name for name in plots if plots[name] is not None]
    if shown:
        lines += ["", "Plots: " + ", ".join(f"`{name}`" for name in shown) + "."]
    written["table.md"] = out / "table.md"
    written["table.md"].write_text("\n".join(lines) + "\n")
    return written


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
                f"| {int(row['arch-params']):,} | {_fmt(row['accuracy-min'], 3)} "
                f"| {_fmt(row['accuracy-mean'], 3)} | {_fmt(row['accuracy-max'], 3)} |"
            )
        means = last["accuracy-mean"].dropna()
        if len(means):
            lines += [
                "",
                f"Tier means range from {means.min():.3f} to {means.max():.3f} "
                f"(`{result.name}/tiers.csv`).",
            ]
    return lines


def _natural_key(text: str) -> tuple[int, Any]:
    return (0, int(text)) if text.isdigit() else (1, text)
