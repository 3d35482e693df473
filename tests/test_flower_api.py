"""The Flower APIs the package relies on, checked against the installed flwr.

pyproject.toml admits any flwr 1.x from 1.41 on; a new minor release that
renames or reshapes one of these fails here, by name, before any run does.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = [REPO / "flwr_pfedrlnas", REPO / "apps"]


def _flwr_imports() -> dict[tuple[str, str], list[str]]:
    """``(module, name) -> files`` of every ``from flwr... import name`` in our code."""
    found: dict[tuple[str, str], list[str]] = {}
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    top = node.module.split(".")[0]
                    if top in ("flwr", "flwr_datasets"):
                        for alias in node.names:
                            key = (node.module, alias.name)
                            found.setdefault(key, []).append(str(path.relative_to(REPO)))
    return found


IMPORTS = _flwr_imports()


def test_the_scan_finds_the_imports_we_know_of():
    # A scan that found nothing would pass every check below vacuously.
    for key in [
        ("flwr.app", "Message"),
        ("flwr.serverapp.strategy", "Strategy"),
        ("flwr.serverapp", "Grid"),
        ("flwr.clientapp", "ClientApp"),
        ("flwr_datasets", "FederatedDataset"),
    ]:
        assert key in IMPORTS, key


@pytest.mark.parametrize("module,name", sorted(IMPORTS), ids=lambda v: str(v))
def test_every_imported_flower_symbol_exists(module, name):
    mod = importlib.import_module(module)
    assert hasattr(mod, name), f"{module}.{name} (used in {IMPORTS[(module, name)]}) is gone"


def _params(obj) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(obj).parameters)


def test_message_api_signatures():
    from flwr.app import ArrayRecord, Message, MessageType, RecordDict

    params = _params(Message.__init__)
    # Requests: Message(content=..., message_type=..., dst_node_id=...); replies:
    # Message(content=..., reply_to=msg) (flower/strategy.py, flower/client.py).
    for key in ("content", "message_type", "dst_node_id", "reply_to"):
        assert key in params, key
    for kind in ("TRAIN", "EVALUATE", "QUERY"):
        assert isinstance(getattr(MessageType, kind), str)
    # The metadata fields and the error flag the strategies read on replies.
    msg = Message(
        content=RecordDict({"arrays": ArrayRecord()}), dst_node_id=3, message_type="query"
    )
    for attr in ("src_node_id", "dst_node_id", "message_type", "message_id", "reply_to_message_id"):
        assert hasattr(msg.metadata, attr), attr
    assert msg.has_error() is False
    assert list(msg.content.keys()) == ["arrays"]


def test_record_round_trip():
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

    # flower/messages.py: ArrayRecord({key: Array(ndarray)}) and Array.numpy() back.
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    record = ArrayRecord({"w": Array(value)})
    assert np.array_equal(record["w"].numpy(), value)
    assert record["w"].numpy().dtype == np.float32
    assert MetricRecord({"accuracy": 0.5, "num-examples": 3})["num-examples"] == 3
    assert ConfigRecord({"arch": "{}", "server-round": 1})["arch"] == "{}"


def test_strategy_base_and_grid():
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg, Result, Strategy

    # Our strategies subclass Strategy and implement exactly its abstract hooks.
    assert Strategy.__abstractmethods__ == {
        "summary",
        "configure_train",
        "aggregate_train",
        "configure_evaluate",
        "aggregate_evaluate",
    }
    start = _params(Strategy.start)
    for key in ("grid", "initial_arrays", "num_rounds", "timeout", "train_config"):
        assert key in start, key
    # baselines/: FedAvg(min_available_nodes=...) with Flower's record keys.
    fedavg = _params(FedAvg.__init__)
    for key in ("min_available_nodes", "arrayrecord_key", "configrecord_key", "weighted_by_key"):
        assert key in fedavg, key
    assert fedavg["arrayrecord_key"].default == "arrays"
    assert fedavg["weighted_by_key"].default == "num-examples"
    assert {"arrays", "train_metrics_clientapp"} <= set(_params(Result))
    assert "timeout" in _params(Grid.send_and_receive)
    assert callable(Grid.get_node_ids)


def test_app_decorators_and_context():
    from flwr.app import Context, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    app = ClientApp()
    for handler in ("train", "evaluate", "query"):
        assert callable(getattr(app, handler)), handler
    assert callable(ServerApp().main)
    assert "server_fn" in _params(ServerApp.__init__)  # flower/legacy.py's apps
    context = Context(
        run_id=1, node_id=2, node_config={"partition-id": 0}, state=RecordDict(), run_config={}
    )
    assert context.node_config["partition-id"] == 0
    assert isinstance(context.state, RecordDict)


def test_legacy_api():
    import numpy as np
    from flwr.client import NumPyClient
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerConfig

    arrays = [np.ones((2, 2), dtype=np.float32)]
    back = parameters_to_ndarrays(ndarrays_to_parameters(arrays))
    assert np.array_equal(back[0], arrays[0])
    assert {"get_parameters", "fit", "evaluate", "to_client"} <= set(dir(NumPyClient))
    assert ServerConfig(num_rounds=3).num_rounds == 3


def test_flwr_datasets_api():
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import DirichletPartitioner

    # data/datasets.py: FederatedDataset(dataset=..., partitioners=...) and
    # DirichletPartitioner(num_partitions, partition_by, alpha, min_partition_size, shuffle).
    fds = _params(FederatedDataset.__init__)
    assert {"dataset", "partitioners", "preprocessor", "shuffle"} <= set(fds)
    dirichlet = _params(DirichletPartitioner.__init__)
    for key in ("num_partitions", "partition_by", "alpha", "min_partition_size", "shuffle"):
        assert key in dirichlet, key
