"""results/baselines/<method>/rounds.csv -> results/baselines/table.md (one row per method)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

LABELS = {
    "pfedrlnas": "PerFedRLNAS",
    "fedavg-ft": "FedAvg + fine-tuning",
    "local": "Local only",
    "fedrep": "FedRep",
    "fedbabu": "FedBABU",
    "fedtp": "FedTP (ViT)",
}


def row(method: str, directory: Path) -> dict[str, str]:
    rounds = pd.read_csv(directory / "rounds.csv").dropna(subset=["accuracy-mean"])
    last = rounds.iloc[-1]
    best = rounds.loc[rounds["accuracy-mean"].idxmax()]
    config = json.loads((directory / "config.json").read_text())
    run = config.get("run-config", {})
    model = config.get("model") or f"searched ({run.get('supernet', '?')})"
    moved = (rounds["bytes-down"] + rounds["bytes-up"]).mean() / 1e6
    return {
        "method": LABELS.get(method, method),
        "model": str(model),
        "last round acc (mean ± std)": f"{last['accuracy-mean']:.3f} ± {last['accuracy-std']:.3f}",
        "best round acc (round)": f"{best['accuracy-mean']:.3f} ({int(best['round'])})",
        "MB moved / round": f"{moved:.2f}",
        "simulated latency (s)": f"{last['latency-total-s']:.1f}",
    }


def main(out: Path) -> None:
    rows = [row(m, out / m) for m in LABELS if (out / m / "rounds.csv").exists()]
    frame = pd.DataFrame(rows)
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in frame.itertuples(index=False)]
    (out / "table.generated.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/baselines"))
