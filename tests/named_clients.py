"""Three named clients (alice, bob, carol) and a legacy-API client manager of them.

Imported as a sibling module (pytest puts ``tests/``, a directory without
``__init__.py``, on ``sys.path``) by ``test_deployed.py``, ``test_dropin.py``
and ``test_faults.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.common import Code, GetPropertiesRes, Status
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from flwr_pfedrlnas.flower import messages as m

# Node id -> node config of the in-process grid (conftest.LocalGrid); each node
# names its client, and each client has its own data partition.
NODES = {101: {"client-id": "alice"}, 202: {"client-id": "bob"}, 303: {"client-id": "carol"}}
PARTITION = {"alice": 0, "bob": 1, "carol": 2}  # also each client's index
CLIENT_IDS = tuple(cfg["client-id"] for cfg in NODES.values())


class ClientIdProxy(ClientProxy):
    """A legacy-API client that only answers ``get_properties`` with its client id.

    With ``client_id=None`` ``get_properties`` raises (a client that cannot be
    identified); the other calls are driven by hand in the tests.
    """

    def __init__(self, cid: str, client_id: str | None):
        super().__init__(cid)
        self.client_id = client_id

    def get_properties(self, ins, timeout, group_id):
        if self.client_id is None:
            raise RuntimeError("no get_properties")
        return GetPropertiesRes(Status(Code.OK, ""), {m.CLIENT_ID: self.client_id})

    def get_parameters(self, ins, timeout, group_id):  # pragma: no cover - unused
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):  # pragma: no cover - driven by hand
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):  # pragma: no cover - unused
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):  # pragma: no cover - unused
        raise NotImplementedError


def legacy_manager(client_ids: Iterable[str | None] = CLIENT_IDS) -> SimpleClientManager:
    """A client manager with one :class:`ClientIdProxy` per node of ``NODES``, in order."""
    manager = SimpleClientManager()
    for node, cid in zip(NODES, client_ids):
        manager.register(ClientIdProxy(str(node), cid))
    return manager
