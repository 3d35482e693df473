"""Reproduce a table of the paper: run every method of an experiment through ``flwr run``.

Usage::

    python -m flwr_pfedrlnas.experiments.reproduce table2-cpu
    python -m flwr_pfedrlnas.experiments.reproduce table2-cpu --only pfedrlnas --only fedavg-largest
    python -m flwr_pfedrlnas.experiments.reproduce table2-cpu --rounds 5 --out /tmp/table2-quick
    python -m flwr_pfedrlnas.experiments.reproduce table2-cpu --report-only
    python -m flwr_pfedrlnas.experiments.reproduce table2-cpu --only fedrep --resume

The experiment file's format is in :mod:`.experiment_file`, how each method
runs in :mod:`.flwr_runner`; after the runs the report
(:mod:`flwr_pfedrlnas.experiments.report`) is written to ``<out>``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr_pfedrlnas.experiments import report

# The runner's parts, re-exported so that the names keep their old import path.
from flwr_pfedrlnas.experiments.experiment_file import (
    EXPERIMENTS_DIR,
    REPO_ROOT,
    Experiment,
    MethodSpec,
    app_defaults,
    find_experiment,
    format_config,
    load_experiment,
    method_run_config,
    resolve_app,
)
from flwr_pfedrlnas.experiments.flwr_runner import (
    RunFailed,
    RunRecord,
    check_run,
    display_path,
    flwr_command,
    run_experiment,
    run_method,
    shell_join,
    shell_quote,
)
from flwr_pfedrlnas.experiments.superlink import (
    FLWR_ENV,
    LocalSuperLink,
    flwr_binary,
    pids_with_env,
)

__all__ = [
    "EXPERIMENTS_DIR",
    "FLWR_ENV",
    "REPO_ROOT",
    "Experiment",
    "LocalSuperLink",
    "MethodSpec",
    "RunFailed",
    "RunRecord",
    "app_defaults",
    "build_report",
    "check_run",
    "find_experiment",
    "flwr_binary",
    "flwr_command",
    "format_config",
    "load_experiment",
    "main",
    "method_run_config",
    "pids_with_env",
    "resolve_app",
    "run_experiment",
    "run_method",
    "shell_join",
    "shell_quote",
]


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
    where = f"`{display_path(experiment.path)}`"
    if runners:
        made = ", then ".join(f"`{r}`" for r in runners)
        lines.append(f"Runs made by {made} from {where}; seed {seed}.")
    if unrecorded:
        lines.append(
            f"Runs of {', '.join(f'`{m}`' for m in unrecorded)}: not made by this runner "
            f"(no record in `{display_path(source / 'runs.json')}`); their settings are in "
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
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue each interrupted run from its checkpoint (runs without one start anew)",
    )
    args = parser.parse_args(list(argv))
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.source is not None and not args.report_only:
        parser.error("--from needs --report-only")
    if args.resume and args.report_only:
        parser.error("--resume runs methods; it cannot go with --report-only")
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
                experiment,
                out,
                methods,
                args.rounds,
                echo=not args.quiet,
                argv=argv,
                resume=args.resume,
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
