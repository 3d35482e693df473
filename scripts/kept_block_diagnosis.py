"""One client's deployed subnet, classifier shared or personal, BatchNorm as trained or not.

    python scripts/kept_block_diagnosis.py RUN_DIR CLIENT_ID [--checkpoint DIR]

For a share-or-keep run of ``apps/pfedrlnas`` it loads the server's checkpoint
(supernet and policies; ``RUN_DIR/checkpoint`` unless given) and the client's
kept copies (``<checkpoint>/clients/<client-id>.pfedrlnas-kept.npz``), loads the
client's data as the app did (``runconfig.load_data`` on the run's
``config.json``) and tests the client's argmax subnet four ways: with
``keep.classifier`` shared and personal, each without
BatchNorm re-estimation (the statistics the weights carry) and with it on the
client's whole training split (the tables' protocol). It prints a markdown
table: accuracy on the test and the validation split, and the predicted labels.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, RecordDict

from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.core.search import PerFedRLNASSearch
from flwr_pfedrlnas.flower.personal import (
    SHARE_OR_KEEP,
    assemble,
    load_personal,
    personal_file,
)
from flwr_pfedrlnas.flower.runconfig import load_data
from flwr_pfedrlnas.training import evaluate, recalibrate_as_configured, split_batch


def _labels(model: torch.nn.Module | None, loader) -> np.ndarray:
    """The loader's labels, or ``model``'s predicted labels on it."""
    out = []
    with torch.no_grad():
        for images, labels in (split_batch(b) for b in loader):
            out.append(labels if model is None else model.eval()(images).argmax(1))
    return torch.cat(out).numpy()


def client_data(cfg: dict, client_id: str):
    """The node's loaders exactly as the app loaded them (same split, same loader seeds)."""
    node = {"partition-id": int(client_id), "num-partitions": int(cfg["num-clients"])}
    context = Context(run_id=0, node_id=0, node_config=node, state=RecordDict(), run_config=cfg)
    return load_data(context, int(cfg["batch-size"]))


def kept_copy(checkpoint: Path, client_id: str) -> dict[str, torch.Tensor] | None:
    """The client's kept blocks mirrored beside the checkpoint, or ``None``."""
    path = personal_file(str(checkpoint / "clients"), client_id, SHARE_OR_KEEP)
    return load_personal(Context(0, 0, {}, RecordDict(), {}), SHARE_OR_KEEP, path)


def subnet_model(family, supernet, arch, store) -> torch.nn.Module:
    """The subnet of ``arch`` cut from ``supernet``, its kept blocks from ``store``."""
    received = {
        k: torch.from_numpy(np.array(v)) for k, v in extract_subnet(family, supernet, arch).items()
    }
    state, _ = assemble(family, arch, received, dict(store or {}))
    model = family.build_subnet(arch)
    model.load_state_dict(state)
    return model


def diagnose(run: Path, client_id: str, checkpoint: Path) -> list[str]:
    cfg = json.loads((run / "config.json").read_text())["run-config"]
    search, _ = PerFedRLNASSearch.from_checkpoint(str(checkpoint))
    family = search.family
    train, test, val = client_data(cfg, client_id)
    classes = family.config["num_classes"]
    store = kept_copy(checkpoint, client_id)
    if store is None:
        raise SystemExit(f"no kept copy of client {client_id!r} beside {checkpoint}")
    arch = search.policies[client_id].argmax()
    train_labels = np.bincount(_labels(None, train), minlength=classes).tolist()
    lines = [
        f"Client {client_id}: {sum(train_labels)} training images, labels {train_labels}; "
        f"argmax subnet keeps the classifier {arch['keep.classifier']} "
        f"(round {search.completed_rounds}).",
        "",
        "| classifier | BatchNorm | test accuracy | validation accuracy | predicted (test) |",
        "|---|---|---|---|---|",
    ]
    for keep in ("shared", "personal"):
        chosen = {**arch, "keep.classifier": keep}
        model = subnet_model(family, search.supernet, chosen, store)
        for batches, how in ((0, "as trained"), (-1, "re-estimated")):
            tested = copy.deepcopy(model)
            recalibrate_as_configured(tested, train, batches, "cpu")
            acc_test = evaluate(tested, test, "cpu")[1]
            acc_val = evaluate(tested, val, "cpu")[1]
            counts = np.bincount(_labels(tested, test), minlength=classes).tolist()
            lines.append(f"| {keep} | {how} | {acc_test:.3f} | {acc_val:.3f} | {counts} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder (config.json, checkpoint/)")
    parser.add_argument("client_id")
    parser.add_argument("--checkpoint", type=Path, default=None)
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint or args.run / "checkpoint"
    print("\n".join(diagnose(args.run, args.client_id, checkpoint)))


if __name__ == "__main__":
    main()
