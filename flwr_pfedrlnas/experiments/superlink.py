"""A private managed local SuperLink for ``flwr run``, and the processes it starts.

:class:`LocalSuperLink` gives ``flwr run`` a temporary ``FLWR_HOME`` with free
ports and telemetry, update check and runtime dependency installation off; on
exit it stops, by pid, every process whose environment carries that home.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "FLWR_ENV",
    "LocalSuperLink",
    "flwr_binary",
    "free_port",
    "pids_with_env",
    "process_alive",
    "signal_and_wait",
]

FLWR_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
LOCAL_CONFIG_TOML = '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'


def flwr_binary() -> str:
    """The ``flwr`` executable beside this Python, else the one on ``PATH``."""
    beside = Path(sys.executable).parent / "flwr"
    if beside.is_file():
        return str(beside)
    found = shutil.which("flwr")
    if not found:
        raise FileNotFoundError("the `flwr` command is not installed (pip install flwr)")
    return found


# ---------------------------------------------------------------- processes
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (from ``/proc``)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def pids_with_env(key: str, value: str) -> list[int]:
    """Live processes (other than this one) whose environment holds ``key=value``."""
    needle = f"{key}={value}".encode()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def signal_and_wait(
    pids: Sequence[int], sig: int, grace: float, poll: Callable[[], object] | None = None
) -> None:
    """Send ``sig`` to each of ``pids``, then wait up to ``grace`` seconds for all to end.

    A process already gone, or not ours to signal, is passed over. ``poll``
    is called before each look (e.g. to reap the caller's own children).
    """
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if poll is not None:
            poll()
        if not any(process_alive(p) for p in pids):
            break
        time.sleep(0.2)


class LocalSuperLink:
    """A private ``FLWR_HOME`` for ``flwr run``'s managed local SuperLink.

    Use as a context manager: on entry a temporary ``FLWR_HOME`` with a
    ``config.toml`` naming the managed local SuperLink, and free ports for its
    HTTP and Control APIs; the first ``flwr run`` starts the SuperLink, later
    ones reuse it. On exit every process whose environment carries this
    ``FLWR_HOME`` is sent SIGTERM, then SIGKILL, by pid, and the directory is
    removed.
    """

    def __init__(self, extra_env: Mapping[str, str] | None = None, keep_log: Path | None = None):
        self.extra_env = dict(extra_env or {})
        self.keep_log = keep_log
        self.home: Path | None = None
        self.env: dict[str, str] = {}

    def __enter__(self) -> LocalSuperLink:
        self.home = Path(tempfile.mkdtemp(prefix="flwr-home-"))
        (self.home / "config.toml").write_text(LOCAL_CONFIG_TOML)
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update(FLWR_ENV)
        env.update(
            FLWR_HOME=str(self.home),
            FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
            FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
            PYTHONUNBUFFERED="1",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        )
        self.env = env
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pids(self) -> list[int]:
        """Live processes started under this ``FLWR_HOME``."""
        return pids_with_env("FLWR_HOME", str(self.home)) if self.home else []

    def stop(self, grace: float = 10.0) -> list[int]:
        """Stop every process of this ``FLWR_HOME`` by pid; return those still alive."""
        if self.home is None:
            return []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            if not pids:
                break
            signal_and_wait(pids, sig, grace)
        left = self.pids()
        if self.keep_log is not None:
            log = self.home / "local-superlink" / "superlink.log"
            if log.is_file():
                self.keep_log.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, self.keep_log)
        if not left:
            shutil.rmtree(self.home, ignore_errors=True)
        return left

    def run_statuses(self) -> dict[str, str] | None:
        """``run-id -> status`` from ``flwr ls --format json``; ``None`` if it fails."""
        try:
            out = subprocess.run(
                [flwr_binary(), "ls", "--format", "json"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            runs = json.loads(out.stdout)["runs"]
            return {str(r["run-id"]): str(r["status"]) for r in runs}
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
            return None
