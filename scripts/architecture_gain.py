"""A share-or-keep run's search gain, split into what the kept blocks and the architecture give.

    python scripts/architecture_gain.py RUN_DIR [--checkpoint DIR] [--random 5] [--seed 0]

The run's own search gain compares each client's deployed subnet with uniformly random
subnets, whose ``keep.<block>`` choices are random too. This script loads the run's final
checkpoint (supernet, policies and each client's kept copies, ``RUN_DIR/checkpoint``
unless given), the client's data as the app loaded it (``runconfig.load_data`` on the
run's ``config.json``), and tests, per client, BatchNorm re-estimated on the client's
training split as the tables do:

- ``deployed``: the argmax of its policy, with its kept blocks;
- ``random, own keep``: random architectures with the client's deployed keep choices;
- ``random``: random architectures, keep choices random as well (the run's diagnostic).

``architecture gain`` = deployed - random with own keep; ``keep gain`` = random with own
keep - random. It writes ``architecture_gain.csv`` (a row per client and subnet) and
prints a markdown summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from kept_block_diagnosis import client_data, kept_copy, subnet_model  # scripts/, beside this

from flwr_pfedrlnas.core.search import PerFedRLNASSearch
from flwr_pfedrlnas.core.search_space import Architecture
from flwr_pfedrlnas.training import evaluate, recalibrate_as_configured

KEEP = "keep."


def with_keep_choices(arch: Architecture, source: Architecture) -> Architecture:
    """``arch`` with every ``keep.<block>`` choice taken from ``source``."""
    return {k: (source[k] if k.startswith(KEEP) else v) for k, v in arch.items()}


def needs_store(arch: Architecture) -> bool:
    return any(k.startswith(KEEP) and v == "personal" for k, v in arch.items())


def summarise(rows: pd.DataFrame) -> dict[str, float]:
    """Means over clients of each subnet kind, and the two gains (per client, then mean)."""
    per_client = rows.groupby(["client-id", "subnet"])["accuracy"].mean().unstack()
    out = {kind: float(per_client[kind].mean()) for kind in per_client.columns}
    out["architecture gain"] = float(
        (per_client["deployed"] - per_client["random, own keep"]).mean()
    )
    out["keep gain"] = float((per_client["random, own keep"] - per_client["random"]).mean())
    out["clients"] = int(len(per_client))
    return out


def measure(run: Path, checkpoint: Path, num_random: int, seed: int) -> pd.DataFrame:
    cfg = json.loads((run / "config.json").read_text())["run-config"]
    search, _ = PerFedRLNASSearch.from_checkpoint(str(checkpoint))
    family = search.family
    rows = []
    for client_id in sorted(search.policies, key=lambda c: (len(c), c)):
        train, test, _ = client_data(cfg, client_id)
        store = kept_copy(checkpoint, client_id)
        deployed = search.policies[client_id].argmax()
        rng = np.random.default_rng([seed, int(client_id)])
        drawn = [family.search_space.sample(rng) for _ in range(num_random)]
        subnets = [("deployed", deployed)]
        subnets += [("random, own keep", with_keep_choices(a, deployed)) for a in drawn]
        subnets += [("random", a) for a in drawn]
        for kind, arch in subnets:
            if needs_store(arch) and store is None:
                continue  # a personal block this client never held: nothing to test
            model = subnet_model(family, search.supernet, arch, store)
            recalibrate_as_configured(model, train, -1, "cpu")
            rows.append(
                {
                    "client-id": client_id,
                    "subnet": kind,
                    "arch": json.dumps(arch, sort_keys=True),
                    "accuracy": float(evaluate(model, test, "cpu")[1]),
                }
            )
    return pd.DataFrame(rows)


def summary_table(summary: dict[str, float], digits: int) -> list[str]:
    """A one-row markdown table of ``summary`` (floats to ``digits`` places)."""
    values = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in summary.values()]
    return [
        "| " + " | ".join(summary) + " |",
        "|" + "---|" * len(summary),
        "| " + " | ".join(values) + " |",
    ]


def run_arguments(doc: str, num_random: int, argv: list[str] | None) -> argparse.Namespace:
    """``RUN_DIR [--checkpoint DIR] [--random N] [--seed S]``; ``checkpoint`` filled in."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder (config.json, checkpoint/)")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--random", type=int, default=num_random, help="random architectures")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.checkpoint = args.checkpoint or args.run / "checkpoint"
    return args


def main(argv: list[str] | None = None) -> None:
    args = run_arguments(__doc__, 5, argv)
    rows = measure(args.run, args.checkpoint, args.random, args.seed)
    rows.to_csv(args.run / "architecture_gain.csv", index=False)
    print("\n".join(summary_table(summarise(rows), 3)))


if __name__ == "__main__":
    main()
