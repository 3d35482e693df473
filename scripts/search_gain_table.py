"""Table of the search diagnostics of experiments/search-real-cpu.toml's runs, per seed and pooled.

    python scripts/search_gain_table.py results/search-real-cpu

Reads each run's last-round rounds.csv and clients.csv (search-gain = the
deployed subnet's accuracy minus the mean over random subnets of the same
supernet, tested the same way) and writes gain.csv and gain.md beside them.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd

from flwr_pfedrlnas.supernets import get_supernet

COLUMNS = ["accuracy-mean", "search-gain", "random-subnet-accuracy", "largest-subnet-accuracy"]


def _max_entropy(run: Path) -> float:
    """The maximal policy entropy of the run's search space (sum of ln(choices))."""
    config = json.loads((run / "config.json").read_text())
    family = get_supernet(config["supernet"], **config["supernet-config"])
    return float(sum(math.log(len(d)) for d in family.search_space))


def collect(root: Path) -> pd.DataFrame:
    rows = []
    for run in sorted(p for p in root.iterdir() if (p / "rounds.csv").exists()):
        try:
            rounds, clients = pd.read_csv(run / "rounds.csv"), pd.read_csv(run / "clients.csv")
        except pd.errors.EmptyDataError:  # a run still in progress
            continue
        last = rounds.iloc[-1]
        if "search-gain" not in rounds.columns or math.isnan(last["search-gain"]):
            continue
        variant, _, seed = run.name.rpartition("-s")
        rows.append(
            {
                "variant": variant,
                "seed": int(seed),
                "rounds": int(last["round"]),
                **{c: float(last[c]) for c in COLUMNS},
                "clients-with-gain>0": int((clients["search-gain"] > 0).sum()),
                "clients": len(clients),
                "policy-updates-mean": float(clients["policy-steps"].mean()),
                # Dimensions of one choice (the widths here) add nothing to the maximum.
                "entropy/max": float(clients["policy-entropy"].mean() / _max_entropy(run)),
            }
        )
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    out = []
    for variant, group in runs.groupby("variant", sort=False):
        row = {"variant": variant, "seeds": " ".join(str(s) for s in sorted(group["seed"]))}
        for c in [*COLUMNS, "entropy/max", "policy-updates-mean"]:
            values = group[c].to_numpy(dtype=float)
            row[c] = (
                f"{values.mean():.3f} ± {values.std():.3f}"
                if len(values) > 1
                else f"{values[0]:.3f}"
            )
        out.append(row)
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    runs = collect(args.root)
    runs.to_csv(args.root / "gain.csv", index=False)
    summary = summarise(runs)
    lines = ["| " + " | ".join(summary.columns) + " |", "|" + "---|" * len(summary.columns)]
    lines += [
        "| " + " | ".join(str(v) for v in row) + " |" for row in summary.itertuples(index=False)
    ]
    per_run = ["| " + " | ".join(runs.columns) + " |", "|" + "---|" * len(runs.columns)]
    per_run += [
        "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"
        for row in runs.itertuples(index=False)
    ]
    text = "\n".join(
        ["## Pooled (mean ± std over seeds)", "", *lines, "", "## Per run", "", *per_run, ""]
    )
    (args.root / "gain.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
