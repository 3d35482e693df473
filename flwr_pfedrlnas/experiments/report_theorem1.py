"""Theorem 1 on a run's clients: architecture similarity against label-mix similarity, per pair.

For every pair of clients of a method that deploys per-client architectures:
the fraction of search dimensions on which their architectures agree, the
similarity of their label mixes, and the correlations of the two.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "arch_similarity",
    "client_archs",
    "label_mixes",
    "label_similarity",
    "pairwise_similarities",
    "parse_arch",
    "pearson",
    "spearman",
    "theorem1_statistics",
    "total_variation",
]


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


def _natural_key(text: str) -> tuple[int, Any]:
    return (0, int(text)) if text.isdigit() else (1, text)
