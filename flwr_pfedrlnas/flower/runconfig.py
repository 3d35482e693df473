"""Run config of the Flower apps -> family, search settings, output paths, client data."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common import log

from flwr_pfedrlnas.core.profiles import ProfileDistribution
from flwr_pfedrlnas.core.search import SearchConfig
from flwr_pfedrlnas.data.datasets import dataset_info, load_client_data, make_loaders
from flwr_pfedrlnas.supernets import SupernetFamily, get_supernet


def family_from_run_config(cfg: dict[str, Any]) -> SupernetFamily:
    """The supernet family of the run; input channels and classes follow the data."""
    try:
        knobs = json.loads(str(cfg["supernet-config"]) or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"supernet-config is not JSON: {cfg['supernet-config']!r}") from err
    info = dataset_info(str(cfg["dataset"]))
    knobs.setdefault("in_channels", info.channels)
    knobs.setdefault("num_classes", info.num_classes)
    return get_supernet(str(cfg["supernet"]), **knobs)


def search_config_from_run_config(cfg: dict[str, Any]) -> SearchConfig:
    bandwidth = float(cfg["bandwidth-mbps"]) * 1e6
    return SearchConfig(
        policy_lr=float(cfg["policy-lr"]),
        policy_optimizer=str(cfg["policy-optimizer"]),
        lambda_time=float(cfg["lambda-time"]),
        bandwidth_down_bps=bandwidth,
        bandwidth_up_bps=bandwidth,
        weighting=str(cfg["weighting"]),  # type: ignore[arg-type]
        memory_aware=bool(cfg.get("memory-aware", False)),
        seed=int(cfg["seed"]),
    )


def message_api_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments only ``PerFedRLNAS`` (Message API) takes.

    ``simulate-profiles`` (+ ``profile-seed``, ``speed-factor-min``/``-max``,
    ``bandwidth-choices-mbps``, ``memory-budget-choices-mb``): seeded device
    profiles; ``num-new-clients`` and ``new-client-rounds``: held-out clients
    searched by evaluation only after training. Missing keys: off.
    """
    return {
        "profiles": ProfileDistribution.from_run_config(cfg),
        "num_new_clients": int(cfg.get("num-new-clients", 0)),
        "new_client_rounds": int(cfg.get("new-client-rounds", 0)),
    }


def output_dir(path: str) -> str | None:
    """Absolute output directory of a ``results-dir`` / ``checkpoint-dir`` setting.

    ``""`` means none. ``~`` is expanded. A relative path is resolved against
    ``$FLWR_PFEDRLNAS_HOME`` if set, else the working directory of the
    ServerApp process, which is the directory its SuperLink was started from
    (for the managed local SuperLink of ``flwr run``: wherever the first
    ``flwr run`` that started it was invoked), else the home directory. For a
    predictable place pass an absolute path, e.g.
    ``--run-config "results-dir='$PWD/runs/pfedrlnas'"``. The resolved path is
    logged.
    """
    if not path:
        return None
    p = Path(os.path.expanduser(path))
    if not p.is_absolute():
        base = os.environ.get("FLWR_PFEDRLNAS_HOME")
        if not base:
            try:
                base = os.getcwd()  # the real working directory; $PWD can be stale
            except OSError:  # the directory was deleted
                base = str(Path.home())
        p = Path(os.path.expanduser(base)) / p
    resolved = str(p.resolve())
    log(INFO, "Output directory %r -> %s", path, resolved)
    return resolved


@lru_cache(maxsize=4)
def _client_data(source, data_dir, partition_id, num_partitions, alpha, seed, test_fraction):
    return load_client_data(
        source,
        partition_id=partition_id,
        num_partitions=num_partitions,
        alpha=alpha,
        seed=seed,
        test_fraction=test_fraction,
        data_dir=data_dir or None,
    )


def partition_of(context: Context) -> tuple[int, int]:
    """(partition-id, num-partitions) of this node (simulation or deployment)."""
    node = context.node_config
    if "partition-id" not in node:
        raise ValueError(
            "node config lacks 'partition-id'; start the SuperNode with "
            '--node-config "partition-id=<i> num-partitions=<K>"'
        )
    num = int(node.get("num-partitions", context.run_config["num-clients"]))
    return int(node["partition-id"]), num


def load_data(context: Context, batch_size: int):
    """This node's train and test loaders (cached per process)."""
    cfg = context.run_config
    partition_id, num_partitions = partition_of(context)
    data = _client_data(
        str(cfg["dataset"]),
        str(cfg["data-dir"]),
        partition_id,
        num_partitions,
        float(cfg["dirichlet-alpha"]),
        int(cfg["seed"]),
        float(cfg["test-fraction"]),
    )
    return make_loaders(data, batch_size=batch_size, seed=int(cfg["seed"]) + partition_id)


def strategy_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments shared by ``PerFedRLNAS`` and ``PerFedRLNASLegacy``."""
    results_dir = output_dir(str(cfg["results-dir"]))
    checkpoint_dir = output_dir(str(cfg["checkpoint-dir"])) or (
        results_dir and f"{results_dir}/checkpoint"
    )
    return {
        "clients_per_round": int(cfg["clients-per-round"]),
        "evaluate_every": int(cfg["evaluate-every"]),
        "bn_recalibration_batches": int(cfg["bn-recalibration-batches"]),
        "finetune_epochs": int(cfg.get("finetune-epochs", 0)),
        "search_config": search_config_from_run_config(cfg),
        "local_epochs": int(cfg["local-epochs"]),
        "lr": float(cfg["lr"]),
        "batch_size": int(cfg["batch-size"]),
        "results_dir": results_dir,
        "checkpoint_dir": checkpoint_dir,
        "resume": bool(cfg["resume"]),
        "run_config": dict(cfg),
    }
