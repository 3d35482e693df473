"""The shared round settings: one validation, used by every constructor; the rounds' numbering."""

from __future__ import annotations

import inspect
import logging
import math

import pytest
from flwr.app import ArrayRecord, ConfigRecord
from test_strategy import HANDLERS, NODES

from flwr_pfedrlnas.core.search import SearchConfig
from flwr_pfedrlnas.flower.legacy import PerFedRLNASLegacy
from flwr_pfedrlnas.flower.method import Method
from flwr_pfedrlnas.flower.runconfig import round_settings_kwargs, strategy_kwargs
from flwr_pfedrlnas.flower.session import SESSION_SETTINGS, SearchSession, session_from
from flwr_pfedrlnas.flower.strategy import PerFedRLNAS
from flwr_pfedrlnas.methods import protocol_kwargs
from flwr_pfedrlnas.protocol.rounds import ExchangeLedger, RoundSchedule
from flwr_pfedrlnas.protocol.settings import ROUND_SETTINGS, RoundSettings, check_ranges
from flwr_pfedrlnas.protocol.training_options import TrainingOptions
from flwr_pfedrlnas.supernets import get_supernet

BAD_SHARED = [
    ("clients_per_round", 0),
    ("local_epochs", -1),
    ("lr", 0.0),
    ("lr", -0.1),
    ("lr", math.nan),
    ("batch_size", 0),
    ("evaluate_every", 0),
    ("bn_recalibration_batches", -2),
]


def _family():
    return get_supernet("elastic-cnn", num_stages=2, base_width=4)


def _constructors():
    return {
        "SearchSession": lambda **kw: SearchSession(_family(), SearchConfig(seed=0), **kw),
        "PerFedRLNAS": lambda **kw: PerFedRLNAS(_family(), **kw),
        "PerFedRLNASLegacy": lambda **kw: PerFedRLNASLegacy(_family(), **kw),
        "Method": lambda **kw: Method(**kw),
    }


@pytest.mark.parametrize(("name", "value"), BAD_SHARED)
def test_settings_reject_each_bad_value_naming_field_and_value(name, value):
    with pytest.raises(ValueError, match=rf"^{name} is {value!r}, out of range$"):
        RoundSettings(**{name: value})


@pytest.mark.parametrize("constructor", list(_constructors()))
@pytest.mark.parametrize(("name", "value"), BAD_SHARED)
def test_every_constructor_checks_the_shared_settings_alike(constructor, name, value):
    with pytest.raises(ValueError, match=rf"^{name} is {value!r}, out of range$"):
        _constructors()[constructor](**{name: value})


@pytest.mark.parametrize("constructor", list(_constructors()))
def test_every_constructor_builds_its_settings_from_its_keywords(constructor, tmp_path):
    training = TrainingOptions(lr_schedule="cosine")
    kw = dict(clients_per_round=3, local_epochs=2, lr=0.2, batch_size=8, evaluate_every=4)
    kw.update(bn_recalibration_batches=0, run_config={"x": 1}, training=training)
    kw.update(results_dir=str(tmp_path / "r"), checkpoint_dir=str(tmp_path / "c"))
    obj = _constructors()[constructor](**kw)
    holder = getattr(obj, "session", obj)
    assert isinstance(obj.settings, RoundSettings)
    assert obj.settings is holder.settings
    assert obj.settings == RoundSettings(**kw)
    for name, value in kw.items():
        assert getattr(holder, name) == value
    assert type(holder.lr) is float and type(holder.clients_per_round) is int


@pytest.mark.parametrize("constructor", list(_constructors()))
def test_defaults_are_the_settings_defaults(constructor):
    obj = _constructors()[constructor]()
    assert obj.settings == RoundSettings()
    assert obj.settings.training == TrainingOptions() and obj.settings.run_config == {}


