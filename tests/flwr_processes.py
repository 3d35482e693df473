"""Process, port and ``FLWR_HOME`` helpers of the end-to-end ``flwr`` tests.

Imported by ``test_deployment.py`` and ``test_flwr_run.py`` as a sibling module
(pytest puts ``tests/``, a directory without ``__init__.py``, on ``sys.path``).
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

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "pfedrlnas"
BIN = Path(sys.executable).parent
# A small supernet keeps the runs short on a CPU-only box.
SUPERNET_CONFIG = (
    '{"width_mult": 0.35, "num_stages": 2, "input_resolution": 32, '
    '"depth_choices": [1, 2], "expand_choices": [3, 4]}'
)
RUN_TIMEOUT = 600  # generous: CI shares 2 cores, and each deployment message starts a process


def free_port() -> int:
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


def pids_with_env(key: str, value: str) -> list[int]:
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
            pids.update(pids_with_env(*marker))

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


def start_logged(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start ``args`` in a new session, with stdout and stderr written to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


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


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def flwr_run_to_end(
    tmp_path: Path,
    app: Path,
    run_configs: list[str],
    num_supernodes: int,
    extra_env: dict[str, str] | None = None,
) -> tuple[int, list[dict], str]:
    """``flwr run app --stream`` to the end on a private managed SuperLink, then stop it.

    The SuperLink gets its own ``FLWR_HOME`` and free ports; everything the run
    started is found by that ``FLWR_HOME`` and stopped by pid (a test fails if
    anything is left). Returns ``flwr run``'s exit code, the runs as ``flwr ls``
    reports them (``flwr run --stream`` exits 0 whether the run failed or not)
    and the log.
    """
    import pytest

    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    )
    env = {**flwr_env(flwr_home), **(extra_env or {})}
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(free_port())
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(free_port())
    log_path = tmp_path / "flwr-run.log"
    marker = ("FLWR_HOME", str(flwr_home))
    procs: list[subprocess.Popen] = []
    federation = f"num-supernodes={num_supernodes} client-resources-num-cpus=1"
    args = [str(BIN / "flwr"), "run", str(app), "--stream", "--federation-config", federation]
    for config in run_configs:
        args += ["--run-config", config]
    try:
        run = start_logged(args, env, tmp_path, log_path)
        procs.append(run)
        try:
            run.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            tail = log_path.read_text(errors="replace")[-6000:]
            pytest.fail(f"flwr run did not finish in {RUN_TIMEOUT} s:\n{tail}")
        runs = run_status(env)
    finally:
        leftovers = stop_processes(procs, marker=marker)
    assert not leftovers, [cmdline(p) for p in leftovers]
    assert not pids_with_env(*marker)
    return run.returncode, runs, log_path.read_text(errors="replace")
