"""harness/inprocess.py's wire: what a node receives equals Flower's own protobuf round trip,
also when the batch's messages share table records that are serialised once."""

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import message_to_proto

from harness.inprocess import _set_task_identity, _wire


def _messages():
    _set_task_identity(1)   # as the in-process grid does before any Message is made
    shared = ArrayRecord({"items": Array(np.arange(12, dtype=np.float32).reshape(4, 3))})
    out = []
    for node in (1, 2, 3):
        content = RecordDict({"tables": shared,
                              "own": ArrayRecord({"rows": Array(np.full(2, node, np.int64))}),
                              "header": ConfigRecord({"round": 7, "node": node}),
                              "metrics": MetricRecord({"loss": 0.5 * node})})
        out.append(Message(content, dst_node_id=node, message_type="train", group_id="7"))
    return out, shared


def _bytes(message):
    return message_to_proto(message).SerializeToString(deterministic=True)


def test_a_batch_serialised_once_arrives_as_flower_serialises_each_message():
    messages, shared = _messages()
    serialised = {}
    delivered = [_wire(m, serialised) for m in messages]
    assert [_bytes(d) for d in delivered] == [_bytes(_wire(m)) for m in messages]
    assert [_bytes(d) for d in delivered] == [_bytes(m) for m in messages]
    # the shared record once, each node's own record once
    assert sorted(len(r[0]) for r in serialised.values()) == [1, 1, 1, 1]
    assert id(shared) in serialised


def test_each_receiver_gets_its_own_copy_of_a_shared_table():
    messages, _ = _messages()
    serialised = {}
    first, second = (_wire(m, serialised) for m in messages[:2])
    table = first.content["tables"]["items"].numpy()
    table += 100
    first.content["tables"]["items"] = Array(table)
    assert second.content["tables"]["items"].numpy()[0, 0] == 0.0
