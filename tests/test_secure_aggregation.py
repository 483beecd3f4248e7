"""Secure aggregation in real rounds (issue 11): the ServerApp strategy and the ClientApp
handlers exchange serialised messages in one process (harness/session.py), 30 users, one per
node. The server's item table after a secure round is the plain per-row FedAvg of the same
updates, with nodes that drop out or send garbage; what it receives of one node is masked."""

import numpy as np
import pytest
from flwr.app import Error, Message

from client_app.secure_upload import dense_update
from common.config import ConfigError, load_config
from common.datasets import default_data_root
from common.protocol import TRAIN, TrainReply
from common.protocol_secagg import SECAGG
from common.secagg import SecAggParams, encode
from harness.inprocess import InProcessGrid
from harness.session import new_session

USERS = 30


class _Failing(InProcessGrid):
    """Node ``victim`` fails ``kind`` messages (a SuperNode that died at that point)."""

    victim, kind = 3, TRAIN

    def push_messages(self, messages):
        messages = list(messages)
        ids = super().push_messages(messages)
        for message, message_id in zip(messages, ids):
            if message.metadata.dst_node_id == self.victim and \
                    message.metadata.message_type == self.kind:
                self._replies[message_id] = Message(Error(code=2, reason="node died"),
                                                    reply_to=message)
        return ids


def _session(tmp_path, name, secure, grid_type=InProcessGrid, **extra):
    if not (default_data_root() / "ml-100k" / "u.data").exists():
        pytest.skip("ML-100K not available")
    cfg = load_config({"max-users": USERS, "num-rounds": 3, "eval-every": 0, "sharing-ratio": 0.0,
                       "fraction-train": 1.0, "local-epochs": 2, "upload-mode": "rows",
                       "secure-aggregation": secure, "secagg-neighbours": 6,
                       "state-dir": str(tmp_path / name / "state"),
                       "out-dir": str(tmp_path / name / "out"), **extra})
    return new_session(cfg, USERS, tmp_path / name, grid_type=grid_type)


def _tables_after(tmp_path, rounds, grid_type=InProcessGrid, **extra):
    plain = _session(tmp_path, "plain", False, grid_type, **extra)
    secure = _session(tmp_path, "secure", True, grid_type, **extra)
    records = [s.run_rounds(rounds) for s in (plain, secure)]
    return plain.state.item_emb, secure.state.item_emb, records


def test_a_secure_round_gives_the_plain_fedavg_table(tmp_path):
    plain, secure, (_, records) = _tables_after(tmp_path, 2)
    assert all(not stats.rejected for r in records for stats in r.phases.values())
    assert records[-1].phases["secagg-unmask"].ok == USERS
    assert np.abs(plain - secure).max() < 1e-5           # quantisation only
    assert np.abs(plain - secure).max() < 0.01 * np.abs(plain).max()


def test_a_node_that_dies_at_train_leaves_the_others_sum(tmp_path):
    """Node 3 shared its secrets, then died: its pairwise masks are removed with its key,
    rebuilt from its neighbours' shares; the table is the plain average without it."""
    plain, secure, (_, records) = _tables_after(tmp_path, 1, _Failing)
    assert records[0].phases["train"].lost == [_Failing.victim]
    assert records[0].phases["secagg-unmask"].ok == USERS - 1
    assert not records[0].phases["secagg-unmask"].rejected
    assert np.abs(plain - secure).max() < 1e-5


def test_a_garbage_masked_vector_cannot_move_the_table_beyond_honest_bounds(tmp_path):
    """A hostile node's masked vector is uniform noise to the server, so no single reply can
    be checked; the unmasked average is: a forged vector spoils the round's sum, which is
    refused, and the table stays as it was."""
    class Forging(InProcessGrid):
        def push_messages(self, messages):
            messages = list(messages)
            ids = super().push_messages(messages)
            for message, message_id in zip(messages, ids):
                if message.metadata.dst_node_id == 5 and message.metadata.message_type == TRAIN:
                    reply = TrainReply.from_content(self._replies[message_id].content)
                    forged = np.random.default_rng(0).integers(0, 2**32, reply.masked.shape,
                                                               dtype=np.uint64).astype(np.uint32)
                    reply = TrainReply(reply.index, reply.values, reply.counts, reply.loss,
                                       reply.num_examples, reply.pending_sharing, None,
                                       reply.num_users, None, forged)
                    self._replies[message_id] = Message(reply.to_content(), reply_to=message)
            return ids

    session = _session(tmp_path, "forged", True, Forging)
    session.run_rounds(1)
    before = session.state.item_emb.copy()
    record = session.run_rounds(1)[0]
    assert any("secure sum not applied" in r for r in record.phases["secagg-unmask"].rejected)
    assert np.array_equal(session.state.item_emb, before)


