"""The paper-scale experiment files: their settings against the paper, and a CPU smoke run.

The smoke run takes every method of every ``experiments/*-paper.toml`` through
the reproduction runner (``flwr run`` on a private local SuperLink) with the
file's own family, sizes, local epochs, batch size and fine-tuning, shrinking
only what does not make a run "paper scale": one round, two clients, the CPU
instead of a GPU, and a few dozen images of the offline CIFAR-schema stand-in
(:mod:`flwr_pfedrlnas.data.cifar_schema`, read through the hub code path with
``data-dir``). So "runs unchanged on a GPU" is at least "runs unchanged".

Cost: every method trains paper-size models (MobileNetV3 at 224x224, the mixed
DARTS supernet at 16 channels and 8 cells) for 5 epochs, and each method is one
``flwr run``. Measured on 2 shared cores under a load of about 10: table2-paper
373 s, table2-cifar100-paper 450 s, table3-paper 651 s, table3-cifar100-paper
254 s, mobilenetv3-cifar10-paper 122 s, about 31 minutes in all: far more than a
few minutes, so the runs are marked ``slow`` and ``paper_scale`` (deselect with
``-m "not paper_scale"``).

What runs: every method of ``table2-paper`` and ``table3-paper``; of each CIFAR-100
file only its PerFedRLNAS row, since the file differs from its CIFAR-10 twin in the
data alone (``test_cifar100_column_differs_in_data_only``) and the row takes the
100-class data through the hub path and a 100-output supernet; and no run of
``mobilenetv3-cifar10-paper``, whose settings are table2-paper's PerFedRLNAS row
(``test_single_row_file_is_the_table2_row``). That is about 19 of the 31 minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from flwr_processes import kill_leftovers

from flwr_pfedrlnas.experiments.reproduce import (
    app_defaults,
    load_experiment,
    resolve_app,
)

REPO = Path(__file__).resolve().parents[1]
PAPER_FILES = sorted((REPO / "experiments").glob("*-paper.toml"))

# The paper's protocol (Tables 2 and 3): the same for every file and method.
PAPER_PROTOCOL = {
    "num-clients": 100,
    "clients-per-round": 5,
    "local-epochs": 5,
    "batch-size": 32,
    "num-server-rounds": 1500,
}
# The two columns of each table: dataset and Dirichlet concentration.
COLUMNS = {"cifar10": 0.3, "cifar100": 0.1}
TABLE2_METHODS = ["pfedrlnas", "fedavg-largest", "fedavg-ft", "local", "fedrep", "fedbabu", "fedtp"]
TABLE3_METHODS = ["pfedrlnas", "fednas", "fedrlnas", "spider", "fedoras"]

# What the smoke run may change, and to what; every other setting stays the file's.
SMOKE_RUN_CONFIG = {
    "num-clients": 2,
    "clients-per-round": 2,
    "num-server-rounds": 1,
    "evaluate-every": 1,
}
SMOKE_FEDERATION = {
    "num-supernodes": 2,
    "client-resources-num-cpus": 1,
    "client-resources-num-gpus": 0,
}
SMOKE_IMAGES = 30  # rows of the stand-in's train split (the clients' whole pool)


def _toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def test_the_paper_files_exist():
    names = {p.stem for p in PAPER_FILES}
    assert {
        "table2-paper",
        "table2-cifar100-paper",
        "table3-paper",
        "table3-cifar100-paper",
        "mobilenetv3-cifar10-paper",
    } <= names


@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: p.stem)
def test_paper_file_has_the_paper_settings(path):
    exp = load_experiment(str(path))
    cfg = exp.run_config
    for key, value in PAPER_PROTOCOL.items():
        assert cfg[key] == value, (path.name, key)
    assert exp.federation_config["num-supernodes"] == cfg["num-clients"]
    assert COLUMNS[cfg["dataset"]] == cfg["dirichlet-alpha"], path.name
    methods = [m.name for m in exp.methods]
    if path.stem.startswith("table2"):
        assert methods == TABLE2_METHODS
    elif path.stem.startswith("table3"):
        assert methods == TABLE3_METHODS
    else:
        assert methods == ["pfedrlnas"]
    for spec in exp.methods:
        app = resolve_app(spec.app)
        declared = app_defaults(app)
        # A method's own keys must exist in its app (the runner would fail), and the
        # protocol keys must reach it (a key the app lacks is silently not passed).
        assert set(spec.run_config) <= set(declared), (path.name, spec.name)
        for key in (*PAPER_PROTOCOL, "dataset", "dirichlet-alpha", "data-dir"):
            assert key in declared, (path.name, spec.name, key)
        config = {**cfg, **spec.run_config}
        family = config.get("supernet")
        if spec.app.endswith("pfedrlnas") or family == "darts":
            # Paper size: the family's defaults, nothing shrunk.
            assert config.get("supernet-config") == "{}", (path.name, spec.name)


@pytest.mark.parametrize("table", ["table2", "table3"])
def test_cifar100_column_differs_in_data_only(table):
    ten = _toml(REPO / "experiments" / f"{table}-paper.toml")
    hundred = _toml(REPO / "experiments" / f"{table}-cifar100-paper.toml")
    assert (ten["run-config"]["dataset"], hundred["run-config"]["dataset"]) == (
        "cifar10",
        "cifar100",
    )
    for data in (ten, hundred):
        for key in ("name", "title", "description"):
            data.pop(key)
        data["run-config"].pop("dataset")
        data["run-config"].pop("dirichlet-alpha")
    assert ten == hundred


def smoke_experiment(path: Path, data_dir: Path) -> dict[str, Any]:
    """The experiment of ``path`` shrunk for a CPU smoke run (see the module docstring)."""
    data = _toml(path)
    data["name"] = f"{data.get('name', path.stem)}-smoke"
    data["federation-config"] = {**data["federation-config"], **SMOKE_FEDERATION}
    data["env"] = {**data.get("env", {}), "OMP_NUM_THREADS": "1"}
    data["run-config"] = {**data["run-config"], **SMOKE_RUN_CONFIG, "data-dir": str(data_dir)}
    return data


def test_smoke_run_keeps_what_makes_a_file_paper_scale(tmp_path):
    path = REPO / "experiments" / "table2-paper.toml"
    paper, smoke = _toml(path), smoke_experiment(path, tmp_path)
    changed = {k for k in paper["run-config"] if paper["run-config"][k] != smoke["run-config"][k]}
    assert changed == {*SMOKE_RUN_CONFIG, "data-dir"}
    for key in (
        "dataset",
        "dirichlet-alpha",
        "local-epochs",
        "batch-size",
        "lr",
        "finetune-epochs",
    ):
        assert smoke["run-config"][key] == paper["run-config"][key], key
    assert smoke["method"] == paper["method"]  # families, sizes and models unchanged


def _write_toml_value(value: Any) -> str:
    if isinstance(value, dict):  # an inline table
        return "{ " + ", ".join(f'"{k}" = {_write_toml_value(v)}' for k, v in value.items()) + " }"
    if isinstance(value, bool | int | float | str):
        # JSON's true / false, (finite) numbers and strings are TOML's too.
        return json.dumps(value)
    raise TypeError(value)


def write_experiment(data: dict[str, Any], path: Path) -> Path:
    """Write an experiment dict as TOML (the subset the experiment files use)."""
    lines = []
    for key in ("name", "title", "description"):
        if key in data:
            lines.append(f"{key} = {_write_toml_value(data[key])}")
    for table in ("federation-config", "env", "run-config"):
        lines.append(f"[{table}]")
        lines += [f'"{k}" = {_write_toml_value(v)}' for k, v in data.get(table, {}).items()]
    for method in data["method"]:
        lines.append("[[method]]")
        lines += [f'"{k}" = {_write_toml_value(v)}' for k, v in method.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("num_classes,alpha", [(10, 0.3), (100, 0.1)])
def test_stand_in_gives_both_clients_data(tmp_path, num_classes, alpha):
    from flwr_pfedrlnas.data.datasets import load_client_data

    directory = _stand_in(tmp_path / "data", num_classes)
    source = "cifar10" if num_classes == 10 else "cifar100"
    clients = [load_client_data(source, p, 2, alpha, 0, 0.2, str(directory)) for p in (0, 1)]
    assert sum(len(c.train_y) + len(c.test_y) for c in clients) == SMOKE_IMAGES
    for c in clients:
        assert len(c.train_y) >= 8 and len(c.test_y) >= 1
        assert c.num_classes == num_classes and c.train_x.shape[1:] == (3, 32, 32)


def test_written_experiment_reads_back_the_same(tmp_path):
    path = REPO / "experiments" / "table3-paper.toml"
    smoke = smoke_experiment(path, tmp_path / "data")
    again = _toml(write_experiment(smoke, tmp_path / "x.toml"))
    assert again == smoke


# ------------------------------------------------------------------ smoke runs
def _stand_in(directory: Path, num_classes: int) -> Path:
    """A few rows of the CIFAR-schema stand-in, in the hub's local-folder layout.

    Three rows of each of ten labels (CIFAR-100: fine labels 0, 10, ..., 90, one per
    embedded class; the label feature keeps all 100 names, so the model has 100
    outputs): with fewer rows per label the Dirichlet partitioner cannot give both
    clients its minimum of 10 examples at alpha 0.1.
    """
    from flwr_pfedrlnas.data import cifar_schema_dataset

    splits = cifar_schema_dataset(num_classes, train_per_class=3, test_per_class=1)
    label = "label" if num_classes == 10 else "fine_label"
    step = num_classes // 10
    labels = splits["train"][label]
    rows = [i for i, y in enumerate(labels) if y % step == 0][:SMOKE_IMAGES]
    (directory / "data").mkdir(parents=True)
    splits["train"].select(rows).to_parquet(
        str(directory / "data" / "train-00000-of-00001.parquet")
    )
    test = splits["test"].select(range(10))
    test.to_parquet(str(directory / "data" / "test-00000-of-00001.parquet"))
    return directory


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cifar-schema")
    return {
        "cifar10": _stand_in(root / "cifar10", 10),
        "cifar100": _stand_in(root / "cifar100", 100),
    }


# Which methods of each file the smoke run takes (see the module docstring); None: all.
SMOKE_METHODS: dict[str, list[str] | None] = {
    "table2-paper": None,
    "table3-paper": None,
    "table2-cifar100-paper": ["pfedrlnas"],
    "table3-cifar100-paper": ["pfedrlnas"],
}


def test_every_paper_file_is_smoke_run_or_shown_equal():
    assert set(SMOKE_METHODS) | {"mobilenetv3-cifar10-paper"} == {p.stem for p in PAPER_FILES}


def test_single_row_file_is_the_table2_row(tmp_path):
    from flwr_pfedrlnas.experiments.experiment_file import method_run_config

    row = load_experiment(str(REPO / "experiments" / "mobilenetv3-cifar10-paper.toml"))
    table = load_experiment(str(REPO / "experiments" / "table2-paper.toml"))
    (method,) = row.methods
    twin = next(m for m in table.methods if m.name == method.name)
    assert method.app == twin.app
    declared = app_defaults(resolve_app(method.app))
    # What `flwr run` receives, the same for both.
    assert method_run_config(row, method, declared, tmp_path) == method_run_config(
        table, twin, declared, tmp_path
    )
    assert row.federation_config == table.federation_config
    assert row.env == table.env


@pytest.mark.slow
@pytest.mark.paper_scale
@pytest.mark.parametrize("stem", sorted(SMOKE_METHODS))
def test_every_method_runs_at_paper_size(stem, stand_ins, tmp_path):
    path = REPO / "experiments" / f"{stem}.toml"
    paper = load_experiment(str(path))
    smoke = smoke_experiment(path, stand_ins[paper.run_config["dataset"]])
    methods = list(paper.methods)
    if SMOKE_METHODS[stem] is not None:
        smoke["method"] = [m for m in smoke["method"] if m["name"] in SMOKE_METHODS[stem]]
        methods = [m for m in methods if m.name in SMOKE_METHODS[stem]]
        assert methods, stem
    config = write_experiment(smoke, tmp_path / f"{path.stem}-smoke.toml")
    out = tmp_path / "out"
    marker = f"paper-smoke-{uuid.uuid4().hex}"
    env = {**os.environ, "PAPER_SMOKE_MARKER": marker, "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "flwr_pfedrlnas.experiments.reproduce", str(config)]
        + ["--out", str(out), "--quiet"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    try:
        logs = "".join(
            f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in out.glob("*.log")
        )
        assert proc.returncode == 0, proc.stderr[-4000:] + logs
        runs = json.loads((out / "runs.json").read_text())["runs"]
        assert [r["method"] for r in runs] == [m.name for m in methods]
        assert all(r["ok"] for r in runs), runs
        assert all(r["status"] in (None, "finished:completed") for r in runs), runs
        for spec in methods:
            rounds = pd.read_csv(out / spec.name / "rounds.csv")
            assert list(rounds["round"]) == [1], spec.name
            clients = pd.read_csv(out / spec.name / "clients.csv")
            assert sorted(clients["client-id"].astype(str).unique()) == ["0", "1"], spec.name
            assert clients["accuracy"].between(0, 1).all(), spec.name
            # The run used the file's own settings, not the apps' defaults.
            used = json.loads((out / spec.name / "config.json").read_text())["run-config"]
            for key in ("dataset", "local-epochs", "batch-size", "dirichlet-alpha"):
                assert used[key] == paper.run_config[key], (spec.name, key)
    finally:
        left = kill_leftovers(("PAPER_SMOKE_MARKER", marker))
    assert not left, left
    print(f"{path.stem}: {len(methods)} methods in {time.monotonic() - start:.0f} s")


# ------------------------------------------------------------- the GPU script
def _gpu_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_paper_row", REPO / "scripts" / "gpu_paper_row.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_script_runs_the_paper_row_settings():
    script = _gpu_script()
    cfg = script.run_config(script.EXPERIMENT)
    paper = load_experiment(script.EXPERIMENT)
    for key in (*PAPER_PROTOCOL, "dataset", "dirichlet-alpha", "lr", "seed"):
        assert cfg[key] == paper.run_config[key], key
    assert (cfg["method"], cfg["supernet"], cfg["supernet-config"]) == (
        "pfedrlnas",
        "mobilenetv3",
        "{}",
    )
    # Keys the file does not set come from apps/pfedrlnas, as under `flwr run`.
    assert cfg["policy-lr"] == app_defaults(resolve_app("apps/pfedrlnas"))["policy-lr"]
    with pytest.raises(SystemExit):
        script.parse_args(["--minutes", "0"])


@pytest.mark.slow
def test_gpu_script_dry_run(tmp_path):
    out = tmp_path / "paper-gpu"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "gpu_paper_row.py"),
            "--dry-run",
            "--out",
            str(out),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rounds = pd.read_csv(out / "rounds.csv")
    assert list(rounds["round"]) == [1] and (rounds["wall-seconds"] > 0).all()
    clients = pd.read_csv(out / "clients.csv")
    assert sorted(clients["client-id"].astype(str)) == ["0", "1"]
    assert clients["accuracy"].between(0, 1).all()
    assert (clients["num-examples"] > 0).all() and (clients["compute-seconds"] > 0).all()
    assert "gpu-max-memory-allocated-bytes" in clients.columns
    deployed = pd.read_csv(out / "deployed.csv")
    assert len(deployed) == 2 and deployed["accuracy"].between(0, 1).all()
    run = json.loads((out / "run.json").read_text())
    assert run["dry-run"] is True and run["rounds"] == 1 and run["device"] == "cpu"
    # Paper size on the dry run too: 5 local epochs, batch 32, the paper-size family.
    assert run["run-config"]["local-epochs"] == 5 and run["run-config"]["batch-size"] == 32
    assert run["run-config"]["supernet-config"] == "{}"
