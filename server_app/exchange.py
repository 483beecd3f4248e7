"""Helpers of the strategy's message exchange: polling for replies, guarding each reply, the
nodes a fraction means, model selection over a run's rounds."""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, TypeVar

import numpy as np
from common.selection import DEFAULT_METRIC, Selection
from server_app.records import PhaseStats, RoundRecord
from server_app.state import CatalogMismatch
from server_app.validation import ReplyError

log = logging.getLogger("flwr.fedshare")
T = TypeVar("T")


def selection(history: list[RoundRecord], patience: int = 0) -> Selection:
    """Model selection over a run's rounds: the best validation NDCG@20 and the test metrics
    of that round (rounds without a validation split are not considered)."""
    chosen = Selection(DEFAULT_METRIC, patience)
    for record in history:
        if record.valid_metrics.get("num-users", 0) > 0:
            chosen = chosen.observe(record.round, record.valid_metrics, record.metrics)
    return chosen


def guarded(stats: PhaseStats, node: int, what: str, handle: Callable[[], T]) -> T | None:
    """``handle()`` for one node's reply, or None when it fails: any failure rejects that
    reply (recorded in ``stats`` with the node and the reason) and never the round or the
    server. Expected failures (a bad reply) give their message; anything else is also logged
    with its traceback, since it is a gap in validation."""
    try:
        return handle()
    except (ReplyError, CatalogMismatch) as exc:
        stats.rejected.append(f"node {node}: {what} rejected: {excerpt(str(exc))}")
    except Exception as exc:  # noqa: BLE001 - one reply must not take the server down
        log.exception("node %s: %s reply raised", node, what)
        stats.rejected.append(f"node {node}: {what} rejected: unexpected "
                              f"{type(exc).__name__}: {excerpt(str(exc))}")
    return None


def at_most(messages: list[str], node: int, most: int = 10) -> list[str]:
    """The first ``most`` of one node's refusals and a count of the rest (a reply with 10^5
    refused requests must not put 10^5 lines into the round record and the checkpoint)."""
    if len(messages) <= most:
        return messages
    return messages[:most] + [f"node {node}: and {len(messages) - most} more requests "
                              "refused or deferred"]


def evaluated_subset(node_ids: Iterable[int], fraction: float, seed: int) -> list[int]:
    """The ``fraction`` of ``node_ids`` a run evaluates (all when 1): a permutation seeded by
    the run's seed, so the same nodes at every evaluation (and, in the cross-user setting, the
    same users a benchmark evaluates a centralized model on)."""
    nodes = sorted(node_ids)
    count = share_of(fraction, len(nodes))
    if count >= len(nodes):
        return nodes
    order = np.random.default_rng([seed, 1]).permutation(len(nodes))
    return sorted(nodes[int(i)] for i in order[:count])


def share_of(fraction: float, count: int) -> int:
    """How many of ``count`` nodes a ``fraction`` means (at least one)."""
    return max(1, int(round(fraction * count)))


def excerpt(reason: str, most: int = 300) -> str:
    """The last non-empty line of a node's error (a traceback ends with the message), short."""
    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return text if len(text) <= most else text[:most] + "..."


def pull_all(grid, message_ids: list[str], timeout: float, poll: float) -> list:
    """Poll for replies until all arrived or ``timeout`` passed (partial list then)."""
    pending, replies = set(message_ids), []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            replies.append(reply)
            pending.discard(reply.metadata.reply_to_message_id)
        if pending:
            time.sleep(poll)
    return replies
