"""The message protocol: one message action per phase and one dataclass per payload.

This is the only module under ``common/`` that knows Flower's record types; both apps and the
server's validation use only these payloads (``to_content()`` / ``from_content()``). Decoding
checks the *structure* (records and keys present, dtype and number of dimensions read from
the record header before any array is decoded, metric types); the server's
``validation.py`` then checks values (id ranges, finiteness, duplicates) on the payload.

Per round, for each sampled node (docs/design.md has the sequence):

* ``query.unshare``: server sends a :class:`Header`; node replies :class:`UnshareReply` (the
  cheap poll of nodes not sampled for a while).
* ``query.share``: server sends a :class:`Header`; node replies :class:`ShareReply`.
* ``train``: server sends :class:`ModelPayload` (with negatives); node replies :class:`TrainReply`.
* ``evaluate``: server sends :class:`ModelPayload`; node replies :class:`EvaluateReply` (metric
  sums of the validation and the test split, so model selection costs no extra message).
* ``query.secagg``: the stages of secure aggregation around ``train`` when it is on
  (:mod:`common.protocol_secagg`, which also adds a record to the train message and reply).

Every server message carries the header: round config, the server's shared-edge count per
user of the node (``ack``) and the answers to earlier unshare requests (``unshare-ack``),
sent only after the server persisted them. Every node reply carries the node's pending
unshare requests too (the records of :class:`UnshareReply`, when there are any), whatever the
action: a request reaches the server in the first reply the node sends after it was made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.metrics import NUM_USERS_KEY, SPLITS, metric_names

UNSHARE = "query.unshare"
SHARE = "query.share"
TRAIN = "train"
EVALUATE = "evaluate"
ACTIONS = (UNSHARE, SHARE, TRAIN, EVALUATE)
# Unshare requests one reply may carry: a node sends its oldest pending ones first and the
# rest with later replies; the server refuses a reply with more (each judged request is kept
# in the server's outcomes, so an unbounded flood would grow its durable state).
MAX_UNSHARE_REQUESTS = 10_000


class ProtocolError(ValueError):
    """A message whose structure is not the protocol's; the text says what is wrong."""


# --------------------------------------------------------------------- record helpers
def to_record(**named: np.ndarray) -> ArrayRecord:
    """An ArrayRecord holding each named numpy array."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in named.items()})


def _record(content: RecordDict, name: str, kind: type):
    records = {ArrayRecord: content.array_records, MetricRecord: content.metric_records,
               ConfigRecord: content.config_records}[kind]
    if name not in records:
        raise ProtocolError(f"no {name!r} record")
    return records[name]


TABLE = "float32|float16"   # an item table: sent in either precision, always decoded as float32


def _array(record: ArrayRecord, key: str, dtype: str, ndim: int) -> np.ndarray:
    """``record[key]`` as numpy after checking dtype and ndim in the header (no decode first).
    ``dtype`` :data:`TABLE` accepts float32 or float16 and returns float32."""
    if key not in record:
        raise ProtocolError(f"missing array {key!r}")
    array = record[key]
    if array.dtype not in dtype.split("|") or len(array.shape) != ndim:
        raise ProtocolError(f"array {key!r} must be {dtype} with {ndim} dims, "
                            f"got {array.dtype} {tuple(array.shape)}")
    return array.numpy().astype(np.float32, copy=False) if dtype == TABLE else array.numpy()


def _arrays(content: RecordDict, name: str, spec: dict[str, tuple[str, int]]) -> dict[str, np.ndarray]:
    record = _record(content, name, ArrayRecord)
    return {key: _array(record, key, dtype, ndim) for key, (dtype, ndim) in spec.items()}


def _metrics(content: RecordDict, keys: tuple[str, ...], name: str = "metrics") -> dict[str, float]:
    """Exactly ``keys`` from a MetricRecord, each a finite int or float."""
    raw = dict(_record(content, name, MetricRecord))
    if set(raw) != set(keys):
        raise ProtocolError(f"{name} keys {sorted(raw)} != {sorted(keys)}")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(f"{name} {key!r} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ProtocolError(f"{name} {key!r} is not finite")
    return raw


def _integer(raw: dict, key: str) -> int:
    value = raw[key]
    if float(value) != int(value):
        raise ProtocolError(f"metric {key!r} must be an integer, got {value}")
    return int(value)


def content_bytes(content: RecordDict) -> int:
    """Payload size of a message's content (arrays, metrics and configs)."""
    return sum(record.count_bytes() for record in content.values())


def _int64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


