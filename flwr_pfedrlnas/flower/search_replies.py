"""The Message-API search's replies: train replies -> ``ClientReply``, tests -> accuracies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import WARNING
from typing import TYPE_CHECKING

from flwr.app import Message
from flwr.common import log

from flwr_pfedrlnas.core.search import ClientReply
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.driver import content_bytes

if TYPE_CHECKING:
    from flwr_pfedrlnas.flower.strategy import PerFedRLNAS

__all__ = ["evaluation_accuracies", "parse_train_reply", "serialised_bytes"]


def parse_train_reply(strategy: PerFedRLNAS, msg: Message) -> ClientReply | None:
    """The train reply ``msg`` as a :class:`ClientReply`, or ``None`` if it is unusable.

    A reply must come from a node sent a message this round and answer that
    very message (a stale or replayed one goes to ``strategy._stale``); an
    error, a reply naming another client or malformed records are the
    client's failure of the round.
    """
    session = strategy.session
    node_id = msg.metadata.src_node_id
    cid = strategy._sent.get(node_id)
    if cid is None:
        log(WARNING, "reply from node %s, which was sent nothing this round: ignored", node_id)
        return None
    # The grid stamps every sent message with an id (on push); a reply must
    # answer this round's message to that node, not an earlier one (replay).
    sent = strategy._sent_messages.get(node_id)
    want = "" if sent is None else sent.metadata.message_id
    got = msg.metadata.reply_to_message_id
    if want and got != want:
        log(
            WARNING,
            "client %s: reply-to-message-id is %r, not this round's message %r "
            "(a stale or replayed reply): ignored",
            cid,
            got,
            want,
        )
        strategy._stale[cid] = f"rejected: reply-to-message-id is {got!r}, not {want!r}"
        return None
    if msg.has_error():
        session.record_failure(cid, f"client error: {msg.error.reason}")
        return None
    content = msg.content
    config = content.config_records.get(strategy.configrecord_key)
    arch_json = None if config is None else config.get(m.ARCH)
    echoed = None if config is None else config.get(m.CLIENT_ID)
    if echoed is not None and str(echoed) != cid:
        session.record_failure(
            cid, f"rejected: client-id is {echoed!r}, but the reply came from client {cid!r}"
        )
        return None
    try:
        return m.reply_from_records(
            cid,
            content.array_records.get(strategy.arrayrecord_key),
            content.metric_records.get(strategy.metricrecord_key),
            None if arch_json is None else str(arch_json),
            strategy.family,
        )
    except ValueError as err:
        session.record_failure(cid, f"rejected: {err}")
        return None


def serialised_bytes(
    sent: Mapping[int, str],
    sent_messages: Mapping[int, Message],
    replies: Iterable[Message],
    arrayrecord_key: str = "arrays",
) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes each client was sent and sent back, as Flower carries them.

    Serialised arrays and their keys (the measure every baseline records),
    not the bare array bytes the core's reward uses; for tensors of a few KB
    the serialisation adds much. ``sent`` maps node id -> client id. What a
    client is sent counts every array record of its message: the subnet and,
    the first time it keeps a block (share-or-keep), the block's initial copy.
    """
    down = {cid: content_bytes(sent_messages[node_id].content) for node_id, cid in sent.items()}
    up = {
        sent[msg.metadata.src_node_id]: msg.content[arrayrecord_key].count_bytes()
        for msg in replies
        if msg.metadata.src_node_id in sent
        and not msg.has_error()
        and arrayrecord_key in msg.content.array_records
    }
    return down, up


def evaluation_accuracies(
    strategy: PerFedRLNAS, server_round: int, replies: Iterable[Message]
) -> tuple[dict[str, float], dict[str, str]]:
    """Record each client's test (session); the usable accuracies and why the others failed."""
    accuracies: dict[str, float] = {}
    failures: dict[str, str] = {}
    for msg in replies:
        cid = strategy.node_to_client.get(msg.metadata.src_node_id)
        if cid is None:
            continue
        if msg.has_error():
            log(WARNING, "evaluation of client %s failed: %s", cid, msg.error.reason)
            failures[cid] = f"client error: {msg.error.reason}"
            continue
        metrics = msg.content.metric_records.get(strategy.metricrecord_key)
        if metrics is None:
            log(WARNING, "evaluation reply of client %s has no metrics: ignored", cid)
            failures[cid] = "no metrics"
            continue
        acc = metrics.get(m.ACCURACY)
        if strategy.session.record_evaluation(
            server_round, cid, acc, metrics.get(m.NUM_EXAMPLES, 0)
        ):
            accuracies[cid] = float(acc)
        else:
            failures[cid] = f"accuracy is {acc!r}, not a number in [0, 1]"
    return accuracies, failures
