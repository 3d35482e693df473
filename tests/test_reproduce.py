"""The reproduction runner (``flwr_pfedrlnas.experiments.reproduce``) and its report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr_processes import kill_leftovers

from flwr_pfedrlnas.experiments import report
from flwr_pfedrlnas.experiments.reproduce import (
    format_config,
    load_experiment,
    main,
    method_run_config,
    resolve_app,
)

REPO = Path(__file__).resolve().parents[1]
# The small supernet of tests/flwr_processes.py.
SUPERNET_CONFIG = (
    '{"width_mult": 0.35, "num_stages": 2, "input_resolution": 32, '
    '"depth_choices": [1, 2], "expand_choices": [3, 4]}'
)


# ------------------------------------------------------------- similarities
def test_arch_similarity_hand_computed():
    a = {"k": 3, "e": 4, "d": 2, "w": 1.0}
    b = {"k": 3, "e": 6, "d": 2, "w": 1.0}
    assert report.arch_similarity(a, b) == 0.75
    assert report.arch_similarity(a, a) == 1.0
    assert report.arch_similarity(a, {"k": 5, "e": 3, "d": 1, "w": 0.65}) == 0.0
    # a dimension only one side has counts as different: 1 equal of 2 dimensions
    assert report.arch_similarity({"k": 3}, {"k": 3, "e": 4}) == 0.5
    with pytest.raises(ValueError):
        report.arch_similarity({}, {})


def test_label_similarity_hand_computed():
    # p = (0.5, 0.5, 0), q = (0, 0.5, 0.5): TV = 0.5 * (0.5 + 0 + 0.5) = 0.5
    p, q = [10, 10, 0], [0, 3, 3]
    assert report.total_variation(p, q) == pytest.approx(0.5)
    assert report.label_similarity(p, q, "tv") == pytest.approx(0.5)
    # cosine of (1, 1, 0) and (0, 1, 1) = 1 / 2
    assert report.label_similarity(p, q, "cosine") == pytest.approx(0.5)
    assert report.label_similarity([1, 0], [0, 7], "tv") == pytest.approx(0.0)
    assert report.label_similarity([2, 6], [1, 3], "tv") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        report.label_similarity(p, q, "kl")


def test_pairwise_and_correlations():
    archs = {
        "0": {"a": 1, "b": 1, "c": 1, "d": 1},
        "1": {"a": 1, "b": 1, "c": 1, "d": 2},
        "2": {"a": 2, "b": 2, "c": 2, "d": 2},
    }
    mixes = {"0": np.array([10, 0]), "1": np.array([8, 2]), "2": np.array([0, 10]), "9": [1, 1]}
    pairs = report.pairwise_similarities(archs, mixes)
    assert list(zip(pairs["client-a"], pairs["client-b"])) == [("0", "1"), ("0", "2"), ("1", "2")]
    assert list(pairs["arch-similarity"]) == [0.75, 0.0, 0.25]
    assert list(pairs["label-similarity-tv"]) == pytest.approx([0.8, 0.0, 0.2])
    stats = report.theorem1_statistics(pairs)
    assert stats["pairs"] == 3
    assert stats["spearman-tv"] == pytest.approx(1.0)
    assert stats["pearson-tv"] == pytest.approx(np.corrcoef([0.8, 0.0, 0.2], [0.75, 0, 0.25])[0, 1])
    assert report.spearman([1, 2, 3, 4], [10, 20, 20, 40]) == pytest.approx(
        np.corrcoef([1, 2, 3, 4], [1, 2.5, 2.5, 4])[0, 1]
    )
    assert math.isnan(report.pearson([1, 1, 1], [1, 2, 3]))


# ------------------------------------------------------------------ report
def _write_method(directory: Path, rounds: list[dict], clients: list[dict]) -> None:
    directory.mkdir(parents=True)
    pd.DataFrame(rounds).to_csv(directory / "rounds.csv", index=False)
    pd.DataFrame(clients).to_csv(directory / "clients.csv", index=False)
    config = {"run-config": {"dataset": "embedded", "num-clients": 4, "seed": 0}}
    (directory / "config.json").write_text(json.dumps(config))


def _round(r, mean, std, latency, down, up, wall=1.0):
    return {
        "wall-seconds": wall,
        "round": r,
        "accuracy-mean": mean,
        "accuracy-std": std,
        "latency-total-s": latency,
        "bytes-down": down,
        "bytes-up": up,
    }


def test_report_numbers_from_synthetic_csvs(tmp_path):
    # method "a": best round 2 (0.6), last round 3 (0.5); method "b": evaluated every
    # other round only (NaN means no evaluation).
    _write_method(
        tmp_path / "runs" / "a",
        [
            _round(1, 0.2, 0.1, 5.0, 100, 50, wall=9.0),
            _round(2, 0.6, 0.2, 9.0, 300, 150, wall=2.0),
            _round(3, 0.5, 0.05, 12.5, 200, 100, wall=3.0),
        ],
        [
            {"round": 3, "accuracy": acc, "arch": json.dumps(arch), "client-id": cid}
            for cid, acc, arch in [
                (0, 0.4, {"k": 3, "e": 4}),
                (1, 0.6, {"k": 3, "e": 6}),
                (2, 0.5, {"k": 5, "e": 6}),
                (3, 0.5, {"k": 5, "e": 4}),
            ]
        ],
    )
    _write_method(
        tmp_path / "runs" / "b",
        [
            _round(1, float("nan"), float("nan"), 2.0, 10, 10),
            _round(2, 0.3, 0.1, 4.0, 10, 10),
            _round(3, float("nan"), float("nan"), 6.0, 10, 10),
            _round(4, 0.3, 0.2, 8.0, 10, 30),
        ],
        [{"round": 4, "accuracy": a, "client-id": i} for i, a in enumerate([0.1, 0.5, 0.3, 0.3])],
    )
    (tmp_path / "runs" / "b.log").write_text("...\nwall-seconds b 42\n")
    results = [
        report.load_method(tmp_path / "runs" / "a", "a", "Method A", wall_seconds=12.0),
        report.load_method(tmp_path / "runs" / "b", "b", "Method B"),
    ]
    table = report.summary_table(results).set_index("method")
    a, b = table.loc["a"], table.loc["b"]
    assert (a["rounds"], a["best-round"]) == (3, 2)
    assert (a["acc-last-mean"], a["acc-last-std"]) == (0.5, 0.05)
    assert (a["acc-best-mean"], a["acc-best-std"]) == (0.6, 0.2)
    assert a["latency-total-s"] == 12.5
    assert a["bytes-per-round"] == pytest.approx((150 + 450 + 300) / 3)
    assert a["wall-seconds"] == 12.0
    assert a["round-wall-seconds"] == 3.0  # median of 9, 2, 3
    # ties: the first round with the best mean; the last *evaluated* round
    assert (b["rounds"], b["best-round"]) == (4, 2)
    assert (b["acc-last-mean"], b["acc-last-std"]) == (0.3, 0.2)
    assert b["bytes-per-round"] == pytest.approx(25.0)
    assert b["wall-seconds"] == 42.0  # from b.log

    out = tmp_path / "report"
    written = report.write_report(
        out, results, title="Synthetic", header=["Command: `x`; seed 0."], missing=["c"]
    )
    csv = pd.read_csv(out / "table.csv")
    assert list(csv["method"]) == ["a", "b"]
    assert csv.loc[0, "acc-best-mean"] == 0.6
    md = (out / "table.md").read_text()
    assert "Command: `x`; seed 0." in md.split("| method")[0]
    assert "| Method A | 3 | 0.500 ± 0.050 | 2 | 0.600 ± 0.200 | 12.5 | 0.00 | 3.0 | 12 |" in md
    assert "No results for: `c`." in md
    # Theorem 1 for "a" only (its clients deploy different architectures); the label
    # mixes come from the embedded data's partition for 4 clients, seed 0, alpha 0.5.
    assert "## Theorem 1" in md and "| Method A | 6 |" in md
    pairs = pd.read_csv(out / "theorem1_a.csv")
    assert len(pairs) == 6
    assert pairs.loc[0, "arch-similarity"] == 0.5  # clients 0 and 1: same k, other e
    mixes = report.label_mixes("embedded", 4, 0.5, 0)
    expected = report.label_similarity(mixes["0"], mixes["1"], "tv")
    assert pairs.loc[0, "label-similarity-tv"] == pytest.approx(expected)
    for name in (
        "accuracy_vs_round.png",
        "accuracy_vs_latency.png",
        "client_accuracy.png",
        "theorem1.png",
    ):
        assert written[name].stat().st_size > 1000, name
    # No synthetic run records a modelled latency: that plot is not written.
    assert "accuracy_vs_modelled_latency.png" not in written


def test_tier_table_shows_the_last_round_per_tier(tmp_path):
    run = tmp_path / "fedoras"
    run.mkdir()
    pd.DataFrame(
        {
            "round": [1, 1, 2, 2],
            "tier": [0, 1, 1, 0],
            "budget-params": [100, 200, 200, 100],
            "clients": [2, 3, 3, 2],
            "arch-params": [90, 150, 180, 95],
            "accuracy-min": [0.1, 0.2, 0.45, 0.3],
            "accuracy-max": [0.2, 0.3, 0.75, 0.5],
            "accuracy-mean": [0.15, 0.25, 0.6, 0.4],
        }
    ).to_csv(run / "tiers.csv", index=False)
    result = report.MethodResult("fedoras", "FedorAS", run, pd.DataFrame({"round": [1, 2]}))
    lines = report.tier_lines([result])
    rows = [line for line in lines if line.startswith("| 0 ") or line.startswith("| 1 ")]
    assert rows == [
        "| 0 | 100 | 2 | 95 | 0.300 | 0.400 | 0.500 |",
        "| 1 | 200 | 3 | 180 | 0.450 | 0.600 | 0.750 |",
    ]
    assert "Tier means range from 0.400 to 0.600" in "\n".join(lines)
    other = report.MethodResult("x", "X", tmp_path, pd.DataFrame({"round": [1]}))
    assert report.tier_lines([other]) == []


def test_label_mixes_match_the_clients_data():
    from flwr_pfedrlnas.data.datasets import load_client_data

    mixes = report.label_mixes("embedded", 4, 0.5, 0)
    data = load_client_data("embedded", 2, 4, 0.5, 0)
    counts = np.bincount(np.concatenate([data.train_y, data.test_y]), minlength=10)
    assert list(mixes["2"]) == list(counts)


# ------------------------------------------------------------ config/runner
TINY = f"""
name = "tiny"
title = "Tiny end-to-end reproduction"
[federation-config]
num-supernodes = 4
client-resources-num-cpus = 1
[env]
OMP_NUM_THREADS = "1"
[run-config]
num-server-rounds = 2
num-clients = 4
clients-per-round = 2
seed = 0
supernet-config = '{SUPERNET_CONFIG}'
# Large batches and a 2-batch BatchNorm re-estimation keep the CPU time small.
batch-size = 128
bn-recalibration-batches = 2
head-epochs = 1
[[method]]
name = "pfedrlnas"
label = "PerFedRLNAS"
app = "{REPO / "apps" / "pfedrlnas"}"
run-config = {{ method = "pfedrlnas" }}
[[method]]
name = "fedavg-largest"
label = "FedAvg, largest subnet"
app = "{REPO / "apps" / "pfedrlnas"}"
run-config = {{ method = "fedavg-largest" }}
"""


def test_config_and_run_config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    exp = load_experiment(str(path))
    assert [m.name for m in exp.methods] == ["pfedrlnas", "fedavg-largest"]
    spec = exp.methods[1]
    app = resolve_app(spec.app)
    from flwr_pfedrlnas.experiments.reproduce import app_defaults

    config = method_run_config(exp, spec, app_defaults(app), tmp_path / "x", rounds=3)
    # head-epochs is not a key of apps/pfedrlnas (only of apps/baselines): not passed
    assert "head-epochs" not in config
    assert config["num-server-rounds"] == 3 and config["method"] == "fedavg-largest"
    assert config["results-dir"] == str(tmp_path / "x")
    assert format_config({"a": 1, "b": "x", "c": 0.5, "d": True, "e": '{"k": 1}'}) == (
        "a=1 b='x' c=0.5 d=true e='{\"k\": 1}'"
    )


def test_missing_app_is_named(tmp_path, capsys):
    path = tmp_path / "broken.toml"
    path.write_text(
        '[[method]]\nname = "fednas"\napp = "apps/no-such-app"\n'
        'run-config = { method = "fednas" }\n'
    )
    assert main([str(path), "--out", str(tmp_path / "out")]) == 1
    assert "apps/no-such-app" in capsys.readouterr().err
    assert main([str(path), "--only", "nope"]) == 2


def test_rerunning_one_method_keeps_the_others_in_the_table(tmp_path, monkeypatch):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    out = tmp_path / "out"
    clients = [{"round": 1, "accuracy": 0.5, "client-id": 0}]
    _write_method(out / "pfedrlnas", [_round(1, 0.4, 0.1, 5.0, 10, 10)], clients)
    ran = []

    def fake_run(experiment, out_dir, methods, rounds=None, echo=True, argv=(), resume=False):
        for spec in methods:
            ran.append(spec.name)
            _write_method(out_dir / spec.name, [_round(1, 0.7, 0.1, 6.0, 20, 20)], clients)
        return []

    monkeypatch.setattr("flwr_pfedrlnas.experiments.reproduce.run_experiment", fake_run)
    assert main([str(path), "--out", str(out), "--only", "fedavg-largest"]) == 0
    assert ran == ["fedavg-largest"]
    table = pd.read_csv(out / "table.csv")
    assert list(table["method"]) == ["pfedrlnas", "fedavg-largest"]
    assert list(table["acc-last-mean"]) == [0.4, 0.7]
    assert main([str(path), "--out", str(out), "--only", "pfedrlnas", "--report-only"]) == 0
    assert list(pd.read_csv(out / "table.csv")["method"]) == ["pfedrlnas"]


def test_every_experiment_file_loads():
    files = sorted((REPO / "experiments").glob("*.toml"))
    assert files
    for path in files:
        exp = load_experiment(str(path))
        assert exp.methods and exp.run_config.get("seed") is not None, path


@pytest.mark.slow
def test_reproduce_end_to_end(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "out"
    marker = f"reproduce-test-{uuid.uuid4().hex}"
    env = {**os.environ, "REPRODUCE_TEST_MARKER": marker}
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flwr_pfedrlnas.experiments.reproduce",
            str(config),
            "--out",
            str(out),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        for method in ("pfedrlnas", "fedavg-largest"):
            rounds = pd.read_csv(out / method / "rounds.csv")
            assert list(rounds["round"]) == [1, 2]
            assert (out / method / "clients.csv").is_file()
            assert "wall-seconds" in (out / f"{method}.log").read_text()
        runs = json.loads((out / "runs.json").read_text())
        assert [r["ok"] for r in runs["runs"]] == [True, True]
        assert all(r["status"] in (None, "finished:completed") for r in runs["runs"])
        table = pd.read_csv(out / "table.csv")
        assert list(table["method"]) == ["pfedrlnas", "fedavg-largest"]
        assert (table["rounds"] == 2).all() and table["acc-last-mean"].notna().all()
        md = (out / "table.md").read_text()
        assert "flwr run" in md and "seed 0" in md and "| PerFedRLNAS | 2 |" in md
        for name in ("accuracy_vs_round", "accuracy_vs_latency", "client_accuracy"):
            assert (out / f"{name}.png").stat().st_size > 1000, name
        # --report-only rebuilds the same table without running anything
        assert main([str(config), "--out", str(out), "--report-only"]) == 0
        assert pd.read_csv(out / "table.csv").equals(table)
    finally:
        # nothing the runner started is left: neither by its marker nor by its FLWR_HOME
        runs_json = out / "runs.json"
        homes = []
        if runs_json.is_file():
            homes.append(("FLWR_HOME", json.loads(runs_json.read_text())["flwr-home"]))
        left = kill_leftovers(("REPRODUCE_TEST_MARKER", marker), homes)
        assert not left, left
    print(f"end-to-end reproduction took {time.monotonic() - start:.0f} s")


class _FakeLink:
    """The part of ``LocalSuperLink`` that ``run_method`` uses, without a SuperLink."""

    env = dict(os.environ)

    def run_statuses(self):
        return None


def _fake_flwr(tmp_path: Path, rounds_after: int) -> Path:
    """An executable standing in for ``flwr``: echoes its arguments and completes
    ``rounds.csv`` in the ``results-dir`` of its run config up to ``rounds_after``."""
    script = tmp_path / "flwr"
    script.write_text(
        "#!" + sys.executable + "\n"
        "import re, sys, pathlib\n"
        "cfg = sys.argv[sys.argv.index('--run-config') + 1]\n"
        "print('ARGS', cfg)\n"
        "out = pathlib.Path(re.search(r\"results-dir='([^']*)'\", cfg).group(1))\n"
        "out.mkdir(parents=True, exist_ok=True)\n"
        "path = out / 'rounds.csv'\n"
        "done = len(path.read_text().splitlines()) - 1 if path.exists() else 0\n"
        "with path.open('a') as fh:\n"
        "    fh.write('' if done else 'round\\n')\n"
        f"    fh.writelines(f'{{r}}\\n' for r in range(max(done, 0) + 1, {rounds_after} + 1))\n"
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("resume", [False, True])
def test_resume_keeps_the_interrupted_run_and_passes_resume(tmp_path, monkeypatch, resume):
    from flwr_pfedrlnas.experiments import flwr_runner

    results = tmp_path / "out" / "m"
    results.mkdir(parents=True)
    (results / "rounds.csv").write_text("round\n1\n2\n")  # a run killed after round 2
    (results / "checkpoint").mkdir()
    log = tmp_path / "out" / "m.log"
    log.write_text("first part\n")
    monkeypatch.setattr(flwr_runner, "flwr_binary", lambda: str(_fake_flwr(tmp_path, 4)))
    config = {"num-server-rounds": 4, "results-dir": str(results)}
    record = flwr_runner.run_method(
        _FakeLink(), tmp_path, {}, config, "m", tmp_path / "out", 4, echo=False, resume=resume
    )
    assert record.ok, record.error
    assert list(pd.read_csv(results / "rounds.csv")["round"]) == [1, 2, 3, 4]
    text = log.read_text()
    assert ("resume=true" in text) is resume
    assert text.startswith("first part\n") is resume  # appended, or a fresh log
    assert (results / "checkpoint").is_dir() is resume  # a fresh run starts clean
    assert "resume" not in config  # the caller's config is left as it was


def test_resume_cannot_go_with_report_only(capsys):
    with pytest.raises(SystemExit):
        main(["table2-cpu", "--resume", "--report-only"])
    assert "--resume" in capsys.readouterr().err
