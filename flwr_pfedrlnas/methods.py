"""Every method of the project by name: run config -> the strategy that runs it.

One table serves every app: ``make_method(context.run_config)`` gives the
method the run config's ``method`` names, built from the same protocol
settings for all (clients per round, local training, evaluation, BatchNorm
re-estimation, bandwidth, seed, outputs, resume).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from flwr_pfedrlnas.baselines.fedavg import FedAvgFixedArch
from flwr_pfedrlnas.baselines.models import DEFAULT_KNOBS
from flwr_pfedrlnas.baselines.nas import make_nas_baseline
from flwr_pfedrlnas.baselines.registry import BASELINES, make_baseline
from flwr_pfedrlnas.core.profiles import ProfileDistribution
from flwr_pfedrlnas.data.datasets import dataset_info
from flwr_pfedrlnas.flower.runconfig import (
    family_from_run_config,
    message_api_kwargs,
    output_dir,
    round_settings_kwargs,
    strategy_kwargs,
)
from flwr_pfedrlnas.protocol.rounds import bandwidth_bps_of

__all__ = ["METHODS", "make_method", "protocol_kwargs"]

RunConfig = Mapping[str, Any]


def protocol_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The round protocol's settings, the same for every method, from a run config."""
    bandwidth = bandwidth_bps_of(cfg["bandwidth-mbps"])
    return {
        **round_settings_kwargs(cfg),
        "min_available_nodes": int(cfg["num-clients"]),
        "bandwidth_down_bps": bandwidth,
        "bandwidth_up_bps": bandwidth,
        "seed": int(cfg["seed"]),
    }


def _rounds(value: Any) -> int | None:
    """-1 in the run config: the method's own default split of the rounds."""
    return None if int(value) < 0 else int(value)


def _pfedrlnas(cfg: RunConfig) -> Any:
    from flwr_pfedrlnas.flower.strategy import PerFedRLNAS

    return PerFedRLNAS(
        family_from_run_config(dict(cfg), share_or_keep=True),
        min_available_nodes=int(cfg["num-clients"]),
        **strategy_kwargs(dict(cfg)),
        **message_api_kwargs(dict(cfg)),
    )


def _fedavg_largest(cfg: RunConfig) -> Any:
    return FedAvgFixedArch(family_from_run_config(dict(cfg)), **protocol_kwargs(cfg))


def _personalised(method: str) -> Callable[[RunConfig], Any]:
    def build(cfg: RunConfig) -> Any:
        info = dataset_info(str(cfg["dataset"]))
        kwargs = protocol_kwargs(cfg)
        # "auto": MobileNetV3-Large, except FedTP, which needs the ViT's attention.
        model = str(cfg.get("model", "auto"))
        if model == "auto":
            model = "vit" if method == "fedtp" else "mobilenetv3-large"
        client_state_dir = output_dir(str(cfg.get("client-state-dir", ""))) or (
            kwargs["checkpoint_dir"] and f"{kwargs['checkpoint_dir']}/clients"
        )
        return make_baseline(
            method,
            model=model,
            model_config=str(cfg.get("model-config", "")) or json.dumps(DEFAULT_KNOBS[model]),
            num_classes=info.num_classes,
            in_channels=info.channels,
            head_epochs=int(cfg.get("head-epochs", 1)),
            finetune_epochs=int(cfg.get("finetune-epochs", 10)),
            client_state_dir=client_state_dir,
            num_clients=int(cfg["num-clients"]),
            hn_lr=float(cfg.get("hn-lr", 0.01)),
            hn_embed_dim=int(cfg.get("hn-embed-dim", 16)),
            hn_hidden=int(cfg.get("hn-hidden", 32)),
            **kwargs,
        )

    return build


# Each NAS baseline's own settings: keyword argument -> (run config key, conversion).
_NAS_KNOBS: dict[str, dict[str, tuple[str, Callable[[Any], Any]]]] = {
    "fednas": {
        "search_rounds": ("search-rounds", _rounds),
        "arch_lr": ("arch-lr", float),
        "arch_weight_decay": ("arch-weight-decay", float),
    },
    "fedrlnas": {
        "warmup_rounds": ("warmup-rounds", _rounds),
        "search_rounds": ("search-rounds", _rounds),
        "policy_lr": ("policy-lr", float),
        "policy_optimizer": ("policy-optimizer", str),
        "baseline_decay": ("baseline-decay", float),
    },
    "spider": {
        "proximal_lambda": ("spider-lambda", float),
        "edges_per_step": ("spider-edges-per-step", int),
        "val_batches": ("spider-val-batches", int),
        "warmup": ("spider-warmup", int),
    },
    "fedoras": {
        "num_tiers": ("num-tiers", int),
        "supernet_rounds": ("supernet-rounds", _rounds),
        "num_candidates": ("num-candidates", int),
        "candidate_batches": ("candidate-batches", int),
    },
}


def _nas_knobs(method: str, cfg: RunConfig) -> dict[str, Any]:
    knobs = {name: convert(cfg[key]) for name, (key, convert) in _NAS_KNOBS[method].items()}
    if method == "fedoras":
        knobs["profiles"] = ProfileDistribution.from_run_config(cfg)
    return knobs


def _nas(method: str) -> Callable[[RunConfig], Any]:
    def build(cfg: RunConfig) -> Any:
        family = family_from_run_config(dict(cfg))
        return make_nas_baseline(method, family, **protocol_kwargs(cfg), **_nas_knobs(method, cfg))

    return build


METHODS: dict[str, Callable[[RunConfig], Any]] = {
    "pfedrlnas": _pfedrlnas,
    "fedavg-largest": _fedavg_largest,
    **{name: _personalised(name) for name in BASELINES},
    **{name: _nas(name) for name in _NAS_KNOBS},
}


def make_method(cfg: RunConfig, allowed: tuple[str, ...] | None = None) -> Any:
    """The strategy of the run config's ``method``; ``ValueError`` naming an unknown one.

    Parameters
    ----------
    cfg : Mapping[str, Any]
        A Flower run config (``context.run_config``).
    allowed : tuple[str, ...] | None (default: None)
        The methods an app serves (its clients' handlers); all when ``None``.
    """
    method = str(cfg.get("method", "pfedrlnas"))
    names = tuple(METHODS) if allowed is None else allowed
    if method not in names:
        raise ValueError(f"method is {method!r}; choose one of {sorted(names)}")
    return METHODS[method](cfg)
