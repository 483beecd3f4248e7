"""Validation of client replies before they touch server state.

Every reply is checked against a schema (pydantic for scalars, explicit checks for arrays:
dtype and shape are read from the record header *before* decoding, then values are checked
for range, finiteness and duplicates). A bad reply raises :class:`ReplyError`; the caller
logs it with the node id and goes on with the other replies.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, Message
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.metrics import KS
from server_app.aggregation import RowUpdate

MAX_SHARE_PAIRS = 5_000_000


class ReplyError(ValueError):
    """A client reply that must not be used; the message says why."""


class ShareMetrics(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_pairs: int = Field(alias="num-pairs", ge=0)
    num_users: int = Field(alias="num-users", ge=1)
    num_items: int = Field(alias="num-items", ge=1)


class TrainMetrics(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loss: float
    num_examples: int = Field(alias="num-examples", ge=0)
    pending_sharing: int = Field(alias="pending-sharing", ge=0, le=1)
    pending_unshare: int = Field(alias="pending-unshare", ge=0, le=1)


class UnshareMetrics(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_requests: int = Field(alias="num-requests", ge=0)
    num_pairs: int = Field(alias="num-pairs", ge=0)


def _metrics(msg: Message, schema: type[BaseModel]) -> BaseModel:
    if "metrics" not in msg.content.metric_records:
        raise ReplyError("no 'metrics' record")
    raw = dict(msg.content.metric_records["metrics"])
    try:
        parsed = schema.model_validate(raw)
    except ValidationError as exc:
        raise ReplyError(f"bad metrics: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}") from None
    if any(isinstance(v, float) and not math.isfinite(v) for v in raw.values()):
        raise ReplyError("non-finite metric value")
    return parsed


def _array(record: ArrayRecord, key: str, dtype: str, ndim: int) -> np.ndarray:
    if key not in record:
        raise ReplyError(f"missing array {key!r}")
    array = record[key]
    if array.dtype != dtype or len(array.shape) != ndim:
        raise ReplyError(f"array {key!r} must be {dtype} with {ndim} dims, "
                         f"got {array.dtype} {tuple(array.shape)}")
    return array.numpy()


def _record(msg: Message, key: str) -> ArrayRecord:
    if key not in msg.content.array_records:
        raise ReplyError(f"no {key!r} record")
    return msg.content.array_records[key]


def check_ids(name: str, ids: np.ndarray, upper: int) -> None:
    if len(ids) and (ids.min() < 0 or ids.max() >= upper):
        raise ReplyError(f"{name} id out of range [0, {upper})")


def parse_share(msg: Message, num_users: int | None, num_items: int | None):
    """``(pairs (m, 2), metrics)`` of a ``query.share`` reply; ids checked when sizes are known."""
    metrics = _metrics(msg, ShareMetrics)
    record = _record(msg, "share")
    user = _array(record, "user", "int64", 1)
    item = _array(record, "item", "int64", 1)
    if len(user) != len(item) or len(user) != metrics.num_pairs:
        raise ReplyError("share arrays and num-pairs disagree")
    if len(user) > MAX_SHARE_PAIRS:
        raise ReplyError(f"oversized share ({len(user)} pairs)")
    check_ids("user", user, num_users or metrics.num_users)
    check_ids("item", item, num_items or metrics.num_items)
    pairs = np.stack([user, item], axis=1)
    if len(np.unique(pairs, axis=0)) != len(pairs):
        raise ReplyError("duplicate shared pairs")
    return pairs, metrics


def parse_train(msg: Message, num_items: int, dim: int) -> tuple[RowUpdate, TrainMetrics]:
    """``(row update, metrics)`` of a ``train`` reply."""
    metrics = _metrics(msg, TrainMetrics)
    record = _record(msg, "update")
    index = _array(record, "index", "int64", 1)
    values = _array(record, "values", "float32", 2)
    counts = _array(record, "counts", "float32", 1)
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
    return RowUpdate(index, values, counts), metrics


def parse_evaluate(msg: Message) -> dict[str, float]:
    """Metric sums of an ``evaluate`` reply; each in ``[0, num-users]``."""
    if "metrics" not in msg.content.metric_records:
        raise ReplyError("no 'metrics' record")
    raw = dict(msg.content.metric_records["metrics"])
    expected = {"num-users"} | {f"{m}@{k}" for m in ("recall", "ndcg") for k in KS}
    if set(raw) != expected:
        raise ReplyError(f"metric keys {sorted(raw)} != {sorted(expected)}")
    values = {k: float(v) for k, v in raw.items()}
    users = values["num-users"]
    if not all(math.isfinite(v) and 0 <= v <= max(users, 0) + 1e-6 for v in values.values()):
        raise ReplyError("metric sums out of range")
    return values


def parse_unshare(msg: Message, num_users: int, num_items: int) -> dict[int, tuple[int, np.ndarray]]:
    """``{request_id: (user, items)}`` of a ``query.unshare`` reply.

    Structural problems reject the whole reply; a request naming several users is rejected
    too (a request belongs to one user). Whether the pairs were shared is decided later,
    per request, against the edge store."""
    metrics = _metrics(msg, UnshareMetrics)
    record = _record(msg, "unshare")
    request = _array(record, "request", "int64", 1)
    user = _array(record, "user", "int64", 1)
    item = _array(record, "item", "int64", 1)
    if not (len(request) == len(user) == len(item) == metrics.num_pairs):
        raise ReplyError("unshare arrays and num-pairs disagree")
    if len(user) > MAX_SHARE_PAIRS:
        raise ReplyError(f"oversized unshare ({len(user)} pairs)")
    check_ids("user", user, num_users)
    check_ids("item", item, num_items)
    requests = {}
    for request_id in np.unique(request):
        rows = request == request_id
        users = np.unique(user[rows])
        if len(users) != 1:
            raise ReplyError(f"unshare request {request_id} names several users")
        requests[int(request_id)] = (int(users[0]), np.unique(item[rows]))
    if len(requests) != metrics.num_requests:
        raise ReplyError("unshare num-requests disagrees with the arrays")
    return requests
