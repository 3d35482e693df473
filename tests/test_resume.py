"""Crash and resume: SIGKILL the server mid-run, restart with resume, compare bit for bit.

The server runs in a subprocess (``tests/resume_driver.py``: the Message-API
strategy with real clients and real, deterministic training). One run goes
straight through; another is killed with SIGKILL as soon as a checkpoint after
round 2 is on disk (the process is then inside a later round), restarted with
``resume``, and must end in exactly the same search state: supernet arrays,
every policy with its Adam moments, the accuracy history and the sampler's RNG.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flwr_pfedrlnas.core.search import PerFedRLNASSearch

DRIVER = Path(__file__).resolve().parent / "resume_driver.py"
ROUNDS = 5
KILL_AFTER = 2


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", FLWR_TELEMETRY_ENABLED="0")


def _run(ckpt: Path, *flags: str, timeout: float = 240) -> None:
    out = subprocess.run(
        [sys.executable, str(DRIVER), str(ckpt), str(ROUNDS), *flags],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"done: {ROUNDS} rounds" in out.stdout


def _completed(ckpt: Path) -> int:
    try:
        return int(json.loads((ckpt / "state.json").read_text())["completed_rounds"])
    except (OSError, ValueError, KeyError):
        return 0


def _state(ckpt: Path):
    state = PerFedRLNASSearch.read_checkpoint(ckpt)
    meta = dict(state["meta"])
    for volatile in ("extra", "supernet_file"):  # records hold wall times
        meta.pop(volatile)
    arrays = {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in state["supernet"].items()}
    return arrays, json.dumps(meta, sort_keys=True)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    _run(straight)

    log = (tmp_path / "killed.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), str(crashed), str(ROUNDS)],
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while _completed(crashed) < KILL_AFTER:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = _completed(crashed)
    assert KILL_AFTER <= killed_at < ROUNDS
    # What a SIGKILL leaves is a complete checkpoint (no half-written file in use).
    PerFedRLNASSearch.read_checkpoint(crashed)

    _run(crashed, "--resume")
    a_arrays, a_meta = _state(straight)
    b_arrays, b_meta = _state(crashed)
    assert a_meta == b_meta  # policies (logits + Adam moments + steps), history, RNG, rounds
    assert a_arrays.keys() == b_arrays.keys()
    assert all(a_arrays[k] == b_arrays[k] for k in a_arrays)
    assert json.loads(b_meta)["completed_rounds"] == ROUNDS
    assert all(
        p["steps"] > 0 for p in json.loads(b_meta)["policies"].values()
    )  # the search did happen
    assert not list(crashed.glob(".*.tmp"))  # the resumed run cleaned up after itself
    np.testing.assert_array_equal(
        sorted(p.name for p in crashed.iterdir()), ["state.json", f"supernet-{ROUNDS:06d}.npz"]
    )
