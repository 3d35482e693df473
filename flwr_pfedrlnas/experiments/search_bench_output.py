"""Runs of the synthetic search benchmark over settings, variants and seeds; CSV, table, plot."""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from flwr_pfedrlnas.experiments.search_bench import (
    SETTINGS,
    VARIANTS,
    FederationSetting,
    VariantResult,
    VariantSpec,
    run_variant,
    uniform_oracle,
)

__all__ = ["main", "markdown_table", "run_benchmark", "summarise", "write_outputs"]

_FIGURES = ("recovered", "regret_argmax", "regret_sampled", "entropy_fraction")


def run_benchmark(
    settings: Sequence[FederationSetting],
    variants: Mapping[str, VariantSpec],
    seeds: Sequence[int],
    reference: bool = True,
) -> list[VariantResult]:
    """Every variant (and the uniform reference) at every setting and seed."""
    results = []
    for setting in settings:
        for seed in seeds:
            for name, config in variants.items():
                results.append(run_variant(name, config, setting, seed))
            if reference:
                results.append(uniform_oracle(setting, seed))
    return results


def summarise(results: Sequence[VariantResult]) -> list[dict[str, object]]:
    """Per setting and variant: mean and std over seeds of every figure."""
    groups: dict[tuple[str, str], list[VariantResult]] = {}
    for r in results:
        groups.setdefault((r.setting, r.variant), []).append(r)
    rows = []
    for (setting, variant), runs in groups.items():
        row: dict[str, object] = {
            "setting": setting,
            "variant": variant,
            "seeds": len(runs),
            "chance": runs[0].chance,
            "min_updates": min(r.min_updates for r in runs),
        }
        for fig in _FIGURES:
            values = [getattr(r, fig) for r in runs]
            row[fig] = float(np.mean(values))
            row[f"{fig}_std"] = float(np.std(values))
        rows.append(row)
    return rows


def markdown_table(summary: Sequence[Mapping[str, object]], setting: str) -> str:
    """One setting's rows as a markdown table (mean ± std over seeds)."""
    lines = [
        "| variant | recovered (chance) | regret argmax | regret sampled | entropy / max |",
        "|---|---|---|---|---|",
    ]
    for row in summary:
        if row["setting"] != setting:
            continue

        def cell(fig: str, row: Mapping[str, object] = row) -> str:
            return f"{row[fig]:.3f} ± {row[f'{fig}_std']:.3f}"

        lines.append(
            f"| {row['variant']} | {cell('recovered')} ({row['chance']:.3f}) | "
            f"{cell('regret_argmax')} | {cell('regret_sampled')} | {cell('entropy_fraction')} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(
    results: Sequence[VariantResult], out_dir: str | Path, command: str = ""
) -> list[Path]:
    """``runs.csv``, ``summary.csv``, ``table.md``, ``entropy.png`` and
    ``entropy_by_round.csv`` (mean policy entropy over clients, every round) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in (
        ("runs.csv", [r.row() for r in results]),
        ("summary.csv", summarise(results)),
    ):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        written.append(out / name)
    summary = summarise(results)
    settings = list(dict.fromkeys(r.setting for r in results))
    text = [f"Command: `{command}`\n"] if command else []
    for setting in settings:
        text += [f"\n### {setting}\n\n", markdown_table(summary, setting)]
    (out / "table.md").write_text("".join(text))
    written.append(out / "table.md")
    written.append(_plot_entropy(results, settings, out / "entropy.png"))
    written.append(_write_entropy_csv(results, out / "entropy_by_round.csv"))
    return written


def _plot_entropy(results: Sequence[VariantResult], settings: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(4.5 * len(settings) + 3, 4), squeeze=False)
    colours = plt.get_cmap("tab20")
    for ax, setting in zip(axes[0], settings):
        by_variant: dict[str, list[list[float]]] = {}
        for r in results:
            if r.setting == setting and not r.variant.startswith("reference"):
                by_variant.setdefault(r.variant, []).append(r.entropy_by_round)
        for i, (variant, curves) in enumerate(by_variant.items()):
            # The paper's setting (red) and ours (black) drawn thick; the other variants thin.
            colour = {"paper": "tab:red", "ours (recommended)": "black"}.get(
                variant.split(" (eq")[0], colours(i % 20)
            )
            ax.plot(
                np.mean(np.asarray(curves), axis=0),
                label=variant,
                color=colour,
                linewidth=2.5 if colour in ("tab:red", "black") else 0.9,
            )
        ax.set_title(f"{setting}: policy entropy")
        ax.set_xlabel("round")
        ax.set_ylabel("entropy / maximal entropy")
        ax.set_ylim(0, 1.05)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _write_entropy_csv(results: Sequence[VariantResult], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setting", "variant", "seed", "round", "entropy_fraction"])
        for r in results:
            for rnd, value in enumerate(r.entropy_by_round, start=1):
                writer.writerow([r.setting, r.variant, r.seed, rnd, f"{value:.6f}"])
    return path


def main(argv: Sequence[str] | None = None) -> list[VariantResult]:
    """Command line: ``--settings``, ``--seeds``, ``--variants`` (substrings), ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="*", default=[], help="substrings of variant names")
    parser.add_argument("--updates-per-client", type=int, default=None)
    parser.add_argument("--out", default="results/search")
    args = parser.parse_args(argv)
    variants = {
        k: v for k, v in VARIANTS.items() if not args.variants or any(s in k for s in args.variants)
    }
    if not variants:
        raise SystemExit(f"no variant matches {args.variants}; known: {list(VARIANTS)}")
    settings = [SETTINGS[s] for s in args.settings]
    if args.updates_per_client is not None:
        import dataclasses

        settings = [
            dataclasses.replace(s, updates_per_client=args.updates_per_client) for s in settings
        ]
    start = time.perf_counter()
    results = run_benchmark(settings, variants, args.seeds)
    command = "python scripts/bench_search.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if v not in (None, [])
    )
    write_outputs(results, args.out, command)
    print((Path(args.out) / "table.md").read_text())
    print(f"{len(results)} runs in {time.perf_counter() - start:.0f} s")
    return results
