"""Is a client's searched architecture its own? Every client's deployed architecture, and
random ones, tested on every client.

    python scripts/architecture_personal.py RUN_DIR [--checkpoint DIR] [--random 6] [--seed 0]

From a run's final checkpoint (``RUN_DIR/checkpoint`` unless given) it tests on every
client ``i``, BatchNorm re-estimated on ``i``'s training split as the tables do, with
``i``'s kept blocks and the ``keep.<block>`` choices of ``i``'s own deployed architecture
(so only the searched architecture varies):

- the deployed architecture (policy argmax) of every client ``j``;
- the same ``--random`` uniformly random architectures for every client.

Each client's test split is scored in two halves (even and odd examples); the whole
split's accuracy is their pooled count.

- **own advantage**: ``acc(i, arch_i) - mean over j != i of acc(i, arch_j)``, the mean over
  clients: does the architecture searched for a client serve it better than those searched
  for the others?
- **decomposition** over every architecture tested: each client's accuracies minus their
  mean (the client's difficulty removed) split into the architecture's effect common to
  every client (its mean over clients) and the interaction (the rest: what is personal).
  The variance of each is given whole and as its split-half covariance (half A's values
  times half B's, averaged), which test noise does not inflate: noise in the two halves is
  independent.

Writes ``architecture_personal.csv`` (a row per client, architecture and half) and
``architecture_personal.md`` beside the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from architecture_gain import (  # scripts/, beside this
    needs_store,
    run_arguments,
    summary_table,
    with_keep_choices,
)
from kept_block_diagnosis import client_data, kept_copy, subnet_model

from flwr_pfedrlnas.core.search import PerFedRLNASSearch
from flwr_pfedrlnas.training import evaluate, recalibrate_as_configured

HALVES = ("whole", "A", "B")


def decompose(acc: np.ndarray) -> dict[str, np.ndarray]:
    """Split a clients x architectures accuracy matrix into client, common and personal parts.

    ``acc[i, k] = client[i] + common[k] + personal[i, k] + mean``; ``common`` and each row
    and column of ``personal`` sum to zero.
    """
    acc = np.asarray(acc, dtype=float)
    centred = acc - acc.mean(axis=1, keepdims=True)
    common = centred.mean(axis=0)
    return {"client": acc.mean(axis=1) - acc.mean(), "common": common, "personal": centred - common}


def own_advantage(acc: np.ndarray) -> float:
    """Mean over clients ``i`` of ``acc[i, i] - mean_{j != i} acc[i, j]`` (square matrix)."""
    acc = np.asarray(acc, dtype=float)
    n = acc.shape[0]
    if acc.shape != (n, n) or n < 2:
        raise ValueError(f"need a square matrix of two clients or more, got shape {acc.shape}")
    others = (acc.sum(axis=1) - np.diag(acc)) / (n - 1)
    return float(np.mean(np.diag(acc) - others))


def summarise(rows: pd.DataFrame) -> dict[str, float]:
    """The figures of the module docstring from the rows :func:`measure` writes."""
    out: dict[str, float] = {}
    mats = {}
    for half in HALVES:
        part = rows[rows["half"] == half]
        mats[half] = part.pivot(index="client-id", columns="arch-id", values="accuracy")
    clients = list(mats["whole"].index)
    deployed = [f"deployed-{c}" for c in clients]
    for half in HALVES:
        if set(deployed) <= set(mats[half].columns):
            out[f"own advantage ({half})"] = own_advantage(mats[half][deployed].to_numpy())
    parts = {h: decompose(m.to_numpy()) for h, m in mats.items()}
    for name in ("common", "personal"):
        out[f"{name} variance"] = float(np.mean(parts["whole"][name] ** 2))
        out[f"{name} variance, split-half"] = float(np.mean(parts["A"][name] * parts["B"][name]))
    out["clients"] = len(clients)
    out["architectures"] = int(mats["whole"].shape[1])
    return out


def _halves(loader) -> dict[str, torch.utils.data.DataLoader]:
    data = loader.dataset
    index = np.arange(len(data))
    make = torch.utils.data.DataLoader
    return {
        "A": make(torch.utils.data.Subset(data, index[0::2].tolist()), batch_size=256),
        "B": make(torch.utils.data.Subset(data, index[1::2].tolist()), batch_size=256),
    }


def _scores(model: torch.nn.Module, halves: dict) -> dict[str, float]:
    """Accuracy on each half and on the whole split, the whole from the halves' counts."""
    correct, total = {}, {}
    for half, loader in halves.items():
        _, acc, n = evaluate(model, loader, "cpu")
        correct[half], total[half] = round(acc * n), n
    out = {"whole": sum(correct.values()) / sum(total.values())}
    return out | {half: correct[half] / total[half] for half in halves}


def measure(run: Path, checkpoint: Path, num_random: int, seed: int) -> pd.DataFrame:
    cfg = json.loads((run / "config.json").read_text())["run-config"]
    search, _ = PerFedRLNASSearch.from_checkpoint(str(checkpoint))
    family = search.family
    clients = sorted(search.policies, key=lambda c: (len(c), c))
    rng = np.random.default_rng(seed)
    archs = {f"deployed-{c}": search.policies[c].argmax() for c in clients}
    archs.update({f"random-{k}": family.search_space.sample(rng) for k in range(num_random)})
    rows = []
    for client_id in clients:
        train, test, _ = client_data(cfg, client_id)
        halves = _halves(test)
        store = kept_copy(checkpoint, client_id)
        own = archs[f"deployed-{client_id}"]
        for arch_id, drawn in archs.items():
            arch = with_keep_choices(drawn, own)
            if needs_store(arch) and store is None:
                raise SystemExit(f"client {client_id} keeps a block but has no kept copy")
            model = subnet_model(family, search.supernet, arch, store)
            recalibrate_as_configured(model, train, -1, "cpu")
            for half, accuracy in _scores(model, halves).items():
                rows.append(
                    {
                        "client-id": client_id,
                        "arch-id": arch_id,
                        "half": half,
                        "arch": json.dumps(arch, sort_keys=True),
                        "accuracy": accuracy,
                    }
                )
    return pd.DataFrame(rows)


def markdown(rows: pd.DataFrame, summary: dict[str, float], command: str) -> str:
    whole = rows[rows["half"] == "whole"].pivot(
        index="client-id", columns="arch-id", values="accuracy"
    )
    cols = [c for c in whole.columns if c.startswith("deployed-")]
    cols += [c for c in whole.columns if not c.startswith("deployed-")]
    lines = [
        "# Is a client's searched architecture its own?",
        "",
        f"`{command}`",
        "",
        *summary_table(summary, 4),
        "",
        "Accuracy of each client (rows) with each architecture (columns), whole test split:",
        "",
        "| client | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for cid, row in whole[cols].iterrows():
        lines.append(f"| {cid} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = run_arguments(__doc__, 6, argv)
    rows = measure(args.run, args.checkpoint, args.random, args.seed)
    rows.to_csv(args.run / "architecture_personal.csv", index=False)
    summary = summarise(rows)
    command = (
        f"python scripts/architecture_personal.py {args.run} --random {args.random} "
        f"--seed {args.seed}"
    )
    text = markdown(rows, summary, command)
    (args.run / "architecture_personal.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
