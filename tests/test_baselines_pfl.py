"""Personalised-FL baselines (FedAvg+FT, Local, FedRep, FedBABU, FedTP): each one's mechanics.

Mechanics run message by message on the in-process grid with tiny models and
tiny synthetic data; one 2-round run per method goes through Flower's
simulation engine on the embedded data (slow).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from baseline_checks import (
    NODES,
    embedded_loaders,
    message_kind,
    simulate_in_turn,
    synthetic_loaders,
)
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from torch.utils.data import DataLoader, TensorDataset

from flwr_pfedrlnas.baselines import (
    FedAvgFineTune,
    FedBABU,
    FedRep,
    FedTP,
    LocalOnly,
    baseline_evaluate,
    baseline_train,
    build_model,
    make_baseline,
    train_parts,
)
from flwr_pfedrlnas.baselines.client import personal_key
from flwr_pfedrlnas.baselines.models import attention_keys, is_head_key
from flwr_pfedrlnas.flower.client import identify

MNV3 = {"width_mult": 0.25}
VIT = {"dim": 16, "depth": 2, "heads": 2, "patch_size": 8, "mlp_ratio": 1.0}


def _synthetic(ctx: Context, batch_size: int = 16):
    """48 train and 16 test 32x32 images per client, labels tied to the client (non-iid)."""
    return synthetic_loaders(int(ctx.node_config["partition-id"]), 48, 16, batch_size, size=32)


HANDLERS = {
    "query": identify,
    "train": lambda msg, ctx: baseline_train(msg, ctx, *_synthetic(ctx)),
    "evaluate": lambda msg, ctx: baseline_evaluate(msg, ctx, *_synthetic(ctx)),
}


class RecordingGrid:
    """LocalGrid wrapper that also keeps every reply."""

    def __init__(self, local_grid):
        self.replies: list[tuple[Message, Message]] = []
        self.grid = local_grid(NODES, HANDLERS, tamper=self._keep)

    def _keep(self, msg, reply):
        self.replies.append((msg, reply))
        return reply

    def __getattr__(self, name):
        return getattr(self.grid, name)


def _kw(tmp_path, **extra):
    kw = dict(
        model="mobilenetv3-large",
        model_config=MNV3,
        num_classes=10,
        in_channels=1,
        clients_per_round=2,
        min_available_nodes=len(NODES),
        finetune_epochs=2,
        results_dir=str(tmp_path / "results"),
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
    kw.update(extra)
    return kw


def _array_keys(msg: Message) -> set[str]:
    return {k for rec in msg.content.array_records.values() for k in rec}


def _states_equal(a, b) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- models
@pytest.mark.parametrize("name,knobs", [("mobilenetv3-large", MNV3), ("vit", VIT)])
def test_models_forward_backward_and_split(name, knobs):
    model = build_model(name, num_classes=7, in_channels=1, model_config=knobs, seed=0)
    # Same seed, same weights: every client and the server build the same init.
    again = build_model(name, num_classes=7, in_channels=1, model_config=knobs, seed=0)
    assert _states_equal(model.state_dict(), again.state_dict())
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 7)
    out.sum().backward()
    keys = list(model.state_dict())
    head = [k for k in keys if is_head_key(name, k)]
    assert head and len(head) < len(keys)
    if name == "vit":
        assert attention_keys(model) == [
            f"blocks.{i}.attn.{p}.weight" for i in range(2) for p in ("q", "k", "v")
        ]


def test_train_parts_leaves_frozen_part_bit_for_bit():
    model = build_model("mobilenetv3-large", 10, 1, MNV3, seed=0)
    loader, _ = _synthetic(Context(1, 1, {"partition-id": 0}, RecordDict(), {}))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def head(k):
        return is_head_key("mobilenetv3-large", k)

    train_parts(model, loader, 1, 0.05, head)  # head only
    after = model.state_dict()
    body_keys = [k for k in before if not head(k)]
    assert all(torch.equal(before[k], after[k]) for k in body_keys)  # BN statistics included
    assert any(not torch.equal(before[k], after[k]) for k in before if head(k))
    before = {k: v.clone() for k, v in after.items()}
    train_parts(model, loader, 1, 0.05, lambda k: not head(k))  # body only
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if head(k))
    assert any(not torch.equal(before[k], after[k]) for k in body_keys)


def test_frozen_batchnorm_normalises_with_batch_statistics_while_the_head_trains():
    # Running statistics far from the data's: a frozen body in eval mode would
    # hand the head features the test (after BatchNorm re-estimation) never sees.
    torch.manual_seed(0)
    body_norm = torch.nn.BatchNorm1d(4)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), body_norm, torch.nn.Linear(4, 2))
    body_norm.running_mean.fill_(100.0)
    body_norm.running_var.fill_(1e-4)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    seen = []
    model[2].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    train_parts(model, DataLoader(TensorDataset(x, y), batch_size=8), 1, 0.1, lambda k: k[0] == "2")

    assert len(seen) == 2
    for batch, features in zip((x[:8], x[8:]), seen):
        pre = model[0](batch).detach()
        expected = (pre - pre.mean(0)) / torch.sqrt(pre.var(0, unbiased=False) + body_norm.eps)
        expected = expected * body_norm.weight.detach() + body_norm.bias.detach()
        torch.testing.assert_close(features, expected)
    for k in ("0.weight", "1.weight", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(before[k], model.state_dict()[k]), k
    assert body_norm.track_running_stats  # restored after training


# ---------------------------------------------------------------------- FedRep
def test_fedrep_heads_stay_on_clients_and_phases_freeze(local_grid, tmp_path):
    strategy = FedRep(**_kw(tmp_path))
    grid = RecordingGrid(local_grid)
    strategy.start(grid, num_rounds=2)
    head = [k for k in strategy.keys if is_head_key("mobilenetv3-large", k)]
    # No head tensor ever travels, either way; the server never holds one.
    for msg, reply in grid.replies:
        assert not (_array_keys(msg) | _array_keys(reply)) & set(head)
    assert not set(strategy.shared) & set(head)
    # The trained clients keep their own head in context.state, and they differ.
    heads = {
        n: ctx.state[personal_key("fedrep")].to_torch_state_dict()
        for n, ctx in grid.contexts.items()
        if personal_key("fedrep") in ctx.state
    }
    assert set(next(iter(heads.values()))) == set(head)
    trained = [
        n
        for n in heads
        if any(message_kind(m) == "train" for m in grid.sent if m.metadata.dst_node_id == n)
    ]
    assert len(trained) >= 2
    a, b = (heads[n] for n in trained[:2])
    assert not _states_equal(a, b)

    # Body phase (head-epochs 0): the kept head does not move, bit for bit.
    ctx = grid.contexts[11]
    msg = next(m for m in grid.sent if message_kind(m) == "train")
    cfg = ConfigRecord(dict(msg.content["config"]))
    cfg["head-epochs"], cfg["local-epochs"] = 0, 1
    body_msg = _train_msg(msg.content["arrays"], cfg, 11)
    head_before = ctx.state[personal_key("fedrep")].to_torch_state_dict()
    reply = baseline_train(body_msg, ctx, *_synthetic(ctx))
    assert _states_equal(head_before, ctx.state[personal_key("fedrep")].to_torch_state_dict())
    assert not _states_equal(
        reply.content["arrays"].to_torch_state_dict(), msg.content["arrays"].to_torch_state_dict()
    )
    # Head phase only (local-epochs 0): the body comes back bit for bit (BN statistics too).
    cfg["head-epochs"], cfg["local-epochs"] = 1, 0
    reply = baseline_train(_train_msg(msg.content["arrays"], cfg, 11), ctx, *_synthetic(ctx))
    assert _states_equal(
        reply.content["arrays"].to_torch_state_dict(), msg.content["arrays"].to_torch_state_dict()
    )
    assert not _states_equal(head_before, ctx.state[personal_key("fedrep")].to_torch_state_dict())


def _train_msg(arrays: ArrayRecord, config: ConfigRecord, node: int) -> Message:
    return Message(
        content=RecordDict({"arrays": arrays, "config": config}),
        message_type=MessageType.TRAIN,
        dst_node_id=node,
    )


# ---------------------------------------------------------------------- FedBABU
def test_fedbabu_head_frozen_at_init_and_finetuned_only_at_the_end(local_grid, tmp_path):
    strategy = FedBABU(**_kw(tmp_path, model="vit", model_config=VIT))
    grid = RecordingGrid(local_grid)
    strategy.start(grid, num_rounds=2)
    init = build_model("vit", 10, 1, VIT, seed=0).state_dict()
    head = {k: v for k, v in init.items() if is_head_key("vit", k)}
    for ctx in grid.contexts.values():  # the random initial head, bit for bit, everywhere
        assert _states_equal(head, ctx.state[personal_key("fedbabu")].to_torch_state_dict())
    for msg, reply in grid.replies:
        assert not (_array_keys(msg) | _array_keys(reply)) & set(head)
    _assert_finetune_only_at_the_end(grid, tmp_path, epochs=2)


def _assert_finetune_only_at_the_end(grid, tmp_path, epochs):
    for msg, reply in grid.replies:
        if message_kind(msg) == "query":
            continue
        rnd = msg.content["config"]["server-round"]
        if message_kind(msg) == "train":
            assert msg.content["config"]["finetune-epochs"] == 0
        elif message_kind(msg) == "evaluate":
            expected = epochs if rnd == 2 else 0
            assert msg.content["config"]["finetune-epochs"] == expected
            assert reply.content["metrics"]["finetune-epochs"] == expected
    rounds = pd.read_csv(tmp_path / "results" / "rounds.csv")
    assert list(rounds["finetune-epochs"]) == [0, epochs]
    assert (rounds["num-evaluated"] == 3).all()


# ---------------------------------------------------------------------- FedAvg+FT
def test_fedavg_ft_averages_everything_and_finetunes_only_at_the_end(local_grid, tmp_path):
    strategy = FedAvgFineTune(**_kw(tmp_path, model="vit", model_config=VIT))
    grid = RecordingGrid(local_grid)
    strategy.start(grid, num_rounds=2)
    assert set(strategy.shared) == set(strategy.keys)  # the whole model is global
    _assert_finetune_only_at_the_end(grid, tmp_path, epochs=2)
    # Round 2's evaluation fine-tunes; the server's model is untouched by it.
    rounds = pd.read_csv(tmp_path / "results" / "rounds.csv")
    assert (rounds["bytes-up"] > 0).all() and (rounds["latency-round-s"] > 0).all()
    # Example-weighted mean of round 1's replies.
    strategy = FedAvgFineTune(**_kw(tmp_path / "again", model="vit", model_config=VIT))
    grid = RecordingGrid(local_grid)
    strategy.start(grid, num_rounds=1)
    replies = [r for q, r in grid.replies if message_kind(q) == "train"]
    w = np.array([r.content["metrics"]["num-examples"] for r in replies], dtype=float)
    key = "head.weight"
    states = [r.content["arrays"][key].numpy() for r in replies]
    expected = sum(wi * s for wi, s in zip(w, states)) / w.sum()
    np.testing.assert_allclose(strategy.shared[key], expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------- Local
def test_local_moves_nothing_and_keeps_own_models(local_grid, tmp_path):
    strategy = LocalOnly(**_kw(tmp_path, model="vit", model_config=VIT))
    grid = RecordingGrid(local_grid)
    strategy.start(grid, num_rounds=2)
    for msg, reply in grid.replies:
        assert not _array_keys(msg) and not _array_keys(reply)
    rounds = pd.read_csv(tmp_path / "results" / "rounds.csv")
    assert (rounds["bytes-down"] == 0).all() and (rounds["bytes-up"] == 0).all()
    models = [
        ctx.state[personal_key("local")].to_torch_state_dict()
        for ctx in grid.contexts.values()
        if personal_key("local") in ctx.state
    ]
    assert len(models) >= 2 and not _states_equal(models[0], models[1])
    # Each trained client trained exactly as often as it was sampled (same steps as FedAvg).
    trained = sum(1 for m in grid.sent if message_kind(m) == "train")
    assert trained == 2 * 2


# ---------------------------------------------------------------------- FedTP
def test_fedtp_hypernetwork_gets_gradients_and_personalises(local_grid, tmp_path):
    strategy = FedTP(**_kw(tmp_path, model="vit", model_config=VIT, num_clients=3, hn_lr=0.1))
    grid = RecordingGrid(local_grid)
    qkv = attention_keys(strategy._template)
    before = {k: v.detach().clone() for k, v in strategy.hypernetwork.state_dict().items()}
    p0, p1 = strategy.projections("0"), strategy.projections("1")
    assert any(not np.array_equal(p0[k], p1[k]) for k in qkv)  # per client from the start
    assert not set(strategy.shared) & set(qkv)  # projections are not global
    generated = {cid: strategy.projections(cid) for cid in ("0", "1", "2")}
    strategy.start(grid, num_rounds=1)
    msgs = [q for q, _ in grid.replies if message_kind(q) == "train"]
    for msg in msgs:  # each client gets its own generated projections, and the rest
        cid = strategy.node_to_client[msg.metadata.dst_node_id]
        assert set(msg.content["arrays"]) == set(strategy.keys)
        gen = generated[cid]
        assert all(np.array_equal(msg.content["arrays"][k].numpy(), gen[k]) for k in qkv)
    assert not set(strategy.shared) & set(qkv)
    grads = {n: p.grad for n, p in strategy.hypernetwork.named_parameters()}
    assert all(
        g is not None and g.abs().sum() > 0 for n, g in grads.items() if n != "embeddings.weight"
    )
    emb = strategy.hypernetwork.embeddings.weight.grad
    trained_rows = [
        strategy.index_of(strategy.node_to_client[m.metadata.dst_node_id]) for m in msgs
    ]
    assert all(emb[i].abs().sum() > 0 for i in trained_rows)  # trained clients' embeddings move
    after = strategy.hypernetwork.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # Checkpoint round trip: a resumed strategy generates the same projections.
    again = FedTP(**_kw(tmp_path, model="vit", model_config=VIT, num_clients=3, resume=True))
    assert again.driver.restore() == 1
    for cid in ("0", "1", "2"):
        a, b = strategy.projections(cid), again.projections(cid)
        assert all(np.array_equal(a[k], b[k]) for k in qkv)
    with pytest.raises(ValueError, match="ViT"):
        FedTP(**_kw(tmp_path))


def test_fedtp_two_rounds_on_the_grid(local_grid, tmp_path):
    strategy = FedTP(**_kw(tmp_path, model="vit", model_config=VIT, num_clients=3))
    strategy.start(local_grid(NODES, HANDLERS), num_rounds=2)
    rounds = pd.read_csv(tmp_path / "results" / "rounds.csv")
    assert list(rounds["round"]) == [1, 2] and (rounds["num-evaluated"] == 3).all()


# ---------------------------------------------------------------------- restart
def test_resume_keeps_server_and_client_personal_state(local_grid, tmp_path):
    kw = _kw(
        tmp_path, model="vit", model_config=VIT, client_state_dir=str(tmp_path / "client-state")
    )
    FedRep(**kw).start(local_grid(NODES, HANDLERS), num_rounds=1)
    heads = {}
    for p in (tmp_path / "client-state").glob("*.npz"):
        with np.load(p, allow_pickle=False) as npz:  # arrays only: nothing pickled
            heads[p.name] = {k: torch.from_numpy(npz[k]) for k in npz.files}
    assert len(heads) == 3  # every client saved its head on its own disk
    resumed = FedRep(**{**kw, "resume": True})
    grid = local_grid(NODES, HANDLERS)  # fresh contexts, as after a restart
    resumed.start(grid, num_rounds=2)
    rounds = pd.read_csv(tmp_path / "results" / "rounds.csv")
    assert list(rounds["round"]) == [1, 2]
    # A client not trained in round 2 evaluated with the head it had saved.
    for node, ctx in grid.contexts.items():
        name = f"{NODES[node]['partition-id']}.fedrep.npz"
        if not any(
            message_kind(m) == "train" and m.metadata.dst_node_id == node for m in grid.sent
        ):
            kept = ctx.state[personal_key("fedrep")].to_torch_state_dict()
            assert _states_equal(kept, heads[name])


# ---------------------------------------------------------------------- simulation
SIM_CLIENTS = 3


def _embedded(context: Context, batch_size: int):
    # Small shards (40 partitions) keep the run short.
    return embedded_loaders(int(context.node_config["partition-id"]), 40, batch_size, alpha=0.5)


METHODS = ["fedavg-ft", "local", "fedrep", "fedbabu", "fedtp"]


@pytest.mark.slow
def test_two_round_simulation_of_every_method(tmp_path):
    """One simulation (one Ray start-up) in which the ServerApp runs every method in turn."""
    strategies = {}
    for method in METHODS:
        model, knobs = ("vit", VIT) if method == "fedtp" else ("mobilenetv3-large", MNV3)
        kw = _kw(tmp_path / method, model=model, model_config=knobs)
        kw["min_available_nodes"] = SIM_CLIENTS
        strategies[method] = make_baseline(method, **kw, num_clients=SIM_CLIENTS)
    simulate_in_turn(strategies, _embedded, SIM_CLIENTS)
    for method in METHODS:
        results = tmp_path / method / "results"
        rounds = pd.read_csv(results / "rounds.csv")
        assert list(rounds["round"]) == [1, 2], method
        assert (rounds["num-accepted"] == 2).all(), method
        assert (rounds["num-evaluated"] == SIM_CLIENTS).all(), method
        assert rounds["accuracy-mean"].between(0, 1).all(), method
        assert (rounds["bytes-up"] == 0).all() == (method == "local"), method
        for name in ("clients.csv", "config.json", "accuracy.png"):
            assert (results / name).exists(), (method, name)
        assert (tmp_path / method / "ckpt" / "state.json").exists(), method
    finetuned = pd.read_csv(tmp_path / "fedbabu" / "results" / "rounds.csv")["finetune-epochs"]
    assert list(finetuned) == [0, 2]


@pytest.mark.parametrize("method", ["fedavg-ft", "local", "fedrep", "fedbabu"])
def test_baselines_ask_for_the_same_batchnorm_protocol(method):
    strategy = make_baseline(method, bn_recalibration_batches=-1)
    assert strategy.client_config(1)["bn-recalibration-batches"] == -1
    # One default for every method of the project: re-estimate on all local batches.
    assert make_baseline(method).client_config(1)["bn-recalibration-batches"] == -1
