"""Share-or-keep: blocks a client keeps for itself never travel and are never merged."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict
from torch import nn

from flwr_pfedrlnas.core.aggregation import extract_subnet, merge_subnets
from flwr_pfedrlnas.core.search import ClientReply, PerFedRLNASSearch, SearchConfig
from flwr_pfedrlnas.core.search_space import architecture_from_json
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.client import evaluate_subnet, identify, train_subnet
from flwr_pfedrlnas.flower.driver import content_bytes
from flwr_pfedrlnas.flower.legacy import PerFedRLNASLegacy
from flwr_pfedrlnas.flower.personal import SHARE_OR_KEEP, assemble, kept_file, load_personal
from flwr_pfedrlnas.flower.runconfig import family_from_run_config
from flwr_pfedrlnas.flower.strategy import PerFedRLNAS
from flwr_pfedrlnas.supernets import (
    CPU_PRESETS,
    ShareOrKeep,
    SupernetFamily,
    check_dimensions,
    get_supernet,
)
from flwr_pfedrlnas.supernets.keep import personal_blocks, personal_keys

CLASSIFIER = ("classifier.weight", "classifier.bias")


def _family(keep=("classifier",)):
    return get_supernet("elastic-cnn", num_stages=2, base_width=4, keep=list(keep))


def _arch(family, personal: bool, **fields):
    arch = dict(family.largest_architecture(), **fields)
    arch["keep.classifier"] = "personal" if personal else "shared"
    return family.search_space.validate(arch)


# ---------------------------------------------------------------------------- the family
@pytest.mark.parametrize("name", ["mobilenetv3", "nasvit", "darts", "elastic-cnn"])
def test_every_family_offers_classifier_and_last_stage(name):
    plain = get_supernet(name, **CPU_PRESETS.get(name, {}))
    family = get_supernet(name, keep="classifier,last-stage", **CPU_PRESETS.get(name, {}))
    assert isinstance(family, ShareOrKeep) and family.name == plain.name
    assert family.search_space.names == [
        *plain.search_space.names,
        "keep.classifier",
        "keep.last-stage",
    ]
    # The choices move weights, not shapes: the same subnet either way, and no dead dimension.
    arch = family.search_space.sample(np.random.default_rng(0))
    flipped = dict(arch, **{"keep.classifier": "shared", "keep.last-stage": "personal"})
    assert family.subnet_shapes(arch) == family.subnet_shapes(flipped)
    assert family.subnet_shapes(arch) == plain.subnet_shapes(family.inner_arch(arch))
    check_dimensions(family)
    # The client rebuilds the same family from the name and the knobs it is sent.
    again = get_supernet(family.name, **family.config)
    assert isinstance(again, ShareOrKeep) and again.config_json() == family.config_json()
    # The blocks are disjoint and hold tensors.
    last, head = family.block_keys("last-stage"), family.block_keys("classifier")
    assert last and head == set(CLASSIFIER) and not last & head


def test_unknown_block_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"keep has block 'tail'.*\['classifier', 'last-stage'\]"):
        _family(keep=("tail",))
    with pytest.raises(ValueError, match="keep-blocks is 'classifier,tail'"):
        family_from_run_config(
            {
                "supernet": "elastic-cnn",
                "supernet-config": "{}",
                "dataset": "embedded",
                "keep-blocks": "classifier,tail",
            },
            share_or_keep=True,
        )


def test_a_users_family_declares_its_blocks_and_overlaps_are_refused():
    class Tiny(SupernetFamily):
        name = "tiny-keep-test"

        def __init__(self, overlap: bool = False):
            super().__init__(overlap=overlap)
            self.overlap = overlap

        @property
        def search_space(self):
            from flwr_pfedrlnas.core.search_space import Dimension, SearchSpace

            return SearchSpace([Dimension("width", (2, 4))])

        def build_supernet(self):
            return self.build_subnet({"width": 4})

        def build_subnet(self, arch):
            return nn.Sequential(nn.Linear(3, arch["width"]), nn.Linear(arch["width"], 2))

        def keepable_blocks(self):
            return {"out": ("1.",), "all": ("0.", "1.") if self.overlap else ("0.",)}

    family = ShareOrKeep(Tiny(), ["out"])
    assert personal_keys(family, {"width": 2, "keep.out": "personal"}) == {"1.weight", "1.bias"}
    assert personal_keys(family, {"width": 2, "keep.out": "shared"}) == set()
    with pytest.raises(ValueError, match="in both keepable blocks 'out' and 'all'"):
        ShareOrKeep(Tiny(overlap=True), ["out", "all"])


# ---------------------------------------------------------------------------- the core
def _reply(search, proposal, shift, n=10, drop=()):
    state = {
        k: (v + shift).astype(v.dtype) if v.dtype.kind == "f" else np.array(v)
        for k, v in proposal.state.items()
        if k not in drop
    }
    return ClientReply(proposal.client_id, proposal.arch, state, n, 0.5, compute_seconds=1.0)


def _propose(search, cid, personal):
    """A proposal for ``cid`` with keep.classifier fixed (other fields sampled)."""
    proposal = search.propose(cid)
    arch = _arch(search.family, personal)
    state, init = search.kept.downlink(cid, search.supernet, arch, training=True)
    proposal.arch, proposal.state, proposal.init_state = arch, state, init
    return proposal


def test_personal_block_is_sent_once_as_a_whole_copy_and_then_never():
    search = PerFedRLNASSearch(_family(), SearchConfig(seed=0))
    supernet = {k: v.copy() for k, v in search.supernet.items()}
    first = _propose(search, "a", personal=True)
    assert not set(CLASSIFIER) & set(first.state)
    assert sorted(first.init_state) == sorted(CLASSIFIER)
    for key in CLASSIFIER:  # the whole supernet tensor, not the subnet's slice
        np.testing.assert_array_equal(first.init_state[key], supernet[key])
    search.incorporate(1, [_reply(search, first, 0.1)])
    assert search.kept.holds("a") == {"classifier"}
    again = _propose(search, "a", personal=True)
    assert not set(CLASSIFIER) & set(again.state) and again.init_state == {}
    # Shared again: the classifier travels like any other block.
    shared = _propose(search, "a", personal=False)
    assert set(CLASSIFIER) <= set(shared.state) and shared.init_state == {}
    # A test of the deployed model leaves out what the client holds ...
    _, deployed = search.subnet_for("a", _arch(search.family, True))
    assert not set(CLASSIFIER) & set(deployed)
    # ... and sends another client, which holds nothing, the shared weights.
    _, other = search.subnet_for("b", _arch(search.family, True))
    assert set(CLASSIFIER) <= set(other)


def test_bytes_down_count_the_initial_copy_and_bytes_up_leave_the_block_out():
    search = PerFedRLNASSearch(_family(), SearchConfig(seed=0))
    first = _propose(search, "a", personal=True)
    nbytes = lambda s: sum(v.nbytes for v in s.values())  # noqa: E731
    first.bytes_down = nbytes(first.state) + nbytes(first.init_state)
    search.pending["a"] = first
    outcome = search.incorporate(1, [_reply(search, first, 0.1)])
    assert outcome.bytes_down["a"] == nbytes(first.state) + nbytes(first.init_state)
    assert outcome.bytes_up["a"] == nbytes(first.state)
    full = extract_subnet(search.family, search.supernet, first.arch)
    assert outcome.bytes_up["a"] == nbytes(full) - sum(full[k].nbytes for k in CLASSIFIER)


def test_a_reply_that_carries_a_personal_block_is_rejected_and_changes_nothing():
    search = PerFedRLNASSearch(_family(), SearchConfig(seed=0))
    proposal = _propose(search, "a", personal=True)
    before = {k: v.copy() for k, v in search.supernet.items()}
    policy = copy.deepcopy(search.policies["a"].state_dict())
    reply = _reply(search, proposal, 0.1)
    reply.state["classifier.weight"] = np.zeros((10, 8), np.float32)
    outcome = search.incorporate(1, [reply])
    assert "classifier.weight" in outcome.rejected["a"]
    assert all(np.array_equal(before[k], search.supernet[k]) for k in before)
    assert search.policies["a"].state_dict() == policy
    assert search.kept.holds("a") == set()


def test_the_server_never_merges_a_personal_block():
    family = _family()
    supernet = family.init_supernet_state(0)
    arch_p, arch_s = _arch(family, True), _arch(family, False)
    full_s = extract_subnet(family, supernet, arch_s)
    shared_update = {k: v + 1.0 for k, v in full_s.items()}
    personal_update = {k: v + 3.0 for k, v in full_s.items() if k not in CLASSIFIER}
    merged = merge_subnets(
        family, supernet, [(arch_p, personal_update, 10), (arch_s, shared_update, 30)]
    )
    # The classifier: the mean of the one client that shares it, nothing of the other.
    for key in CLASSIFIER:
        np.testing.assert_array_equal(merged[key], supernet[key] + 1.0)
    # Any other tensor: the example-weighted mean of both.
    key = "stages.0.0.conv.weight"
    np.testing.assert_allclose(merged[key], supernet[key] + (10 * 3.0 + 30 * 1.0) / 40, rtol=1e-6)
    # Nobody shares it: bit for bit what it was.
    only = merge_subnets(family, supernet, [(arch_p, personal_update, 10)])
    for key in CLASSIFIER:
        assert only[key].tobytes() == supernet[key].tobytes()


def test_resume_keeps_who_holds_which_block(tmp_path):
    search = PerFedRLNASSearch(_family(), SearchConfig(seed=0))
    proposal = _propose(search, "a", personal=True)
    search.incorporate(1, [_reply(search, proposal, 0.1)])
    search.save(tmp_path)
    again, _ = PerFedRLNASSearch.from_checkpoint(tmp_path, SearchConfig(seed=0))
    assert isinstance(again.family, ShareOrKeep)
    assert again.kept.holds("a") == {"classifier"}
    state, init = again.kept.downlink("a", again.supernet, _arch(again.family, True), True)
    assert init == {} and not set(CLASSIFIER) & set(state)


# ---------------------------------------------------------------------------- the client
def _context(cid="a", state_dir=None):
    node_config = {"client-id": cid}
    if state_dir is not None:
        node_config[m.CLIENT_STATE_DIR] = str(state_dir)
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def _loaders():
    data = load_client_data("embedded", partition_id=0, num_partitions=40, alpha=1.0, seed=0)
    return make_loaders(data, batch_size=32, seed=0)


def _train_message(family, arch, state, init=None, kind=MessageType.TRAIN):
    content = RecordDict(
        {
            "arrays": m.arrays_to_record(state),
            "config": m.subnet_config(family, arch, 1, {m.LOCAL_EPOCHS: 1, m.LR: 0.05}),
        }
    )
    if init:
        content[m.PERSONAL_INIT] = m.arrays_to_record(init)
    msg = Message(content=content, message_type=kind, dst_node_id=1)
    msg.metadata.__dict__["_message_id"] = "x"
    return msg


def _store(ctx):
    path = kept_file(ctx, str(ctx.node_config["client-id"]), {})
    return {k: v.clone() for k, v in load_personal(ctx, SHARE_OR_KEEP, path).items()}


def test_client_keeps_trains_and_resumes_its_block_and_leaves_it_alone_when_shared(tmp_path):
    family = _family()
    search = PerFedRLNASSearch(family, SearchConfig(seed=0))
    train_loader, test_loader = _loaders()
    ctx = _context(state_dir=tmp_path)
    personal = _arch(family, True)
    state, init = search.kept.downlink("a", search.supernet, personal, training=True)
    # 1. personal, first time: the copy starts from the shared tensors and is trained.
    reply = train_subnet(
        _train_message(family, personal, state, init), ctx, train_loader, test_loader
    )
    assert not set(CLASSIFIER) & set(reply.content["arrays"])
    assert set(reply.content["arrays"]) == set(state)
    store1 = _store(ctx)
    assert sorted(store1) == sorted(CLASSIFIER)
    assert not torch.equal(store1["classifier.weight"], torch.from_numpy(init["classifier.weight"]))
    # 2. shared: the server's classifier is trained and returned; the own copy stays bit for bit.
    shared = _arch(family, False)
    full = extract_subnet(family, search.supernet, shared)
    reply = train_subnet(_train_message(family, shared, full), ctx, train_loader, test_loader)
    assert set(CLASSIFIER) <= set(reply.content["arrays"])
    for key in CLASSIFIER:
        assert torch.equal(_store(ctx)[key], store1[key])
    # 3. personal again, in a new run (fresh context): the copy comes back from the disk,
    #    the subnet starts from it, and no initial copy is needed.
    ctx2 = _context(state_dir=tmp_path)
    on_disk = kept_file(ctx2, str(ctx2.node_config["client-id"]), {})
    assert on_disk.suffix == ".npz" and not list(tmp_path.glob("*.tmp"))
    with np.load(on_disk, allow_pickle=False) as npz:  # arrays only, nothing pickled
        assert sorted(npz.files) == sorted(CLASSIFIER)
        assert np.array_equal(npz["classifier.weight"], store1["classifier.weight"].numpy())
    search.kept.started("a", personal)
    state2, init2 = search.kept.downlink("a", search.supernet, personal, training=True)
    assert init2 == {}
    received = m.arrays_to_record(state2).to_torch_state_dict()
    whole, used = assemble(family, personal, received, _store(ctx2))
    assert used == set(CLASSIFIER)
    slices = family.subnet_slices(personal)
    for key in CLASSIFIER:
        assert torch.equal(whole[key], store1[key][slices[key]])
    reply = train_subnet(_train_message(family, personal, state2), ctx2, train_loader, test_loader)
    assert not set(CLASSIFIER) & set(reply.content["arrays"])
    assert not torch.equal(_store(ctx2)["classifier.weight"], store1["classifier.weight"])


def test_a_client_without_its_copy_and_without_an_initial_one_says_which_block():
    family = _family()
    search = PerFedRLNASSearch(family, SearchConfig(seed=0))
    search.kept.started("a", _arch(family, True))  # the server thinks "a" holds it
    state, init = search.kept.downlink("a", search.supernet, _arch(family, True), training=True)
    assert init == {}
    train_loader, test_loader = _loaders()
    with pytest.raises(ValueError, match="keep.classifier is 'personal'.*block 'classifier'"):
        train_subnet(
            _train_message(family, _arch(family, True), state),
            _context(),
            train_loader,
            test_loader,
        )


# ---------------------------------------------------------------------------- through the strategy
NODES = {101: {"client-id": "alice"}, 202: {"client-id": "bob"}, 303: {"client-id": "carol"}}
PARTITION = {"alice": 0, "bob": 1, "carol": 2}


def _node_loaders(ctx):
    data = load_client_data(
        "embedded",
        partition_id=PARTITION[str(ctx.node_config["client-id"])],
        num_partitions=40,
        alpha=1.0,
        seed=0,
    )
    return make_loaders(data, batch_size=32, seed=0)


HANDLERS = {
    "query": identify,
    "train": lambda msg, ctx: train_subnet(msg, ctx, *_node_loaders(ctx)),
    "evaluate": lambda msg, ctx: evaluate_subnet(
        msg, ctx, _node_loaders(ctx)[1], train_loader=_node_loaders(ctx)[0]
    ),
}


def test_no_personal_weight_in_any_message_either_way(local_grid, tmp_path):
    family = _family()
    strategy = PerFedRLNAS(
        family,
        clients_per_round=3,
        min_available_nodes=3,
        search_config=SearchConfig(seed=3),
        results_dir=str(tmp_path / "out"),
    )
    replies = []
    grid = local_grid(
        NODES, HANDLERS, tamper=lambda msg, reply: replies.append((msg, reply)) or reply
    )
    strategy.start(grid, num_rounds=4)
    seen = {"personal-train": 0, "shared-train": 0, "init": 0, "personal-test": 0}
    held: set[str] = set()
    for msg, reply in replies:
        kind = msg.metadata.message_type
        if kind == MessageType.QUERY:
            continue
        cid = NODES[msg.metadata.dst_node_id]["client-id"]
        arch = architecture_from_json(msg.content["config"][m.ARCH], family.search_space)
        personal = personal_blocks(family, arch) == ["classifier"]
        keys_down = set(msg.content["arrays"]) if "arrays" in msg.content else set()
        keys_up = set(reply.content["arrays"]) if "arrays" in reply.content else set()
        if personal and (kind == MessageType.TRAIN or cid in held):
            # Neither way, whatever the message: the client holds it.
            assert not set(CLASSIFIER) & keys_down, (kind, cid)
            assert not set(CLASSIFIER) & keys_up, (kind, cid)
            if kind == MessageType.TRAIN:
                seen["personal-train"] += 1
                has_init = m.PERSONAL_INIT in msg.content
                assert has_init == (cid not in held), cid  # once per client, the first time
                seen["init"] += has_init
                held.add(cid)
            else:
                seen["personal-test"] += 1
        elif kind == MessageType.TRAIN:
            seen["shared-train"] += 1
            assert set(CLASSIFIER) <= keys_down and set(CLASSIFIER) <= keys_up
            assert m.PERSONAL_INIT not in msg.content
    # The run did exercise both choices (not a vacuous pass).
    assert all(seen.values()), seen
    # Each round's bytes-down count every record sent, the initial copies included.
    rounds = pd.read_csv(tmp_path / "out" / "rounds.csv")
    for row in rounds.itertuples():
        sent = [
            content_bytes(msg.content)
            for msg, _ in replies
            if msg.metadata.message_type == MessageType.TRAIN
            and int(msg.content["config"][m.SERVER_ROUND]) == row.round
        ]
        assert rounds.loc[rounds["round"] == row.round, "bytes-down"].item() == sum(sent)
    assert {c for c, b in strategy.search.kept.state_dict().items() if b} == held
    # The deployed models name what the clients keep.
    for cid, model in strategy.deployed_models().items():
        arch = model.arch
        kept = sorted(set(CLASSIFIER) & set(family.subnet_shapes(arch)))
        if arch["keep.classifier"] == "personal" and cid in held:
            assert sorted(model.kept_on_client) == kept
            with pytest.raises(ValueError, match="personal"):
                model.build()
        else:
            assert model.kept_on_client == []


def test_legacy_strategy_refuses_share_or_keep():
    with pytest.raises(ValueError, match="share-or-keep blocks \\['classifier'\\]"):
        PerFedRLNASLegacy(_family())


def test_paper_setting_is_unchanged_by_the_option():
    plain = get_supernet("elastic-cnn", num_stages=2, base_width=4)
    assert not isinstance(
        family_from_run_config(
            {
                "supernet": "elastic-cnn",
                "supernet-config": "{}",
                "dataset": "embedded",
                "keep-blocks": "",
            },
            share_or_keep=True,
        ),
        ShareOrKeep,
    )
    arch = plain.largest_architecture()
    assert personal_keys(plain, arch) == set()


def test_a_restarted_run_finds_the_kept_copies_on_the_clients_disks(local_grid, tmp_path):
    # With a checkpoint the strategy tells clients to mirror their copies to
    # <checkpoint>/clients, so a resumed run with fresh client contexts (a new flwr run)
    # carries on; the same resume without that folder fails loudly, naming the block.
    def strategy(num_rounds, **kw):
        return PerFedRLNAS(
            _family(),
            clients_per_round=3,
            min_available_nodes=3,
            search_config=SearchConfig(seed=3),
            results_dir=str(tmp_path / "out"),
            checkpoint_dir=str(tmp_path / "ckpt"),
            **kw,
        )

    first = strategy(2)
    first.start(local_grid(NODES, HANDLERS), num_rounds=2)
    held = {c for c, b in first.search.kept.state_dict().items() if b}
    assert held, "no client kept its classifier: the test would pass vacuously"
    mirrored = {p.name.split(".")[0] for p in (tmp_path / "ckpt" / "clients").iterdir()}
    assert mirrored == held
    messages = []
    again = strategy(4, resume=True)
    grid = local_grid(NODES, HANDLERS, tamper=lambda msg, reply: messages.append(msg) or reply)
    again.start(grid, num_rounds=4)
    assert again.search.completed_rounds == 4
    rounds = pd.read_csv(tmp_path / "out" / "rounds.csv")
    assert list(rounds["round"]) == [1, 2, 3, 4] and (rounds["num-failed"] == 0).all()
    sent = [msg for msg in messages if msg.metadata.message_type != MessageType.QUERY]
    folder = str(tmp_path / "ckpt" / "clients")
    assert sent and all(msg.content["config"][m.CLIENT_STATE_DIR] == folder for msg in sent)
    # Without the folder the copies are gone: the resumed run refuses rather than restart them.
    for path in (tmp_path / "ckpt" / "clients").iterdir():
        path.unlink()
    with pytest.raises(Exception, match="holds no copy of block 'classifier'"):
        strategy(6, resume=True).start(local_grid(NODES, HANDLERS), num_rounds=6)
