"""The converged tables' stopping rule, on hand-computed rounds.csv frames."""

from __future__ import annotations

import math

import pandas as pd

from flwr_pfedrlnas.experiments.report_tables import (
    MethodResult,
    convergence,
    markdown_table,
    summary_table,
    trained_accuracy,
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
    # No train-accuracy-mean column: the after-training cell says so.
    assert markdown_table(table)[-1].endswith("| 0.005 (yes) | — |")


def test_a_fine_tuned_last_evaluation_is_left_out_of_the_rule():
    # Evaluated every 5 of 100 rounds; round 100 fine-tunes 5 epochs first and jumps to
    # 0.95. The rule compares round 95 (0.851) with rounds 85 and 90 (0.845, 0.849).
    acc = {r: 0.80 for r in range(5, 81, 5)} | {85: 0.845, 90: 0.849, 95: 0.851, 100: 0.95}
    rounds = _rounds(acc, 100)
    rounds["finetune-epochs"] = [5 if r == 100 else 0 for r in rounds["round"]]
    gain, converged = convergence(rounds)
    assert math.isclose(gain, 0.851 - 0.847) and converged is True
    # Without the column the jump counts: (0.851 + 0.95) / 2 - 0.847.
    gain, converged = convergence(rounds.drop(columns="finetune-epochs"))
    assert math.isclose(gain, 0.9005 - 0.847) and converged is False


def test_accuracy_after_local_training_is_the_last_tenth_of_the_replies():
    rounds = _rounds({100: 0.7}, 100)
    rounds["train-accuracy-mean"] = [0.5 + r / 1000 for r in rounds["round"]]
    rounds.loc[rounds["round"] == 95, "train-accuracy-mean"] = float("nan")  # no reply
    # Rounds 91-100 without 95: mean of 0.591..0.600 less 0.595.
    expected = (sum(0.5 + r / 1000 for r in range(91, 101)) - 0.595) / 9
    assert math.isclose(trained_accuracy(rounds), expected)
    table = summary_table([MethodResult("m", "M", None, rounds)])  # type: ignore[arg-type]
    assert math.isclose(table.loc[0, "acc-trained-mean"], expected)
    assert markdown_table(table)[-1].endswith(f"| {expected:.3f} |")
    assert math.isnan(trained_accuracy(rounds.drop(columns="train-accuracy-mean")))
