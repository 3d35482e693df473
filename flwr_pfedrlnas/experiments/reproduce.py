"""Reproduce a table of the paper: run every method of an experiment through ``flwr run``.

Usage::

    python -m flwr_pfedrlnas.experiments.reproduce table2-cpu
    python -m flwr_pfedrlnas.experiments.reproduce table2-cpu --only pfedrlnas --only fedavg-largest
    python -m flwr_pfedrlnas.experiments.reproduce table2-cpu --rounds 5 --out /tmp/table2-quick
    python -m flwr_pfedrlnas.experiments.reproduce table2-cpu --report-only

An experiment is one TOML file, ``experiments/<name>.toml`` (or any path)::

    title = "..."
    [federation-config]          # --federation-config of every run
    num-supernodes = 10
    client-resources-num-cpus = 1
    [env]                        # extra environment of every run (optional)
    OMP_NUM_THREADS = "1"
    [run-config]                 # shared run config; a key goes to a method's app
    num-server-rounds = 30       # only if the app's pyproject declares it
    num-clients = 10
    [[method]]
    name = "pfedrlnas"           # results go to <out>/<name>/, the log to <out>/<name>.log
    label = "PerFedRLNAS"
    app = "apps/pfedrlnas"       # relative: to the working directory, else the repository
    run-config = { method = "pfedrlnas" }   # always passed (a key the app lacks is an error)

Every method runs as exactly what a user types::

    flwr run <app> --stream --federation-config "..." --run-config "... results-dir='<out>/<name>'"

one after the other on one private managed local SuperLink: a temporary
``FLWR_HOME`` with free ports, telemetry, update check and runtime dependency
installation off. ``flwr run --stream`` exits 0 even when the run fails, so a
run counts as done only if ``rounds.csv`` holds the expected rounds and, when
``flwr ls`` answers, the run's status is ``finished:completed``. At the end
(also on errors and Ctrl-C) every process carrying that ``FLWR_HOME`` (the
SuperLink, its SuperExec and simulation processes) is stopped by pid, and the
report (:mod:`flwr_pfedrlnas.experiments.report`) is written to ``<out>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from flwr_pfedrlnas.experiments import report

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "Experiment",
    "LocalSuperLink",
    "MethodSpec",
    "RunFailed",
    "find_experiment",
    "format_config",
    "load_experiment",
    "main",
    "method_run_config",
    "run_experiment",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS_DIR = REPO_ROOT / "experiments"
FLWR_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
LOCAL_CONFIG_TOML = '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'


class RunFailed(RuntimeError):
    """A method's ``flwr run`` did not produce a complete run."""


# ---------------------------------------------------------------- experiment
@dataclass(frozen=True)
class MethodSpec:
    """One row of an experiment: a Flower app and its run-config overrides."""

    name: str
    app: str
    label: str
    run_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """An experiment file: shared settings and the methods to run."""

    name: str
    path: Path
    title: str
    description: str
    federation_config: dict[str, Any]
    run_config: dict[str, Any]
    env: dict[str, str]
    methods: tuple[MethodSpec, ...]
    timeout_s: float | None = None

    def method(self, name: str) -> MethodSpec:
        for spec in self.methods:
            if spec.name == name:
                return spec
        raise KeyError(name)


def find_experiment(name: str) -> Path:
    """Path of an experiment given by name (``experiments/<name>.toml``) or by path.

    Raises
    ------
    FileNotFoundError
        Naming the places looked at and the experiments available.
    """
    candidates = [Path(name)]
    if not name.endswith(".toml"):
        candidates += [Path("experiments") / f"{name}.toml", EXPERIMENTS_DIR / f"{name}.toml"]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    known = (
        sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.toml")) if EXPERIMENTS_DIR.is_dir() else []
    )
    raise FileNotFoundError(
        f"no experiment {name!r}: looked at {', '.join(str(c) for c in candidates)}; "
        f"known: {', '.join(known) or 'none'}"
    )


def load_experiment(name_or_path: str) -> Experiment:
    """Read and check an experiment TOML file.

    Raises
    ------
    ValueError
        A missing or malformed entry, or two methods with the same name.
    """
    path = find_experiment(name_or_path)
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    methods = []
    for i, entry in enumerate(data.get("method", [])):
        if not isinstance(entry, dict) or "name" not in entry or "app" not in entry:
            raise ValueError(f"{path}: [[method]] #{i + 1} needs 'name' and 'app'")
        unknown = set(entry) - {"name", "app", "label", "run-config"}
        if unknown:
            raise ValueError(
                f"{path}: [[method]] {entry['name']!r}: unknown keys {sorted(unknown)}"
            )
        methods.append(
            MethodSpec(
                name=str(entry["name"]),
                app=str(entry["app"]),
                label=str(entry.get("label", entry["name"])),
                run_config=dict(entry.get("run-config", {})),
            )
        )
    if not methods:
        raise ValueError(f"{path}: no [[method]] entries")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate method names in {names}")
    for spec in methods:
        if not spec.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"{path}: method name {spec.name!r} must be letters, digits, - or _")
        if "results-dir" in spec.run_config:
            raise ValueError(f"{path}: {spec.name}: results-dir is set by the runner")
    timeout = data.get("timeout-s")
    return Experiment(
        name=str(data.get("name", path.stem)),
        path=path,
        title=str(data.get("title", path.stem)),
        description=str(data.get("description", "")).strip(),
        federation_config=dict(data.get("federation-config", {})),
        run_config=dict(data.get("run-config", {})),
        env={str(k): str(v) for k, v in data.get("env", {}).items()},
        methods=tuple(methods),
        timeout_s=None if timeout is None else float(timeout),
    )