# --------------------------------------------------------------------- server -> node
@dataclass(frozen=True)
class UnshareAnswer:
    """The server's answer to one unshare request (no pairs, only the request id): done,
    refused (final), or ``retry`` (a temporary refusal: the node keeps the request pending
    and sends it again)."""

    request_id: int
    refused: bool
    reason: str = ""
    retry: bool = False


@dataclass(frozen=True)
class Header:
    """What every server message carries (records ``config``, ``ack``, ``unshare-ack``)."""

    server_round: int
    generation: int = 0
    acked_users: np.ndarray | None = None    # (n,) users of the node the server holds edges for
    acked_counts: np.ndarray | None = None   # (n,) the server's edge count of each
    answers: tuple[UnshareAnswer, ...] = ()
    evaluate: bool = False   # train: evaluate the received model first (``eval-in-train``)

    def write(self, content: RecordDict) -> RecordDict:
        config = {"server-round": self.server_round, "generation": self.generation}
        content["config"] = ConfigRecord({**config, **({"evaluate": 1} if self.evaluate else {})})
        if self.acked_users is not None:
            content["ack"] = to_record(user=_int64(self.acked_users), count=_int64(self.acked_counts))
        if self.answers:
            content["unshare-ack"] = to_record(
                request=_int64([a.request_id for a in self.answers]),
                refused=_int64([int(a.refused) for a in self.answers]),
                retry=_int64([int(a.retry) for a in self.answers]))
            content["unshare-reasons"] = ConfigRecord(
                {str(a.request_id): a.reason for a in self.answers if a.reason})
        return content

    def to_content(self) -> RecordDict:
        return self.write(RecordDict())

    @classmethod
    def from_content(cls, content: RecordDict) -> "Header":
        config = _record(content, "config", ConfigRecord)
        users = counts = None
        if "ack" in content.array_records:
            ack = _arrays(content, "ack", {"user": ("int64", 1), "count": ("int64", 1)})
            users, counts = ack["user"], ack["count"]
        return cls(int(config["server-round"]), int(config.get("generation", 0)), users, counts,
                   _answers(content), bool(config.get("evaluate", 0)))


def _answers(content: RecordDict) -> tuple[UnshareAnswer, ...]:
    if "unshare-ack" not in content.array_records:
        return ()
    ack = _arrays(content, "unshare-ack", {key: ("int64", 1) for key in
                                           ("request", "refused", "retry")})
    reasons = content.config_records.get("unshare-reasons", {})
    return tuple(UnshareAnswer(int(r), bool(f), str(reasons.get(str(r), "")), bool(t))
                 for r, f, t in zip(*(ack[k].tolist() for k in ("request", "refused", "retry"))))


@dataclass(frozen=True)
class ModelPayload:
    """``train`` / ``evaluate`` instruction: the models a node needs for its users.

    ``items`` (I, d) the FedAvg item table (None under withheld uploads: it never changes, the
    node rebuilds it, ``common.upload_privacy.initial_item_table``); ``graph_items`` (I, d) the server's item views;
    ``user_index`` (n,) / ``user_views`` (n, d) global views of the node's own sharing users;
    ``negatives`` (k, d) pooled contrastive negatives (train only). With ``fusion = "ego"``
    also ``graph_ego`` (I, d) the item-layer sum and ``graph_degree`` (I,) the item degrees of
    the shared graph (the same for every node), and ``user_base`` (n, d) the layer-0 rows of
    the node's sharing users, from which the node computes its users' views over their whole
    history (docs/design.md, "Ego views")."""

    header: Header
    items: np.ndarray | None   # None: the node rebuilds the unchanging seeded table
    graph_items: np.ndarray | None = None
    user_index: np.ndarray | None = None
    user_views: np.ndarray | None = None
    negatives: np.ndarray | None = None
    graph_ego: np.ndarray | None = None
    graph_degree: np.ndarray | None = None
    user_base: np.ndarray | None = None

    def shared_records(self, precision: str = "float32") -> dict[str, ArrayRecord]:
        """The records every node of a phase receives alike (item table, graph item views):
        build them once and pass them to :meth:`to_content` of each node's payload. The three
        ``(I, d)`` tables travel in ``precision`` (float16 halves a node's download; the node
        computes in float32 either way)."""
        table = lambda values: np.asarray(values).astype(precision, copy=False)  # noqa: E731
        shared = {} if self.items is None else {"items": to_record(weight=table(self.items))}
        if self.graph_items is not None:
            shared["graph"] = to_record(items=table(self.graph_items))
        if self.graph_ego is not None:
            shared["ego"] = to_record(items=table(self.graph_ego), degree=_int64(self.graph_degree))
        return shared

    def to_content(self, shared: dict[str, ArrayRecord] | None = None) -> RecordDict:
        """The message content; ``shared`` are this payload's :meth:`shared_records`, prebuilt."""
        content = self.header.to_content()
        for name, record in (shared or self.shared_records()).items():
            content[name] = record
        if self.user_index is not None:
            rows = {} if self.user_base is None else {"base": self.user_base}
            content["users"] = to_record(index=_int64(self.user_index), values=self.user_views, **rows)
        if self.negatives is not None:
            content["negatives"] = to_record(values=self.negatives)
        return content

    @classmethod
    def from_content(cls, content: RecordDict) -> "ModelPayload":
        items = _arrays(content, "items", {"weight": (TABLE, 2)})["weight"] \
            if "items" in content.array_records else None
        graph = users = negatives = None
        ego = {"items": None, "degree": None}
        if "graph" in content.array_records:
            graph = _arrays(content, "graph", {"items": (TABLE, 2)})["items"]
        if "ego" in content.array_records:
            ego = _arrays(content, "ego", {"items": (TABLE, 2), "degree": ("int64", 1)})
            shape = (items if items is not None else ego["items"]).shape
            if not (ego["items"].shape == shape and ego["degree"].shape == shape[:1]):
                raise ProtocolError("ego tables do not match the item table")
        if "users" in content.array_records:
            users = _arrays(content, "users", {"index": ("int64", 1), "values": ("float32", 2)})
            if "base" in content.array_records["users"]:
                users["base"] = _array(content.array_records["users"], "base", "float32", 2)
        if "negatives" in content.array_records:
            negatives = _arrays(content, "negatives", {"values": ("float32", 2)})["values"]
        index, views = (users["index"], users["values"]) if users else (None, None)
        return cls(Header.from_content(content), items, graph, index, views, negatives,
                   ego["items"], ego["degree"], users.get("base") if users else None)


