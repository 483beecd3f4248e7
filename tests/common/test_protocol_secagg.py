"""The secure-aggregation messages (common/protocol_secagg.py): each payload survives the wire,
and a malformed one is refused with a message naming what is wrong."""

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from common.protocol import ProtocolError
from common.protocol_secagg import (SecAggInbox, SecAggReply, SecAggRequest,
                                    secrets_from_record, secrets_to_record)
from common.secagg import NodeSecrets

BIG = 2**64 - 5   # Flower node ids are unsigned 64-bit


def _wire(content):
    return recorddict_from_proto(recorddict_to_proto(content))


def test_requests_replies_and_inboxes_survive_the_wire():
    request = SecAggRequest("shares", 4, 3, np.array([BIG, 7], np.uint64), (b"a" * 32, b"b" * 32,
                                                                            b"c" * 32, b"d" * 32))
    back = SecAggRequest.from_content(_wire(request.to_content()))
    assert back.peers.tolist() == [BIG, 7] and back.peer_keys == request.peer_keys
    assert (back.stage, back.server_round, back.threshold) == ("shares", 4, 3)
    reply = SecAggReply("unmask", np.array([BIG], np.uint64), (b"share",))
    assert SecAggReply.from_content(_wire(reply.to_content())).nodes.tolist() == [BIG]
    empty = SecAggReply("unmask", np.zeros(0, np.uint64), ())
    assert SecAggReply.from_content(_wire(empty.to_content())).blobs == ()
    content = SecAggInbox(30, 4, 10.0, np.array([BIG], np.uint64), (b"ct",)).write(
        SecAggRequest("keys", 1, 2).to_content())
    inbox = SecAggInbox.read(_wire(content))
    assert (inbox.participants, inbox.threshold, inbox.clip, inbox.ciphertexts) == (30, 4, 10.0, (b"ct",))


def test_a_nodes_secrets_survive_its_context_state():
    secrets = NodeSecrets(BIG, 9, peers={3: (b"p" * 32, b"q" * 32)}, held={BIG: (b"s", b"k")})
    back = secrets_from_record(ConfigRecord(dict(secrets_to_record(secrets))))
    assert back == secrets


@pytest.mark.parametrize("mangle,match", [
    (lambda c: c["secagg"].__setitem__("stage", "steal"), "unknown secagg stage"),
    (lambda c: c["secagg"].__setitem__("peer-keys", [b"x" * 32]), "1 peer keys for 2 peers"),
    (lambda c: c["secagg"].__setitem__("peer-keys", [b"x" * 5000] * 4), "over 4096 bytes"),
    (lambda c: c.__delitem__("secagg-nodes"), "no 'secagg-nodes' record"),
])
def test_malformed_requests_are_refused_by_name(mangle, match):
    content = SecAggRequest("shares", 4, 3, np.array([1, 2], np.uint64),
                            (b"a" * 32,) * 4).to_content()
    mangle(content)
    with pytest.raises(ProtocolError, match=match):
        SecAggRequest.from_content(content)


def test_a_reply_whose_blobs_do_not_match_its_nodes_is_refused():
    content = SecAggReply("shares", np.array([1, 2], np.uint64), (b"x", b"y")).to_content()
    content["secagg"]["blobs"] = [b"x"]
    with pytest.raises(ProtocolError, match="1 blobs for 2 nodes"):
        SecAggReply.from_content(content)
    keys = SecAggReply("keys", np.array([1], np.uint64), (b"x", b"y")).to_content()
    with pytest.raises(ProtocolError, match="secagg 'keys' reply"):
        SecAggReply.from_content(keys)
