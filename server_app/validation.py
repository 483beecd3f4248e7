"""Validation of decoded client replies before they touch server state.

:mod:`common.protocol` decodes a reply and checks its structure (records, keys, dtypes and
dimensions read from the record header before decoding, metric types and finiteness). The
checks here are about values: id ranges against the federation's catalog, sizes, finiteness
of arrays, duplicates and metric ranges. A bad reply raises :class:`ReplyError`; the
strategy logs it with the node id and goes on with the other replies.
"""

from __future__ import annotations

import numpy as np
from common.protocol import (EvaluateReply, ProtocolError, ShareReply, TrainReply,
                             UnshareReply)
from server_app.aggregation import RowUpdate

MAX_SHARE_PAIRS = 5_000_000


class ReplyError(ValueError):
    """A client reply that must not be used; the message says why."""


def decode(payload_type, content):
    """``payload_type.from_content(content)`` with protocol errors as :class:`ReplyError`."""
    try:
        return payload_type.from_content(content)
    except ProtocolError as exc:
        raise ReplyError(str(exc)) from None


def decode_withdrawals(content) -> UnshareReply | None:
    """The unshare requests riding on any reply (None when it carries none)."""
    try:
        return UnshareReply.rider(content)
    except ProtocolError as exc:
        raise ReplyError(str(exc)) from None


def check_ids(name: str, ids: np.ndarray, upper: int) -> None:
    if len(ids) and (ids.min() < 0 or ids.max() >= upper):
        raise ReplyError(f"{name} id out of range [0, {upper})")


def _check_size(kind: str, count: int) -> None:
    if count > MAX_SHARE_PAIRS:
        raise ReplyError(f"oversized {kind} ({count} pairs)")


def check_share(reply: ShareReply, num_users: int | None, num_items: int | None) -> np.ndarray:
    """The ``(m, 2)`` [user, item] pairs of a share reply; ids are checked against the
    federation's catalog when it is known, else against the node's own claim."""
    _check_size("share", len(reply.user))
    if reply.num_users < 1 or reply.num_items < 1:
        raise ReplyError("catalog sizes must be positive")
    check_ids("user", reply.user, num_users or reply.num_users)
    check_ids("item", reply.item, num_items or reply.num_items)
    pairs = np.stack([reply.user, reply.item], axis=1)
    if len(np.unique(pairs, axis=0)) != len(pairs):
        raise ReplyError("duplicate shared pairs")
    return pairs


def check_train(reply: TrainReply, num_items: int, dim: int) -> RowUpdate:
    """The row update of a train reply (shapes, ids, finiteness, positive counts)."""
    index, values, counts = reply.index, reply.values, reply.counts
    if values.shape != (len(index), dim) or counts.shape != (len(index),):
        raise ReplyError(f"update shapes disagree: index {index.shape}, values {values.shape}, "
                         f"counts {counts.shape}, expected d={dim}")
    check_ids("item", index, num_items)
    if len(np.unique(index)) != len(index):
        raise ReplyError("duplicate item rows in update")
    if not (np.isfinite(values).all() and np.isfinite(counts).all()):
        raise ReplyError("NaN or Inf in update")
    if len(counts) and counts.min() <= 0:
        raise ReplyError("non-positive row counts")
    if reply.num_examples < 0:
        raise ReplyError("negative num-examples")
    return RowUpdate(index, values, counts)


def check_evaluate(reply: EvaluateReply) -> dict[str, float]:
    """Metric sums of an evaluate reply; each in ``[0, num-users]``."""
    users = reply.sums["num-users"]
    if not all(0 <= v <= max(users, 0) + 1e-6 for v in reply.sums.values()):
        raise ReplyError("metric sums out of range")
    return reply.sums


def check_unshare(reply: UnshareReply, num_users: int,
                  num_items: int) -> dict[int, tuple[int, np.ndarray]]:
    """``{request_id: (user, items)}`` of an unshare reply.

    Structural problems reject the whole reply; a request naming several users is rejected
    too (a request belongs to one user). Whether the pairs were shared is decided later,
    per request, against the edge store."""
    _check_size("unshare", len(reply.item))
    check_ids("user", reply.user, num_users)
    check_ids("item", reply.item, num_items)
    requests = {}
    for request_id in np.unique(reply.request):
        rows = reply.request == request_id
        users = np.unique(reply.user[rows])
        if len(users) != 1:
            raise ReplyError(f"unshare request {request_id} names several users")
        requests[int(request_id)] = (int(users[0]), np.unique(reply.item[rows]))
    if len(requests) != reply.num_requests:
        raise ReplyError("unshare num-requests disagrees with the arrays")
    return requests
