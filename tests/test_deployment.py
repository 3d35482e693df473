"""End-to-end deployment run: a real SuperLink, two SuperNodes and ``flwr run``.

Everything runs on 127.0.0.1 on free ports, with its state in a temporary
directory and a temporary ``FLWR_HOME``; every process the test starts (and
every process those start) is stopped by pid in a ``finally`` block.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "pfedrlnas"
BIN = Path(sys.executable).parent
NUM_NODES = 2
# The nodes hold partitions 0 and 1 of a 10-way split of the embedded data: a
# 2-way split gives each ~5,700 training images, minutes per round on 2 cores.
NUM_PARTITIONS = 10
ROUNDS = 2
# A small supernet keeps the run short on a CPU-only box.
SUPERNET_CONFIG = (
    '{"width_mult": 0.35, "num_stages": 2, "input_resolution": 32, '
    '"depth_choices": [1, 2], "expand_choices": [3, 4]}'
)
RUN_TIMEOUT = 240


# ---------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descendants(roots: list[int]) -> list[int]:
    """All live descendants of ``roots`` (Flower detaches some into new sessions)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (ppid := _ppid(int(entry))) is not None:
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _pids_with_env(key: str, value: str) -> list[int]:
    """Live processes whose environment has ``key=value`` (a per-test marker)."""
    needle = f"{key}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and _alive(int(entry)):
            found.append(int(entry))
    return found


def stop_processes(
    procs: list[subprocess.Popen], marker: tuple[str, str] | None = None, grace: float = 10.0
) -> list[int]:
    """Stop ``procs``, their process groups, their descendants and every process
    carrying the environment ``marker``; return the pids still alive after it.

    Flower detaches some children into new sessions (the SuperLink's SuperExec),
    and once a parent is gone its orphans are no longer found as descendants:
    the pids are collected before the first signal and again before each one.
    """
    roots = [p.pid for p in procs]
    pids: set[int] = set()

    def collect() -> None:
        pids.update(roots, _descendants(roots))
        if marker is not None:
            pids.update(_pids_with_env(*marker))

    groups = set()
    for proc in procs:
        try:
            groups.add(os.getpgid(proc.pid))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgrp())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        collect()
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            break
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in alive:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for proc in procs:
                proc.poll()  # reap our direct children
            if not any(_alive(pid) for pid in pids):
                break
            time.sleep(0.2)
    for proc in procs:
        proc.poll()
    collect()
    return sorted(pid for pid in pids if _alive(pid))


def run_status(env: dict[str, str], *connection: str) -> list[dict]:
    """The runs of a SuperLink as ``flwr ls --format json`` lists them."""
    out = subprocess.run(
        [str(BIN / "flwr"), "ls", *connection, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)["runs"]


def flwr_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        # One torch thread per process: the ClientApps of both nodes train at once.
        OMP_NUM_THREADS="1",
    )
    return env


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
    link_port = _free_port()
    (flwr_home / "config.toml").write_text(
        "[superlink]\n"
        'default = "local-deployment"\n\n'
        "[superlink.local-deployment]\n"
        f'address = "127.0.0.1:{link_port}"\n'
        "insecure = true\n"
    )

    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        out = (logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            args,
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    try:
        link = start(
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
            start(
                f"supernode-{i}",
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(_free_port()),
                    "--node-config",
                    f"partition-id={i} num-partitions={NUM_PARTITIONS}",
                ],
            )
        run_config = (
            f"num-server-rounds={ROUNDS} num-clients={NUM_NODES} "
            f"clients-per-round={NUM_NODES} results-dir='{results}'"
        )
        # --stream blocks until the run has finished and all its logs are out.
        run = start(
            "flwr-run",
            [
                str(BIN / "flwr"),
                "run",
                str(APP),
                "local-deployment",
                "--stream",
                "--run-config",
                run_config,
                "--run-config",
                f"supernet-config='{SUPERNET_CONFIG}'",
            ],
        )
        try:
            run.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"flwr run did not finish in {RUN_TIMEOUT} s:\n{_logs(logs)}")
        assert run.returncode == 0, _logs(logs)
        # `flwr run --stream` exits 0 even when the run fails: ask the SuperLink.
        runs = run_status(env, "local-deployment")
        assert [r["status"] for r in runs] == ["finished:completed"], (_logs(logs), runs)

        rounds_csv = results / "rounds.csv"
        assert rounds_csv.exists(), _logs(logs)
        rounds = pd.read_csv(rounds_csv)
        assert list(rounds["round"]) == list(range(1, ROUNDS + 1)), _logs(logs)
        assert (rounds["num-accepted"] == NUM_NODES).all()
        assert (rounds["num-evaluated"] == NUM_NODES).all()
        clients = pd.read_csv(results / "clients.csv")
        assert sorted(clients["client-id"].astype(str)) == [str(i) for i in range(NUM_NODES)]
        assert (results / "checkpoint" / "state.json").exists()
        assert f"[round {ROUNDS}/{ROUNDS}]" in (logs / "flwr-run.log").read_text()
    finally:
        leftovers = stop_processes(procs, marker=("FLWR_HOME", str(flwr_home)))
    assert not leftovers, f"processes left running: {leftovers}"


def _logs(logs: Path) -> str:
    parts = []
    for log in sorted(logs.glob("*.log")):
        parts.append(f"----- {log.name}\n{log.read_text(errors='replace')[-4000:]}")
    return "\n".join(parts)
