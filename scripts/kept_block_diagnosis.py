"""One client's deployed subnet, classifier shared or personal, BatchNorm as trained or not.

    python scripts/kept_block_diagnosis.py RUN_DIR CLIENT_ID [--checkpoint DIR]

For a share-or-keep run of ``apps/pfedrlnas`` it loads the server's checkpoint
(supernet and policies; ``RUN_DIR/checkpoint`` unless given) and the client's
kept copies (``<checkpoint>/clients/<client-id>.pfedrlnas-kept.pt``), rebuilds the
client's data split from the run's ``config.json`` and tests the client's argmax
subnet four ways: with ``keep.classifier`` shared and personal, each without
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

from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.core.search import PerFedRLNASSearch
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders, make_val_loader
from flwr_pfedrlnas.flower.personal import SHARE_OR_KEEP, assemble
from flwr_pfedrlnas.training import evaluate, recalibrate_as_configured


def diagnose(run: Path, client_id: str, checkpoint: Path) -> list[str]:
    cfg = json.loads((run / "config.json").read_text())["run-config"]
    search, _ = PerFedRLNASSearch.from_checkpoint(str(checkpoint))
    family = search.family
    data = load_client_data(
        str(cfg["dataset"]),
        int(client_id),
        int(cfg["num-clients"]),
        float(cfg["dirichlet-alpha"]),
        int(cfg["seed"]),
        test_fraction=float(cfg["test-fraction"]),
        val_fraction=float(cfg["val-fraction"]),
    )
    train, test = make_loaders(data, int(cfg["batch-size"]), seed=0)
    val = make_val_loader(data, int(cfg["batch-size"]))
    store = torch.load(checkpoint / "clients" / f"{client_id}.{SHARE_OR_KEEP}.pt")
    arch = search.policies[client_id].argmax()
    lines = [
        f"Client {client_id}: {data.num_train} training images, labels "
        f"{np.bincount(data.train_y, minlength=data.num_classes).tolist()}; argmax subnet "
        f"keeps the classifier {arch['keep.classifier']} (round {search.completed_rounds}).",
        "",
        "| classifier | BatchNorm | test accuracy | validation accuracy | predicted (test) |",
        "|---|---|---|---|---|",
    ]
    for keep in ("shared", "personal"):
        chosen = {**arch, "keep.classifier": keep}
        received = {
            k: torch.from_numpy(np.array(v))
            for k, v in extract_subnet(family, search.supernet, chosen).items()
        }
        state, _ = assemble(family, chosen, received, dict(store))
        model = family.build_subnet(chosen)
        model.load_state_dict(state)
        for batches, how in ((0, "as trained"), (-1, "re-estimated")):
            tested = copy.deepcopy(model)
            recalibrate_as_configured(tested, train, batches, "cpu")
            acc_test = evaluate(tested, test, "cpu")[1]
            acc_val = evaluate(tested, val, "cpu")[1]
            with torch.no_grad():
                preds = tested.eval()(torch.from_numpy(data.test_x)).argmax(1).numpy()
            counts = np.bincount(preds, minlength=data.num_classes).tolist()
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