# --------------------------------------------------------------------- node -> server
@dataclass(frozen=True)
class UnshareReply:
    """Pending unshare requests, one row per withdrawn pair: ``request``, ``user``, ``item``
    (m,). The reply to ``query.unshare``, and a rider on every other reply when the node has
    pending requests (:func:`with_withdrawals` / :meth:`rider`)."""

    RECORDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "unshare": ("request", "user", "item"), "unshare-count": ("num-requests", "num-pairs")}
    request: np.ndarray
    user: np.ndarray
    item: np.ndarray
    num_requests: int

    def write(self, content: RecordDict) -> RecordDict:
        content["unshare"] = to_record(request=_int64(self.request), user=_int64(self.user),
                                       item=_int64(self.item))
        content["unshare-count"] = MetricRecord({"num-requests": self.num_requests,
                                                 "num-pairs": len(self.item)})
        return content

    def to_content(self) -> RecordDict:
        return self.write(RecordDict())

    @classmethod
    def from_content(cls, content: RecordDict) -> "UnshareReply":
        metrics = _metrics(content, cls.RECORDS["unshare-count"], "unshare-count")
        spec = {key: ("int64", 1) for key in cls.RECORDS["unshare"]}
        arrays = _arrays(content, "unshare", spec)
        if not (len(arrays["request"]) == len(arrays["user"]) == len(arrays["item"])
                == _integer(metrics, "num-pairs")):
            raise ProtocolError("unshare arrays and num-pairs disagree")
        return cls(arrays["request"], arrays["user"], arrays["item"],
                   _integer(metrics, "num-requests"))

    @classmethod
    def rider(cls, content: RecordDict) -> "UnshareReply | None":
        """The requests riding on another reply, or None when it carries none."""
        present = [name for name in cls.RECORDS if name in content]
        if not present:
            return None
        return cls.from_content(content)


def with_withdrawals(content: RecordDict, withdrawals: UnshareReply | None) -> RecordDict:
    """``content`` plus the node's pending requests (nothing added when there are none)."""
    return content if withdrawals is None else withdrawals.write(content)


@dataclass(frozen=True)
class ShareReply:
    """Newly shared ``(user, item)`` pairs (m,) each, and the node's catalog."""

    RECORDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "share": ("user", "item"), "metrics": ("num-pairs", "num-users", "num-items"),
        "catalog": ("fingerprint",)}
    user: np.ndarray
    item: np.ndarray
    num_users: int
    num_items: int
    fingerprint: str
    withdrawals: UnshareReply | None = None

    def to_content(self) -> RecordDict:
        return with_withdrawals(RecordDict({
            "share": to_record(user=_int64(self.user), item=_int64(self.item)),
            "metrics": MetricRecord({"num-pairs": len(self.user), "num-users": self.num_users,
                                     "num-items": self.num_items}),
            "catalog": ConfigRecord({"fingerprint": self.fingerprint})}), self.withdrawals)

    @classmethod
    def from_content(cls, content: RecordDict) -> "ShareReply":
        metrics = _metrics(content, cls.RECORDS["metrics"])
        arrays = _arrays(content, "share", {"user": ("int64", 1), "item": ("int64", 1)})
        catalog = _record(content, "catalog", ConfigRecord)
        if "fingerprint" not in catalog:
            raise ProtocolError("catalog record without 'fingerprint'")
        if not (len(arrays["user"]) == len(arrays["item"]) == _integer(metrics, "num-pairs")):
            raise ProtocolError("share arrays and num-pairs disagree")
        return cls(arrays["user"], arrays["item"], _integer(metrics, "num-users"),
                   _integer(metrics, "num-items"), str(catalog["fingerprint"]),
                   UnshareReply.rider(content))