def resolve_app(app: str) -> Path:
    """Directory of a Flower app: absolute, else under the working directory, else the repo.

    Raises
    ------
    FileNotFoundError
        Naming the missing app path(s).
    """
    path = Path(app).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, REPO_ROOT / path]
    for candidate in candidates:
        if (candidate / "pyproject.toml").is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"Flower app {app!r} not found: no pyproject.toml at "
        + " or ".join(str(c) for c in dict.fromkeys(candidates))
    )


def app_defaults(app_dir: Path) -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` of an app's pyproject (flattened one level deep)."""
    with (app_dir / "pyproject.toml").open("rb") as fh:
        data = tomllib.load(fh)
    return dict(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if "'" not in value:
            return f"'{value}'"
        if '"' not in value and "\\" not in value:
            return f'"{value}"'
        raise ValueError(
            f"cannot pass a string with both quote kinds on the command line: {value!r}"
        )
    raise TypeError(f"run-config values must be bool, int, float or str, got {value!r}")


def format_config(config: Mapping[str, Any]) -> str:
    """``key=value`` pairs as ``flwr run --run-config`` / ``--federation-config`` read them.

    Strings are quoted (single quotes unless the value holds one), numbers and
    booleans are written as TOML literals.

    Examples
    --------
    >>> format_config({"num-server-rounds": 2, "method": "pfedrlnas", "lr": 0.05})
    "num-server-rounds=2 method='pfedrlnas' lr=0.05"
    """
    return " ".join(f"{key}={_toml_value(value)}" for key, value in config.items())


def method_run_config(
    experiment: Experiment,
    spec: MethodSpec,
    app_config: Mapping[str, Any],
    results_dir: Path,
    rounds: int | None = None,
) -> dict[str, Any]:
    """The run config passed to one method's ``flwr run``.

    The experiment's shared ``run-config`` keys that the app declares, then the
    method's own overrides, then ``num-server-rounds`` (``--rounds``) and the
    absolute ``results-dir``.
    """
    config = {k: v for k, v in experiment.run_config.items() if k in app_config}
    config.update(spec.run_config)
    if rounds is not None:
        config["num-server-rounds"] = int(rounds)
    config["results-dir"] = str(results_dir)
    return config


def flwr_binary() -> str:
    """The ``flwr`` executable beside this Python, else the one on ``PATH``."""
    beside = Path(sys.executable).parent / "flwr"
    if beside.is_file():
        return str(beside)
    found = shutil.which("flwr")
    if not found:
        raise FileNotFoundError("the `flwr` command is not installed (pip install flwr)")
    return found


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


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
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
        if needle in environ.split(b"\0") and _alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


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
            FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(_free_port()),
            FLWR_LOCAL_CONTROL_API_PORT=str(_free_port()),
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
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.2)
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
) -> RunRecord:
    """Run one method with ``flwr run`` and check that it completed."""
    results_dir = Path(run_config["results-dir"])
    if results_dir.exists():
        shutil.rmtree(results_dir)  # a stale rounds.csv must not pass for this run
    args = flwr_command(app_dir, federation_config, run_config)
    shown = shell_join(
        ["flwr", *flwr_command(_display_path(app_dir), federation_config, run_config)]
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
    with log_path.open("w") as log:
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


# ------------------------------------------------------------------- report
def _header(
    experiment: Experiment,
    argv: Sequence[str],
    records: Mapping[str, Mapping[str, Any]],
    results: Sequence[report.MethodResult],
    source: Path,
) -> list[str]:
    lines = []
    if experiment.description:
        lines += [experiment.description, ""]
    runner = shlex.join(["python", "-m", "flwr_pfedrlnas.experiments.reproduce", *argv])
    seeds = {str(r.run_config["seed"]) for r in results if "seed" in r.run_config}
    seed = ", ".join(sorted(seeds)) or str(experiment.run_config.get("seed", "app default"))
    runners = list(dict.fromkeys(r["runner"] for r in records.values() if r.get("runner")))
    unrecorded = [r.name for r in results if not records.get(r.name, {}).get("command")]
    where = f"`{_display_path(experiment.path)}`"
    if runners:
        made = ", then ".join(f"`{r}`" for r in runners)
        lines.append(f"Runs made by {made} from {where}; seed {seed}.")
    if unrecorded:
        lines.append(
            f"Runs of {', '.join(f'`{m}`' for m in unrecorded)}: not made by this runner "
            f"(no record in `{_display_path(source / 'runs.json')}`); their settings are in "
            f"each run's `config.json`; seed {seed}."
        )
    if runner not in runners:
        lines.append(f"Report written by `{runner}`.")
    for name, rec in records.items():
        if rec.get("command") and not rec.get("ok", True):
            lines.append(
                f"**`{name}` did not complete**: {rec.get('error', '')} (its partial CSVs)."
            )
    commands = [rec["command"] for rec in records.values() if rec.get("command")]
    if commands:
        lines += [
            "",
            "Each method is one run of (with FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 "
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 and a private FLWR_HOME"
            + "".join(f" {k}={v}" for k, v in experiment.env.items())
            + "):",
            "",
            "```bash",
            *commands,
            "```",
        ]
    return lines


