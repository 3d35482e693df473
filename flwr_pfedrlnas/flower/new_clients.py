"""Search-only rounds of the new (held-out) clients, for the Message-API strategy."""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from flwr_pfedrlnas.flower import messages as m

__all__ = ["search_new_clients"]


def _search_message(strategy, cid: str, arch, state, search_round: int, extra) -> Message:
    config = dict(strategy.session.evaluate_config(extra))
    config[m.SEARCH_ONLY] = True
    config["search-round"] = int(search_round)
    search = strategy.search
    round_no = (strategy.session.total_rounds or search.completed_rounds) + search_round
    content = RecordDict(
        {
            strategy.arrayrecord_key: m.arrays_to_record(state),
            strategy.configrecord_key: m.subnet_config(strategy.family, arch, round_no, config),
        }
    )
    return Message(
        content=content,
        message_type=MessageType.EVALUATE,
        dst_node_id=strategy.client_to_node[cid],
    )


def _test_accuracies(strategy, replies: Iterable[Message], expected: set[str]) -> dict[str, float]:
    accuracies: dict[str, float] = {}
    for msg in replies:
        cid = strategy.node_to_client.get(msg.metadata.src_node_id)
        if cid is None or cid not in expected:
            continue
        if msg.has_error():
            log(WARNING, "search-only test of client %s failed: %s", cid, msg.error.reason)
            continue
        metrics = msg.content.metric_records.get(strategy.metricrecord_key)
        acc = None if metrics is None else metrics.get(m.ACCURACY)
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 1:
            log(WARNING, "search-only accuracy of client %s is %r: ignored", cid, acc)
            continue
        accuracies[cid] = float(acc)
    return accuracies


def search_new_clients(
    strategy,
    grid: Grid,
    rounds: int,
    timeout: float = 3600,
    evaluate_config: ConfigRecord | None = None,
) -> list[dict[str, Any]]:
    """Run ``rounds`` search-only rounds of ``strategy`` (a ``PerFedRLNAS``); one row each.

    See :meth:`~flwr_pfedrlnas.flower.strategy.PerFedRLNAS.search_new_clients`.
    """
    session, search = strategy.session, strategy.search
    session.training_clients(strategy._identify(grid))  # fixes the new clients
    new = [c for c in session.new_clients or [] if c in strategy.client_to_node]
    if not new or rounds <= 0:
        return []
    extra = evaluate_config if evaluate_config is not None else ConfigRecord()
    rows = []
    for r in range(1, rounds + 1):
        messages = []
        for cid in new:
            proposal = search.propose_search_only(cid)
            messages.append(_search_message(strategy, cid, proposal.arch, proposal.state, r, extra))
        sampled = _test_accuracies(
            strategy, grid.send_and_receive(messages, timeout=timeout), set(new)
        )
        rewards = search.incorporate_search_only(sampled)
        messages = [_search_message(strategy, cid, *search.deploy(cid), r, extra) for cid in new]
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        deployed = _test_accuracies(strategy, replies, set(new))
        strategy._record_batchnorm(replies)
        rows.append(session.record_new_client_round(r, sampled, deployed, rewards))
    session.checkpoint()
    return rows
