import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict, ConfigRecord
from flwr.supercore.task_identity import TaskIdentity

from common.wire import to_record
from server_app.validation import ReplyError, parse_evaluate, parse_share, parse_train

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
GOOD_INDEX = np.array([0, 3], np.int64)


def _train_reply(index=GOOD_INDEX, values=None, counts=None, metrics=None):
    values = np.ones((len(index), 4), np.float32) if values is None else values
    counts = np.ones(len(index), np.float32) if counts is None else counts
    metrics = metrics or {"loss": 0.5, "num-examples": 10, "pending-sharing": 0,
                          "pending-unshare": 0}
    return Message(RecordDict({"update": to_record(index=index, values=values, counts=counts),
                               "metrics": MetricRecord(metrics)}), dst_node_id=1, message_type="train")


def test_good_train_reply_parses():
    update, metrics = parse_train(_train_reply(), num_items=5, dim=4)
    assert update.index.tolist() == [0, 3] and metrics.num_examples == 10


@pytest.mark.parametrize("kwargs,reason", [
    ({"values": np.ones((2, 4), np.float64)}, "float32"),
    ({"values": np.ones((2, 3), np.float32)}, "shapes disagree"),
    ({"values": np.full((2, 4), np.nan, np.float32)}, "NaN or Inf"),
    ({"index": np.array([0, 9], np.int64)}, "out of range"),
    ({"index": np.array([3, 3], np.int64)}, "duplicate"),
    ({"counts": np.array([1, 0], np.float32)}, "non-positive"),
    ({"metrics": {"loss": 0.5, "num-examples": 10, "pending-unshare": 0}}, "pending-sharing"),
])
def test_bad_train_reply_rejected_with_reason(kwargs, reason):
    with pytest.raises(ReplyError, match=reason):
        parse_train(_train_reply(**kwargs), num_items=5, dim=4)


def _share_reply(user, item, num_pairs=None):
    return Message(RecordDict({
        "share": to_record(user=np.asarray(user, np.int64), item=np.asarray(item, np.int64)),
        "metrics": MetricRecord({"num-pairs": len(user) if num_pairs is None else num_pairs,
                                 "num-users": 10, "num-items": 20}),
        "catalog": ConfigRecord({"fingerprint": "x"})}), dst_node_id=1, message_type="query.share")


def test_share_reply_checks():
    pairs, _ = parse_share(_share_reply([1, 2], [3, 4]), 10, 20)
    assert pairs.tolist() == [[1, 3], [2, 4]]
    with pytest.raises(ReplyError, match="user id out of range"):
        parse_share(_share_reply([10], [3]), 10, 20)
    with pytest.raises(ReplyError, match="duplicate"):
        parse_share(_share_reply([1, 1], [3, 3]), 10, 20)
    with pytest.raises(ReplyError, match="disagree"):
        parse_share(_share_reply([1], [3], num_pairs=5), 10, 20)


def test_evaluate_reply_checks():
    good = {"num-users": 2.0, **{f"{m}@{k}": 0.5 for m in ("recall", "ndcg") for k in (10, 20, 50)}}
    msg = Message(RecordDict({"metrics": MetricRecord(good)}), dst_node_id=1, message_type="evaluate")
    assert parse_evaluate(msg)["recall@20"] == 0.5
    bad = Message(RecordDict({"metrics": MetricRecord({**good, "recall@20": 5.0})}),
                  dst_node_id=1, message_type="evaluate")
    with pytest.raises(ReplyError, match="out of range"):
        parse_evaluate(bad)
