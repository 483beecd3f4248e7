"""Value checks on decoded replies (structure is common.protocol's, see test_protocol.py)."""

import numpy as np
import pytest
from flwr.app import MetricRecord

from common.protocol import EvaluateReply, ShareReply, TrainReply, to_record
from server_app.aggregation import NonFiniteTable, RowUpdate, aggregate_rows
from server_app.validation import (ReplyError, TrainBounds, check_evaluate, check_share,
                                   check_train, check_unshare, decode)
from common.protocol import MAX_UNSHARE_REQUESTS, UnshareReply

GOOD_INDEX = np.array([0, 3], np.int64)


TABLE = np.zeros((5, 4), np.float32)
BOUNDS = TrainBounds(epochs=1, lr=0.01, batch_size=4)   # 10 samples: 3 steps -> |change| <= 0.192


def _train(index=GOOD_INDEX, values=None, counts=None, **metrics):
    values = np.full((len(index), 4), 0.05, np.float32) if values is None else values
    counts = np.ones(len(index), np.float32) if counts is None else counts
    return TrainReply(index, values, counts, 0.5, metrics.get("num_examples", 10), False,
                      num_users=metrics.get("num_users", 4))


def test_good_train_reply_passes():
    update = check_train(_train(), TABLE, BOUNDS)
    assert update.index.tolist() == [0, 3] and update.values.shape == (2, 4)


@pytest.mark.parametrize("kwargs,reason", [
    ({"values": np.ones((2, 3), np.float32)}, "shapes disagree"),
    ({"values": np.full((2, 4), np.nan, np.float32)}, "NaN or Inf"),
    ({"counts": np.array([1, np.inf], np.float32)}, "NaN or Inf"),
    ({"index": np.array([0, 9], np.int64)}, "out of range"),
    ({"index": np.array([3, 3], np.int64)}, "duplicate"),
    ({"counts": np.array([1, 0], np.float32)}, "non-positive"),
    ({"num_examples": -1}, "num-examples -1 outside"),
    ({"num_examples": 10**12}, "outside"),
    ({"num_examples": 21}, r"num-examples 21 outside \[0, 20\] \(4 users, 5 items"),
    ({"num_users": 0}, "num-users 0 outside"),
    ({"values": np.full((2, 4), 1e30, np.float32)}, "row change .* beyond the bound"),
    ({"values": np.full((2, 4), 0.2, np.float32)}, "beyond the bound 0.192"),
    ({"counts": np.array([3e38, 1], np.float32)}, "counts exceed what num-examples"),
    ({"counts": np.array([15, 6], np.float32)}, "counts exceed what num-examples"),
])
def test_bad_train_reply_rejected_with_reason(kwargs, reason):
    with pytest.raises(ReplyError, match=reason):
        check_train(_train(**kwargs), TABLE, BOUNDS)


def test_claims_are_bounded_by_the_users_the_node_could_have():
    # 3 users known to share on the node: it cannot claim fewer; nor more than the federation
    with pytest.raises(ReplyError, match=r"num-users 2 outside \[3, 50\]"):
        check_train(_train(num_users=2), TABLE, BOUNDS, num_users=50, owned=3)
    with pytest.raises(ReplyError, match=r"num-users 51 outside \[1, 50\]"):
        check_train(_train(num_users=51), TABLE, BOUNDS, num_users=50)
    # a row's weight is at most a positive and a negative per user and epoch
    update = check_train(_train(counts=np.array([14, 6], np.float32), num_users=2), TABLE, BOUNDS)
    assert update.counts.tolist() == [4.0, 4.0]


def test_row_change_bound_is_configurable_and_derived_from_local_steps():
    assert TrainBounds(1, 0.01, 4, max_row_change=7.0).row_change(10, 4) == 7.0
    derived = TrainBounds(2, 0.01, 4).row_change(num_examples=20, dim=64)   # 2 x 3 steps
    assert derived == pytest.approx(3.2 * 0.01 * 6 * 8)
    check_train(_train(counts=np.array([14, 6], np.float32)), TABLE, BOUNDS)  # 2 x 10 is the cap


