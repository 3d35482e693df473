"""Local-training practice shared by every method: lr schedule, optimiser, label smoothing."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from flwr_pfedrlnas.baselines.fedavg import FedAvgFixedArch
from flwr_pfedrlnas.core.search import SearchConfig
from flwr_pfedrlnas.flower.session import SearchSession
from flwr_pfedrlnas.methods import protocol_kwargs
from flwr_pfedrlnas.protocol.training_options import TrainingOptions
from flwr_pfedrlnas.supernets import get_supernet
from flwr_pfedrlnas.training import make_optimizer, train, training_options


def test_cosine_schedule_by_hand():
    options = TrainingOptions(lr_schedule="cosine")
    got = [options.lr_at(0.1, t, 4) for t in (1, 2, 3, 4)]
    expected = [
        0.1,
        0.05 * (1 + math.cos(math.pi / 4)),
        0.05,
        0.05 * (1 + math.cos(3 * math.pi / 4)),
    ]
    assert got == pytest.approx(expected, abs=1e-15)
    assert TrainingOptions().lr_at(0.1, 3, 4) == 0.1  # constant
    assert options.lr_at(0.1, 3, None) == 0.1  # the run's length unknown: the base lr


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr_schedule": "step"}, "lr-schedule must be one of"),
        ({"optimizer": "adam"}, "optimizer must be one of"),
        ({"label_smoothing": 1.0}, r"label-smoothing must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainingOptions(**kwargs)


def test_every_method_sends_the_round_s_scheduled_lr():
    family = get_supernet("elastic-cnn", num_stages=2, base_width=4)
    method = FedAvgFixedArch(family, lr=0.2, training=TrainingOptions("cosine", "adamw", 0.1))
    method.schedule.num_rounds = 2
    first, second = method.base_config(1), method.base_config(2)
    assert first["lr"] == pytest.approx(0.2) and second["lr"] == pytest.approx(0.1)
    assert first["optimizer"] == "adamw" and first["label-smoothing"] == 0.1
    session = SearchSession(family, SearchConfig(), lr=0.2, training=TrainingOptions("cosine"))
    session.total_rounds = 2
    assert session.client_config(server_round=2)["lr"] == pytest.approx(0.1)
    assert session.client_config()["lr"] == pytest.approx(0.2)


def test_run_config_reaches_every_method():
    cfg = {
        "clients-per-round": 2,
        "num-clients": 3,
        "local-epochs": 1,
        "lr": 0.05,
        "batch-size": 8,
        "evaluate-every": 1,
        "bn-recalibration-batches": -1,
        "bandwidth-mbps": 100.0,
        "seed": 0,
        "results-dir": "",
        "lr-schedule": "cosine",
        "optimizer": "adamw",
        "label-smoothing": 0.1,
    }
    assert protocol_kwargs(cfg)["training"] == TrainingOptions("cosine", "adamw", 0.1)
    assert training_options({"optimizer": "adamw", "label-smoothing": 0.1}) == {
        "optimizer": "adamw",
        "label_smoothing": 0.1,
    }
    with pytest.raises(ValueError, match="label-smoothing must be in"):
        training_options({"label-smoothing": -0.5})


def _model_and_batch():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    return model, DataLoader(TensorDataset(x, y), batch_size=8), x, y


def test_label_smoothing_is_the_trained_loss():
    model, loader, x, y = _model_and_batch()
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.2)
    result = train(model, loader, 1, 0.1, measure_memory=False, label_smoothing=0.2)
    assert result.loss == pytest.approx(float(expected), rel=1e-6)


def test_adamw_is_the_optimiser_asked_for():
    model, loader, x, y = _model_and_batch()
    reference = torch.nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(reference.parameters(), lr=0.01, weight_decay=5e-4)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(reference(x), y).backward()
    opt.step()
    train(model, loader, 1, 0.01, measure_memory=False, optimizer="adamw")
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)
    assert isinstance(make_optimizer(model.parameters(), "sgd"), torch.optim.SGD)
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adamw', got 'rmsprop'"):
        make_optimizer(model.parameters(), "rmsprop")
