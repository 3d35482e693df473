"""Baselines ServerApp: one personalised-FL baseline, chosen by the run config's ``method``."""

from __future__ import annotations

import json

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flwr_pfedrlnas.baselines import make_baseline
from flwr_pfedrlnas.baselines.models import DEFAULT_KNOBS
from flwr_pfedrlnas.data.datasets import dataset_info
from flwr_pfedrlnas.flower.runconfig import output_dir

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    info = dataset_info(str(cfg["dataset"]))
    results_dir = output_dir(str(cfg["results-dir"]))
    checkpoint_dir = output_dir(str(cfg["checkpoint-dir"])) or (
        results_dir and f"{results_dir}/checkpoint"
    )
    client_state_dir = output_dir(str(cfg["client-state-dir"])) or (
        checkpoint_dir and f"{checkpoint_dir}/clients"
    )
    method = str(cfg["method"])
    # "auto": MobileNetV3-Large, except FedTP, which needs the ViT's attention.
    model = str(cfg["model"])
    if model == "auto":
        model = "vit" if method == "fedtp" else "mobilenetv3-large"
    model_config = str(cfg["model-config"]) or json.dumps(DEFAULT_KNOBS[model])
    strategy = make_baseline(
        method,
        model=model,
        model_config=model_config,
        num_classes=info.num_classes,
        in_channels=info.channels,
        clients_per_round=int(cfg["clients-per-round"]),
        min_available_nodes=int(cfg["num-clients"]),
        local_epochs=int(cfg["local-epochs"]),
        lr=float(cfg["lr"]),
        batch_size=int(cfg["batch-size"]),
        head_epochs=int(cfg["head-epochs"]),
        finetune_epochs=int(cfg["finetune-epochs"]),
        evaluate_every=int(cfg["evaluate-every"]),
        bn_recalibration_batches=int(cfg["bn-recalibration-batches"]),
        bandwidth_bps=float(cfg["bandwidth-mbps"]) * 1e6,
        seed=int(cfg["seed"]),
        results_dir=results_dir,
        checkpoint_dir=checkpoint_dir,
        resume=bool(cfg["resume"]),
        client_state_dir=client_state_dir,
        run_config=dict(cfg),
        num_clients=int(cfg["num-clients"]),
        hn_lr=float(cfg["hn-lr"]),
        hn_embed_dim=int(cfg["hn-embed-dim"]),
        hn_hidden=int(cfg["hn-hidden"]),
    )
    strategy.start(grid, num_rounds=int(cfg["num-server-rounds"]))