def test_what_the_server_receives_of_one_node_is_masked(tmp_path):
    """Each masked vector the server receives in round 2 is uncorrelated with that node's
    encoded update (computed here from the plain run's identical update of the same table,
    up to quantisation) and spread over the whole range: without the masks the correlation
    would be 1."""
    secure, plain = _session(tmp_path, "secure", True), _session(tmp_path, "plain", False)
    for session in (secure, plain):
        session.run_rounds(1)
    table = plain.state.item_emb.copy()
    uploads, plain_updates = {}, {}
    secure.strategy.tap = lambda phase, reply: phase == "train" and uploads.setdefault(
        int(reply.metadata.src_node_id), TrainReply.from_content(reply.content).masked)
    plain.strategy.tap = lambda phase, reply: phase == "train" and plain_updates.setdefault(
        int(reply.metadata.src_node_id), TrainReply.from_content(reply.content))
    for session in (secure, plain):
        session.run_rounds(1)
    assert len(uploads) == USERS
    params = SecAggParams(USERS, 2, 10.0)
    for node, masked in uploads.items():
        update = plain_updates[node]
        vector = encode(*dense_update(table, update.index, update.values, update.counts), params)
        assert vector.astype(np.float64).std() > 0
        assert masked.dtype == np.uint32
        assert abs(masked.astype(np.float64).mean() / 2**31 - 1) < 0.05
        assert abs(np.corrcoef(masked.astype(np.float64), vector.astype(np.float64))[0, 1]) < 0.05


def test_the_secagg_stages_refuse_out_of_order_and_a_server_asking_for_both_secrets(tmp_path):
    """A node answers ``shares`` only with this round's keys, and refuses an ``unmask`` that
    names a node both survivor and dropped (the server could then unmask that node)."""
    from common.protocol_secagg import SecAggRequest
    session = _session(tmp_path, "order", True)
    grid = session.grid
    node = 1
    late = SecAggRequest("shares", 7, 2, np.array([2], np.uint64), (b"k" * 32, b"m" * 32))
    reply = grid.send_and_receive([Message(late.to_content(), dst_node_id=node,
                                           message_type=SECAGG, group_id="7")])[0]
    assert reply.has_error() and "without this round's keys" in reply.error.reason
    keys = SecAggRequest("keys", 8, 2)
    assert not grid.send_and_receive([Message(keys.to_content(), dst_node_id=node,
                                              message_type=SECAGG, group_id="8")])[0].has_error()
    both = SecAggRequest("unmask", 8, 2, survivors=np.array([1, 2], np.uint64),
                         dropped=np.array([2], np.uint64))
    reply = grid.send_and_receive([Message(both.to_content(), dst_node_id=node,
                                           message_type=SECAGG, group_id="8")])[0]
    assert reply.has_error() and "both survivor and dropped" in reply.error.reason


def test_secure_aggregation_needs_rows_to_sum():
    with pytest.raises(ConfigError, match="secure-aggregation needs upload-mode"):
        load_config({"secure-aggregation": True, "upload-mode": "none"})
    with pytest.raises(ConfigError, match="dp-epsilon 0"):
        load_config({"secure-aggregation": True, "dp-epsilon": 1.0})
    assert load_config({"secure-aggregation": True, "sharing-ratio": 0.5}).upload_privacy.mode == "rows"


def test_a_node_repeating_anothers_public_key_is_refused_and_the_others_sum(tmp_path):
    """A hostile node that announces a neighbour's public keys as its own is refused at the
    keys stage (else every honest neighbour would refuse to share, and leave the round);
    the round goes on without it."""
    from common.protocol_secagg import SecAggReply

    class Copying(InProcessGrid):
        first_keys = None

        def push_messages(self, messages):
            messages = list(messages)
            ids = super().push_messages(messages)
            for message, message_id in zip(messages, ids):
                if message.metadata.message_type != SECAGG:
                    continue
                reply = self._replies[message_id]
                if reply.has_error() or reply.content.config_records["secagg"]["stage"] != "keys":
                    continue
                keys = SecAggReply.from_content(reply.content).blobs
                if Copying.first_keys is None:
                    Copying.first_keys = keys
                elif message.metadata.dst_node_id == 4:
                    forged = SecAggReply("keys", np.zeros(0, np.uint64), Copying.first_keys)
                    self._replies[message_id] = Message(forged.to_content(), reply_to=message)
            return ids

    session = _session(tmp_path, "copying", True, Copying)
    record = session.run_rounds(1)[0]
    assert any("repeat announced keys" in r for r in record.phases["secagg-keys"].rejected)
    assert record.phases["secagg-shares"].ok == USERS - 1
    assert record.phases["secagg-unmask"].ok == USERS - 1
    assert not record.phases["secagg-unmask"].rejected


def test_secure_aggregation_samples_the_same_nodes_as_a_plain_run(tmp_path):
    """The secagg ring is seeded by the round, not drawn from the sampling generator, so the
    two runs train the same nodes every round (quality comparisons stay paired)."""
    runs = [_session(tmp_path, name, secure, **{"fraction-train": 0.3})
            for name, secure in (("plain", False), ("secure", True))]
    sampled = []
    for session in runs:
        seen = []
        session.strategy.tap = lambda phase, reply, seen=seen: phase == "train" and seen.append(
            (int(reply.metadata.group_id), int(reply.metadata.src_node_id)))
        session.run_rounds(3)
        sampled.append(sorted(seen))
    assert sampled[0] == sampled[1] and len(sampled[0]) == 3 * 9
