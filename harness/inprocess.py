"""An in-process Flower ``Grid``: the real ClientApp object behind every node.

``InProcessGrid`` implements Flower's ``Grid`` by calling the ClientApp object directly
with real ``Message`` objects and one persistent ``Context`` per node (as a SuperNode
would keep it). Messages are serialised to protobuf and back on both legs so sizes and
types are what the wire carries. Nodes run one after another. What this leaves out is
Flower's transport (SuperLink, Ray actors, process spawning): tests and benchmarks use it
to exercise our code without Ray's start-up noise on 2 cores; ``flwr run`` remains the
user-facing path and the end-to-end tests run it.

Two things a SuperLink/SuperExec would do are done here the way Flower's own in-memory
grid and ServerApp runner do them: stamping a message id on each pushed message, and
setting the process's ``TaskIdentity`` (which ``Message(...)`` reads for its metadata).
"""

from __future__ import annotations

import time
import uuid
from typing import Iterable

from flwr.app import ArrayRecord, Context, Error, Message, RecordDict
from flwr.common.serde import (array_record_to_proto, message_from_proto, message_to_proto,
                               recorddict_to_proto)
from flwr.common.serde_utils import metadata_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.node_pb2 import NodeInfo
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from client_app.app import app as client_app
from common.config import load_config
from server_app.app import run_fedshare
from server_app.strategy import Tap


# id(ArrayRecord) -> (the record, kept alive while its id is a key; its protobuf)
Serialised = dict[int, tuple[ArrayRecord, object]]


def _content_proto(content: RecordDict, serialised: Serialised) -> ProtoRecordDict:
    """``recorddict_to_proto(content)``, with each ArrayRecord object serialised once per
    ``serialised`` cache (a round's model messages share the same table records)."""
    items = []
    for key, record in content.items():
        if not isinstance(record, ArrayRecord):
            items.extend(recorddict_to_proto(RecordDict({key: record})).items)
            continue
        if id(record) not in serialised:
            serialised[id(record)] = (record, array_record_to_proto(record))
        items.append(ProtoRecordDict.Item(key=key, array_record=serialised[id(record)][1]))
    return ProtoRecordDict(items=items)


def _wire(message: Message, serialised: Serialised | None = None) -> Message:
    """``message`` after the protobuf round trip the transport does; with ``serialised``, a
    table record already serialised for another message of the batch is not serialised again
    (the receiver still gets its own copy: deserialisation is per message)."""
    if serialised is None or not message.has_content():
        return message_from_proto(message_to_proto(message))
    return message_from_proto(ProtoMessage(metadata=metadata_to_proto(message.metadata),
                                           content=_content_proto(message.content, serialised)))


def _stamp_id(message: Message, message_id: str) -> None:
    """The SuperLink's job; as ``flwr.server.superlink.grid.InMemoryGrid.push_messages``."""
    message.metadata.__dict__["_message_id"] = message_id


def _set_task_identity(run_id: int) -> None:
    """As Flower's ServerApp runner does before calling ``main`` (SuperLink node id 0)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1


class InProcessGrid(Grid):
    """``num_nodes`` SuperNodes hosted in this process (node ids 1..N)."""

    def __init__(self, run_config: dict, num_nodes: int, node_state_dirs: list[str] | None = None,
                 public_keys: dict[int, bytes] | None = None):
        self._run_id = 1
        self.public_keys = dict(public_keys or {})  # node id -> key, as with SuperNode auth
        _set_task_identity(self._run_id)
        self._replies: dict[str, Message] = {}
        self.dead: set[int] = set()
        self.contexts = {}
        for pid in range(num_nodes):
            node_config = {"partition-id": pid, "num-partitions": num_nodes}
            if node_state_dirs:
                node_config["state-dir"] = node_state_dirs[pid]
            self.contexts[pid + 1] = Context(run_id=self._run_id, node_id=pid + 1,
                                             node_config=node_config, state=RecordDict(),
                                             run_config=dict(run_config))

    # Grid API -------------------------------------------------------------
    @property
    def run(self):  # type: ignore[override]
        return None

    def set_run(self, run_id: int) -> None:
        self._run_id = run_id

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.dead]

    def get_nodes(self) -> Iterable[NodeInfo]:
        """As the SuperLink lists them: with the public key of authenticated nodes."""
        return [NodeInfo(node_id=n, public_key=self.public_keys.get(n, b""))
                for n in self.get_node_ids()]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids, serialised = [], {}
        for message in messages:
            message_id = uuid.uuid4().hex
            _stamp_id(message, message_id)
            ids.append(message_id)
            node = message.metadata.dst_node_id
            if node in self.dead:
                continue
            delivered = _wire(message, serialised)
            _stamp_id(delivered, message_id)
            try:
                reply = client_app(delivered, self.contexts[node])
            except Exception as exc:  # as Flower does: the handler's exception -> error reply
                reply = Message(Error(code=2, reason=f"{type(exc).__name__}: {exc}"),
                                reply_to=delivered)
            self._replies[message_id] = _wire(reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in list(message_ids) if m in self._replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(list(messages)))


def run_inprocess(run_config: dict, num_nodes: int, tap: Tap | None = None) -> dict:
    """A whole FedShare run with ``num_nodes`` in-process nodes; returns the result dict."""
    cfg = load_config(run_config)
    grid = InProcessGrid(cfg.as_dict(), num_nodes)
    return run_fedshare(grid, cfg, run_id=int(time.time() * 1000) % 1_000_000_000, tap=tap)
