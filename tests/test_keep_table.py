"""scripts/keep_table.py: which blocks each client keeps, read from a run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from script_loader import load_script


def _module():
    return load_script("keep_table")


def _run(root: Path, name: str, state: dict, archs: dict[str, dict] | None = None) -> None:
    (root / name / "checkpoint").mkdir(parents=True)
    (root / name / "checkpoint" / "state.json").write_text(json.dumps(state))
    if archs is not None:
        rows = [{"client-id": c, "arch": json.dumps(a)} for c, a in archs.items()]
        pd.DataFrame(rows).to_csv(root / name / "clients.csv", index=False)


def test_reads_the_kept_blocks_and_passes_over_a_baseline(tmp_path):
    # Logits (0, ln 3): P(personal) = 3 / (1 + 3) = 0.75; (0, 0): 0.5.
    policies = {
        "0": {
            "alpha": {"keep.classifier": [0.0, math.log(3)], "stage1.kernel": [0, 0]},
            "steps": 7,
        },
        "1": {"alpha": {"keep.classifier": [0.0, 0.0], "stage1.kernel": [0, 0]}, "steps": 5},
    }
    search = {"completed_rounds": 10, "policies": policies}
    archs = {"0": {"keep.classifier": "personal"}, "1": {"keep.classifier": "shared"}}
    _run(tmp_path, "keep-s0", search, archs)
    _run(tmp_path, "fedrep-s0", {"method": "fedrep", "rounds-done": 10})  # no policies
    rows = _module().collect(tmp_path)
    assert list(rows["run"]) == ["keep-s0", "keep-s0"]
    assert list(rows["block"]) == ["classifier", "classifier"]
    assert rows["p-personal"].tolist() == [0.75, 0.5]
    assert list(rows["deployed"]) == ["personal", "shared"]
    assert list(rows["seed"]) == [0, 0] and list(rows["policy-steps"]) == [7, 5]


def test_a_run_whose_checkpoint_is_gone_keeps_its_earlier_rows(tmp_path):
    module = _module()
    search = {
        "completed_rounds": 4,
        "policies": {"0": {"alpha": {"keep.classifier": [0.0, 0.0]}, "steps": 2}},
    }
    _run(tmp_path, "keep-s1", search, {"0": {"keep.classifier": "shared"}})
    (tmp_path / "keep-s0").mkdir()  # its checkpoint was not kept
    earlier = pd.DataFrame(
        [
            ["keep-s0", "keep", 0, 100, "7", "classifier", 0.9, "personal", 51],
            ["keep-s1", "keep", 1, 2, "0", "classifier", 0.1, "shared", 1],  # superseded
            ["gone-s0", "gone", 0, 100, "0", "classifier", 0.2, "shared", 9],  # folder gone
        ],
        columns=[
            "run",
            "variant",
            "seed",
            "rounds",
            "client-id",
            "block",
            "p-personal",
            "deployed",
            "policy-steps",
        ],
    )
    earlier.to_csv(tmp_path / "keep.csv", index=False)
    rows = module.collect(tmp_path)
    assert list(rows["run"]) == ["keep-s0", "keep-s1"]
    assert list(rows["client-id"]) == ["7", "0"]  # read as text, as the fresh rows are
    assert rows["p-personal"].tolist() == [0.9, 0.5]  # keep-s1 read anew from its checkpoint
    assert list(rows["rounds"]) == [100, 4]


def test_a_run_with_neither_gives_its_deployed_choices(tmp_path):
    module = _module()
    (tmp_path / "keep-s3").mkdir()

    def arch(keep: str) -> str:
        return json.dumps({"stage1.kernel": 3, "keep.classifier": keep})

    pd.DataFrame(
        [
            {"round": 5, "client-id": "0", "arch": arch("shared"), "policy-steps": 2},
            {"round": 10, "client-id": "0", "arch": arch("personal"), "policy-steps": 5},
            {"round": 10, "client-id": "1", "arch": arch("shared"), "policy-steps": 4},
        ]
    ).to_csv(tmp_path / "keep-s3" / "clients.csv", index=False)
    (tmp_path / "fedrep-s3").mkdir()  # a baseline: no clients.csv arch, nothing kept
    rows = module.collect(tmp_path)
    assert list(rows["deployed"]) == ["personal", "shared"]  # the last evaluation only
    assert list(rows["rounds"]) == [10, 10] and list(rows["policy-steps"]) == [5, 4]
    assert rows["p-personal"].isna().all()
    summary = module.summarise(rows)
    assert summary.iloc[0]["clients deploying it personal"] == "50%"
    assert summary.iloc[0]["mean P(personal)"] == "—"
