"""Running an experiment's methods through ``flwr run`` on one private local SuperLink.

Format and behaviour: docs/files.md, "How a reproduction runs each method".
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from flwr_pfedrlnas.experiments.experiment_file import (
    Experiment,
    MethodSpec,
    app_defaults,
    format_config,
    method_run_config,
    resolve_app,
)
from flwr_pfedrlnas.experiments.superlink import (
    LocalSuperLink,
    flwr_binary,
)

__all__ = [
    "RunFailed",
    "RunRecord",
    "check_run",
    "display_path",
    "flwr_command",
    "run_experiment",
    "run_method",
    "shell_join",
    "shell_quote",
]


class RunFailed(RuntimeError):
    """A method's ``flwr run`` did not produce a complete run."""


def flwr_command(
    app_dir: Path | str, federation_config: Mapping[str, Any], run_config: Mapping[str, Any]
) -> list[str]:
    """Arguments of ``flwr run`` (without the executable)."""
    args = ["run", str(app_dir), "--stream"]
    if federation_config:
        args += ["--federation-config", format_config(federation_config)]
    args += ["--run-config", format_config(run_config)]
    return args


def shell_quote(arg: str) -> str:
    """Quote one argument for bash, in double quotes when it holds a single quote.

    ``--run-config`` strings quote their string values with ``'``; double quotes
    keep them readable (``"method='fedrep' lr=0.05"``) where ``shlex.quote`` would
    splice in ``'"'"'`` for every one.
    """
    if "'" not in arg:
        return shlex.quote(arg)
    escaped = "".join("\\" + c if c in '"$`\\' else c for c in arg)
    return f'"{escaped}"'


def shell_join(args: Sequence[str]) -> str:
    """A bash command line of ``args`` (see :func:`shell_quote`)."""
    return " ".join(shell_quote(a) for a in args)


