"""Shared fixtures: a Grid that runs real client handlers in-process (no Ray)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from uuid import uuid4

import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict

torch.set_num_threads(1)

try:  # flwr >= 1.42 stamps every Message with the identity of the running task
    from flwr.supercore.task_identity import TaskIdentity
except ImportError:  # pragma: no cover - older flwr
    TaskIdentity = None


@pytest.fixture(autouse=True)
def _task_identity():
    if TaskIdentity is not None and TaskIdentity._run_id is None:
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


Handler = Callable[[Message, Context], Message]


class LocalGrid:
    """Delivers each message to a handler per node and collects the replies.

    ``handlers[kind]`` (kind = "train", "evaluate", "query") is called with the
    message and the node's Context; ``tamper(msg, reply)`` may alter, replace or
    drop (return None) a reply before the strategy sees it.
    """

    def __init__(self, node_configs: dict[int, dict], handlers: dict[str, Handler], tamper=None):
        self.contexts = {
            node: Context(
                run_id=1, node_id=node, node_config=cfg, state=RecordDict(), run_config={}
            )
            for node, cfg in node_configs.items()
        }
        self.handlers = handlers
        self.tamper = tamper
        self.sent: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            # As Flower's grids do on push: every sent message gets an id, which
            # the reply's reply_to_message_id then names.
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            self.sent.append(msg)
            kind = msg.metadata.message_type.split(".")[0]
            assert kind in (MessageType.TRAIN, MessageType.EVALUATE, MessageType.QUERY)
            reply = self.handlers[kind](msg, self.contexts[msg.metadata.dst_node_id])
            if self.tamper is not None:
                reply = self.tamper(msg, reply)
            if reply is not None:
                replies.append(reply)
        return replies


@pytest.fixture
def local_grid():
    return LocalGrid
