"""Time-boxed paper-scale PerFedRLNAS row (MobileNetV3 space, CIFAR-10) on one GPU.

Runs the row of ``experiments/mobilenetv3-cifar10-paper.toml`` (its run config
over the defaults of ``apps/pfedrlnas``: 100 clients with Dirichlet(0.3) label
mixes, 5 per round, 5 local epochs, batch 32, SGD lr 0.05, the mobilenetv3
family at paper size with 32x32 inputs resized to 224) for a given number of
minutes and records, under ``--out`` (default ``results/paper-gpu/``):

- ``rounds.csv``: per round, the wall seconds, the sampled clients' mean accuracy
  after local training (their own test split) and the simulated latency;
- ``clients.csv``: per client and round, the architecture, accuracy, train loss,
  compute seconds and ``torch.cuda.max_memory_allocated`` of its training and
  test (reset before each client), bytes down and up;
- ``deployed.csv``: at the end, every client's deployed model (the argmax
  architecture cut from the supernet, BatchNorm re-estimated on its training
  data) on its own test split;
- ``run.json``: the command, the settings, the device, the versions.

How: in one process, without Flower's runtime, the package's own pieces: the
server core (``PerFedRLNASSearch``: sampling, proposals, rewards, policy
updates, merging) and the client's training and test functions
(``flwr_pfedrlnas.training``), one client after the other on the one GPU, so
each client's peak memory is its own. (Under ``flwr run`` the 5 clients of a
round share the GPU through Ray, which this script does not measure.)

The data cannot be downloaded on an offline GPU machine: ``--data-dir`` is a
local folder with CIFAR-10 in the hub's layout (``data/train-*.parquet``, as
``datasets``' ``save_to_disk``/``to_parquet`` write it), read through the same
code as the hub (``load_source("cifar10", data_dir)``).

Expected time: about 1 minute of start-up (data, partitioning, the supernet),
then rounds until ``--minutes`` is spent: on an H100/H200-class GPU a round of
5 clients x 5 epochs of ~400 images of MobileNetV3 at 224x224 is estimated at
20-60 s (unmeasured: no GPU was available where this script was written), so
10 minutes give some 10-30 rounds; the final deployed evaluation of the 100
clients (forward passes only) adds about a minute. ``--dry-run`` (what the
test suite runs, on the CPU: 2 clients, 1 round, 30 stand-in images, still 5
epochs of the paper-size network) took 52 s on two heavily loaded cores.

Usage::

    python scripts/gpu_paper_row.py --data-dir /data/cifar10 --minutes 10
    python scripts/gpu_paper_row.py --dry-run --out /tmp/paper-gpu-dry
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from flwr_pfedrlnas.core.replies import ClientReply
from flwr_pfedrlnas.core.search import PerFedRLNASSearch
from flwr_pfedrlnas.core.search_space import architecture_to_json
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders
from flwr_pfedrlnas.experiments.reproduce import app_defaults, load_experiment, resolve_app
from flwr_pfedrlnas.flower.runconfig import family_from_run_config, search_config_from_run_config
from flwr_pfedrlnas.supernets import numpy_to_state, state_to_numpy
from flwr_pfedrlnas.training import evaluate, recalibrate_as_configured, resolve_device, train

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "mobilenetv3-cifar10-paper"
# --dry-run shrinks the data, clients and rounds only (family, sizes, epochs, batch stay).
DRY_RUN_CONFIG = {"num-clients": 2, "clients-per-round": 2}
DRY_RUN_IMAGES = 30


def run_config(experiment: str) -> dict[str, Any]:
    """The row's run config as ``flwr run`` would pass it: app defaults, file, method."""
    exp = load_experiment(experiment)
    (spec,) = [m for m in exp.methods if m.name == "pfedrlnas"]
    defaults = app_defaults(resolve_app(spec.app))
    shared = {k: v for k, v in exp.run_config.items() if k in defaults}
    return {**defaults, **shared, **spec.run_config}


