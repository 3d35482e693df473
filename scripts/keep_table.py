"""Which blocks each client keeps for itself, per run of a share-or-keep experiment.

    python scripts/keep_table.py results/search-real-cpu

For every run whose search space has ``keep.<block>`` dimensions it reads the
final policies (``checkpoint/state.json``: each client's probability of
"personal" per block) and the deployed architectures (``clients.csv``: the
argmax choice), and writes ``keep.csv``, ``keep.md`` and ``keep.png`` (one
panel per run: per client, the probability of keeping each block personal,
the deployed choice marked) beside the runs.

Checkpoints stay on the machine that ran them (they are not committed), so a run
folder whose checkpoint is gone keeps the rows an earlier ``keep.csv`` in the
same folder holds for it: adding a new run never drops the older ones. A run
with neither gives what its ``clients.csv`` records: the deployed choice of each
client at its last evaluation, without the policy's probability (``—``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

KEEP = "keep."


def _softmax(logits: list[float]) -> np.ndarray:
    a = np.asarray(logits, dtype=float)
    e = np.exp(a - a.max())
    return e / e.sum()


def collect(root: Path) -> pd.DataFrame:
    rows = []
    fresh = {p.name for p in root.iterdir() if (p / "checkpoint" / "state.json").exists()}
    carried = pd.DataFrame()
    if (root / "keep.csv").exists():
        earlier = pd.read_csv(root / "keep.csv", dtype={"client-id": str})
        gone = [r for r in dict.fromkeys(earlier["run"]) if r not in fresh and (root / r).is_dir()]
        carried = earlier[earlier["run"].isin(gone)]
    known = fresh | set(carried.get("run", []))
    for run in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in known):
        rows += _deployed_only(run)
    for run in sorted(root / name for name in fresh):
        state = json.loads((run / "checkpoint" / "state.json").read_text())
        if "policies" not in state:  # a baseline's checkpoint: no search, nothing kept
            continue
        try:
            clients = pd.read_csv(run / "clients.csv")
        except (FileNotFoundError, pd.errors.EmptyDataError):  # no evaluation yet
            clients = None
        deployed = {}
        if clients is not None and "arch" in clients:
            pairs = zip(clients["client-id"], clients["arch"])
            deployed = {str(c): json.loads(a) for c, a in pairs}
        for cid, policy in state["policies"].items():
            for dim, logits in policy["alpha"].items():
                if not dim.startswith(KEEP):
                    continue
                # Choices are ("shared", "personal"), in that order.
                rows.append(
                    _row(
                        run,
                        dim,
                        rounds=int(state["completed_rounds"]),
                        client_id=str(cid),
                        p_personal=float(_softmax(logits)[1]),
                        deployed=deployed.get(str(cid), {}).get(dim, ""),
                        steps=int(policy["steps"]),
                    )
                )
    out = pd.concat([carried, pd.DataFrame(rows)], ignore_index=True)
    if out.empty:
        return out
    return out.sort_values("run", kind="stable").reset_index(drop=True)


def _row(
    run: Path, dim: str, rounds: int, client_id: str, p_personal: float, deployed: str, steps: int
) -> dict:
    """One row of keep.csv: a client's choice for the block of dimension ``dim``."""
    variant, _, seed = run.name.rpartition("-s")
    return {
        "run": run.name,
        "variant": variant,
        "seed": int(seed) if seed.isdigit() else seed,
        "rounds": rounds,
        "client-id": client_id,
        "block": dim[len(KEEP) :],
        "p-personal": p_personal,
        "deployed": deployed,
        "policy-steps": steps,
    }


def _deployed_only(run: Path) -> list[dict]:
    """Rows of a run without a checkpoint, from its last evaluation in clients.csv."""
    try:
        clients = pd.read_csv(run / "clients.csv", dtype={"client-id": str})
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return []
    if "arch" not in clients or clients.empty:
        return []
    last = clients[clients["round"] == clients["round"].max()]
    return [
        _row(
            run,
            dim,
            rounds=int(client["round"]),
            client_id=str(client["client-id"]),
            p_personal=float("nan"),
            deployed=choice,
            steps=int(client.get("policy-steps", -1)),
        )
        for _, client in last.iterrows()
        for dim, choice in json.loads(client["arch"]).items()
        if dim.startswith(KEEP)
    ]


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (variant, block), group in rows.groupby(["variant", "block"], sort=False):
        per_seed = group.groupby("seed").agg(
            personal=("deployed", lambda d: float((d == "personal").mean())),
            p=("p-personal", "mean"),
        )
        out.append(
            {
                "variant": variant,
                "block": block,
                "seeds": " ".join(str(s) for s in per_seed.index),
                "clients deploying it personal": " / ".join(
                    f"{v:.0%}" for v in per_seed["personal"]
                ),
                "mean P(personal)": " / ".join(
                    "—" if np.isnan(v) else f"{v:.2f}" for v in per_seed["p"]
                ),
            }
        )
    return pd.DataFrame(out)


def plot(rows: pd.DataFrame, path: Path) -> None:
    runs = list(dict.fromkeys(rows["run"]))
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3), squeeze=False)
    for ax, run in zip(axes[0], runs):
        group = rows[rows["run"] == run]
        clients = sorted(group["client-id"].unique(), key=lambda c: (len(c), c))
        blocks = list(dict.fromkeys(group["block"]))
        width = 0.8 / max(1, len(blocks))
        for j, block in enumerate(blocks):
            part = group[group["block"] == block].set_index("client-id").loc[clients]
            x = np.arange(len(clients)) + j * width
            # Without the policy (no checkpoint) the bar is the deployed choice, hatched.
            known = part["p-personal"].notna().to_numpy()
            height = np.where(known, part["p-personal"], part["deployed"] == "personal")
            bars = ax.bar(x, height, width, label=block, color=f"C{j}")
            for bar, ok in zip(bars, known):
                if not ok:
                    bar.set_hatch("//")
                    bar.set_alpha(0.5)
            for bar, choice in zip(bars, part["deployed"]):
                if choice == "personal":
                    ax.text(bar.get_x() + bar.get_width() / 2, 1.02, "P", ha="center", fontsize=7)
        ax.set_xticks(np.arange(len(clients)) + 0.4 - width / 2, clients)
        ax.set_ylim(0, 1.12)
        title = run if group["p-personal"].notna().any() else f"{run} (deployed only)"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("client")
    axes[0][0].set_ylabel("final P(personal)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        "Share-or-keep: each client's choice per block (P: deployed personal; "
        "hatched: no policy kept, the deployed choice only)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    rows = collect(args.root)
    if rows.empty:
        raise SystemExit(f"no run with keep.<block> dimensions under {args.root}")
    rows.to_csv(args.root / "keep.csv", index=False)
    summary = summarise(rows)
    lines = ["| " + " | ".join(summary.columns) + " |", "|" + "---|" * len(summary.columns)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in summary.itertuples(index=False)]
    (args.root / "keep.md").write_text(
        "Per variant and block: share of clients whose deployed architecture keeps the "
        "block personal, and the mean final probability of keeping it (per seed, "
        "separated by /).\n\n" + "\n".join(lines) + "\n"
    )
    plot(rows, args.root / "keep.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
