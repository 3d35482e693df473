"""One ClientApp for every baseline: the message's config says which method's step to run."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from flwr_pfedrlnas.baselines import client as bc
from flwr_pfedrlnas.baselines.nas.client import handle
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.client import LoadData, identify

__all__ = ["make_baselines_client_app"]


def _handle(
    kind: str, msg: Message, context: Context, load_data: LoadData, device: str | None
) -> Message:
    config = msg.content.config_records.get("config", ConfigRecord())
    if bc.METHOD in config:  # a personalised baseline on a fixed model
        # A validation loader, where there is one, is not theirs to use.
        train_loader, test_loader, *_ = load_data(context, int(config.get(m.BATCH_SIZE, 32)))
        step = bc.baseline_train if kind == "train" else bc.baseline_evaluate
        return step(msg, context, train_loader, test_loader, device)
    # A federated-NAS step, or one subnet (FedAvg on a fixed architecture).
    return handle(kind, msg, context, load_data, device)


def make_baselines_client_app(load_data: LoadData, device: str | None = None) -> ClientApp:
    """A ``ClientApp`` serving every baseline of the project.

    Personalised baselines (FedAvg+FT, Local, FedRep, FedBABU, FedTP) name their
    ``method`` in the config; federated-NAS steps (FedNAS, FedRLNAS, SPIDER,
    FedorAS) their ``nas-step``; anything else is one subnet to train or test.

    Parameters
    ----------
    load_data : Callable[[Context, int], tuple[DataLoader, DataLoader]]
        This node's train and test loaders for a batch size (should cache).
    device : str | None (default: None)
        Torch device; CUDA when available if ``None``.
    """
    # The modules holding the federated-NAS client steps register them on import.
    from flwr_pfedrlnas.baselines.nas import fednas, fedoras_client, spider_client  # noqa: F401

    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return _handle("train", msg, context, load_data, device)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return _handle("evaluate", msg, context, load_data, device)

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        return identify(msg, context)

    return app