def test_aggregation_sums_in_float64_and_refuses_a_non_finite_table():
    table = np.zeros((3, 2), np.float32)
    huge = RowUpdate(np.array([0]), np.array([[1e30, 1e30]], np.float32), np.array([3e38], np.float32))
    small = RowUpdate(np.array([0]), np.array([[1.0, 1.0]], np.float32), np.array([1.0], np.float32))
    assert np.isfinite(aggregate_rows(table, [huge, small])).all()   # float32 would overflow here
    with pytest.raises(NonFiniteTable):     # defence in depth behind validation
        aggregate_rows(table, [RowUpdate(np.array([1]), np.array([[np.inf, 0]], np.float32),
                                         np.array([1.0], np.float32))])


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
    with pytest.raises(ReplyError, match="implausible catalog"):
        check_share(ShareReply(np.array([1]), np.array([3]), 10**13, 20, "x"), None, None)
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
    many = MAX_UNSHARE_REQUESTS                              # the most a reply may carry, shuffled
    rows = np.random.default_rng(0).permutation(many)
    parsed = check_unshare(reply(rows, rows % 10, rows % 20, many), 10, 20)
    assert len(parsed) == many and parsed[1234] == (4, np.array([14]))


def test_an_unshare_flood_is_refused_as_a_whole():
    flood = MAX_UNSHARE_REQUESTS + 1
    rows = np.arange(flood, dtype=np.int64)
    with pytest.raises(ReplyError, match=f"{flood} unshare requests in one reply"):
        check_unshare(UnshareReply(rows, rows % 10, rows % 20, flood), 10, 20)


def test_evaluate_reply_checks():
    good = {"num-users": 2.0, **{f"{m}@{k}": 0.5 for m in ("recall", "ndcg") for k in (10, 20, 50)}}
    assert check_evaluate(EvaluateReply({"valid": good, "test": good}), 10)["test"]["recall@20"] == 0.5
    with pytest.raises(ReplyError, match="valid metric sums out of range"):
        check_evaluate(EvaluateReply({"valid": {**good, "recall@20": 5.0}, "test": good}), 10)
    with pytest.raises(ReplyError, match="num-users 2.0 outside \\[0, 1\\]"):
        check_evaluate(EvaluateReply({"valid": good, "test": good}), 1)
    content = EvaluateReply({"valid": good, "test": good}).to_content()
    content["test"] = MetricRecord({**good, "recall@20": [0.1, 0.2]})
    with pytest.raises(ReplyError, match="must be a number"):
        decode(EvaluateReply, content)


def test_any_failure_handling_a_reply_rejects_only_that_reply():
    from server_app.records import PhaseStats
    from server_app.exchange import guarded
    stats = PhaseStats()
    assert guarded(stats, 7, "train", lambda: {}["missing"]) is None
    assert guarded(stats, 8, "train", lambda: (_ for _ in ()).throw(ReplyError("bad"))) is None
    assert guarded(stats, 9, "train", lambda: 42) == 42
    assert stats.rejected == ["node 7: train rejected: unexpected KeyError: 'missing'",
                              "node 8: train rejected: bad"]


def test_updates_without_rows_leave_the_table_itself():
    """Withheld uploads and secure aggregation send empty row updates every round: no new
    (I, d) table (nor float64 sums) is built for them."""
    table = np.ones((5, 2), np.float32)
    empty = RowUpdate(np.zeros(0, np.int64), np.zeros((0, 2), np.float32), np.zeros(0, np.float32))
    assert aggregate_rows(table, [empty, empty]) is table
    assert aggregate_rows(table, []) is table
    touched = aggregate_rows(table, [empty, RowUpdate(np.array([1]), np.full((1, 2), 3, np.float32),
                                                      np.ones(1, np.float32))])
    assert touched is not table and touched[1].tolist() == [3, 3] and table[1].tolist() == [1, 1]
