"""End-to-end deployment run: a real SuperLink, two SuperNodes and ``flwr run``.

Everything runs on 127.0.0.1 on free ports, with its state in a temporary
directory and a temporary ``FLWR_HOME``; every process the test starts (and
every process those start) is stopped by pid in a ``finally`` block.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from flwr_processes import APP, BIN, SUPERNET_CONFIG, Processes, flwr_env, free_port, run_status

pytestmark = pytest.mark.slow

NUM_NODES = 2
# The nodes hold partitions 0 and 1 of a 10-way split of the embedded data: a
# 2-way split gives each ~5,700 training images, minutes per round on 2 cores.
NUM_PARTITIONS = 10
ROUNDS = 2


# ---------------------------------------------------------------------- processes
def _wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"SuperLink exited ({proc.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"SuperLink not healthy after {timeout} s:\n{log.read_text()}")


# ---------------------------------------------------------------------- test
def test_flwr_run_deployment(tmp_path):
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    results = tmp_path / "results"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = flwr_env(flwr_home)
    link_port = free_port()
    (flwr_home / "config.toml").write_text(
        "[superlink]\n"
        'default = "local-deployment"\n\n'
        "[superlink.local-deployment]\n"
        f'address = "127.0.0.1:{link_port}"\n'
        "insecure = true\n"
    )

    procs = Processes(env, tmp_path, logs)
    try:
        link = procs.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(link_port),
                "--database",
                str(tmp_path / "state.db"),
                "--disable-runtime-dependency-installation",
            ],
        )
        _wait_healthy(link_port, link, logs / "superlink.log")
        for i in range(NUM_NODES):
            procs.start(
                f"supernode-{i}",
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    f"partition-id={i} num-partitions={NUM_PARTITIONS}",
                ],
            )
        run_config = (
            f"num-server-rounds={ROUNDS} num-clients={NUM_NODES} "
            f"clients-per-round={NUM_NODES} results-dir='{results}'"
        )
        # --stream blocks until the run has finished and all its logs are out.
        run = procs.flwr_run(
            str(APP),
            "local-deployment",
            "--stream",
            "--run-config",
            run_config,
            "--run-config",
            f"supernet-config='{SUPERNET_CONFIG}'",
        )
        assert run.returncode == 0, procs.tails()
        # `flwr run --stream` exits 0 even when the run fails: ask the SuperLink.
        runs = run_status(env, "local-deployment")
        assert [r["status"] for r in runs] == ["finished:completed"], (procs.tails(), runs)

        rounds_csv = results / "rounds.csv"
        assert rounds_csv.exists(), procs.tails()
        rounds = pd.read_csv(rounds_csv)
        assert list(rounds["round"]) == list(range(1, ROUNDS + 1)), procs.tails()
        assert (rounds["num-accepted"] == NUM_NODES).all()
        assert (rounds["num-evaluated"] == NUM_NODES).all()
        clients = pd.read_csv(results / "clients.csv")
        assert sorted(clients["client-id"].astype(str)) == [str(i) for i in range(NUM_NODES)]
        assert (results / "checkpoint" / "state.json").exists()
        assert f"[round {ROUNDS}/{ROUNDS}]" in (logs / "flwr-run.log").read_text()
    finally:
        leftovers = procs.stop()
    assert not leftovers, f"processes left running: {leftovers}"
