"""Tables and plots of a reproduction: pure functions on the runs' CSV files.

Format and behaviour: docs/files.md, "What a reproduction writes".
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# The report's parts, re-exported so that the names keep their old import path.
from flwr_pfedrlnas.experiments.report_plots import (
    plot_accuracy_vs_latency,
    plot_accuracy_vs_round,
    plot_client_accuracy,
    plot_theorem1,
)
from flwr_pfedrlnas.experiments.report_seeds import (
    plot_seed_curves,
    seed_groups,
    seed_markdown,
    seed_table,
)
from flwr_pfedrlnas.experiments.report_tables import (
    TABLE_COLUMNS,
    MethodResult,
    format_cell,
    load_method,
    markdown_table,
    summarise_method,
    summary_table,
    tier_lines,
    wall_seconds_from_log,
)
from flwr_pfedrlnas.experiments.report_theorem1 import (
    arch_similarity,
    client_archs,
    label_mixes,
    label_similarity,
    pairwise_similarities,
    parse_arch,
    pearson,
    spearman,
    theorem1_statistics,
    total_variation,
)

__all__ = [
    "TABLE_COLUMNS",
    "MethodResult",
    "arch_similarity",
    "client_archs",
    "label_mixes",
    "label_similarity",
    "load_method",
    "pairwise_similarities",
    "parse_arch",
    "pearson",
    "plot_accuracy_vs_latency",
    "plot_accuracy_vs_round",
    "plot_client_accuracy",
    "plot_theorem1",
    "spearman",
    "summarise_method",
    "summary_table",
    "theorem1_statistics",
    "tier_lines",
    "total_variation",
    "wall_seconds_from_log",
    "write_report",
]


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
        "accuracy_vs_modelled_latency.png": plot_accuracy_vs_latency(
            results,
            out / "accuracy_vs_modelled_latency.png",
            f"{short}: accuracy against modelled time (MACs)",
            column="modelled-latency-total-s",
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
            f"{format_cell(stats['pearson-tv'], 3)} | {format_cell(stats['spearman-tv'], 3)} | "
            f"{format_cell(stats['pearson-cosine'], 3)} | "
            f"{format_cell(stats['spearman-cosine'], 3)} |"
        )
    plots["theorem1.png"] = plot_theorem1(
        pairs_by_label, out / "theorem1.png", f"{short}: architecture vs label-mix similarity"
    )
    written.update({name: path for name, path in plots.items() if path is not None})

    lines = [f"# {title}", ""]
    lines += list(header)
    if header:
        lines.append("")
    lines += markdown_table(table)
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
    if seed_groups(results):
        seeds = seed_table(results)
        written["seeds.csv"] = out / "seeds.csv"
        seeds.to_csv(written["seeds.csv"], index=False)
        plots["seeds.png"] = plot_seed_curves(
            results, out / "seeds.png", f"{short}: mean over seeds"
        )
        if plots["seeds.png"] is not None:
            written["seeds.png"] = plots["seeds.png"]
        lines += ["", "## Over seeds (methods named `<row>-s<seed>`)", "", *seed_markdown(seeds)]
    shown = [name for name in plots if plots[name] is not None]
    if shown:
        lines += ["", "Plots: " + ", ".join(f"`{name}`" for name in shown) + "."]
    written["table.md"] = out / "table.md"
    written["table.md"].write_text("\n".join(lines) + "\n")
    return written
