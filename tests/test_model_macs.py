"""scripts/model_macs.py: per-image MACs of each client's deployed model, read from run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from script_loader import load_script

from flwr_pfedrlnas.baselines.models import build_model
from flwr_pfedrlnas.core.cost import count_macs, subnet_macs
from flwr_pfedrlnas.supernets import get_supernet

KNOBS = {"width_mult": 0.35, "num_stages": 2, "depth_choices": [1, 2], "in_channels": 1}


def _module():
    return load_script("model_macs")


def _write(run: Path, config: dict, clients: list[dict] | None) -> None:
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    if clients is not None:
        pd.DataFrame(clients).to_csv(run / "clients.csv", index=False)


def test_searched_runs_count_each_clients_last_architecture(tmp_path):
    family = get_supernet("mobilenetv3", **KNOBS)
    small, large = family.search_space.smallest(), family.search_space.largest()
    rows = [  # round 5 is superseded by round 10; client 1 moves from large to small
        {"round": 5, "client-id": 1, "arch": json.dumps(large), "accuracy": 0.5},
        {"round": 10, "client-id": 0, "arch": json.dumps(large), "accuracy": 0.6},
        {"round": 10, "client-id": 1, "arch": json.dumps(small), "accuracy": 0.7},
    ]
    _write(tmp_path / "keep-s0", {"supernet": "mobilenetv3", "supernet-config": KNOBS}, rows)
    table = _module().collect(tmp_path)
    got = dict(zip(table["client-id"], table["macs"]))
    assert got == {"0": subnet_macs(family, large), "1": subnet_macs(family, small)}
    assert got["0"] > got["1"] > 0


def test_a_fixed_network_is_counted_at_the_padded_input_size(tmp_path):
    knobs = {"width_mult": 0.25}
    config = {
        "model": "mobilenetv3-large",
        "model-config": knobs,
        "run-config": {"dataset": "embedded"},
    }
    clients = [{"round": 100, "client-id": c, "accuracy": 0.8} for c in (0, 1, 2)]
    _write(tmp_path / "fedrep-s0", config, clients)
    table = _module().collect(tmp_path)
    model = build_model("mobilenetv3-large", 10, 1, knobs)
    padded = count_macs(model, torch.zeros(1, 1, 32, 32))  # Fashion-MNIST padded to 32x32
    assert list(table["client-id"]) == ["0", "1", "2"]
    assert set(table["macs"]) == {padded}
    assert padded != count_macs(model, torch.zeros(1, 1, 28, 28))


def test_main_writes_the_summary_and_refuses_an_empty_folder(tmp_path):
    family = get_supernet("mobilenetv3", **KNOBS)
    small, large = family.search_space.smallest(), family.search_space.largest()
    rows = [
        {"round": 1, "client-id": c, "arch": json.dumps(a)} for c, a in ((0, small), (1, large))
    ]
    _write(tmp_path / "paper-s0", {"supernet": "mobilenetv3", "supernet-config": KNOBS}, rows)
    module = _module()
    module.main([str(tmp_path)])
    lo, hi = subnet_macs(family, small) / 1e6, subnet_macs(family, large) / 1e6
    line = f"| paper-s0 | mobilenetv3 | 2 | {lo:.2f} | {(lo + hi) / 2:.2f} | {hi:.2f} |"
    assert line in (tmp_path / "macs.md").read_text().splitlines()
    assert len(pd.read_csv(tmp_path / "macs.csv")) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no run"):
        module.main([str(empty)])
