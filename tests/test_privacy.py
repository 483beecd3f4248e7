"""The server never receives an interaction its user did not share.

A real run (the ServerApp strategy and the ClientApp handlers exchanging serialised Flower
messages in one process) with a tap on every client->server reply. Each reply's records
and arrays must be on a whitelist, and the only (user, item) pairs that ever reach the
server -- in messages or in its state on disk -- are the shared ones.
"""

import numpy as np
import pytest

from bench.inprocess import run_inprocess
from common.config import load_config
from common.datasets import default_data_root, load_dataset
from common.sharing import shared_pairs
from server_app.edge_store import EdgeStore

ALLOWED = {  # phase -> record name -> allowed array/metric/config keys
    "share": {"share": {"user", "item"}, "metrics": {"num-pairs", "num-users", "num-items"},
              "catalog": {"fingerprint"}},
    "train": {"update": {"index", "values", "counts"},
              "metrics": {"loss", "num-examples", "pending-sharing", "pending-unshare"}},
    "unshare": {"unshare": {"request", "user", "item"}, "metrics": {"num-requests", "num-pairs"}},
    "evaluate": {"metrics": {"num-users"} | {f"{m}@{k}" for m in ("recall", "ndcg")
                                              for k in (10, 20, 50)}},
}


@pytest.fixture(scope="module")
def tapped_run(tmp_path_factory):
    if not (default_data_root() / "ml-100k" / "u.data").exists():
        pytest.skip("ML-100K not available")
    tmp = tmp_path_factory.mktemp("privacy")
    config = {"max-users": 60, "num-rounds": 2, "eval-every": 1, "sharing-ratio": 0.3,
              "fraction-train": 1.0, "state-dir": str(tmp / "state"), "out-dir": str(tmp / "out")}
    replies = []
    result = run_inprocess(config, 3, tap=lambda phase, msg: replies.append((phase, msg)))
    return load_config(config), replies, result


def test_every_reply_only_carries_whitelisted_fields(tapped_run):
    _, replies, _ = tapped_run
    assert {phase for phase, _ in replies} == {"share", "train", "evaluate"}
    for phase, msg in replies:
        records = dict(msg.content.items())
        assert set(records) <= set(ALLOWED[phase]), (phase, set(records))
        for name, record in records.items():
            assert set(record.keys()) <= ALLOWED[phase][name], (phase, name, set(record.keys()))


def test_only_shared_pairs_reach_the_server(tapped_run):
    cfg, replies, result = tapped_run
    ds = load_dataset(cfg.dataset, max_users=cfg.max_users)
    shared = {tuple(p) for p in shared_pairs(ds.train, cfg.sharing_ratio, "fixed", cfg.seed)}
    private = {tuple(p) for p in ds.train} - shared
    assert shared and private
    received = set()
    for phase, msg in replies:
        if phase == "share":
            record = msg.content.array_records["share"]
            received |= set(zip(record["user"].numpy().tolist(), record["item"].numpy().tolist()))
    assert received == shared          # everything shared arrives, nothing else
    assert not received & private
    store = EdgeStore.load(f"{result['server_state_dir']}/edges.npz")
    assert {tuple(p) for p in store.pairs()} == shared


def test_train_and_evaluate_replies_carry_no_user_ids(tapped_run):
    _, replies, _ = tapped_run
    for phase, msg in replies:
        if phase == "train":
            index = msg.content.array_records["update"]["index"].numpy()
            assert index.dtype == np.int64  # item rows only; no array names a user
