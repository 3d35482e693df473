"""The converged tables' stopping rule, on hand-computed rounds.csv frames."""

from __future__ import annotations

import math

import pandas as pd

from flwr_pfedrlnas.experiments.report_tables import (
    MethodResult,
    convergence,
    markdown_table,
    summary_table,
)


def _rounds(accuracies: dict[int, float], last: int) -> pd.DataFrame:
    rows = [
        {"round": r, "accuracy-mean": accuracies.get(r, float("nan"))} for r in range(1, last + 1)
    ]
    return pd.DataFrame(rows)


def test_gain_of_the_last_tenth_over_the_tenth_before():
    # 50 rounds, evaluated every 5: the last window is rounds 46-50 (only 50 evaluated),
    # the one before 41-45 (only 45). 0.80 - 0.78 = 0.02: not converged at 1 point.
    acc = {r: 0.5 + 0.006 * r for r in range(5, 51, 5)}
    acc[45], acc[50] = 0.78, 0.80
    gain, converged = convergence(_rounds(acc, 50))
    assert math.isclose(gain, 0.02) and converged is False
    # Rounds 91-100 mean 0.85, 81-90 mean 0.845: converged.
    acc = {r: 0.845 for r in range(81, 91)} | {r: 0.85 for r in range(91, 101)}
    gain, converged = convergence(_rounds(acc, 100))
    assert math.isclose(gain, 0.005) and converged is True
    # A falling curve has converged too (no further gain).
    gain, converged = convergence(_rounds({90: 0.9, 100: 0.7}, 100))
    assert math.isclose(gain, -0.2) and converged is True


def test_too_few_evaluations_are_undetermined_and_said_so(tmp_path):
    # 20 rounds evaluated every 5: the window before (17-18] holds no evaluation.
    rounds = _rounds({5: 0.5, 10: 0.6, 15: 0.65, 20: 0.7}, 20)
    gain, converged = convergence(rounds)
    assert math.isnan(gain) and converged is None
    table = summary_table([MethodResult("m", "M", tmp_path, rounds)])
    assert table.loc[0, "converged"] is None
    assert "— (too few evaluations)" in markdown_table(table)[-1]


def test_the_table_reports_the_rule():
    acc = {r: 0.845 for r in range(81, 91)} | {r: 0.85 for r in range(91, 101)}
    table = summary_table([MethodResult("m", "M", None, _rounds(acc, 100))])  # type: ignore[arg-type]
    assert bool(table.loc[0, "converged"]) is True
    assert markdown_table(table)[-1].endswith("| 0.005 (yes) |")