def display_path(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it, else as it is."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------- runs
@dataclass
class RunRecord:
    """What the runner knows about one method's run (``runs.json``)."""

    method: str
    app: str
    command: str
    results_dir: str
    log: str
    expected_rounds: int
    returncode: int | None = None
    wall_seconds: float | None = None
    status: str | None = None
    ok: bool = False
    error: str = ""
    runner: str = ""


def _tee(proc: subprocess.Popen, log: TextIO, echo: bool) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        log.flush()
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()


def check_run(results_dir: Path, expected_rounds: int, status: str | None) -> str:
    """Empty string if the run is complete, else why not.

    Complete: ``rounds.csv`` exists with rounds ``1..expected_rounds`` (its
    last round is ``expected_rounds``) and, when known, ``status`` is
    ``finished:completed``.
    """
    if status is not None and status != "finished:completed":
        return f"flwr ls reports status {status!r}"
    path = results_dir / "rounds.csv"
    if not path.is_file():
        return f"no {path}"
    try:
        rounds = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return f"unreadable {path}: {exc}"
    if "round" not in rounds.columns or rounds.empty:
        return f"{path} has no rounds"
    last = int(rounds["round"].max())
    if last != expected_rounds:
        return f"{path} ends at round {last}, expected {expected_rounds}"
    if sorted(rounds["round"].astype(int)) != list(range(1, expected_rounds + 1)):
        return f"{path} does not hold rounds 1 to {expected_rounds} once each"
    return ""


def run_method(
    link: LocalSuperLink,
    app_dir: Path,
    federation_config: Mapping[str, Any],
    run_config: Mapping[str, Any],
    name: str,
    out: Path,
    expected_rounds: int,
    timeout_s: float | None = None,
    echo: bool = True,
    resume: bool = False,
) -> RunRecord:
    """Run one method with ``flwr run`` and check that it completed.

    ``resume``: keep ``results-dir`` and its checkpoint and pass ``resume=true``,
    so an interrupted run continues after its last complete round (a run with
    no checkpoint starts from round 1); the log is appended to, not replaced.
    """
    results_dir = Path(run_config["results-dir"])
    if resume:
        run_config = {**run_config, "resume": True}
    elif results_dir.exists():
        shutil.rmtree(results_dir)  # a stale rounds.csv must not pass for this run
    args = flwr_command(app_dir, federation_config, run_config)
    shown = shell_join(
        ["flwr", *flwr_command(display_path(app_dir), federation_config, run_config)]
    )
    log_path = out / f"{name}.log"
    record = RunRecord(
        method=name,
        app=str(app_dir),
        command=shown,
        results_dir=str(results_dir),
        log=str(log_path),
        expected_rounds=expected_rounds,
    )
    before = link.run_statuses()
    start = time.perf_counter()
    with log_path.open("a" if resume else "w") as log:
        log.write(f"$ {shown}\n")
        log.flush()
        proc = subprocess.Popen(
            [flwr_binary(), *args],
            env=link.env,
            cwd=Path.cwd(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        try:
            if timeout_s is None:
                _tee(proc, log, echo)
                proc.wait()
            else:
                import threading

                reader = threading.Thread(target=_tee, args=(proc, log, echo), daemon=True)
                reader.start()
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    record.error = f"timed out after {timeout_s:.0f} s"
                reader.join(timeout=10)
        except BaseException:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise
        record.wall_seconds = time.perf_counter() - start
        record.returncode = proc.returncode
        log.write(f"wall-seconds {name} {record.wall_seconds:.0f}\n")
    after = link.run_statuses()
    if after is not None and before is not None:
        new = set(after) - set(before)  # run ids are random: the one id not seen before
        record.status = after[new.pop()] if len(new) == 1 else None
    if not record.error:
        if record.returncode != 0:
            record.error = f"flwr run exited with {record.returncode}"
        else:
            record.error = check_run(results_dir, expected_rounds, record.status)
    record.ok = not record.error
    return record


def run_experiment(
    experiment: Experiment,
    out: Path,
    methods: Sequence[MethodSpec],
    rounds: int | None = None,
    echo: bool = True,
    argv: Sequence[str] = (),
    resume: bool = False,
) -> list[RunRecord]:
    """Run ``methods`` one after the other on one private local SuperLink.

    Every app directory is checked before the first run. Results of a method go
    to ``<out>/<method>/``, its log to ``<out>/<method>.log``; ``<out>/runs.json``
    records commands, wall times and outcomes (rewritten after every run). The
    SuperLink and everything it started are stopped at the end.
    """
    apps = {spec.name: resolve_app(spec.app) for spec in methods}
    out.mkdir(parents=True, exist_ok=True)
    records: list[RunRecord] = []
    runs_json = out / "runs.json"
    previous = {}
    if runs_json.is_file():  # keep the records of methods not rerun (--only)
        previous = {r["method"]: r for r in json.loads(runs_json.read_text()).get("runs", [])}
    with LocalSuperLink(experiment.env, keep_log=out / "superlink.log") as link:
        for spec in methods:
            app_dir = apps[spec.name]
            defaults = app_defaults(app_dir)
            config = method_run_config(experiment, spec, defaults, out / spec.name, rounds)
            expected = int(config.get("num-server-rounds", defaults.get("num-server-rounds", 0)))
            print(f"[reproduce] {experiment.name}: {spec.name} ({spec.label})", flush=True)
            record = run_method(
                link,
                app_dir,
                experiment.federation_config,
                config,
                spec.name,
                out,
                expected,
                timeout_s=experiment.timeout_s,
                echo=echo,
                resume=resume,
            )
            record.runner = shlex.join(
                ["python", "-m", "flwr_pfedrlnas.experiments.reproduce", *argv]
            )
            records.append(record)
            previous[spec.name] = record.__dict__
            runs_json.write_text(
                json.dumps({"flwr-home": str(link.home), "runs": list(previous.values())}, indent=2)
            )
            verdict = "ok" if record.ok else f"FAILED: {record.error}"
            print(
                f"[reproduce] {spec.name}: {verdict} ({record.wall_seconds:.0f} s, "
                f"log {record.log})",
                flush=True,
            )
        left = link.stop()
    if left:
        print(f"[reproduce] warning: processes still alive: {left}", file=sys.stderr)
    return records
