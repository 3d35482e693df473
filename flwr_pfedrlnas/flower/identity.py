"""Who is who: a node -> client-id map learned once through an identity query.

Flower's node ids change when a SuperNode reconnects; every strategy of the
package keys its state on the client's stable id instead (``partition-id`` in
simulation, the ``client-id`` node config in deployment), which the node
reports in answer to a QUERY message (see :func:`identify`).
"""

from __future__ import annotations

import time
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.protocol.rounds import natural_sorted

__all__ = [
    "client_id_from_context",
    "identify",
    "identify_clients",
    "learn_identity",
    "natural_sorted",
]


# ------------------------------------------------------------------ client side
def client_id_from_context(context: Context) -> str:
    """The client's stable identity.

    ``client-id`` from the node config (deployment), else ``partition-id``
    (simulation). Raises ``ValueError`` when neither is set.
    """
    node_config = context.node_config
    if m.CLIENT_ID in node_config:
        return str(node_config[m.CLIENT_ID])
    if m.PARTITION_ID in node_config:
        return str(node_config[m.PARTITION_ID])
    raise ValueError(
        "node config has neither 'client-id' nor 'partition-id'; start the "
        'SuperNode with --node-config "client-id=<id>"'
    )


def identify(msg: Message, context: Context) -> Message:
    """Handle the identity query: reply with the stable client id."""
    content = RecordDict({"config": ConfigRecord({m.CLIENT_ID: client_id_from_context(context)})})
    return Message(content=content, reply_to=msg)


# ------------------------------------------------------------------ server side


def learn_identity(
    reply: Message,
    node_ids: list[int],
    node_to_client: dict[int, str],
    client_to_node: dict[str, int],
    configrecord_key: str = "config",
) -> None:
    """Record the client id a node reported, unless the answer is unusable.

    An error, a missing, empty or non-scalar id is logged and ignored; so is
    an id another connected node already holds. A client that comes back on
    a new node moves there (its old node is forgotten).
    """
    node_id = reply.metadata.src_node_id
    if reply.has_error():
        log(WARNING, "node %s did not say who it is: %s", node_id, reply.error.reason)
        return
    config = reply.content.config_records.get(configrecord_key)
    cid = None if config is None else config.get(m.CLIENT_ID)
    if isinstance(cid, bool) or not isinstance(cid, (str, int)) or str(cid) == "":
        log(WARNING, "node %s answered the identity query with %r: ignored", node_id, cid)
        return
    cid = str(cid)
    old = client_to_node.get(cid)
    if old is not None and old != node_id:
        if old in node_ids:
            log(
                WARNING,
                "node %s claims client id %r, held by node %s: ignored",
                node_id,
                cid,
                old,
            )
            return
        del node_to_client[old]  # the client came back on a new node
    node_to_client[node_id] = cid
    client_to_node[cid] = node_id


def identify_clients(
    grid: Grid,
    node_to_client: dict[int, str],
    client_to_node: dict[str, int],
    min_available_nodes: int,
    query_timeout: float,
    configrecord_key: str = "config",
) -> list[str]:
    """Wait for ``min_available_nodes``, ask every new node who it is; the connected clients.

    The two maps are updated in place; the return value lists the client ids
    of the connected nodes in natural order.
    """
    while len(node_ids := list(grid.get_node_ids())) < min_available_nodes:
        log(
            INFO,
            "Waiting for nodes to connect: %d connected (minimum required: %d).",
            len(node_ids),
            min_available_nodes,
        )
        time.sleep(1)
    unknown = [n for n in node_ids if n not in node_to_client]
    if unknown:
        queries = [
            Message(
                content=RecordDict({configrecord_key: ConfigRecord({"query": m.CLIENT_ID})}),
                message_type=MessageType.QUERY,
                dst_node_id=node_id,
            )
            for node_id in unknown
        ]
        for reply in grid.send_and_receive(queries, timeout=query_timeout):
            learn_identity(reply, node_ids, node_to_client, client_to_node, configrecord_key)
    connected = set(node_ids)
    return natural_sorted([c for n, c in node_to_client.items() if n in connected])
