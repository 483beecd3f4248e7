"""The message protocol: every payload survives to_content -> from_content, replies carry
exactly their declared records, and structural errors are named."""

from dataclasses import replace

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from common.protocol import (RIDER, EvaluateReply, Header, ModelPayload, ProtocolError,
                             ShareReply, TrainReply, UnshareAnswer, UnshareReply, to_record)

RNG = np.random.default_rng(0)
I64 = lambda *v: np.array(v, np.int64)  # noqa: E731


def _same(a, b) -> None:
    assert type(a) is type(b)
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert x is not None and y is not None and np.array_equal(x, y), name
            assert np.asarray(x).dtype == np.asarray(y).dtype, name
        elif hasattr(x, "__dataclass_fields__"):
            _same(x, y)
        else:
            assert x == y, name


HEADER = Header(3, 1, I64(4, 9), I64(2, 0),
                (UnshareAnswer(11, False), UnshareAnswer(12, True, "never shared"),
                 UnshareAnswer(13, False, "owned by another node", retry=True)))
RIDING = UnshareReply(I64(7, 7, 9), I64(1, 1, 2), I64(3, 4, 5), 2)
PAYLOADS = [
    HEADER,
    Header(1),
    ModelPayload(HEADER, RNG.random((5, 4), np.float32)),
    ModelPayload(HEADER, RNG.random((5, 4), np.float32), RNG.random((5, 4), np.float32),
                 I64(4), RNG.random((1, 4), np.float32), RNG.random((2, 4), np.float32)),
    ShareReply(I64(1, 2), I64(3, 4), 10, 20, "abc"),
    UnshareReply(I64(7, 7), I64(1, 1), I64(3, 4), 1),
    TrainReply(I64(0, 3), RNG.random((2, 4), np.float32), np.ones(2, np.float32), 0.25, 8,
               True),
    EvaluateReply({split: {"num-users": 2.0, **{f"{m}@{k}": 0.25 * (split == "test")
                                                 for m in ("recall", "ndcg") for k in (10, 20, 50)}}
                   for split in ("valid", "test")}),
]
EGO = ModelPayload(HEADER, RNG.random((5, 4), np.float32), RNG.random((5, 4), np.float32),
                   I64(4), RNG.random((1, 4), np.float32), None, RNG.random((5, 4), np.float32),
                   I64(0, 3, 1, 0, 2), RNG.random((1, 4), np.float32))
WITH_RIDER = [
    ShareReply(I64(1, 2), I64(3, 4), 10, 20, "abc", RIDING),
    TrainReply(I64(0, 3), RNG.random((2, 4), np.float32), np.ones(2, np.float32), 0.25, 8,
               False, RIDING),
    EvaluateReply(PAYLOADS[-1].sums, RIDING),
]


FOLDED = [Header(3, evaluate=True),
          TrainReply(I64(0, 3), RNG.random((2, 4), np.float32), np.ones(2, np.float32), 0.25, 8,
                     False, RIDING, evaluation=PAYLOADS[7])]


@pytest.mark.parametrize("payload", PAYLOADS + WITH_RIDER + [EGO] + FOLDED,
                         ids=lambda p: type(p).__name__)
def test_round_trip(payload):
    _same(payload, type(payload).from_content(payload.to_content()))


def test_prebuilt_shared_records_are_reused_and_decode_the_same():
    """The strategy serialises the item tables once per phase and gives every node the same
    records: each node still decodes its own header and user views."""
    full = PAYLOADS[3]
    shared = full.shared_records()
    other = ModelPayload(Header(4), full.items, full.graph_items, I64(9),
                         RNG.random((1, 4), np.float32))
    for payload in (full, other):
        content = payload.to_content(shared)
        assert content["items"] is shared["items"] and content["graph"] is shared["graph"]
        _same(payload, ModelPayload.from_content(content))


def test_ego_tables_that_do_not_match_the_item_table_are_refused():
    content = replace(EGO, graph_degree=I64(1, 2)).to_content()
    with pytest.raises(ProtocolError, match="ego tables do not match the item table"):
        ModelPayload.from_content(content)