def test_assigning_a_setting_replaces_the_settings_checked():
    session = SearchSession(_family(), SearchConfig(seed=0))
    before = session.settings
    session.clients_per_round = 3
    assert session.settings.clients_per_round == 3 and before.clients_per_round == 5
    with pytest.raises(ValueError, match="^batch_size is 0, out of range$"):
        session.batch_size = 0
    assert session.batch_size == 32
    with pytest.raises(AttributeError):
        session.settings.lr = 1.0  # frozen: one way in, checked


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"finetune_epochs": -1}, "finetune_epochs is -1, out of range"),
        ({"num_new_clients": -1}, "num_new_clients is -1, out of range"),
        ({"new_client_rounds": -2}, "new_client_rounds is -2, out of range"),
    ],
)
def test_the_search_checks_its_own_settings(kw, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        SearchSession(_family(), **kw)
    with pytest.raises(ValueError, match=f"^{message}$"):
        PerFedRLNAS(_family(), **kw)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"min_available_nodes": 0}, "min_available_nodes is 0, out of range"),
        ({"bandwidth_down_bps": 0.0}, "bandwidth_down_bps is 0.0, out of range"),
        ({"bandwidth_up_bps": -1.0}, "bandwidth_up_bps is -1.0, out of range"),
        ({"query_timeout": 0.0}, "query_timeout is 0.0, out of range"),
        ({"round_timeout": 0}, "round_timeout is 0, out of range"),
    ],
)
def test_a_method_checks_its_own_settings(kw, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        Method(**kw)


@pytest.mark.parametrize("strategy", [PerFedRLNAS, PerFedRLNASLegacy])
def test_both_faces_check_their_own_settings(strategy):
    with pytest.raises(ValueError, match=r"fraction_evaluate must be in \[0, 1\], got 1.5"):
        strategy(_family(), fraction_evaluate=1.5)
    with pytest.raises(ValueError, match=r"min_usable_fraction is 2, out of range \[0, 1\]"):
        strategy(_family(), min_usable_fraction=2)


def test_check_ranges_names_the_first_refused_value():
    rules = {"a": lambda v: v > 0, "b": lambda v: v > 0}
    check_ranges({"a": 1, "b": 2}, rules)
    with pytest.raises(ValueError, match="^b is -3, out of range$"):
        check_ranges({"a": 1, "b": -3}, rules)


# The constructors' signatures are public (users pass these keywords): unchanged, new
# keywords only added at the end.
SHARED = (
    "lr=0.05, batch_size=32, results_dir=None, checkpoint_dir=None, resume=False, run_config=None"
)
ADDED = "device_macs_per_second=1000000000.0"
SIGNATURES = {
    SearchSession: "family, search_config=None, clients_per_round=5, local_epochs=1, "
    "lr=0.05, batch_size=32, evaluate_every=1, bn_recalibration_batches=-1, finetune_epochs=0, "
    "results_dir=None, checkpoint_dir=None, resume=False, run_config=None, name='PerFedRLNAS', "
    "profiles=None, num_new_clients=0, new_client_rounds=0, training=None, "
    f"{ADDED}",
    PerFedRLNAS: "family, clients_per_round=5, min_available_nodes=2, fraction_evaluate=1.0, "
    "evaluate_every=1, bn_recalibration_batches=-1, finetune_epochs=0, search_config=None, "
    f"local_epochs=1, {SHARED}, arrayrecord_key='arrays', configrecord_key='config', "
    "metricrecord_key='metrics', query_timeout=120.0, profiles=None, num_new_clients=0, "
    "new_client_rounds=0, min_usable_fraction=0.0, deployed_dir=None, diagnostic_subnets=0, "
    f"diagnose_every=0, training=None, {ADDED}",
    PerFedRLNASLegacy: "family, clients_per_round=5, min_available_clients=2, "
    "fraction_evaluate=1.0, evaluate_every=1, bn_recalibration_batches=-1, finetune_epochs=0, "
    f"search_config=None, local_epochs=1, {SHARED}, query_timeout=120.0, "
    "min_usable_fraction=0.0, deployed_dir=None, training=None, profiles=None, "
    f"{ADDED}",
    Method: "clients_per_round=5, min_available_nodes=2, local_epochs=1, lr=0.05, batch_size=32, "
    "evaluate_every=1, bn_recalibration_batches=-1, bandwidth_down_bps=100000000.0, "
    "bandwidth_up_bps=100000000.0, seed=0, results_dir=None, checkpoint_dir=None, resume=False, "
    "run_config=None, query_timeout=120.0, round_timeout=3600.0, arrayrecord_key='arrays', "
    f"configrecord_key='config', metricrecord_key='metrics', training=None, {ADDED}",
}


@pytest.mark.parametrize("cls", list(SIGNATURES), ids=lambda c: c.__name__)
def test_public_signatures_are_unchanged(cls):
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    shown = [p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params]
    assert ", ".join(shown) == SIGNATURES[cls]
    defaults = {p.name: p.default for p in params}
    for name in ROUND_SETTINGS:  # every shared setting, with the settings' own default
        assert defaults[name] == {"run_config": None, "training": None}.get(
            name, getattr(RoundSettings(), name)
        )


def test_session_settings_names_are_kept():
    assert set(ROUND_SETTINGS) <= set(SESSION_SETTINGS)
    assert {"finetune_epochs", "profiles", "num_new_clients", "new_client_rounds"} <= set(
        SESSION_SETTINGS
    )
    session = session_from(_family(), None, "x", {"lr": 0.3, "unrelated": 1})
    assert session.lr == 0.3 and session.name == "x"


# ---------------------------------------------------------------------- rounds


def test_schedule_without_a_known_end_has_no_last_round():
    schedule = RoundSchedule(None, evaluate_every=3, rounds_done=2)
    assert schedule.global_round(1) == 3
    assert not schedule.is_last_round(10**6)
    assert [r for r in range(1, 8) if schedule.is_evaluation_round(r)] == [3, 6]
    with pytest.raises(ValueError, match="not known yet"):
        schedule.remaining()
    with pytest.raises(ValueError, match="num_rounds must be an integer >= 0"):
        RoundSchedule(-1)


def test_session_rounds_follow_the_schedule():
    session = SearchSession(_family(), evaluate_every=2)
    assert session.total_rounds is None and not session.is_last_round(100)
    assert [r for r in range(1, 6) if session.is_evaluation_round(r)] == [2, 4]
    assert session.remaining_rounds(5) == 5
    assert session.schedule == RoundSchedule(5, 2, 0)
    assert [r for r in range(1, 6) if session.is_evaluation_round(r)] == [2, 4, 5]
    assert session.is_last_round(5) and not session.is_last_round(4)
    session.round_offset = 3  # as after a resume at round 3: Flower's round 1 is round 4
    assert session.global_round(1) == 4 and session.is_last_round(2)
    session.search.completed_rounds = 3
    assert session.remaining_rounds(5) == 2 and session.remaining_rounds(2) == 0


def test_a_commit_round_after_the_last_round_is_named(caplog):
    session = SearchSession(_family(), search_config=SearchConfig(commit_round=7))
    with caplog.at_level(logging.WARNING, logger="flwr"):
        session.remaining_rounds(6)
    assert "commit-round is 7, after the run's last round (num-server-rounds 6)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flwr"):
        session.remaining_rounds(7)
    assert "commit-round" not in caplog.text


