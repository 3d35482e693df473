"""The synthetic search benchmark: its federation's effects and the recovery at a small size."""

from __future__ import annotations

import csv
import dataclasses
import itertools

import numpy as np
import pytest

from flwr_pfedrlnas.core.search_config import SearchConfig
from flwr_pfedrlnas.experiments.search_bench import (
    SETTINGS,
    FederationSetting,
    SearchSpaceOnlyFamily,
    SyntheticFederation,
    run_variant,
    uniform_oracle,
)
from flwr_pfedrlnas.experiments.search_bench_output import (
    markdown_table,
    summarise,
    write_outputs,
)
from flwr_pfedrlnas.supernets import cpu_preset, get_supernet

SMALL = {"num_clients": 4, "clients_per_round": 2}


def test_planted_effect_has_mean_zero_and_the_gap_at_the_best():
    setting = FederationSetting(family="elastic-cnn", family_knobs={}, arch_gap=0.3)
    fed = SyntheticFederation(setting, seed=3)
    space = fed.space
    archs = [
        space.from_indices(list(idx)) for idx in itertools.product(*[range(len(d)) for d in space])
    ]
    for cid in fed.clients:
        effects = [fed.effect(cid, a) for a in archs]
        assert np.mean(effects) == pytest.approx(0.0, abs=1e-12)
        best = space.from_indices([fed.planted[cid][d.name] for d in space])
        assert fed.effect(cid, best) == pytest.approx(0.3) == pytest.approx(max(effects))
        assert all(fed.recovered(cid, best))


def test_default_space_is_the_cpu_preset_of_mobilenetv3():
    setting = SETTINGS["measured"]
    space = get_supernet("mobilenetv3", **cpu_preset("mobilenetv3")).search_space
    assert [(d.name, d.choices) for d in setting.search_space()] == [
        (d.name, d.choices) for d in space
    ]
    assert setting.rounds == 150  # 75 updates for each of 10 clients, 5 per round
    fed = SyntheticFederation(setting, seed=0)
    assert [d.name for d in fed.searched] == [d.name for d in space if len(d) > 1]
    family = SearchSpaceOnlyFamily.like(get_supernet("mobilenetv3", **cpu_preset("mobilenetv3")))
    assert family.supernet_shapes() == {"weight": (1,)}


def test_recommended_recovers_clearly_more_than_chance_on_clear():
    setting = dataclasses.replace(SETTINGS["clear"], updates_per_client=50, **SMALL)
    runs = [run_variant("ours", SearchConfig.recommended(), setting, s) for s in (0, 1)]
    recovered = np.mean([r.recovered for r in runs])
    assert runs[0].chance == pytest.approx(1 / 3)
    assert recovered >= runs[0].chance + 0.3
    assert np.mean([r.regret_argmax for r in runs]) < 0.5 * setting.arch_gap
    assert min(r.min_updates for r in runs) >= 30


def test_paper_variant_runs_and_its_figures_are_recorded():
    setting = dataclasses.replace(SETTINGS["clear"], updates_per_client=50, **SMALL)
    run = run_variant("paper", SearchConfig(), setting, 0)
    assert 0.0 <= run.recovered <= 1.0 and 0.0 <= run.entropy_fraction <= 1.0
    assert len(run.entropy_by_round) == setting.rounds
    assert run.regret_argmax <= 2 * setting.arch_gap


def test_without_a_planted_difference_recommended_keeps_its_entropy():
    setting = dataclasses.replace(SETTINGS["null"], updates_per_client=75, **SMALL)
    runs = [run_variant("ours", SearchConfig.recommended(), setting, s) for s in (0, 1)]
    assert np.mean([r.entropy_fraction for r in runs]) >= 0.75
    assert all(r.regret_argmax == 0.0 for r in runs)


def test_runs_are_seeded():
    setting = dataclasses.replace(SETTINGS["measured"], updates_per_client=10, **SMALL)
    a = run_variant("ours", SearchConfig.recommended(), setting, 4)
    b = run_variant("ours", SearchConfig.recommended(), setting, 4)
    c = run_variant("ours", SearchConfig.recommended(), setting, 5)
    assert a == b and a.entropy_by_round != c.entropy_by_round


def test_uniform_reference_recovers_with_clear_signal():
    setting = dataclasses.replace(SETTINGS["clear"], updates_per_client=50, **SMALL)
    ref = uniform_oracle(setting, 0)
    assert ref.recovered >= 0.8 and ref.mean_updates == 50


def test_outputs(tmp_path):
    setting = dataclasses.replace(SETTINGS["clear"], updates_per_client=5, **SMALL)
    results = [
        run_variant(name, cfg, setting, seed)
        for name, cfg in (("paper", SearchConfig()), ("ours", SearchConfig.recommended()))
        for seed in (0, 1)
    ]
    written = write_outputs(results, tmp_path, command="bench")
    assert {p.name for p in written} == {
        "runs.csv",
        "summary.csv",
        "table.md",
        "entropy.png",
        "entropy_by_round.csv",
    }
    with open(tmp_path / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    with open(tmp_path / "entropy_by_round.csv") as f:
        assert len(list(csv.DictReader(f))) == 4 * setting.rounds
    summary = summarise(results)
    ours = next(r for r in summary if r["variant"] == "ours")
    assert ours["seeds"] == 2
    assert ours["recovered"] == pytest.approx(np.mean([r.recovered for r in results[2:]]))
    assert "| ours |" in markdown_table(summary, "clear")


def test_bad_setting_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="clients_per_round is 5, more than num_clients 4"):
        FederationSetting(num_clients=4, clients_per_round=5)
    with pytest.raises(ValueError, match="noise_sd must be a number >= 0, got -1"):
        FederationSetting(noise_sd=-1)
