"""The quickstart examples through ``flwr run`` (simulation), and a run that fails loudly.

Each run gets its own ``FLWR_HOME`` and free ports, so its managed SuperLink is
ours alone; it is found by that ``FLWR_HOME`` in the processes' environment and
stopped by pid (see ``flwr_processes.py``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from flwr_processes import (
    BIN,
    REPO,
    RUN_TIMEOUT,
    cmdline,
    flwr_env,
    free_port,
    run_status,
    start_logged,
    stop_processes,
)

from flwr_pfedrlnas.deployed import read_all_deployed

pytestmark = pytest.mark.slow

NUM_SUPERNODES = 3
ROUNDS = 2


def _flwr_run(tmp_path: Path, app: Path, run_config: str) -> tuple[list[dict], str]:
    """``flwr run app`` to the end on a private managed SuperLink; (runs, log)."""
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    )
    env = flwr_env(flwr_home)
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(free_port())
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(free_port())
    log_path = tmp_path / "flwr-run.log"
    marker = ("FLWR_HOME", str(flwr_home))
    procs: list[subprocess.Popen] = []
    try:
        run = start_logged(
            [
                str(BIN / "flwr"),
                "run",
                str(app),
                "--stream",
                "--federation-config",
                f"num-supernodes={NUM_SUPERNODES} client-resources-num-cpus=1",
                "--run-config",
                run_config,
            ],
            env,
            tmp_path,
            log_path,
        )
        procs.append(run)
        try:
            run.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"flwr run did not finish in {RUN_TIMEOUT} s:\n{_tail(log_path)}")
        # `flwr run --stream` exits 0 whether the run failed or not: ask the SuperLink.
        runs = run_status(env)
    finally:
        leftovers = stop_processes(procs, marker=marker)
    assert not leftovers, [cmdline(p) for p in leftovers]
    return runs, log_path.read_text(errors="replace")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-6000:]


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