@dataclass(frozen=True)
class TrainReply:
    """Changed item rows ``index`` (r,), ``values`` (r, d), ``counts`` (r,), and metrics."""

    RECORDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "update": ("index", "values", "counts"),
        "metrics": ("loss", "num-examples", "num-users", "pending-sharing")}
    index: np.ndarray
    values: np.ndarray
    counts: np.ndarray
    loss: float
    num_examples: int
    pending_sharing: bool
    withdrawals: UnshareReply | None = None
    num_users: int = 1        # users whose interactions trained this round (bounds the counts)
    evaluation: "EvaluateReply | None" = None   # of the received model, when the header asked
    masked: np.ndarray | None = None   # (I * (d + 1),) uint32 under secure aggregation (no rows)

    def to_content(self) -> RecordDict:
        content = RecordDict({
            "update": to_record(index=_int64(self.index), values=self.values, counts=self.counts),
            "metrics": MetricRecord({"loss": float(self.loss), "num-examples": int(self.num_examples),
                                     "num-users": int(self.num_users),
                                     "pending-sharing": int(self.pending_sharing)})})
        if self.evaluation is not None:
            content = self.evaluation.write(content)
        if self.masked is not None:
            content["secagg-upload"] = to_record(masked=np.asarray(self.masked, np.uint32))
        return with_withdrawals(content, self.withdrawals)

    @classmethod
    def from_content(cls, content: RecordDict) -> "TrainReply":
        metrics = _metrics(content, cls.RECORDS["metrics"])
        arrays = _arrays(content, "update", {"index": ("int64", 1), "values": ("float32", 2),
                                             "counts": ("float32", 1)})
        flag = _integer(metrics, "pending-sharing")
        if flag not in (0, 1):
            raise ProtocolError(f"pending-sharing must be 0 or 1, got {flag}")
        evaluation = EvaluateReply.from_content(content) if any(
            split in content.metric_records for split in SPLITS) else None
        masked = _arrays(content, "secagg-upload", {"masked": ("uint32", 1)})["masked"] \
            if "secagg-upload" in content.array_records else None
        return cls(arrays["index"], arrays["values"], arrays["counts"], float(metrics["loss"]),
                   _integer(metrics, "num-examples"), bool(flag), UnshareReply.rider(content),
                   _integer(metrics, "num-users"),
                   evaluation and EvaluateReply(evaluation.sums), masked)


@dataclass(frozen=True)
class EvaluateReply:
    """Per split (``valid``, ``test``): metric sums over the node's evaluated users and
    ``num-users``, one MetricRecord per split."""

    RECORDS: ClassVar[dict[str, tuple[str, ...]]] = {
        split: (NUM_USERS_KEY, *metric_names()) for split in SPLITS}
    sums: dict[str, dict[str, float]] = field(default_factory=dict)
    withdrawals: UnshareReply | None = None

    def write(self, content: RecordDict) -> RecordDict:
        """The metric records into ``content`` (also carried by a train reply)."""
        for split in SPLITS:
            content[split] = MetricRecord({k: float(v) for k, v in self.sums[split].items()})
        return content

    def to_content(self) -> RecordDict:
        return with_withdrawals(self.write(RecordDict()), self.withdrawals)

    @classmethod
    def from_content(cls, content: RecordDict) -> "EvaluateReply":
        return cls({split: {key: float(value) for key, value in
                            _metrics(content, cls.RECORDS[split], split).items()}
                    for split in SPLITS}, UnshareReply.rider(content))


REPLIES: dict[str, Any] = {UNSHARE: UnshareReply, SHARE: ShareReply, TRAIN: TrainReply,
                           EVALUATE: EvaluateReply}
RIDER: dict[str, tuple[str, ...]] = UnshareReply.RECORDS  # records any reply may carry besides its own
OPTIONAL: dict[str, dict[str, tuple[str, ...]]] = {TRAIN: EvaluateReply.RECORDS}  # when asked
