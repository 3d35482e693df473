"""Search diagnostics: the deployed subnet against random subnets and the largest, per client."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_strategy import HANDLERS, NODES, _family

from flwr_pfedrlnas.core.search import SearchConfig
from flwr_pfedrlnas.core.search_space import architecture_from_json
from flwr_pfedrlnas.flower.diagnostics import SearchDiagnostics
from flwr_pfedrlnas.flower.strategy import PerFedRLNAS


def _run(local_grid, tmp_path, subnets, rounds=3, every=0):
    seen = []
    grid = local_grid(NODES, HANDLERS, tamper=lambda msg, r: seen.append((msg, r)) or r)
    strategy = PerFedRLNAS(
        _family(),
        clients_per_round=2,
        evaluate_every=1,
        # No wall-time term: the rewards (and so the policies) are then deterministic.
        search_config=SearchConfig(seed=0, lambda_time=0.0),
        results_dir=str(tmp_path / "results"),
        diagnostic_subnets=subnets,
        diagnose_every=every,
    )
    strategy.start(grid, num_rounds=rounds)
    return strategy, seen


def _evaluations(seen):
    out = []
    for msg, reply in seen:
        if "evaluate" in msg.metadata.message_type:
            arch = json.loads(msg.content["config"]["arch"])
            out.append(
                (msg.content["config"]["server-round"], msg.metadata.dst_node_id, arch, reply)
            )
    return out


def test_search_gain_is_deployed_minus_the_random_subnets_mean(local_grid, tmp_path):
    strategy, seen = _run(local_grid, tmp_path, subnets=2)
    family = _family()
    diag = SearchDiagnostics(family, 2, seed=0).architectures(3)
    random_archs = [a for name, a in diag if name != "largest"]
    per_node: dict[int, dict[str, list[float]]] = {}
    for rnd, node, arch, reply in _evaluations(seen):
        if rnd != 3:
            continue
        acc = reply.content["metrics"]["accuracy"]
        kind = "largest" if arch == family.largest_architecture() else "other"
        if arch in random_archs:
            kind = "random"
        per_node.setdefault(node, {}).setdefault(kind, []).append(acc)
    # Every client tested 2 random subnets and the largest besides its deployed one.
    assert all(len(v.get("random", [])) == 2 for v in per_node.values()), per_node
    clients = pd.read_csv(tmp_path / "results" / "clients.csv")
    rounds = pd.read_csv(tmp_path / "results" / "rounds.csv")
    # Only the last round is diagnosed by default.
    assert rounds["search-gain"].isna().tolist() == [True, True, False]
    gains = clients["accuracy"] - clients["random-subnet-accuracy"]
    np.testing.assert_allclose(clients["search-gain"], gains)
    assert rounds["search-gain"].iloc[-1] == pytest.approx(gains.mean())
    for node, cid in strategy.node_to_client.items():
        row = clients[clients["client-id"].astype(str) == cid].iloc[0]
        assert row["random-subnet-accuracy"] == pytest.approx(np.mean(per_node[node]["random"]))
        assert row["largest-subnet-accuracy"] == pytest.approx(per_node[node]["largest"][-1])
        assert architecture_from_json(row["arch"], family.search_space) is not None


def test_diagnostics_never_change_the_search(local_grid, tmp_path):
    with_diag, _ = _run(local_grid, tmp_path / "a", subnets=3, every=1)
    without, seen = _run(local_grid, tmp_path / "b", subnets=0)
    a, b = with_diag.search, without.search
    assert all(np.array_equal(a.supernet[k], b.supernet[k]) for k in a.supernet)
    assert {c: p.state_dict() for c, p in a.policies.items()} == {
        c: p.state_dict() for c, p in b.policies.items()
    }
    # Off: one evaluation per client and round, and no diagnostic columns filled.
    assert len(_evaluations(seen)) == 3 * len(NODES)
    assert pd.read_csv(tmp_path / "b" / "results" / "rounds.csv")["search-gain"].isna().all()


def test_bad_diagnostic_settings_are_named():
    with pytest.raises(ValueError, match="diagnostic-subnets must be an integer >= 0, got -1"):
        SearchDiagnostics(_family(), -1)
    with pytest.raises(ValueError, match="diagnose-every must be an integer >= 0, got 1.5"):
        SearchDiagnostics(_family(), 2, 1.5)
