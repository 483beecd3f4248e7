"""Value checks on decoded replies (structure is common.protocol's, see test_protocol.py)."""

import numpy as np
import pytest
from flwr.app import MetricRecord

from common.protocol import EvaluateReply, ShareReply, TrainReply, to_record
from server_app.validation import (ReplyError, check_evaluate, check_share, check_train,
                                   check_unshare, decode)
from common.protocol import UnshareReply

GOOD_INDEX = np.array([0, 3], np.int64)


def _train(index=GOOD_INDEX, values=None, counts=None, **metrics):
    values = np.ones((len(index), 4), np.float32) if values is None else values
    counts = np.ones(len(index), np.float32) if counts is None else counts
    return TrainReply(index, values, counts, 0.5, metrics.get("num_examples", 10), False)


def test_good_train_reply_passes():
    update = check_train(_train(), num_items=5, dim=4)
    assert update.index.tolist() == [0, 3] and update.values.shape == (2, 4)


@pytest.mark.parametrize("kwargs,reason", [
    ({"values": np.ones((2, 3), np.float32)}, "shapes disagree"),
    ({"values": np.full((2, 4), np.nan, np.float32)}, "NaN or Inf"),
    ({"counts": np.array([1, np.inf], np.float32)}, "NaN or Inf"),
    ({"index": np.array([0, 9], np.int64)}, "out of range"),
    ({"index": np.array([3, 3], np.int64)}, "duplicate"),
    ({"counts": np.array([1, 0], np.float32)}, "non-positive"),
    ({"num_examples": -1}, "negative num-examples"),
])
def test_bad_train_reply_rejected_with_reason(kwargs, reason):
    with pytest.raises(ReplyError, match=reason):
        check_train(_train(**kwargs), num_items=5, dim=4)


def test_structural_errors_become_reply_errors():
    content = _train().to_content()
    content["update"] = to_record(index=GOOD_INDEX, values=np.ones((2, 4), np.float64),
                                  counts=np.ones(2, np.float32))
    with pytest.raises(ReplyError, match="float32"):
        decode(TrainReply, content)


def test_share_reply_checks():
    def share(user, item):
        return ShareReply(np.asarray(user, np.int64), np.asarray(item, np.int64), 10, 20, "x")
    assert check_share(share([1, 2], [3, 4]), 10, 20).tolist() == [[1, 3], [2, 4]]
    with pytest.raises(ReplyError, match="user id out of range"):
        check_share(share([10], [3]), 10, 20)
    with pytest.raises(ReplyError, match="item id out of range"):   # catalog not yet known:
        check_share(share([1], [25]), None, None)                  # the node's claim bounds
    with pytest.raises(ReplyError, match="duplicate"):
        check_share(share([1, 1], [3, 3]), 10, 20)


def test_unshare_reply_checks():
    def reply(request, user, item, num_requests):
        return UnshareReply(*(np.asarray(a, np.int64) for a in (request, user, item)), num_requests)
    requests = check_unshare(reply([7, 7, 8], [1, 1, 2], [3, 4, 5], 2), 10, 20)
    assert {k: (u, i.tolist()) for k, (u, i) in requests.items()} == {7: (1, [3, 4]), 8: (2, [5])}
    with pytest.raises(ReplyError, match="names several users"):
        check_unshare(reply([7, 7], [1, 2], [3, 4], 1), 10, 20)
    with pytest.raises(ReplyError, match="num-requests"):
        check_unshare(reply([7], [1], [3], 2), 10, 20)
    with pytest.raises(ReplyError, match="item id out of range"):
        check_unshare(reply([7], [1], [30], 1), 10, 20)


def test_evaluate_reply_checks():
    good = {"num-users": 2.0, **{f"{m}@{k}": 0.5 for m in ("recall", "ndcg") for k in (10, 20, 50)}}
    assert check_evaluate(EvaluateReply(good))["recall@20"] == 0.5
    with pytest.raises(ReplyError, match="out of range"):
        check_evaluate(EvaluateReply({**good, "recall@20": 5.0}))
    content = EvaluateReply(good).to_content()
    content["metrics"] = MetricRecord({**good, "recall@20": [0.1, 0.2]})
    with pytest.raises(ReplyError, match="must be a number"):
        decode(EvaluateReply, content)