def stand_in_data(directory: Path) -> Path:
    """A few CIFAR-10-schema rows made from the embedded images (``--dry-run`` only)."""
    from flwr_pfedrlnas.data import cifar_schema_dataset

    splits = cifar_schema_dataset(10, train_per_class=3, test_per_class=1)
    (directory / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", DRY_RUN_IMAGES), ("test", 10)):
        part = splits[split].shuffle(seed=0).select(range(min(rows, len(splits[split]))))
        part.to_parquet(str(directory / "data" / f"{split}-00000-of-00001.parquet"))
    return directory


class ClientPool:
    """Every client's loaders, built on first use (the pool and partition are cached)."""

    def __init__(self, cfg: dict[str, Any], data_dir: str) -> None:
        self.cfg, self.data_dir = cfg, data_dir
        self._loaders: dict[str, tuple[Any, Any]] = {}

    def loaders(self, client_id: str):
        if client_id not in self._loaders:
            cfg = self.cfg
            data = load_client_data(
                str(cfg["dataset"]),
                int(client_id),
                int(cfg["num-clients"]),
                float(cfg["dirichlet-alpha"]),
                int(cfg["seed"]),
                float(cfg["test-fraction"]),
                self.data_dir,
            )
            self._loaders[client_id] = make_loaders(data, int(cfg["batch-size"]), int(cfg["seed"]))
        return self._loaders[client_id]


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int:
    if device.type != "cuda":
        return 0  # the CPU has no allocator peak to read (the dry run)
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def train_client(search, pool, client_id: str, cfg: dict[str, Any], device) -> tuple:
    """One client's round: its proposal, local training, test; the reply and its row."""
    proposal = search.propose(client_id)
    model = search.family.build_subnet(proposal.arch)
    model.load_state_dict(numpy_to_state(proposal.state), strict=True)
    train_loader, test_loader = pool.loaders(client_id)
    _reset_peak(device)
    start = time.perf_counter()
    result = train(
        model,
        train_loader,
        epochs=int(cfg["local-epochs"]),
        lr=float(cfg["lr"]),
        device=device,
        measure_memory=False,
    )
    _, accuracy, _ = evaluate(model, test_loader, device)
    compute = time.perf_counter() - start
    peak = _peak(device)
    state = state_to_numpy(model.state_dict())
    reply = ClientReply(
        client_id=client_id,
        arch=proposal.arch,
        state=state,
        num_examples=int(result.num_examples),
        accuracy=float(accuracy),
        train_loss=float(result.loss),
        compute_seconds=compute,
        peak_memory_bytes=float(peak),
    )
    row = {
        "client-id": client_id,
        "arch": architecture_to_json(proposal.arch),
        "accuracy": float(accuracy),
        "train-loss": float(result.loss),
        "num-examples": int(result.num_examples),
        "compute-seconds": compute,
        "gpu-max-memory-allocated-bytes": peak,
        "bytes-down": int(proposal.bytes_down),
    }
    return reply, row


def deployed_accuracy(search, pool, cfg: dict[str, Any], device) -> list[dict[str, Any]]:
    """Every client's deployed model on its own test split (BatchNorm re-estimated)."""
    rows = []
    batches = int(cfg["bn-recalibration-batches"])
    for cid in (str(i) for i in range(int(cfg["num-clients"]))):
        arch, weights = search.deploy(cid)
        model = search.family.build_subnet(arch)
        model.load_state_dict(numpy_to_state(weights), strict=True)
        train_loader, test_loader = pool.loaders(cid)
        recalibrate_as_configured(model, train_loader, batches, device)
        _, accuracy, n = evaluate(model, test_loader, device)
        rows.append(
            {"client-id": cid, "arch": architecture_to_json(arch), "accuracy": accuracy, "n": n}
        )
    return rows


def run(args: argparse.Namespace) -> dict[str, Path]:
    """Run the row; ``--dry-run`` without ``--data-dir`` reads a temporary stand-in."""
    if args.dry_run and not args.data_dir:
        with tempfile.TemporaryDirectory(prefix="paper-gpu-data-") as tmp:
            args.data_dir = str(stand_in_data(Path(tmp)))
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Path]:
    cfg = run_config(args.experiment)
    if args.dry_run:
        cfg.update(DRY_RUN_CONFIG)
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.dry_run:
        raise SystemExit("no CUDA device: run on a GPU machine, or use --dry-run on the CPU")
    if not args.data_dir:
        raise SystemExit("--data-dir is required (a local CIFAR-10 folder in the hub layout)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(cfg["seed"]))
    np.random.seed(int(cfg["seed"]))

    started = time.perf_counter()
    family = family_from_run_config(cfg)
    search = PerFedRLNASSearch(family, search_config_from_run_config(cfg))
    pool = ClientPool(cfg, args.data_dir)
    clients = [str(i) for i in range(int(cfg["num-clients"]))]
    setup = time.perf_counter() - started
    budget = 60.0 * args.minutes
    max_rounds = 1 if args.dry_run else (args.rounds or int(cfg["num-server-rounds"]))
    rounds, client_rows = [], []
    paths = {name: out / f"{name}.csv" for name in ("rounds", "clients", "deployed")}
    last = 0.0
    for server_round in range(1, max_rounds + 1):
        # Stop before a round that would not finish inside the budget.
        if server_round > 1 and time.perf_counter() - started + last > budget:
            break
        t0 = time.perf_counter()
        sampled = search.sample_clients(clients, int(cfg["clients-per-round"]))
        replies = []
        for cid in sampled:
            reply, row = train_client(search, pool, cid, cfg, device)
            replies.append(reply)
            client_rows.append({"round": server_round, **row})
        outcome = search.incorporate(server_round, replies)
        last = time.perf_counter() - t0
        accs = [r.accuracy for r in replies]
        rounds.append(
            {
                "round": server_round,
                "wall-seconds": last,
                "clients": " ".join(sampled),
                "trained-accuracy-mean": float(np.mean(accs)),
                "latency-s": outcome.latency,
                "gpu-max-memory-allocated-bytes": max(
                    r["gpu-max-memory-allocated-bytes"] for r in client_rows[-len(sampled) :]
                ),
            }
        )
        pd.DataFrame(rounds).to_csv(paths["rounds"], index=False)  # every round: a kill keeps it
        pd.DataFrame(client_rows).to_csv(paths["clients"], index=False)
        print(
            f"[round {server_round}] {last:.1f} s, trained accuracy {np.mean(accs):.3f}, "
            f"peak {rounds[-1]['gpu-max-memory-allocated-bytes'] / 2**20:.0f} MiB",
            flush=True,
        )
    t0 = time.perf_counter()
    deployed = deployed_accuracy(search, pool, cfg, device)
    pd.DataFrame(deployed).to_csv(paths["deployed"], index=False)
    accs = [r["accuracy"] for r in deployed]
    summary = {
        "command": shlex.join(["python", *sys.argv]),
        "experiment": args.experiment,
        "dry-run": bool(args.dry_run),
        "minutes": args.minutes,
        "data-dir": args.data_dir,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "run-config": cfg,
        "setup-seconds": setup,
        "rounds": len(rounds),
        "round-wall-seconds-median": float(np.median([r["wall-seconds"] for r in rounds])),
        "deployed-evaluation-seconds": time.perf_counter() - t0,
        "deployed-accuracy-mean": float(np.mean(accs)),
        "deployed-accuracy-std": float(np.std(accs)),
        "total-seconds": time.perf_counter() - started,
    }
    paths["run"] = out / "run.json"
    paths["run"].write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "run-config"}, indent=2))
    return paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="local CIFAR-10 folder (hub layout: data/*.parquet)")
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget (default 10)")
    parser.add_argument("--rounds", type=int, help="stop after this many rounds at most")
    parser.add_argument("--out", default=str(REPO / "results" / "paper-gpu"))
    parser.add_argument("--experiment", default=EXPERIMENT, help="experiment file or name")
    parser.add_argument("--device", help="torch device (default: cuda if available)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU check: 2 clients, 1 round, a few stand-in images (unless --data-dir)",
    )
    args = parser.parse_args(argv)
    if not args.minutes > 0:
        parser.error(f"--minutes must be positive, got {args.minutes}")
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


if __name__ == "__main__":
    run(parse_args())
