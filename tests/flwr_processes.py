"""Process, port and ``FLWR_HOME`` helpers of the end-to-end ``flwr`` tests.

Imported by the end-to-end tests (``test_deployment.py``, ``test_flwr_run.py``,
``test_security.py``, ``test_examples.py``, ``test_cifar_schema.py``,
``test_reproduce.py``, ``test_paper_scale.py``) as a sibling module (pytest puts
``tests/``, a directory without ``__init__.py``, on ``sys.path``). The process
helpers they share with the experiment runner come from
:mod:`flwr_pfedrlnas.experiments.flwr_runner`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from flwr_pfedrlnas.experiments.superlink import (
    FLWR_ENV,
    free_port,
    pids_with_env,
    process_alive,
    signal_and_wait,
)

__all__ = [
    "APP",
    "BIN",
    "Processes",
    "REPO",
    "RUN_TIMEOUT",
    "SUPERNET_CONFIG",
    "cmdline",
    "flwr_env",
    "flwr_run_to_end",
    "free_port",
    "kill_leftovers",
    "pids_with_env",
    "run_status",
    "start_logged",
    "stop_processes",
]

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "pfedrlnas"
BIN = Path(sys.executable).parent
# A small supernet keeps the runs short on a CPU-only box.
SUPERNET_CONFIG = (
    '{"width_mult": 0.35, "num_stages": 2, "input_resolution": 32, '
    '"depth_choices": [1, 2], "expand_choices": [3, 4]}'
)
RUN_TIMEOUT = 600  # generous: CI shares 2 cores, and each deployment message starts a process


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
        alive = [pid for pid in pids if process_alive(pid)]
        if not alive:
            break
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        # Reap our direct children while waiting.
        signal_and_wait(alive, sig, grace, poll=lambda: [proc.poll() for proc in procs])
    for proc in procs:
        proc.poll()
    collect()
    return sorted(pid for pid in pids if process_alive(pid))


def kill_leftovers(
    marker: tuple[str, str], also: Sequence[tuple[str, str]] = (), grace: float = 15.0
) -> list[int]:
    """After a run: wait up to ``grace`` s for the processes carrying the environment
    ``marker`` to end, then SIGKILL every one still carrying it or one of ``also``.

    Returns the pids that were left (a test asserts there are none, after
    leaving nothing behind even when it fails).
    """
    deadline = time.monotonic() + grace
    while pids_with_env(*marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = pids_with_env(*marker)
    for extra in also:
        left += pids_with_env(*extra)
    for pid in set(left):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


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
    env.update(FLWR_ENV)
    env.update(
        FLWR_HOME=str(flwr_home),
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


class Processes:
    """The processes one test starts, each in a new session logging to ``<logs>/<name>.log``.

    ``stop()`` (in the test's ``finally``) stops them, their descendants and
    every process carrying the test's ``FLWR_HOME``, by pid, and returns
    those still alive.
    """

    def __init__(self, env: dict[str, str], cwd: Path, logs: Path) -> None:
        self.env, self.cwd, self.logs = env, cwd, logs
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        proc = start_logged(args, self.env, self.cwd, self.logs / f"{name}.log")
        self.procs.append(proc)
        return proc

    def tails(self, chars: int = 4000) -> str:
        """The last ``chars`` characters of every log, for a failing assertion's message."""
        return "\n".join(
            f"----- {p.name}\n{p.read_text(errors='replace')[-chars:]}"
            for p in sorted(self.logs.glob("*.log"))
        )

    def flwr_run(self, *args: str, chars: int = 4000) -> subprocess.Popen:
        """``flwr run *args`` (its log: ``flwr-run.log``) to its end; fails after RUN_TIMEOUT."""
        run = self.start("flwr-run", [str(BIN / "flwr"), "run", *args])
        try:
            run.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"flwr run did not finish in {RUN_TIMEOUT} s:\n{self.tails(chars)}")
        return run

    def stop(self) -> list[int]:
        return stop_processes(self.procs, marker=("FLWR_HOME", self.env["FLWR_HOME"]))


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
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    )
    env = {**flwr_env(flwr_home), **(extra_env or {})}
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(free_port())
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(free_port())
    procs = Processes(env, tmp_path, tmp_path)
    federation = f"num-supernodes={num_supernodes} client-resources-num-cpus=1"
    args = [str(app), "--stream", "--federation-config", federation]
    for config in run_configs:
        args += ["--run-config", config]
    try:
        run = procs.flwr_run(*args, chars=6000)
        runs = run_status(env)
    finally:
        leftovers = procs.stop()
    assert not leftovers, [cmdline(p) for p in leftovers]
    assert not pids_with_env("FLWR_HOME", str(flwr_home))
    return run.returncode, runs, (tmp_path / "flwr-run.log").read_text(errors="replace")
