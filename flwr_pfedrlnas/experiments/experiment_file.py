"""An experiment file: the TOML that lists the methods of a reproduction and their settings.

Format and behaviour: docs/files.md, "Experiment files".
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "EXPERIMENTS_DIR",
    "REPO_ROOT",
    "Experiment",
    "MethodSpec",
    "app_defaults",
    "find_experiment",
    "format_config",
    "load_experiment",
    "method_run_config",
    "resolve_app",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS_DIR = REPO_ROOT / "experiments"


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