def test_run_config_settings_are_one_set(tmp_path):
    cfg = {
        "results-dir": str(tmp_path / "out"),
        "checkpoint-dir": "",
        "clients-per-round": 3,
        "local-epochs": 2,
        "lr": 0.1,
        "batch-size": 16,
        "evaluate-every": 2,
        "bn-recalibration-batches": 0,
        "resume": False,
        "num-clients": 4,
        "bandwidth-mbps": 10.0,
        "seed": 1,
        "policy-lr": 0.01,
        "policy-optimizer": "adam",
        "lambda-time": 0.0,
        "weighting": "examples",
    }
    shared = round_settings_kwargs(cfg)
    assert set(shared) == set(ROUND_SETTINGS)
    assert shared["checkpoint_dir"] == f"{tmp_path / 'out'}/checkpoint"
    for kwargs in (strategy_kwargs(dict(cfg)), protocol_kwargs(cfg)):
        assert {k: kwargs[k] for k in ROUND_SETTINGS} == shared
    assert RoundSettings.from_kwargs(protocol_kwargs(cfg)).lr == 0.1
    assert strategy_kwargs(dict(cfg))["search_config"].bandwidth_down_bps == 10e6
    with pytest.raises(ValueError, match="bandwidth-mbps must be a positive number"):
        strategy_kwargs({**cfg, "bandwidth-mbps": 0})


