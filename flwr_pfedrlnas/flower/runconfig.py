"""Run config of the Flower apps -> family, search settings, output paths, client data."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import lru_cache
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common import log

from flwr_pfedrlnas.core.profiles import ProfileDistribution
from flwr_pfedrlnas.core.search import SearchConfig
from flwr_pfedrlnas.data.datasets import (
    dataset_info,
    load_client_data,
    make_loaders,
    make_val_loader,
)
from flwr_pfedrlnas.flower.failures import validate_min_usable_fraction
from flwr_pfedrlnas.protocol.rounds import DEFAULT_MACS_PER_SECOND, bandwidth_bps_of
from flwr_pfedrlnas.protocol.training_options import TrainingOptions
from flwr_pfedrlnas.supernets import SupernetFamily, get_supernet
from flwr_pfedrlnas.supernets.keep import KEEP_KNOB, parse_keep


def family_from_run_config(cfg: dict[str, Any], share_or_keep: bool = False) -> SupernetFamily:
    """The supernet family of the run; input channels and classes follow the data.

    With ``share_or_keep`` the run config's ``keep-blocks`` (block names, comma
    separated; ``""`` for none, the paper) add the share-or-keep dimensions.
    """
    try:
        knobs = json.loads(str(cfg["supernet-config"]) or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"supernet-config is not JSON: {cfg['supernet-config']!r}") from err
    info = dataset_info(str(cfg["dataset"]))
    knobs.setdefault("in_channels", info.channels)
    knobs.setdefault("num_classes", info.num_classes)
    if share_or_keep and str(cfg.get("keep-blocks", "")).strip():
        try:
            knobs[KEEP_KNOB] = parse_keep(str(cfg["keep-blocks"]))
            return get_supernet(str(cfg["supernet"]), **knobs)
        except ValueError as err:
            raise ValueError(f"keep-blocks is {cfg['keep-blocks']!r}: {err}") from err
    return get_supernet(str(cfg["supernet"]), **knobs)


def search_config_from_run_config(cfg: dict[str, Any]) -> SearchConfig:
    """The search settings of a run config; a missing key keeps the paper's value.

    ``search-preset`` ``""`` takes every key as given; ``"paper"`` or ``"ours"``
    (``SearchConfig.recommended()``) sets the reward, policy and round-time keys
    to the preset's values, whatever the run config says for them; ``commit-round``
    is a schedule, not a preset key, and is kept.
    """
    bandwidth = bandwidth_bps_of(cfg["bandwidth-mbps"])
    paper = SearchConfig()
    config = SearchConfig(
        policy_lr=float(cfg["policy-lr"]),
        policy_optimizer=str(cfg["policy-optimizer"]),
        lambda_time=float(cfg["lambda-time"]),
        bandwidth_down_bps=bandwidth,
        bandwidth_up_bps=bandwidth,
        weighting=str(cfg["weighting"]),  # type: ignore[arg-type]
        memory_aware=bool(cfg.get("memory-aware", False)),
        seed=int(cfg["seed"]),
        reward_baseline=str(cfg.get("reward-baseline", paper.reward_baseline)),
        baseline_decay=float(cfg.get("baseline-decay", paper.baseline_decay)),
        reward_standardise=str(cfg.get("reward-standardise", paper.reward_standardise)),
        entropy_bonus=float(cfg.get("entropy-bonus", paper.entropy_bonus)),
        warmup_updates=int(cfg.get("warmup-updates", paper.warmup_updates)),
        round_time_model=str(cfg.get("round-time-model", paper.round_time_model)),
        reward_accuracy=str(cfg.get("reward-accuracy", paper.reward_accuracy)),
        seconds_per_mac=float(cfg.get("seconds-per-mac", paper.seconds_per_mac)),
        commit_round=int(cfg.get("commit-round", paper.commit_round)),
    )
    preset = str(cfg.get("search-preset", ""))
    if not preset:
        return config
    kept = {
        "bandwidth_down_bps": bandwidth,
        "bandwidth_up_bps": bandwidth,
        "weighting": config.weighting,
        "memory_aware": config.memory_aware,
        "seed": config.seed,
        "commit_round": config.commit_round,
    }
    try:
        chosen = SearchConfig.preset(preset, **kept)
    except ValueError as err:
        raise ValueError(f"search-preset is {preset!r}: {err}") from err
    log(INFO, "search-preset %r: %s", preset, chosen)
    return chosen


def message_api_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments only ``PerFedRLNAS`` (Message API) takes.

    ``simulate-profiles`` (+ ``profile-seed``, ``speed-factor-min``/``-max``,
    ``bandwidth-choices-mbps``, ``memory-budget-choices-mb``): seeded device
    profiles; ``num-new-clients`` and ``new-client-rounds``: held-out clients
    searched by evaluation only after training. Missing keys: off.
    ``diagnostic-subnets`` (default 2) and ``diagnose-every`` (default 0: the
    last round only): the search diagnostics of every run.
    """
    return {
        "profiles": ProfileDistribution.from_run_config(cfg),
        "num_new_clients": int(cfg.get("num-new-clients", 0)),
        "new_client_rounds": int(cfg.get("new-client-rounds", 0)),
        "diagnostic_subnets": int(cfg.get("diagnostic-subnets", 2)),
        "diagnose_every": int(cfg.get("diagnose-every", 0)),
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
def _client_data(
    source, data_dir, partition_id, num_partitions, alpha, seed, test_fraction, val_fraction=0.0
):
    return load_client_data(
        source,
        partition_id=partition_id,
        num_partitions=num_partitions,
        alpha=alpha,
        seed=seed,
        test_fraction=test_fraction,
        data_dir=data_dir or None,
        val_fraction=val_fraction,
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
    """This node's train and test loaders, and its validation loader when ``val-fraction`` > 0.

    ``val-fraction`` (default 0) takes that share of each client's partition
    out of its training part (see :func:`~flwr_pfedrlnas.data.datasets.load_client_data`);
    every method of a comparison should use the same value, so that all train
    on the same examples. Cached per process.
    """
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
        float(cfg.get("val-fraction", 0.0)),
    )
    loaders = make_loaders(data, batch_size=batch_size, seed=int(cfg["seed"]) + partition_id)
    val = make_val_loader(data, batch_size)
    return loaders if val is None else (*loaders, val)


def round_settings_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The shared round settings (:class:`~flwr_pfedrlnas.protocol.settings.RoundSettings`).

    The keyword arguments every method and both strategies take, from a run
    config: ``checkpoint-dir`` ``""`` (or absent) is ``<results-dir>/checkpoint``.
    """
    results_dir = output_dir(str(cfg["results-dir"]))
    checkpoint_dir = output_dir(str(cfg.get("checkpoint-dir", ""))) or (
        results_dir and f"{results_dir}/checkpoint"
    )
    return {
        "clients_per_round": int(cfg["clients-per-round"]),
        "local_epochs": int(cfg["local-epochs"]),
        "lr": float(cfg["lr"]),
        "batch_size": int(cfg["batch-size"]),
        "evaluate_every": int(cfg["evaluate-every"]),
        "bn_recalibration_batches": int(cfg["bn-recalibration-batches"]),
        "results_dir": results_dir,
        "checkpoint_dir": checkpoint_dir,
        "resume": bool(cfg.get("resume", False)),
        "run_config": dict(cfg),
        "device_macs_per_second": float(cfg.get("device-macs-per-second", DEFAULT_MACS_PER_SECOND)),
        "training": TrainingOptions.from_run_config(cfg),
    }


def strategy_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments shared by ``PerFedRLNAS`` and ``PerFedRLNASLegacy``."""
    return {
        **round_settings_kwargs(cfg),
        "finetune_epochs": int(cfg.get("finetune-epochs", 0)),
        "search_config": search_config_from_run_config(cfg),
        # Absent (older apps): 0.0, a round fails only when no reply was usable.
        "min_usable_fraction": validate_min_usable_fraction(
            cfg.get("min-usable-fraction", 0.0), "min-usable-fraction"
        ),
    }
