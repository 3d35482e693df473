"""``flwr run`` of the pfedrlnas app on the managed local SuperLink (simulation).

``flwr run`` starts a detached ``flower-superlink`` (simulation runtime) and
leaves it running; it writes no pid file. The test gives it free ports and a
temporary ``FLWR_HOME``, finds it (and everything it started) by that
``FLWR_HOME`` in the processes' environment, and stops those by pid.
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

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "pfedrlnas"
BIN = Path(sys.executable).parent
NUM_SUPERNODES = 4
ROUNDS = 2
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


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


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
    link_port = _free_port()
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(link_port)
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(_free_port())
    log_path = tmp_path / "flwr-run.log"
    marker = ("FLWR_HOME", str(flwr_home))
    procs: list[subprocess.Popen] = []
    try:
        with log_path.open("wb") as out:
            run = subprocess.Popen(
                [
                    str(BIN / "flwr"),
                    "run",
                    str(APP),
                    "--stream",
                    "--federation-config",
                    f"num-supernodes={NUM_SUPERNODES} client-resources-num-cpus=1",
                    "--run-config",
                    f"num-server-rounds={ROUNDS} num-clients={NUM_SUPERNODES} "
                    f"clients-per-round=2 results-dir='{results}'",
                    "--run-config",
                    f"supernet-config='{SUPERNET_CONFIG}'",
                ],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.append(run)
            try:
                run.wait(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"flwr run did not finish in {RUN_TIMEOUT} s:\n{_tail(log_path)}")
        assert run.returncode == 0, _tail(log_path)
        # `flwr run --stream` exits 0 even when the run fails: ask the SuperLink.
        runs = run_status(env)
        assert [r["status"] for r in runs] == ["finished:completed"], (_tail(log_path), runs)
        text = log_path.read_text(errors="replace")
        assert f"127.0.0.1:{link_port}" in text, text[-4000:]
        assert f"[round {ROUNDS}/{ROUNDS}]" in text, text[-4000:]

        # flwr run has returned and left its SuperLink running: ours, by FLWR_HOME.
        links = [p for p in _pids_with_env(*marker) if "flower-superlink" in _cmdline(p)]
        assert len(links) == 1, [_cmdline(p) for p in _pids_with_env(*marker)]
        assert f"--port {link_port}" in _cmdline(links[0])

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
        leftovers = stop_processes(procs, marker=marker)
    assert not leftovers, [_cmdline(p) for p in leftovers]
    assert not _pids_with_env(*marker)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-6000:]
