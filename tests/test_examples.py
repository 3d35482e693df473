"""The quickstart examples through ``flwr run`` (simulation), and a run that fails loudly.

Each run gets its own ``FLWR_HOME`` and free ports, so its managed SuperLink is
ours alone; it is found by that ``FLWR_HOME`` in the processes' environment and
stopped by pid (see ``flwr_processes.py``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from flwr_processes import REPO, flwr_run_to_end

from flwr_pfedrlnas.deployed import read_all_deployed

pytestmark = pytest.mark.slow

NUM_SUPERNODES = 3
ROUNDS = 2


def _flwr_run(tmp_path: Path, app: Path, run_config: str) -> tuple[list[dict], str]:
    """``flwr run app`` to the end on a private managed SuperLink; (runs, log)."""
    _, runs, log = flwr_run_to_end(tmp_path, app, [run_config], NUM_SUPERNODES)
    return runs, log


def _config(results: Path) -> str:
    return (
        f"num-server-rounds={ROUNDS} clients-per-round=2 min-nodes={NUM_SUPERNODES} "
        f"results-dir='{results}'"
    )


def _check_results(results: Path, log: str) -> None:
    rounds = pd.read_csv(results / "rounds.csv")
    assert list(rounds["round"]) == list(range(1, ROUNDS + 1)), log[-4000:]
    assert (rounds["num-accepted"] == 2).all() and (rounds["num-evaluated"] == NUM_SUPERNODES).all()
    clients = pd.read_csv(results / "clients.csv")
    expected = [str(i) for i in range(NUM_SUPERNODES)]
    assert sorted(clients["client-id"].astype(str)) == expected
    assert (results / "config.json").exists()
    deployed = read_all_deployed(results / "deployed")
    assert sorted(deployed) == expected
    for cid, model in deployed.items():
        row = clients[clients["client-id"].astype(str) == cid].iloc[0]
        assert json.loads(row["arch"]) == model.arch
        net = model.build()
        out = net(torch.zeros(2, 1, 32, 32))
        assert tuple(out.shape) == (2, 10)


def test_quickstart(tmp_path):
    results = tmp_path / "results"
    runs, log = _flwr_run(tmp_path, REPO / "examples" / "quickstart", _config(results))
    assert [r["status"] for r in runs] == ["finished:completed"], (log[-6000:], runs)
    assert f"[round {ROUNDS}/{ROUNDS}]" in log, log[-4000:]
    assert "deployed-accuracy-mean" in log, log[-4000:]  # evaluate_fn got deployed models
    _check_results(results, log)
    meta = json.loads((results / "deployed" / "client-0.json").read_text())
    assert meta["batchnorm-statistics"] == "client" and meta["round"] == ROUNDS


def test_quickstart_legacy(tmp_path):
    results = tmp_path / "results"
    runs, log = _flwr_run(tmp_path, REPO / "examples" / "quickstart-legacy", _config(results))
    assert [r["status"] for r in runs] == ["finished:completed"], (log[-6000:], runs)
    _check_results(results, log)
    meta = json.loads((results / "deployed" / "client-0.json").read_text())
    assert meta["batchnorm-statistics"] == "supernet" and meta["round"] == ROUNDS


def test_every_client_failing_fails_the_run(tmp_path):
    """The quickstart with a loader of other column names: every train reply is an error."""
    app = tmp_path / "app"
    shutil.copytree(REPO / "examples" / "quickstart", app, ignore=shutil.ignore_patterns("runs"))
    client = app / "quickstart_app" / "client_app.py"
    source = client.read_text()
    assert "register_handlers(app, node_data)" in source
    client.write_text(
        source.replace(
            "register_handlers(app, node_data)",
            'register_handlers(app, node_data, image_key="pixels")',
        )
    )
    results = tmp_path / "results"
    runs, log = _flwr_run(tmp_path, app, _config(results))
    assert [r["status"] for r in runs] == ["finished:failed"], (log[-6000:], runs)
    assert "round 1: 0 of 2 train replies usable, 1 needed" in log, log[-6000:]
    assert "not the image key 'pixels'" in log, log[-6000:]
    rounds = pd.read_csv(results / "rounds.csv")
    assert list(rounds["num-failed"]) == [2]
