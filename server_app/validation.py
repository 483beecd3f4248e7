"""Validation of decoded client replies before they touch server state.

:mod:`common.protocol` decodes a reply and checks its structure (records, keys, dtypes and
dimensions read from the record header before decoding, metric types and finiteness). The
checks here are about values: id ranges against the federation's catalog, sizes, finiteness
of arrays, duplicates and metric ranges. A bad reply raises :class:`ReplyError`; the
strategy logs it with the node id and goes on with the other replies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from common.protocol import (MAX_UNSHARE_REQUESTS, EvaluateReply, ProtocolError, ShareReply, TrainReply,
                             UnshareReply)
from common.parsing import MAX_CATALOG   # users or items a federation may claim
from common.upload_privacy import most_row_count
from server_app.aggregation import RowUpdate

MAX_SHARE_PAIRS = 5_000_000
MAX_EXAMPLES = 1_000_000_000     # training samples one node may report for a round
ADAM_STEP_BOUND = 3.2            # |Adam step| <= lr * (1 - beta1) / sqrt(1 - beta2) ~ 3.17 lr


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
    if not (1 <= reply.num_users <= MAX_CATALOG and 1 <= reply.num_items <= MAX_CATALOG):
        raise ReplyError(f"implausible catalog: {reply.num_users} users, {reply.num_items} items "
                         f"(each must be in [1, {MAX_CATALOG}])")
    check_ids("user", reply.user, num_users or reply.num_users)
    check_ids("item", reply.item, num_items or reply.num_items)
    pairs = np.stack([reply.user, reply.item], axis=1)
    if len(np.unique(pairs, axis=0)) != len(pairs):
        raise ReplyError("duplicate shared pairs")
    return pairs


@dataclass(frozen=True)
class TrainBounds:
    """What an honest node's reply can look like under the run's local-training config."""

    epochs: int
    lr: float
    batch_size: int
    max_row_change: float = 0.0   # configured bound on a row's L2 change; 0: derived (below)
    dp_clip: float = 0.0          # upload DP (common/upload_privacy.py): the change's clip ...
    noise_sigma: float = 0.0      # ... and the noise per coordinate; 0: no DP
    rows_allowed: bool = True     # False under upload-mode "none": honest nodes send no rows

    def row_change(self, num_examples: int, dim: int) -> float:
        """Largest L2 change of one row: every Adam step moves a coordinate by at most
        ~3.2 lr, and a round has ``epochs * ceil(n / batch)`` steps (n samples per epoch).
        Under upload DP: the clip plus the noise's norm, which exceeds
        ``sigma * (sqrt(d) + 10)`` with probability below ``e^-50`` (Gaussian concentration)."""
        if self.max_row_change > 0:
            bound = self.max_row_change
        else:
            per_epoch = max(1, num_examples // max(self.epochs, 1))
            steps = self.epochs * math.ceil(per_epoch / self.batch_size)
            bound = ADAM_STEP_BOUND * self.lr * steps * math.sqrt(dim)
        if self.noise_sigma > 0:
            return min(bound, self.dp_clip) + self.noise_sigma * (math.sqrt(dim) + 10.0)
        return bound


def check_train(reply: TrainReply, table: np.ndarray, bounds: TrainBounds,
                num_users: int | None = None, owned: int = 0) -> RowUpdate:
    """The row update of a train reply: shapes, ids, finiteness, claims no larger than the
    node's users could have produced, and each row's change within ``bounds``.

    ``num_users``: the federation's users; ``owned``: users the server knows the node shares
    for. The node's ``num-users`` must lie between the two, ``num-examples`` within what that
    many users can train on (each item at most once per user and epoch), and each row's
    count is clipped to what they can produce (a positive per user and epoch, and as many
    negatives): a node cannot buy weight in the average by claiming more."""
    num_items, dim = table.shape
    index, values, counts = reply.index, reply.values, reply.counts
    if len(index) and not bounds.rows_allowed:
        raise ReplyError(f"{len(index)} item rows uploaded although upload-mode withholds them")
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
    users = _check_claimed_users(reply.num_users, owned, num_users or MAX_CATALOG)
    most = min(MAX_EXAMPLES, bounds.epochs * users * num_items)
    if not 0 <= reply.num_examples <= most:
        raise ReplyError(f"num-examples {reply.num_examples} outside [0, {most}] "
                         f"({users} users, {num_items} items, {bounds.epochs} epochs)")
    if counts.astype(np.float64).sum() > 2 * reply.num_examples + 0.5:  # a positive + a negative each
        raise ReplyError("row counts exceed what num-examples can produce")
    change = np.linalg.norm(values.astype(np.float64) - table[index], axis=1)
    limit = bounds.row_change(reply.num_examples, dim)
    if len(change) and change.max() > limit:
        raise ReplyError(f"row change {change.max():.3g} beyond the bound {limit:.3g}")
    return RowUpdate(index, values, np.minimum(counts, float(most_row_count(bounds.epochs, users))))


def _check_claimed_users(claimed: int, owned: int, federation: int) -> int:
    """The node's ``num-users``: at least the users it shares for, at most the federation's."""
    least = max(1, owned)
    if not least <= claimed <= federation:
        raise ReplyError(f"num-users {claimed} outside [{least}, {federation}] (the node "
                         f"shares for {owned} users; the federation has {federation})")
    return claimed


def check_evaluate(reply: EvaluateReply, num_users: int) -> dict[str, dict[str, float]]:
    """Metric sums of an evaluate reply per split: at most the federation's ``num_users``
    users, each sum in ``[0, num-users]``."""
    for split, sums in reply.sums.items():
        users = sums["num-users"]
        if not 0 <= users <= num_users:
            raise ReplyError(f"{split} num-users {users} outside [0, {num_users}]")
        if not all(0 <= v <= users + 1e-6 for v in sums.values()):
            raise ReplyError(f"{split} metric sums out of range")
    return reply.sums


def check_unshare(reply: UnshareReply, num_users: int,
                  num_items: int) -> dict[int, tuple[int, np.ndarray]]:
    """``{request_id: (user, items)}`` of an unshare reply.

    Structural problems reject the whole reply; a request naming several users is rejected
    too (a request belongs to one user). Whether the pairs were shared is decided later,
    per request, against the edge store."""
    _check_size("unshare", len(reply.item))
    if reply.num_requests > MAX_UNSHARE_REQUESTS:
        raise ReplyError(f"{reply.num_requests} unshare requests in one reply "
                         f"(at most {MAX_UNSHARE_REQUESTS})")
    check_ids("user", reply.user, num_users)
    check_ids("item", reply.item, num_items)
    order = np.argsort(reply.request, kind="stable")            # one sort: linear after it
    request, user, item = reply.request[order], reply.user[order], reply.item[order]
    ids, starts = np.unique(request, return_index=True)
    ends = np.append(starts[1:], len(request))
    mixed = np.maximum.reduceat(user, starts) != np.minimum.reduceat(user, starts) \
        if len(ids) else np.zeros(0, bool)
    if mixed.any():
        raise ReplyError(f"unshare request {ids[np.argmax(mixed)]} names several users")
    requests = {int(r): (int(user[s]), np.unique(item[s:e])) for r, s, e in zip(ids, starts, ends)}
    if len(requests) != reply.num_requests:
        raise ReplyError("unshare num-requests disagrees with the arrays")
    return requests
