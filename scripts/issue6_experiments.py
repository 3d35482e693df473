"""Memory budgets (Figure 4 analogue), new clients (Figure 5 analogue) and ablations.

Small CPU settings, run in-process: the real Message-API strategy and the real
client handlers, delivered by a Grid that calls them directly (no Ray, no
SuperLink). Every run is seeded; the command lines are written beside the
results.

    python scripts/issue6_experiments.py memory      # results/memory/*, results/new_clients/*
    python scripts/issue6_experiments.py ablations   # results/ablations.md (+ .csv)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flwr.app import Context, Message, MessageType, RecordDict

from flwr_pfedrlnas.baselines import FedAvgFixedArch
from flwr_pfedrlnas.core.profiles import MB, ProfileDistribution
from flwr_pfedrlnas.core.search import SearchConfig
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.client import evaluate_subnet, identify, train_subnet
from flwr_pfedrlnas.flower.strategy import PerFedRLNAS
from flwr_pfedrlnas.supernets import get_supernet
from flwr_pfedrlnas.training import training_peak_memory

try:  # flwr >= 1.42 stamps every Message with the identity of the running task
    from flwr.supercore.task_identity import TaskIdentity
except ImportError:  # pragma: no cover
    TaskIdentity = None

ROOT = Path(__file__).resolve().parent.parent
NUM_PARTITIONS = 48  # the embedded data split in 48; client i owns partition i
SUPERNET = {"num_stages": 3, "base_width": 16}
BATCH = 32


CONTROL = (
    "eq. 8 control (no phi term; an overrun still gets acc 0 and the round's max RT and is "
    "not merged, as the core does under either reward)"
)


def markdown(frame: pd.DataFrame, fmt: str) -> str:
    """A pipe table (no tabulate dependency)."""

    def cell(v):
        return format(v, fmt) if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |"]
    lines.append("|" + "---|" * len(frame.columns))
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


def family():
    return get_supernet("elastic-cnn", **SUPERNET)


@lru_cache(maxsize=64)
def loaders(pid: int):
    data = load_client_data(
        "embedded", partition_id=pid, num_partitions=NUM_PARTITIONS, alpha=0.5, seed=0
    )
    return make_loaders(data, batch_size=BATCH, seed=pid)


class InProcessGrid:
    """Delivers each message to the real client handler of its node."""

    def __init__(self, client_ids):
        self.contexts = {
            1000 + int(c): Context(
                run_id=1,
                node_id=1000 + int(c),
                node_config={"partition-id": int(c)},
                state=RecordDict(),
                run_config={},
            )
            for c in client_ids
        }

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            ctx = self.contexts[msg.metadata.dst_node_id]
            tr, te = loaders(int(ctx.node_config["partition-id"]))
            kind = msg.metadata.message_type.split(".")[0]
            if kind == MessageType.TRAIN:
                replies.append(train_subnet(msg, ctx, tr, te))
            elif kind == MessageType.EVALUATE:
                replies.append(evaluate_subnet(msg, ctx, te, train_loader=tr))
            else:
                replies.append(identify(msg, ctx))
        return replies


def run_pfedrlnas(out: Path, *, num_clients, clients_per_round, rounds, **kw) -> PerFedRLNAS:
    profiles = kw.pop("profiles", None)
    strategy = PerFedRLNAS(
        family(),
        clients_per_round=clients_per_round,
        min_available_nodes=num_clients,
        evaluate_every=rounds,  # personalised accuracy of every client at the last round
        search_config=SearchConfig(
            lambda_time=kw.pop("lambda_time", 0.01),
            memory_aware=kw.pop("memory_aware", False),
            seed=kw.pop("seed", 0),
            reward_clip=kw.pop("reward_clip", 1.0),
        ),
        profiles=profiles,
        results_dir=str(out),
        **kw,
    )
    strategy.start(InProcessGrid([str(i) for i in range(num_clients)]), num_rounds=rounds)
    return strategy


def test_accuracy(cid: str, arch, state) -> float:
    """One client's test accuracy of a subnet (BatchNorm recalibrated, no training)."""
    fam = family()
    content = RecordDict(
        {
            "arrays": m.arrays_to_record(state),
            "config": m.subnet_config(fam, arch, 0, {m.BN_RECALIBRATION_BATCHES: -1}),
        }
    )
    msg = Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=1)
    ctx = InProcessGrid([cid]).contexts[1000 + int(cid)]
    tr, te = loaders(int(cid))
    return float(evaluate_subnet(msg, ctx, te, train_loader=tr).content["metrics"]["accuracy"])


