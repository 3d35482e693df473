"""Per-image cost of the model each client deploys, per run of an experiment.

    python scripts/model_macs.py results/table2-converged-cpu

For every run folder with a ``config.json`` it finds what each client deploys
and counts the multiply-accumulates of one image through it
(``core.cost.subnet_macs`` / ``count_macs``, inference, the dataset's input
size):

- a searched or fixed subnet (``supernet`` in the config, an ``arch`` column in
  ``clients.csv``): each client's architecture of the last evaluated round,
  rebuilt from the recorded family and knobs;
- a hand-designed network (``model`` / ``model-config`` in the config): the
  one network every client deploys.

It writes ``macs.csv`` (a row per run and client) and ``macs.md`` (per run:
clients, min, mean and max MACs per image) beside the runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from flwr_pfedrlnas.baselines.models import build_model
from flwr_pfedrlnas.core.cost import count_macs, subnet_macs
from flwr_pfedrlnas.data.sources import dataset_info
from flwr_pfedrlnas.supernets import get_supernet


def _knobs(config: dict, key: str) -> dict:
    value = config.get(key) or {}
    return json.loads(value) if isinstance(value, str) else dict(value)


def _last_round(run: Path) -> pd.DataFrame | None:
    try:
        clients = pd.read_csv(run / "clients.csv")
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None
    if clients.empty:
        return None
    return clients[clients["round"] == clients["round"].max()]


def run_macs(run: Path) -> list[dict]:
    """One row per client of ``run``: what it deploys and its MACs per image."""
    config = json.loads((run / "config.json").read_text())
    clients = _last_round(run)
    base = {"run": run.name}
    if config.get("supernet"):
        family = get_supernet(config["supernet"], **_knobs(config, "supernet-config"))
        if clients is not None and "arch" in clients:
            pairs = list(zip(clients["client-id"], clients["arch"]))
        elif config.get("arch"):  # one fixed subnet, every client
            pairs = [("all", json.dumps(config["arch"]))]
        else:
            return []
        return [
            {
                **base,
                "client-id": str(cid),
                "model": family.name,
                "arch": arch,
                "macs": subnet_macs(family, json.loads(arch)),
            }
            for cid, arch in pairs
        ]
    if config.get("model"):
        info = dataset_info(config["run-config"]["dataset"])
        model = build_model(
            config["model"], info.num_classes, info.channels, _knobs(config, "model-config")
        )
        x = torch.zeros(1, info.channels, info.resolution, info.resolution)
        macs = count_macs(model, x)
        ids = ["all"] if clients is None else sorted({str(c) for c in clients["client-id"]})
        knobs = json.dumps(_knobs(config, "model-config"), sort_keys=True)
        return [
            {**base, "client-id": cid, "model": config["model"], "arch": knobs, "macs": macs}
            for cid in ids
        ]
    return []


def collect(root: Path) -> pd.DataFrame:
    rows = []
    for run in sorted(p for p in root.iterdir() if (p / "config.json").exists()):
        rows.extend(run_macs(run))
    return pd.DataFrame(rows, columns=["run", "client-id", "model", "arch", "macs"])


def summary(table: pd.DataFrame) -> pd.DataFrame:
    grouped = table.groupby("run", sort=True)["macs"]
    out = pd.DataFrame(
        {
            "model": table.groupby("run", sort=True)["model"].first(),
            "clients": grouped.size(),
            "min-M": grouped.min() / 1e6,
            "mean-M": grouped.mean() / 1e6,
            "max-M": grouped.max() / 1e6,
        }
    )
    return out.reset_index()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="an experiment's results folder")
    args = parser.parse_args(argv)
    table = collect(args.root)
    if table.empty:
        raise SystemExit(f"no run with a config.json and a deployed model under {args.root}")
    table.to_csv(args.root / "macs.csv", index=False)
    rows = summary(table)
    lines = [
        f"# MACs per image of the deployed models: {args.root.name}",
        "",
        f"`python scripts/model_macs.py {args.root}`: one image through each client's",
        "deployed model (last evaluated round), inference, the dataset's input size.",
        "",
        "| run | model | clients | min (M) | mean (M) | max (M) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows.itertuples(index=False):
        lines.append(
            f"| {r.run} | {r.model} | {r.clients} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} |"
        )
    (args.root / "macs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
