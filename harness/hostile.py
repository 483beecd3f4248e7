"""Hostile nodes for soak tests and benchmarks: replies altered the way an attacker (or a
broken node) would, each attack named, on top of the real ClientApp.

``ATTACKS`` maps a message type to named attacks; an attack takes the decoded reply content
(a ``RecordDict`` as it arrived over the wire) and the federation's catalog ``(users,
items)`` and alters it in place. :class:`HostileGrid` applies them at random to the replies
of chosen nodes and records what it applied, so a benchmark can check that every attack was
rejected with a message that names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from common.protocol import EVALUATE, SHARE, TRAIN, UNSHARE, to_record
from harness.inprocess import InProcessGrid

Attack = Callable[[RecordDict, tuple[int, int]], None]


def _arrays(content: RecordDict, name: str) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in content.array_records[name].items()}


def _edit_arrays(name: str, edit: Callable[[dict, tuple[int, int]], None]) -> Attack:
    def attack(content, catalog):
        arrays = _arrays(content, name)
        edit(arrays, catalog)
        content[name] = to_record(**arrays)
    return attack


def _edit_metrics(name: str, **values) -> Attack:
    def attack(content, catalog):
        metrics = dict(content.metric_records[name])
        metrics.update(values)
        content[name] = MetricRecord(metrics)
    return attack


def _set(key: str, make: Callable[[dict, tuple[int, int]], np.ndarray]):
    def edit(arrays, catalog):
        arrays[key] = make(arrays, catalog)
    return edit


def _rider(request, user, item, num_requests=None) -> Attack:
    """Unshare requests riding on the reply (whatever the node really has pending)."""
    def attack(content, catalog):
        r, u, i = (np.asarray(f(catalog), np.int64) for f in (request, user, item))
        content["unshare"] = to_record(request=r, user=u, item=i)
        content["unshare-count"] = MetricRecord({
            "num-requests": len(np.unique(r)) if num_requests is None else num_requests,
            "num-pairs": len(i)})
    return attack


def _share_pairs(user, item) -> Attack:
    def attack(content, catalog):
        arrays = _arrays(content, "share")
        arrays["user"], arrays["item"] = (np.asarray(f(arrays, catalog), np.int64)
                                          for f in (user, item))
        content["share"] = to_record(**arrays)
        metrics = dict(content.metric_records["metrics"])
        metrics["num-pairs"] = len(arrays["user"])
        content["metrics"] = MetricRecord(metrics)
    return attack


_MANY = 100_000
TRAIN_ATTACKS: dict[str, Attack] = {
    "nan-values": _edit_arrays("update", _set("values", lambda a, c: np.full_like(a["values"], np.nan))),
    "inf-counts": _edit_arrays("update", _set("counts", lambda a, c: np.full_like(a["counts"], np.inf))),
    "float64-values": _edit_arrays("update", _set("values", lambda a, c: a["values"].astype(np.float64))),
    "wrong-shape": _edit_arrays("update", _set("values", lambda a, c: a["values"][:, :3].copy())),
    "item-out-of-range": _edit_arrays("update", _set("index", lambda a, c: a["index"] + c[1])),
    "duplicate-rows": _edit_arrays("update", _set("index", lambda a, c: np.zeros_like(a["index"]))),
    "huge-values": _edit_arrays("update", _set("values", lambda a, c: np.full_like(a["values"], 1e30))),
    "float32-overflow-counts": _edit_arrays("update", _set("counts", lambda a, c: np.full_like(a["counts"], 3e38))),
    "inflated-num-examples": _edit_metrics("metrics", **{"num-examples": 10**8}),
    "num-users-lie": _edit_metrics("metrics", **{"num-users": 10**9}),
    "metric-as-list": _edit_metrics("metrics", loss=[1.0, 2.0]),
    "metrics-missing": lambda content, c: content.__setitem__("metrics", MetricRecord({"loss": 1.0})),
}
EVALUATE_ATTACKS: dict[str, Attack] = {
    "metric-as-list": _edit_metrics("test", **{"ndcg@20": [0.5, 0.5]}),
    "too-many-users": _edit_metrics("test", **{"num-users": 10**12}),
    "sum-beyond-users": _edit_metrics("valid", **{"recall@20": 10**9}),
}
SHARE_ATTACKS: dict[str, Attack] = {
    "catalog-without-fingerprint": lambda content, c: content.__setitem__("catalog", ConfigRecord({"x": "y"})),
    "other-dataset": lambda content, c: content.__setitem__("catalog", ConfigRecord({"fingerprint": "forged"})),
    "huge-catalog": _edit_metrics("metrics", **{"num-items": 10**13, "num-users": 4 * 10**12}),
    "item-out-of-range": _share_pairs(lambda a, c: np.append(a["user"], a["user"][:1] if len(a["user"]) else 0),
                                      lambda a, c: np.append(a["item"], c[1])),
    "claims-every-user": _share_pairs(lambda a, c: np.arange(c[0]), lambda a, c: np.zeros(c[0])),
}
RIDER_ATTACKS: dict[str, Attack] = {
    "unshare-flood": _rider(lambda c: np.arange(_MANY), lambda c: np.zeros(_MANY),
                            lambda c: np.arange(_MANY) % c[1]),
    "unshare-mixed-users": _rider(lambda c: [7, 7], lambda c: [0, 1], lambda c: [0, 0]),
    "unshare-others-users": _rider(lambda c: np.arange(c[0]), lambda c: np.arange(c[0]),
                                   lambda c: np.zeros(c[0])),
    "unshare-count-lie": _rider(lambda c: [5], lambda c: [0], lambda c: [0], num_requests=10**6),
}
ATTACKS: dict[str, dict[str, Attack]] = {
    TRAIN: {**TRAIN_ATTACKS, **RIDER_ATTACKS}, EVALUATE: {**EVALUATE_ATTACKS, **RIDER_ATTACKS},
    SHARE: {**SHARE_ATTACKS, **RIDER_ATTACKS}, UNSHARE: RIDER_ATTACKS}


def attack_reply(content: RecordDict, kind: str, catalog: tuple[int, int],
                 rng: np.random.Generator) -> str:
    """Alter a reply of message type ``kind`` in place by one attack drawn from
    :data:`ATTACKS`; returns its name."""
    name = sorted(ATTACKS[kind])[rng.integers(len(ATTACKS[kind]))]
    ATTACKS[kind][name](content, catalog)
    return name


@dataclass
class Applied:
    round: int
    node: int
    kind: str
    attack: str


class HostileGrid(InProcessGrid):
    """In-process nodes of which ``hostile`` ones alter each reply with probability ``rate``
    by one attack drawn from :data:`ATTACKS` (seeded); ``applied`` records every one."""

    def __init__(self, run_config: dict, num_nodes: int, node_state_dirs=None, *,
                 hostile=(), rate: float = 0.5, seed: int = 0, catalog=(1, 1)):
        super().__init__(run_config, num_nodes, node_state_dirs)
        self.hostile, self.rate, self.catalog = set(hostile), rate, catalog
        self.rng = np.random.default_rng(seed)
        self.applied: list[Applied] = []

    def push_messages(self, messages):
        messages = list(messages)
        ids = list(super().push_messages(messages))
        for message_id, message in zip(ids, messages):
            node, kind = message.metadata.dst_node_id, message.metadata.message_type
            reply = self._replies.get(message_id)
            if node in self.hostile and reply is not None and reply.has_content() \
                    and self.rng.random() < self.rate:
                name = attack_reply(reply.content, kind, self.catalog, self.rng)
                self.applied.append(Applied(int(message.metadata.group_id or 0), node, kind, name))
        return ids