def build_report(
    experiment: Experiment,
    out: Path,
    methods: Sequence[MethodSpec],
    argv: Sequence[str],
    source: Path | None = None,
) -> dict[str, Path]:
    """Write the table and plots from the CSVs under ``source`` (default ``out``)."""
    source = source or out
    records: dict[str, dict[str, Any]] = {}
    runs_json = source / "runs.json"
    if runs_json.is_file():
        records = {r["method"]: r for r in json.loads(runs_json.read_text()).get("runs", [])}
    results, missing = [], []
    for spec in methods:
        directory = source / spec.name
        if not (directory / "rounds.csv").is_file():
            missing.append(spec.name)
            continue
        rec = records.get(spec.name, {})
        results.append(
            report.load_method(
                directory,
                spec.name,
                spec.label,
                wall_seconds=rec.get("wall_seconds"),
                command=rec.get("command"),
            )
        )
        if not rec:
            records[spec.name] = {"command": None}
    shown = {k: v for k, v in records.items() if k in {r.name for r in results}}
    return report.write_report(
        out,
        results,
        title=experiment.title,
        header=_header(experiment, argv, shown, results, source),
        run_config_defaults=experiment.run_config,
        missing=missing,
        plot_title=experiment.name,
    )


def run_experiment(
    experiment: Experiment,
    out: Path,
    methods: Sequence[MethodSpec],
    rounds: int | None = None,
    echo: bool = True,
    argv: Sequence[str] = (),
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


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flwr_pfedrlnas.experiments.reproduce",
        description="Run every method of an experiment with `flwr run`, then write "
        "table.md, table.csv and plots.",
    )
    parser.add_argument("experiment", help="name in experiments/ (e.g. table2-cpu) or a TOML path")
    parser.add_argument(
        "--only", action="append", metavar="METHOD", help="run only METHOD (repeatable)"
    )
    parser.add_argument("--rounds", type=int, help="override num-server-rounds of every method")
    parser.add_argument("--out", type=Path, help="output directory (default results/<experiment>)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the table and plots from existing CSVs, run nothing",
    )
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="with --report-only: read <dir>/<method>/rounds.csv from here (default --out)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not echo the runs' output")
    args = parser.parse_args(list(argv))
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.source is not None and not args.report_only:
        parser.error("--from needs --report-only")
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (1 if a run failed or an app is missing)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(argv)
    try:
        experiment = load_experiment(args.experiment)
    except (FileNotFoundError, ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    methods = list(experiment.methods)
    if args.only:
        unknown = [m for m in args.only if m not in {s.name for s in methods}]
        if unknown:
            print(
                f"error: unknown method(s) {unknown} in {experiment.path}; "
                f"known: {[s.name for s in methods]}",
                file=sys.stderr,
            )
            return 2
        methods = [s for s in methods if s.name in args.only]
    out = (args.out or Path("results") / experiment.name).resolve()
    failed: list[RunRecord] = []
    if not args.report_only:
        # SIGTERM unwinds like Ctrl-C, so the SuperLink and its processes are stopped.
        try:
            previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        except ValueError:  # not the main thread
            previous = None
        try:
            records = run_experiment(
                experiment, out, methods, args.rounds, echo=not args.quiet, argv=argv
            )
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        failed = [r for r in records if not r.ok]
    source = args.source.resolve() if args.source else None
    # After runs, the table covers every method of the experiment with results in
    # ``out`` (rerunning one method with --only refreshes its row in the full table);
    # --report-only with --only reports just those methods.
    reported = methods if args.report_only else list(experiment.methods)
    written = build_report(experiment, out, reported, argv, source=source)
    print(f"[reproduce] wrote {', '.join(str(p) for p in written.values())}", flush=True)
    for record in failed:
        print(
            f"[reproduce] {record.method} FAILED: {record.error} (log {record.log})",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
