"""Rows run at several seeds: grouping, mean ± std over seeds, time to the best baseline."""

from __future__ import annotations

import math

import pandas as pd

from flwr_pfedrlnas.experiments.report_seeds import (
    seed_groups,
    seed_markdown,
    seed_table,
    time_to_reach,
)
from flwr_pfedrlnas.experiments.report_tables import MethodResult


def _run(name, method, curve, std, trained, modelled=None):
    """A 20-round run evaluated at the rounds of ``curve``; latency 10 s per round,
    modelled latency ``modelled`` s per round (no such column when ``None``)."""
    rows = [
        {
            "round": r,
            "accuracy-mean": curve.get(r, float("nan")),
            "accuracy-std": std if r in curve else float("nan"),
            "train-accuracy-mean": trained,
            "latency-total-s": 10.0 * r,
            **({} if modelled is None else {"modelled-latency-total-s": modelled * r}),
        }
        for r in range(1, 21)
    ]
    label = f"{name.rpartition('-s')[0]} label (seed {name.rpartition('-s')[2]})"
    return MethodResult(name, label, None, pd.DataFrame(rows), run_config={"method": method})  # type: ignore[arg-type]


def test_groups_by_the_seed_suffix_in_order():
    runs = [
        _run("a-s0", "pfedrlnas", {20: 0.5}, 0.1, 0.4),
        _run("b-s0", "fedrep", {20: 0.5}, 0.1, 0.4),
        _run("a-s1", "pfedrlnas", {20: 0.5}, 0.1, 0.4),
        MethodResult("plain", "plain", None, pd.DataFrame()),  # type: ignore[arg-type]
    ]
    groups = seed_groups(runs)
    assert list(groups) == ["a", "b"]
    assert [s for s, _ in groups["a"]] == [0, 1]


def test_mean_and_std_over_seeds_and_the_time_to_the_best_baseline():
    runs = [
        # Ours: seeds end at 0.80 and 0.90 (mean 0.85, population std 0.05); the
        # baseline's best mean is 0.82, reached at round 18 (180 s) and round 19 (190 s).
        # Modelled: 4 s per round for ours, 5 for b1-s0, none for b1-s1 and b2 (runs
        # before the model).
        _run("ours-s0", "pfedrlnas", {17: 0.70, 18: 0.79, 19: 0.82, 20: 0.80}, 0.04, 0.6, 4.0),
        _run("ours-s1", "pfedrlnas", {17: 0.70, 18: 0.83, 19: 0.85, 20: 0.90}, 0.06, 0.8, 4.0),
        # Baselines: b1 ends at 0.82 and 0.82; b2 at 0.70 (never the target).
        _run("b1-s0", "fedrep", {18: 0.81, 19: 0.815, 20: 0.82}, 0.10, 0.5, 5.0),
        _run("b1-s1", "fedrep", {18: 0.81, 19: 0.815, 20: 0.82}, 0.12, 0.5),
        _run("b2-s0", "local", {19: 0.69, 20: 0.70}, 0.2, 0.5),
    ]
    table = seed_table(runs).set_index("row")
    assert math.isclose(table.loc["ours", "deployed-mean"], 0.85)
    assert math.isclose(table.loc["ours", "deployed-std-seeds"], 0.05)
    assert math.isclose(table.loc["ours", "std-clients"], 0.05)
    assert math.isclose(table.loc["ours", "trained-mean"], 0.7)
    assert math.isclose(table.loc["ours", "trained-std-seeds"], 0.1)
    assert math.isclose(table.loc["ours", "target"], 0.82)
    # Seed 0 first reaches 0.82 at round 19 (190 s), seed 1 at round 18 (180 s).
    assert math.isclose(table.loc["ours", "time-to-target-s"], 185.0)
    assert math.isclose(table.loc["b1", "time-to-target-s"], 200.0)
    assert math.isclose(table.loc["ours", "modelled-time-to-target-s"], (19 * 4 + 18 * 4) / 2)
    assert math.isclose(table.loc["b1", "modelled-time-to-target-s"], 100.0)  # seed 0 only
    assert table.loc["b1", "modelled-seeds"] == 1
    assert math.isclose(table.loc["ours", "modelled-latency-total-s"], 80.0)
    assert math.isnan(table.loc["b2", "modelled-latency-total-s"])
    assert math.isnan(table.loc["b2", "deployed-std-seeds"])  # one seed: no spread
    assert math.isnan(table.loc["b2", "time-to-target-s"])
    # Rounds 19-20 against 17-18: ours-s0 gains 0.065, ours-s1 0.11; b1's window before
    # (17, 18] holds only 0.81: gain 0.0075 (converged).
    assert table.loc["ours", "converged"] == "0/2"
    assert table.loc["b1", "converged"] == "2/2"
    assert table.loc["b2", "converged"] == "0/1 (1 undetermined)"
    lines = seed_markdown(table.reset_index())
    assert "| ours label | 0 1 | 0.850 ± 0.050 | 0.050 | 0.700 ± 0.100 | 0/2 |" in lines[2]
    assert lines[2].endswith("| 185 | 80 | 74 | — |")
    assert lines[3].endswith("| 200 | 100 (1 of 2 seeds) | 100 (1 of 2 seeds) | — |")
    assert lines[4].endswith("| not reached | — | — | — |")
    assert "Best baseline's accuracy: 0.820" in lines[-1]


def test_time_to_reach_is_nan_when_never_reached():
    rounds = _run("x-s0", "fedrep", {10: 0.5, 20: 0.6}, 0.1, 0.5).rounds
    assert time_to_reach(rounds, 0.6) == 200.0
    assert math.isnan(time_to_reach(rounds, 0.61))


def test_seed_plot_has_the_modelled_time_panel(tmp_path):
    from flwr_pfedrlnas.experiments.report_seeds import plot_seed_curves

    runs = [
        _run("a-s0", "pfedrlnas", {10: 0.5, 20: 0.6}, 0.1, 0.5, 4.0),
        _run("a-s1", "pfedrlnas", {10: 0.5, 20: 0.7}, 0.1, 0.5),  # predates the model
        _run("b-s0", "fedrep", {10: 0.4, 20: 0.6}, 0.1, 0.5),
    ]
    path = plot_seed_curves(runs, tmp_path / "seeds.png", "t")
    assert path is not None and path.stat().st_size > 1000
    assert plot_seed_curves(runs[2:], tmp_path / "none.png", "t").stat().st_size > 1000
