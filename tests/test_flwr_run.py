"""``flwr run`` of the pfedrlnas app on the managed local SuperLink (simulation).

``flwr run`` starts a detached ``flower-superlink`` (simulation runtime) and
leaves it running; it writes no pid file. The test gives it free ports and a
temporary ``FLWR_HOME``, finds it (and everything it started) by that
``FLWR_HOME`` in the processes' environment, and stops those by pid.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from flwr_processes import (
    APP,
    SUPERNET_CONFIG,
    Processes,
    cmdline,
    flwr_env,
    free_port,
    pids_with_env,
    run_status,
)

pytestmark = pytest.mark.slow

NUM_SUPERNODES = 4
ROUNDS = 2


# ---------------------------------------------------------------------- test
def test_flwr_run_simulation(tmp_path):
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    )
    results = tmp_path / "results"
    env = flwr_env(flwr_home)
    # Our own managed SuperLink: not one another run (or user) left on the defaults.
    link_port = free_port()
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(link_port)
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(free_port())
    log_path = tmp_path / "flwr-run.log"
    marker = ("FLWR_HOME", str(flwr_home))
    procs = Processes(env, tmp_path, tmp_path)
    try:
        run = procs.flwr_run(
            str(APP),
            "--stream",
            "--federation-config",
            f"num-supernodes={NUM_SUPERNODES} client-resources-num-cpus=1",
            "--run-config",
            f"num-server-rounds={ROUNDS} num-clients={NUM_SUPERNODES} "
            f"clients-per-round=2 results-dir='{results}'",
            "--run-config",
            f"supernet-config='{SUPERNET_CONFIG}'",
            chars=6000,
        )
        assert run.returncode == 0, _tail(log_path)
        # `flwr run --stream` exits 0 even when the run fails: ask the SuperLink.
        runs = run_status(env)
        assert [r["status"] for r in runs] == ["finished:completed"], (_tail(log_path), runs)
        text = log_path.read_text(errors="replace")
        assert f"127.0.0.1:{link_port}" in text, text[-4000:]
        assert f"[round {ROUNDS}/{ROUNDS}]" in text, text[-4000:]

        # flwr run has returned and left its SuperLink running: ours, by FLWR_HOME.
        links = [p for p in pids_with_env(*marker) if "flower-superlink" in cmdline(p)]
        assert len(links) == 1, [cmdline(p) for p in pids_with_env(*marker)]
        assert f"--port {link_port}" in cmdline(links[0])

        rounds = pd.read_csv(results / "rounds.csv")
        assert list(rounds["round"]) == list(range(1, ROUNDS + 1))
        assert (rounds["num-accepted"] == 2).all()
        assert (rounds["num-evaluated"] == NUM_SUPERNODES).all()
        clients = pd.read_csv(results / "clients.csv")
        expected = [str(i) for i in range(NUM_SUPERNODES)]
        assert sorted(clients["client-id"].astype(str)) == expected
        for name in ("config.json", "accuracy.png", "checkpoint/state.json"):
            assert (results / name).exists(), name
    finally:
        leftovers = procs.stop()
    assert not leftovers, [cmdline(p) for p in leftovers]
    assert not pids_with_env(*marker)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-6000:]
