"""Federated-NAS baselines: the mixed DARTS forward, DARTS's derivation, FedNAS's and
FedRLNAS's core steps, and a two-round Flower simulation of all four methods."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from baseline_checks import (
    NODES,
    embedded_loaders,
    message_kind,
    nas_handlers,
    simulate_in_turn,
    synthetic_loaders,
    tiny_darts,
)
from flwr.app import Context, Message

from flwr_pfedrlnas.baselines.nas import (
    NAS_BASELINES,
    FedNAS,
    FedRLNAS,
    MixedDARTS,
    derive_architecture,
    make_nas_baseline,
    onehot_weights,
    zero_alphas,
)
from flwr_pfedrlnas.baselines.nas.base import weighted_mean
from flwr_pfedrlnas.baselines.nas.fednas import ALPHAS
from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.core.search_space import architecture_from_json
from flwr_pfedrlnas.flower import messages as m

OPS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]
FAMILY = tiny_darts(OPS)


def _synthetic(ctx: Context, batch_size: int = 16):
    """24-40 train and 16 test 8x8 images per client, labels tied to the client."""
    pid = int(ctx.node_config["partition-id"])
    return synthetic_loaders(pid, 24 + 8 * pid, 16, batch_size)


HANDLERS = nas_handlers(_synthetic)


def _round(msg: Message) -> int:
    return int(msg.content["config"].get(m.SERVER_ROUND, 0))


def _recording_grid(local_grid):
    replies: list[tuple[Message, Message]] = []

    def keep(msg, reply):
        replies.append((msg, reply))
        return reply

    return local_grid(NODES, HANDLERS, tamper=keep), replies


def _kw(**extra):
    kw = dict(clients_per_round=2, min_available_nodes=3, batch_size=16, seed=0)
    kw.update(extra)
    return kw


# ---------------------------------------------------------------------- DARTS relaxation
def test_mixed_forward_uniform_and_onehot_match_supernet_and_subnet():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 8, 8)
    mixed = MixedDARTS(FAMILY, weights=onehot_weights(FAMILY, {}))
    mixed.eval()
    assert torch.allclose(mixed(x), mixed.net(x), atol=1e-6)  # uniform = the supernet's mean
    arch = FAMILY.search_space.sample(np.random.default_rng(3))
    arch["normal.edge0"] = "sep_conv_3x3"
    mixed.set_weights(onehot_weights(FAMILY, arch))
    state = {k: v.numpy() for k, v in mixed.net.state_dict().items()}
    subnet = FAMILY.build_subnet(arch)
    sub_state = extract_subnet(FAMILY, state, arch)
    subnet.load_state_dict({k: torch.from_numpy(v) for k, v in sub_state.items()})
    subnet.eval()
    assert torch.allclose(mixed(x), subnet(x), atol=1e-5)


def test_onehot_weights_mix_undecided_edges_uniformly():
    w = onehot_weights(FAMILY, {"normal.edge1": "skip_connect"})
    assert w["normal"][1].tolist() == [0, 0, 1, 0, 0]
    assert np.allclose(w["normal"][0], 1 / len(OPS))
    assert np.allclose(w["reduce"], 1 / len(OPS))


def test_derive_architecture_is_darts_rule():
    """Per node: the two incoming edges with the strongest non-'none' operation survive,
    each with that operation; 'none' never wins even with the largest logit."""
    alphas = zero_alphas(FAMILY)
    a = alphas["normal"]  # 2 steps: node 0 reads edges 0, 1; node 1 reads edges 2, 3, 4
    a[0, OPS.index("none")] = 5.0  # 'none' strongest, must be skipped
    a[0, OPS.index("skip_connect")] = 1.0
    a[1, OPS.index("dil_conv_3x3")] = 0.5
    a[2, OPS.index("sep_conv_3x3")] = 2.0
    a[3, OPS.index("max_pool_3x3")] = 0.1  # the weakest edge of node 1
    a[4, OPS.index("dil_conv_3x3")] = 1.5
    arch = derive_architecture(FAMILY, alphas)
    assert [arch[f"normal.edge{k}"] for k in range(5)] == [
        "skip_connect",
        "dil_conv_3x3",
        "sep_conv_3x3",
        "none",
        "dil_conv_3x3",
    ]
    # Uniform reduce logits: ties go to the first operation and the first edges.
    assert [arch[f"reduce.edge{k}"] for k in range(5)] == [
        "max_pool_3x3",
        "max_pool_3x3",
        "max_pool_3x3",
        "max_pool_3x3",
        "none",
    ]


def test_weighted_mean_by_hand():
    a = {"w": np.array([1.0, 2.0], dtype=np.float32), "n": np.array(3, dtype=np.int64)}
    b = {"w": np.array([4.0, 8.0], dtype=np.float32), "n": np.array(6, dtype=np.int64)}
    out = weighted_mean([a, b], [1, 2])
    assert out["w"].tolist() == [3.0, 6.0] and out["w"].dtype == np.float32
    assert int(out["n"]) == 5
    with pytest.raises(ValueError, match="positive"):
        weighted_mean([a, b], [1, 0])


# ---------------------------------------------------------------------- FedNAS
def test_fednas_averages_weights_and_architecture_by_examples(local_grid):
    grid, replies = _recording_grid(local_grid)
    strategy = FedNAS(FAMILY, search_rounds=1, evaluate_every=10, **_kw())
    before = {k: v.copy() for k, v in strategy.supernet.items()}
    strategy.start(grid, num_rounds=1)
    train = [(msg, r) for msg, r in replies if message_kind(msg) == "train"]
    assert len(train) == 2
    for msg, _ in train:  # the whole supernet and the logits go to every client
        assert set(msg.content["arrays"].keys()) == set(before)
        assert msg.content["config"]["nas-step"] == "darts-search"
    n = [float(r.content["metrics"][m.NUM_EXAMPLES]) for _, r in train]
    assert n[0] != n[1]
    for cell in ("normal", "reduce"):
        got = [r.content[ALPHAS][cell].numpy().astype(np.float64) for _, r in train]
        want = (n[0] * got[0] + n[1] * got[1]) / (n[0] + n[1])
        np.testing.assert_allclose(strategy.alphas[cell], want, rtol=1e-6, atol=1e-7)
        assert not np.allclose(got[0], 0)  # the clients did move their logits
    key = next(k for k in before if k.endswith("weight") and "edges" in k)
    got = [r.content["arrays"][key].numpy().astype(np.float64) for _, r in train]
    np.testing.assert_allclose(
        strategy.supernet[key], (n[0] * got[0] + n[1] * got[1]) / sum(n), rtol=1e-5, atol=1e-7
    )
    # The search is over: the architecture is fixed to DARTS's derivation of the mean logits.
    assert strategy.arch == derive_architecture(FAMILY, strategy.alphas)


def test_fednas_then_trains_one_derived_architecture_for_everyone(local_grid):
    grid, replies = _recording_grid(local_grid)
    strategy = FedNAS(FAMILY, search_rounds=1, **_kw())
    strategy.start(grid, num_rounds=2)
    arch = strategy.arch
    round2 = [msg for msg, _ in replies if _round(msg) == 2]
    assert {message_kind(msg) for msg in round2} == {"train", "evaluate"}
    for msg in round2:
        assert architecture_from_json(msg.content["config"][m.ARCH], FAMILY.search_space) == arch
        assert set(msg.content["arrays"].keys()) == set(FAMILY.subnet_shapes(arch))
    rounds = strategy.recorder.rounds_frame()
    assert list(rounds["phase"]) == ["search", "train"]
    # Search rounds move the whole supernet; training rounds only the subnet.
    assert rounds["bytes-down"].iloc[0] > 2 * rounds["bytes-down"].iloc[1]
    assert rounds["num-evaluated"].tolist() == [3, 3]


def test_fednas_refuses_a_reply_with_nan_logits(local_grid):
    def tamper(msg, reply):
        if message_kind(msg) == "train" and msg.metadata.dst_node_id == 11:
            bad = reply.content[ALPHAS]["normal"].numpy().copy()
            bad[0, 0] = np.nan
            reply.content[ALPHAS] = m.arrays_to_record(
                {"normal": bad, "reduce": reply.content[ALPHAS]["reduce"].numpy()}
            )
        return reply

    nodes = {11: {"partition-id": 0}, 22: {"partition-id": 1}}
    grid = local_grid(nodes, HANDLERS, tamper=tamper)
    strategy = FedNAS(FAMILY, search_rounds=1, evaluate_every=10, **_kw(min_available_nodes=2))
    strategy.start(grid, num_rounds=1)
    row = strategy.recorder.rounds_frame().iloc[0]
    assert row["num-accepted"] == 1 and row["num-failed"] == 1
    assert "NaN" in row["failures"] and "'normal'" in row["failures"]


# ---------------------------------------------------------------------- FedRLNAS
def test_fedrlnas_one_shared_policy_moved_by_the_mean_reinforce_gradient(local_grid):
    grid, replies = _recording_grid(local_grid)
    strategy = FedRLNAS(
        FAMILY,
        warmup_rounds=1,
        search_rounds=1,
        policy_lr=1.0,
        policy_optimizer="sgd",
        evaluate_every=10,
        **_kw(),
    )
    strategy.start(grid, num_rounds=2)
    search = [(msg, r) for msg, r in replies if message_kind(msg) == "train" and _round(msg) == 2]
    accs = [float(r.content["metrics"][m.ACCURACY]) for _, r in search]
    archs = [
        architecture_from_json(msg.content["config"][m.ARCH], FAMILY.search_space)
        for msg, _ in search
    ]
    mean = sum(accs) / 2  # the first search round's baseline is its own mean accuracy
    for dim in FAMILY.search_space:
        p = np.full(len(dim), 1 / len(dim))  # the policy was uniform before the step
        want = np.zeros(len(dim))
        for acc, arch in zip(accs, archs):
            onehot = np.eye(len(dim))[dim.index(arch[dim.name])]
            want += (acc - mean) * (onehot - p) / 2
        np.testing.assert_allclose(strategy.policy.alpha[dim.name], want, atol=1e-12)
    assert strategy.baseline == pytest.approx(mean)
    rows = strategy.recorder.rounds_frame()
    assert list(rows["phase"]) == ["warmup", "search"]


def test_fedrlnas_trains_and_deploys_the_argmax_for_everyone(local_grid):
    grid, replies = _recording_grid(local_grid)
    strategy = FedRLNAS(FAMILY, warmup_rounds=1, search_rounds=1, **_kw())
    strategy.start(grid, num_rounds=3)
    best = strategy.policy.argmax()
    round3 = [msg for msg, _ in replies if _round(msg) == 3]
    assert len(round3) == 2 + 3
    for msg in round3:  # training and every client's test: the one global argmax
        assert architecture_from_json(msg.content["config"][m.ARCH], FAMILY.search_space) == best
    clients = strategy.recorder.clients_frame()
    assert clients["arch"].nunique() == 1
    assert list(strategy.recorder.rounds_frame()["phase"]) == ["warmup", "search", "train"]


def test_fedrlnas_refuses_a_subnet_of_another_shape(local_grid):
    def tamper(msg, reply):
        if message_kind(msg) == "train" and msg.metadata.dst_node_id == 22:
            state = {k: v.numpy() for k, v in reply.content["arrays"].items()}
            key = next(iter(state))
            state[key] = np.zeros((1, 2, 3), dtype=np.float32)
            reply.content["arrays"] = m.arrays_to_record(state)
        return reply

    grid = local_grid(NODES, HANDLERS, tamper=tamper)
    strategy = FedRLNAS(FAMILY, warmup_rounds=1, search_rounds=0, evaluate_every=10, **_kw())
    before = {k: v.copy() for k, v in strategy.supernet.items()}
    strategy.start(grid, num_rounds=1)
    row = strategy.recorder.rounds_frame().iloc[0]
    if "22" in row["sampled"].split():
        assert row["num-failed"] == 1 and "shape (1, 2, 3)" in row["failures"]
    assert set(strategy.supernet) == set(before)


def test_make_nas_baseline_names_the_unknown_method():
    with pytest.raises(ValueError, match="'fedfoo'"):
        make_nas_baseline("fedfoo", FAMILY)
    assert set(NAS_BASELINES) == {"fednas", "fedrlnas", "spider", "fedoras"}


# ---------------------------------------------------------------------- Flower simulation
SIM_CLIENTS = 4
SIM_FAMILY = tiny_darts(["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"])


def _embedded(context: Context, batch_size: int):
    # Small shards (60 partitions) keep the run short.
    return embedded_loaders(int(context.node_config["partition-id"]), 60, batch_size, alpha=0.5)


@pytest.mark.slow
def test_two_round_simulation_of_every_nas_method(tmp_path):
    """One Flower simulation in which the ServerApp runs each method for two rounds."""
    knobs = {
        "fednas": {"search_rounds": 1},
        "fedrlnas": {"warmup_rounds": 1, "search_rounds": 1},
        "spider": {"warmup": 0, "edges_per_step": 2},
        "fedoras": {"supernet_rounds": 1, "num_tiers": 2, "num_candidates": 2},
    }
    strategies = {
        method: make_nas_baseline(
            method,
            SIM_FAMILY,
            clients_per_round=2,
            min_available_nodes=SIM_CLIENTS,
            batch_size=32,
            results_dir=str(tmp_path / method),
            **kw,
        )
        for method, kw in knobs.items()
    }
    simulate_in_turn(strategies, _embedded, SIM_CLIENTS)
    supernet_bytes = sum(v.nbytes for v in SIM_FAMILY.init_supernet_state(0).values())
    for method in knobs:
        rounds = pd.read_csv(tmp_path / method / "rounds.csv")
        assert list(rounds["round"]) == [1, 2], method
        assert (rounds["num-accepted"] == 2).all(), (method, rounds["failures"].tolist())
        assert (rounds["num-evaluated"] == SIM_CLIENTS).all(), method
        assert rounds["accuracy-mean"].between(0, 1).all(), method
        assert (rounds["latency-total-s"] > 0).all(), method
        clients = pd.read_csv(tmp_path / method / "clients.csv")
        assert len(clients) == SIM_CLIENTS, method
        first = rounds["bytes-down"].iloc[0]
        # Whole-supernet methods send it to each of the 2 sampled clients; the others less.
        if method in ("fednas", "spider"):
            assert first >= 2 * supernet_bytes, method
        else:
            assert first < 2 * supernet_bytes, method
        config = json.loads((tmp_path / method / "config.json").read_text())
        assert config["method"] == method
    assert (tmp_path / "fedoras" / "tiers.csv").exists()
