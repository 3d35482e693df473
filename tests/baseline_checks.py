"""Tiny supernets, data and runs shared by the baselines' tests.

Imported as a sibling module (pytest puts ``tests/``, a directory without
``__init__.py``, on ``sys.path``) by ``test_baselines.py``,
``test_baselines_pfl.py``, ``test_nas_baselines.py``, ``test_nas_fedoras.py``
and ``test_nas_spider.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from flwr.app import Context, Message
from torch.utils.data import DataLoader, TensorDataset

from flwr_pfedrlnas.baselines.nas.client import handle
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders
from flwr_pfedrlnas.flower.client import identify
from flwr_pfedrlnas.supernets import SupernetFamily, get_supernet

# Three nodes, partitions 0-2, for the in-process grid (conftest.LocalGrid).
NODES = {11: {"partition-id": 0}, 22: {"partition-id": 1}, 33: {"partition-id": 2}}
# One CPU per simulated client, two for Ray.
BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}}


def tiny_darts(operations: Sequence[str], steps: int = 2, multiplier: int = 2) -> SupernetFamily:
    """A ``darts`` family of 3 cells of 4 channels for 1-channel images, 10 classes."""
    return get_supernet(
        "darts",
        init_channels=4,
        num_cells=3,
        steps=steps,
        multiplier=multiplier,
        in_channels=1,
        num_classes=10,
        operations=list(operations),
    )


def synthetic_loaders(
    pid: int, n_train: int, n_test: int, batch_size: int, size: int = 8
) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders of ``size`` x ``size`` greyscale images of client ``pid``.

    The labels are tied to the client (non-iid: three labels per client) and
    marked in the first ten pixels; the data and the training order are seeded
    by ``pid``.
    """
    gen = torch.Generator().manual_seed(pid)
    x = torch.randn(n_train + n_test, 1, size, size, generator=gen)
    y = (torch.arange(n_train + n_test) % 3 + 3 * pid) % 10
    x.view(len(x), -1)[:, :10] += torch.nn.functional.one_hot(y, 10).float() * 3
    train = TensorDataset(x[:n_train], y[:n_train])
    test = TensorDataset(x[n_train:], y[n_train:])
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen)
    return loader, DataLoader(test, batch_size=batch_size)


def embedded_loaders(
    partition_id: int, num_partitions: int, batch_size: int, alpha: float
) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders of one Dirichlet partition of the embedded data (seed 0)."""
    data = load_client_data(
        "embedded",
        partition_id=partition_id,
        num_partitions=num_partitions,
        alpha=alpha,
        seed=0,
    )
    return make_loaders(data, batch_size=batch_size, seed=0)


def message_kind(msg: Message) -> str:
    """``"train"``, ``"evaluate"`` or ``"query"``."""
    return msg.metadata.message_type.split(".")[0]


def nas_handlers(load_data, device: str | None = "cpu") -> dict[str, Callable]:
    """The in-process grid's handlers of a federated-NAS baseline's client."""
    return {
        "query": identify,
        "train": lambda msg, ctx: handle("train", msg, ctx, load_data, device=device),
        "evaluate": lambda msg, ctx: handle("evaluate", msg, ctx, load_data, device=device),
    }


def simulate_in_turn(
    strategies: Mapping[str, object],
    load_data: Callable[[Context, int], tuple[DataLoader, DataLoader]],
    num_clients: int,
    num_rounds: int = 2,
) -> None:
    """One Flower simulation (one Ray start-up) whose ServerApp runs each strategy in turn."""
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from flwr_pfedrlnas.baselines.app import make_baselines_client_app

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        for strategy in strategies.values():
            strategy.start(grid, num_rounds=num_rounds)

    run_simulation(
        server_app, make_baselines_client_app(load_data), num_clients, backend_config=BACKEND
    )
