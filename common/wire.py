"""The message protocol: names of message actions and record keys, and numpy <-> record helpers.

This is the only module under ``common/`` that knows Flower's record types.

Per round, for each sampled node (see docs/protocol.md):

* ``query.unshare`` server -> node: (nothing but acks and config); node -> server: ``unshare``
  (pending requests, one row per withdrawn pair: ``request``, ``user``, ``item``) + ``metrics``.
  The server answers in its next message to the node with ``unshare-ack`` (``request``,
  ``refused``) and ``unshare-reasons`` -- only after it has persisted the deletion.
* ``query.share``  server -> node: ``ack`` (the server's stored edge count per user of this node);
  node -> server: ``share`` (newly shared ``user``/``item`` pairs) + ``metrics``.
* ``train``        server -> node: ``items`` (global item table), ``graph`` (server graph item
  views, when there is a graph), ``users`` (global views of the node's sharing users),
  ``negatives`` (pooled contrastive negatives), ``ack``, ``config``;
  node -> server: ``update`` (changed item rows: ``index``, ``values``, ``counts``) + ``metrics``.
* ``evaluate``     server -> node: as ``train`` without ``negatives``;
  node -> server: ``metrics`` (metric sums and the number of users counted).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

SHARE = "query.share"
UNSHARE = "query.unshare"
TRAIN = "train"
EVALUATE = "evaluate"


def to_record(**named: np.ndarray) -> ArrayRecord:
    """An ArrayRecord holding each named numpy array."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in named.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Every array of ``record`` as numpy, by name."""
    return {name: array.numpy() for name, array in record.items()}


def content_bytes(content: RecordDict) -> int:
    """Payload size of a message's content (arrays, metrics and configs)."""
    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += record.count_bytes()
        elif isinstance(record, (MetricRecord, ConfigRecord)):
            total += record.count_bytes()
    return total