def test_reply_records_are_exactly_the_declared_ones():
    for payload in PAYLOADS[4:]:
        content = payload.to_content()
        assert {name: set(record.keys()) for name, record in content.items()} == \
            {name: set(keys) for name, keys in type(payload).RECORDS.items()}
    for payload in WITH_RIDER:       # pending withdrawals ride on any reply
        content = payload.to_content()
        assert {name: set(record.keys()) for name, record in content.items()} == \
            {name: set(keys) for name, keys in {**type(payload).RECORDS, **RIDER}.items()}
        assert UnshareReply.rider(content).request.tolist() == [7, 7, 9]
    assert UnshareReply.rider(PAYLOADS[6].to_content()) is None


def test_a_half_rider_is_a_protocol_error():
    content = WITH_RIDER[1].to_content()
    del content["unshare-count"]
    with pytest.raises(ProtocolError, match="unshare-count"):
        TrainReply.from_content(content)


def _share_content(**changes) -> RecordDict:
    content = ShareReply(I64(1), I64(3), 10, 20, "abc").to_content()
    for name, record in changes.items():
        if record is None:
            del content[name]
        else:
            content[name] = record
    return content


@pytest.mark.parametrize("changes,reason", [
    ({"share": None}, "no 'share' record"),
    ({"catalog": ConfigRecord({"other": "x"})}, "without 'fingerprint'"),
    ({"share": to_record(user=I64(1), item=np.array([3.0]))}, "must be int64"),
    ({"share": to_record(user=I64(1))}, "missing array 'item'"),
    ({"metrics": MetricRecord({"num-pairs": 5, "num-users": 10, "num-items": 20})},
     "num-pairs disagree"),
    ({"metrics": MetricRecord({"num-pairs": 1, "num-users": 10})}, "keys"),
    ({"metrics": MetricRecord({"num-pairs": 1, "num-users": 10.5, "num-items": 20})},
     "integer"),
])
def test_structural_errors_are_named(changes, reason):
    with pytest.raises(ProtocolError, match=reason):
        ShareReply.from_content(_share_content(**changes))


def test_pending_flags_must_be_bits():
    content = PAYLOADS[6].to_content()
    content["metrics"] = MetricRecord({"loss": 0.1, "num-examples": 3, "num-users": 1,
                                     "pending-sharing": 2})
    with pytest.raises(ProtocolError, match="0 or 1"):
        TrainReply.from_content(content)


def test_a_train_reply_carries_the_evaluation_records_only_when_it_evaluated():
    content = FOLDED[1].to_content()
    assert {"valid", "test"} <= set(content.metric_records)
    assert "valid" not in WITH_RIDER[1].to_content().metric_records
    assert TrainReply.from_content(WITH_RIDER[1].to_content()).evaluation is None
    del content["valid"]                  # half an evaluation is a protocol error
    with pytest.raises(ProtocolError, match="valid"):
        TrainReply.from_content(content)


def test_item_tables_sent_in_float16_decode_as_float32_and_are_half_the_bytes():
    table = lambda: RNG.random((500, 16), np.float32)  # noqa: E731
    payload = replace(EGO, items=table(), graph_items=table(), graph_ego=table(),
                      graph_degree=RNG.integers(0, 9, 500))
    wide, narrow = payload.to_content(payload.shared_records()), \
        payload.to_content(payload.shared_records("float16"))
    assert narrow["items"]["weight"].dtype == "float16"
    decoded = ModelPayload.from_content(narrow)
    assert decoded.items.dtype == np.float32 and decoded.graph_ego.dtype == np.float32
    np.testing.assert_allclose(decoded.items, payload.items, rtol=1e-3)
    np.testing.assert_allclose(decoded.graph_items, payload.graph_items, rtol=1e-3)
    table_bytes = lambda c: sum(c[n].count_bytes() for n in ("items", "graph", "ego"))  # noqa: E731
    assert table_bytes(narrow) < 0.6 * table_bytes(wide)
    content = payload.to_content()
    content["items"] = to_record(weight=payload.items.astype(np.float64))   # other dtypes: refused
    with pytest.raises(ProtocolError, match="float32|float16"):
        ModelPayload.from_content(content)