# ---------------------------------------------------------------------- ledger


def test_a_round_s_bytes_and_latency_are_the_ledger_s(local_grid, tmp_path):
    strategy = PerFedRLNAS(
        _family(), clients_per_round=2, search_config=SearchConfig(seed=0), evaluate_every=5
    )
    grid = local_grid(NODES, HANDLERS)
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    _, metrics = strategy.aggregate_train(1, replies)
    ledger = strategy.session.ledger
    outcome = strategy.session.outcome
    assert ledger.exchange_seconds == [max(outcome.round_times.values())]
    assert metrics["latency-s"] == ledger.latency
    assert (
        metrics["bytes-down"]
        == ledger.bytes_down
        == sum(m.content["arrays"].count_bytes() for m in messages)
    )
    assert (
        metrics["bytes-up"]
        == ledger.bytes_up
        == sum(r.content["arrays"].count_bytes() for r in replies)
    )
    assert list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid)) == []
    assert strategy.aggregate_evaluate(1, []) is None  # closes the round without a test
    row = strategy.session.recorder.rounds[-1]
    assert row["latency-round-s"] == metrics["latency-s"] == row["latency-total-s"]
    assert (row["bytes-down"], row["bytes-up"]) == (metrics["bytes-down"], metrics["bytes-up"])
    assert strategy.session.ledger.exchange_seconds == []  # the next round starts afresh
    # The modelled latency: the slowest client's reported MACs at 1 GMAC/s + bytes at 100 Mbit/s.
    down = {m.metadata.dst_node_id: m.content["arrays"].count_bytes() for m in messages}
    modelled = [
        r.content["metrics"]["compute-macs"] / 1e9
        + 8 * (down[r.metadata.src_node_id] + r.content["arrays"].count_bytes()) / 100e6
        for r in replies
    ]
    assert all(r.content["metrics"]["compute-macs"] > 0 for r in replies)
    assert row["modelled-latency-round-s"] == pytest.approx(max(modelled), rel=1e-12)
    assert row["modelled-latency-total-s"] == row["modelled-latency-round-s"]


def test_modelled_time_hand_computed_and_nan_without_a_count():
    ledger = ExchangeLedger(8e6, 16e6, macs_per_second=2e9)
    # 4e9 MACs at 2 GMAC/s on a device twice as slow, 1 MB down at 8 Mbit/s, 2 MB up at 16.
    assert ledger.modelled_time(4e9, 1_000_000, 2_000_000, speed_factor=2.0) == 4.0 + 1.0 + 1.0
    ledger.add_exchange(10, 20, [3.0, 5.0], [1.5, 2.5])
    ledger.add_exchange(0, 0, [1.0], [0.5])
    ledger.server_seconds = 7.0
    assert ledger.latency == 5.0 + 1.0 + 7.0
    assert ledger.modelled_latency == 2.5 + 0.5  # no server time
    ledger.add_exchange(0, 0, [1.0], [ledger.modelled_time(float("nan"), 0, 0)])
    assert math.isnan(ledger.modelled_latency)  # a reply without compute-macs
    assert ledger.modelled_time(0, 0, 0) == 0.0


def test_device_macs_per_second_is_checked():
    with pytest.raises(ValueError, match="device_macs_per_second is 0, out of range"):
        RoundSettings(device_macs_per_second=0)
    cfg = {
        "results-dir": "",
        "clients-per-round": 3,
        "local-epochs": 1,
        "lr": 0.1,
        "batch-size": 16,
        "evaluate-every": 2,
        "bn-recalibration-batches": 0,
        "device-macs-per-second": 5e8,
    }
    assert round_settings_kwargs(cfg)["device_macs_per_second"] == 5e8
    del cfg["device-macs-per-second"]  # an older app without the key: the default
    assert round_settings_kwargs(cfg)["device_macs_per_second"] == 1e9