def peak_of(cid: str, arch) -> float:
    """Peak training memory of ``arch`` on the client's first batch (what the client measures)."""
    torch.manual_seed(0)
    images, labels = next(iter(loaders(int(cid))[0]))
    return float(training_peak_memory(family().build_subnet(arch), images, labels))


# ---------------------------------------------------------------- memory + new clients
def memory_and_new_clients(args) -> None:
    from flwr_pfedrlnas.core.aggregation import extract_subnet

    control = args.eq8_control
    mem_dir, new_dir = ROOT / "results/memory", ROOT / "results/new_clients"
    if control:  # the same federation with eq. 8: what memory do clients end with?
        mem_dir, args.fedavg, args.new_rounds = mem_dir / "eq8-control", False, 0
    mem_dir.mkdir(parents=True, exist_ok=True)
    new_dir.mkdir(parents=True, exist_ok=True)
    budgets_mb = (4.0, 6.0, 8.0, 12.0)
    dist = ProfileDistribution(seed=args.seed, memory_budget_choices_mb=budgets_mb)
    t0 = time.time()
    strategy = run_pfedrlnas(
        mem_dir / "run",
        num_clients=args.clients + args.new_clients,
        clients_per_round=args.per_round,
        rounds=args.rounds,
        memory_aware=not control,
        reward_clip=args.reward_clip or None,
        profiles=dist,
        seed=args.seed,
        num_new_clients=args.new_clients,
        new_client_rounds=args.new_rounds,
    )
    wall = time.time() - t0
    new = strategy.session.new_clients or []
    fam = family()
    largest = fam.search_space.largest()

    rows = []
    for cid in [str(i) for i in range(args.clients + args.new_clients)]:
        arch = strategy.search.policy(cid).argmax()
        profile = strategy.search.profiles[cid]
        peak = peak_of(cid, arch)
        rows.append(
            {
                "client": cid,
                "kind": "new" if cid in new else "trained",
                "budget-mb": profile.memory_budget_bytes / MB,
                "peak-mb": peak / MB,
                "largest-subnet-peak-mb": peak_of(cid, largest) / MB,
                "over-budget": int(peak > profile.memory_budget_bytes),
                "speed-factor": round(profile.speed_factor, 3),
                "policy-steps": strategy.search.policy(cid).steps,
                "arch": json.dumps(arch, sort_keys=True),
            }
        )
    mem = pd.DataFrame(rows)
    mem.to_csv(mem_dir / "budget_vs_peak.csv", index=False)
    trained = mem[mem.kind == "trained"]
    over = int(trained["over-budget"].sum())
    rounds_csv = pd.read_csv(mem_dir / "run" / "rounds.csv")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for kind, marker in (("trained", "o"), ("new", "^")):
        part = mem[mem.kind == kind]
        ax.scatter(part["budget-mb"], part["peak-mb"], marker=marker, label=f"{kind} clients")
    lim = [0, max(mem["budget-mb"].max(), mem["peak-mb"].max()) * 1.1]
    ax.plot(lim, lim, "k--", lw=1, label="peak = budget")
    ax.axhline(mem["largest-subnet-peak-mb"].mean(), color="grey", lw=1, label="largest subnet")
    ax.set_xlabel("memory budget (MiB)")
    ax.set_ylabel("peak training memory of final argmax subnet (MiB)")
    ax.set_title(
        f"{'eq. 8' if control else 'eq. 9'}: {over} of {len(trained)} trained clients over budget"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(mem_dir / "budget_vs_peak.png", dpi=120)
    command = "python scripts/issue6_experiments.py memory " + " ".join(sys.argv[2:])
    settings = (
        f"elastic-cnn {SUPERNET}, embedded Fashion-MNIST split in {NUM_PARTITIONS} "
        f"Dirichlet(0.5) partitions, {args.clients} training clients + {len(new)} new, "
        f"{args.per_round} per round, {args.rounds} rounds, 1 local epoch, batch {BATCH}, "
        f"{CONTROL if control else 'memory-aware reward (eq. 9)'}, "
        f"reward clip {args.reward_clip or None}, budgets drawn from {list(budgets_mb)} MiB, "
        f"seed {args.seed}; wall {wall:.0f} s on a shared 2-core CPU"
    )
    (mem_dir / "README.md").write_text(
        "# Memory budget vs the memory of each client's final architecture (Figure 4 analogue)\n\n"
        f"Command: `{command}`\n\nSettings: {settings}.\n\n"
        "Peak = the client's own measurement (`training_peak_memory`, CPU: saved-tensor "
        "hooks) of its final argmax subnet on its first training batch.\n\n"
        f"**Trained clients over budget at the end: {over} of {len(trained)}.** "
        f"Overruns per round (clients that refused to train): "
        f"{list(rounds_csv['num-overruns'])}.\n\n"
        + mem.drop(columns=["arch"]).pipe(markdown, ".2f")
        + "\n\n![budget vs peak](budget_vs_peak.png)\n"
    )
    if control:
        print(mem.to_string())
        return

    # New clients: the searched argmax subnet vs a uniformly random subnet vs FedAvg.
    rng = np.random.default_rng(args.seed)
    random_acc = {}
    for cid in new:
        accs = []
        for _ in range(args.random_archs):
            arch = fam.search_space.sample(rng)
            accs.append(
                test_accuracy(cid, arch, extract_subnet(fam, strategy.search.supernet, arch))
            )
        random_acc[cid] = float(np.mean(accs))
    fedavg_acc = {}
    if args.fedavg:
        train_ids = [str(i) for i in range(args.clients)]
        fedavg = FedAvgFixedArch(
            fam,
            clients_per_round=args.per_round,
            min_available_nodes=len(train_ids),
            seed=args.seed,
            results_dir=str(new_dir / "fedavg-run"),
        )
        result = fedavg.start(InProcessGrid(train_ids), num_rounds=args.rounds)
        state = m.record_to_arrays(result.arrays)
        fedavg_acc = {cid: test_accuracy(cid, fedavg.arch, state) for cid in new}
    curve = pd.DataFrame(strategy.session.new_client_rows)
    curve["random-subnet-accuracy"] = float(np.mean(list(random_acc.values())))
    curve["fedavg-largest-accuracy"] = (
        float(np.mean(list(fedavg_acc.values()))) if fedavg_acc else float("nan")
    )
    curve.to_csv(new_dir / "curve.csv", index=False)

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(curve["search-round"], curve["accuracy-mean"], "o-", label="PerFedRLNAS search-only")
    ax.axhline(
        curve["random-subnet-accuracy"].iloc[0], color="grey", ls="--", label="random subnet"
    )
    if fedavg_acc:
        ax.axhline(
            curve["fedavg-largest-accuracy"].iloc[0], color="C1", ls=":", label="FedAvg (largest)"
        )
    ax.set_xlabel("search-only round")
    ax.set_ylabel(f"mean test accuracy of {len(new)} new clients")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(new_dir / "curve.png", dpi=120)

    (new_dir / "README.md").write_text(
        "# New clients: search-only rounds on the trained supernet (Figure 5 analogue)\n\n"
        f"Command: `{command}`\n\nSettings: {settings}. New clients {new} never trained; "
        f"after training each gets {args.new_rounds} search-only rounds (sample a subnet, "
        "test it, reward = accuracy - running mean, policy update; no weight training, no "
        "upload). `accuracy-mean` = the new clients' argmax subnet after the round's update. "
        f"Random subnet = mean over {args.random_archs} uniformly random subnets of the same "
        "supernet. FedAvg = FedAvgFixedArch (largest subnet) trained on the training clients "
        "for the same rounds, tested on the new clients. All tests re-estimate BatchNorm "
        "statistics on the client's training data first.\n\n"
        + curve.pipe(markdown, ".4f")
        + "\n\n![curve](curve.png)\n"
    )
    print(mem.to_string(), curve.to_string(), sep="\n")


# ---------------------------------------------------------------- ablations
def ablations(args) -> None:
    base = {"num_clients": args.clients, "clients_per_round": args.per_round, "lambda_time": 0.01}
    variants = {
        "base": base,
        "lambda-time = 0": {**base, "lambda_time": 0.0},
        "more clients per round": {**base, "clients_per_round": 2 * args.per_round},
        "twice the clients": {**base, "num_clients": 2 * args.clients},
    }
    rows = []
    for name, kw in variants.items():
        t0 = time.time()
        out = ROOT / "results/ablations" / name.replace(" ", "-").replace("=", "")
        dist = ProfileDistribution(seed=args.seed)  # speed and bandwidth, no memory budget
        strategy = run_pfedrlnas(out, rounds=args.rounds, profiles=dist, seed=args.seed, **dict(kw))
        last = strategy.session.recorder.rounds[-1]
        clients = pd.DataFrame(strategy.session.recorder.clients.values())
        rows.append(
            {
                "setting": name,
                "K clients": kw["num_clients"],
                "N per round": kw["clients_per_round"],
                "lambda-time": kw["lambda_time"],
                "accuracy mean": last["accuracy-mean"],
                "accuracy std": last["accuracy-std"],
                "simulated latency total (s)": last["latency-total-s"],
                "mean arch params share": float(
                    np.mean([_param_share(a) for a in clients["arch"]])
                ),
                "wall (s)": time.time() - t0,
            }
        )
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(ROOT / "results/ablations.csv", index=False)
    command = "python scripts/issue6_experiments.py ablations " + " ".join(sys.argv[2:])
    (ROOT / "results/ablations.md").write_text(
        "# Ablations (paper): lambda-time = 0, more clients per round, twice the clients\n\n"
        f"Command: `{command}`\n\n"
        f"Settings: elastic-cnn {SUPERNET}, embedded Fashion-MNIST ({NUM_PARTITIONS} "
        f"Dirichlet(0.5) partitions, client i = partition i), {args.rounds} rounds, 1 local "
        f"epoch, eq. 8, simulated device profiles (seed {args.seed}: speed factor "
        "log-uniform in [1, 4], bandwidth from {10, 50, 100} Mbit/s each way), seed "
        f"{args.seed}. Accuracy = personalised accuracy of every client's argmax subnet at "
        "the last round. 'mean arch params share' = mean over clients of the deployed "
        "subnet's parameters / the largest subnet's. As run configs for `flwr run`: "
        "`apps/pfedrlnas/ablations/*.toml`. "
        f"One seed, tiny budget ({args.rounds} rounds): differences of a few points are "
        "within noise. Simulated latency uses each client's measured compute seconds (wall "
        "clock on a CPU shared with other jobs) times its speed factor, so it is noisy too.\n\n"
        + table.pipe(markdown, ".4f")
        + "\n"
    )


@lru_cache(maxsize=1)
def _largest_params() -> int:
    fam = family()
    return sum(int(np.prod(s)) for s in fam.subnet_shapes(fam.search_space.largest()).values())


def _param_share(arch_json: str) -> float:
    fam = family()
    arch = json.loads(arch_json)
    return sum(int(np.prod(s)) for s in fam.subnet_shapes(arch).values()) / _largest_params()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["memory", "ablations"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--new-clients", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--new-rounds", type=int, default=8)
    parser.add_argument("--random-archs", type=int, default=4)
    parser.add_argument("--fedavg", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eq8-control", action="store_true", help="memory: eq. 8 instead")
    parser.add_argument("--reward-clip", type=float, default=1.0, help="0: no clipping")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
    if TaskIdentity is not None and TaskIdentity._run_id is None:
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    {"memory": memory_and_new_clients, "ablations": ablations}[args.what](args)


if __name__ == "__main__":
    main()
