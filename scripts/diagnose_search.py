"""Why does a PerFedRLNAS run score what it scores? Search against shared weights.

Reads a finished run's checkpoint (supernet + every client's policy) and
config.json, rebuilds every client's data exactly as the run's clients did,
and tests on each client's own test split (BatchNorm statistics re-estimated
on its training data, as in the run):

- its deployed subnet (argmax of its policy),
- the largest and the smallest subnet of the same supernet,
- ``--samples`` random subnets (seeded, the same for every client),
- and, of those random subnets, the best one for that client (an oracle).

If the deployed subnet scores like a random one, the policy has not found
anything yet; if every subnet of the supernet scores low, the shared weights
are the limit, not the search. Writes ``diagnosis.csv`` and ``diagnosis.md``
into the run's directory (or ``--out``) and prints the summary.

    python scripts/diagnose_search.py results/table2-cpu/pfedrlnas
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.core.search import PerFedRLNASSearch
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders
from flwr_pfedrlnas.training import evaluate, recalibrate_batchnorm


def _test(family, supernet, arch, train_loader, test_loader) -> float:
    model = family.build_subnet(arch)
    state = extract_subnet(family, supernet, arch)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    recalibrate_batchnorm(model, train_loader, None)
    return float(evaluate(model, test_loader)[1])


def diagnose(run_dir: Path, samples: int = 5, seed: int = 0) -> pd.DataFrame:
    """One row per client: accuracies of its deployed, largest, smallest and random subnets."""
    core, _ = PerFedRLNASSearch.from_checkpoint(run_dir / "checkpoint")
    cfg = json.loads((run_dir / "config.json").read_text())["run-config"]
    family = core.family
    rng = np.random.default_rng(seed)
    randoms = [family.search_space.sample(rng) for _ in range(samples)]
    rows = []
    num_clients = int(cfg["num-clients"])
    for cid in sorted(core.policies, key=int):
        pid = int(cid)
        data = load_client_data(
            str(cfg["dataset"]),
            partition_id=pid,
            num_partitions=num_clients,
            alpha=float(cfg["dirichlet-alpha"]),
            seed=int(cfg["seed"]),
            test_fraction=float(cfg["test-fraction"]),
            data_dir=str(cfg.get("data-dir", "")) or None,
        )
        train_loader, test_loader = make_loaders(
            data, batch_size=int(cfg["batch-size"]), seed=int(cfg["seed"]) + pid
        )
        policy = core.policy(cid)
        probs = policy.probabilities()
        random_accs = [_test(family, core.supernet, a, train_loader, test_loader) for a in randoms]
        rows.append(
            {
                "client-id": cid,
                "policy-steps": policy.steps,
                "policy-entropy": policy.entropy(),
                "mean-max-probability": float(np.mean([p.max() for p in probs.values()])),
                "deployed": _test(
                    family, core.supernet, policy.argmax(), train_loader, test_loader
                ),
                "largest": _test(
                    family, core.supernet, family.largest_architecture(), train_loader, test_loader
                ),
                "smallest": _test(
                    family, core.supernet, family.smallest_architecture(), train_loader, test_loader
                ),
                "random-mean": float(np.mean(random_accs)),
                "random-best": float(np.max(random_accs)),
            }
        )
        print(
            f"client {cid}: deployed {rows[-1]['deployed']:.3f} largest {rows[-1]['largest']:.3f}"
            f" random {rows[-1]['random-mean']:.3f} (best {rows[-1]['random-best']:.3f})",
            flush=True,
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a PerFedRLNAS results directory")
    parser.add_argument("--samples", type=int, default=5, help="random subnets per client")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    frame = diagnose(args.run_dir, args.samples, args.seed)
    out = args.out or args.run_dir
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "diagnosis.csv", index=False)
    cols = ["deployed", "largest", "smallest", "random-mean", "random-best"]
    summary = frame[cols].agg(["mean", "std"]).T
    lines = [
        f"# Search diagnosis of `{args.run_dir}`",
        "",
        f"`python scripts/diagnose_search.py {args.run_dir} --samples {args.samples} "
        f"--seed {args.seed}`",
        "",
        "Every client tests subnets cut from the run's final supernet on its own test "
        "split (BatchNorm re-estimated on its training data): its deployed (argmax) "
        f"subnet, the largest, the smallest, and {args.samples} seeded random subnets "
        "(the same for every client; `random-best` = the best of them per client).",
        "",
        "| subnet | accuracy mean | std over clients |",
        "|---|---|---|",
        *[f"| {name} | {row['mean']:.3f} | {row['std']:.3f} |" for name, row in summary.iterrows()],
        "",
        f"Policies: {frame['policy-steps'].mean():.1f} steps per client on average, mean "
        f"entropy {frame['policy-entropy'].mean():.2f} nats, mean probability of the most "
        f"likely choice {frame['mean-max-probability'].mean():.2f}. Per client: "
        "`diagnosis.csv`.",
    ]
    (out / "diagnosis.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
