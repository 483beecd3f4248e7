"""The server never receives an interaction its user did not share.

A real run (the ServerApp strategy and the ClientApp handlers exchanging serialised Flower
messages in one process) with a tap on every client->server reply. Each reply's records
and arrays must be on a whitelist, and the only (user, item) pairs that ever reach the
server -- in messages or in its state on disk -- are the shared ones.
"""

import numpy as np
import pytest

from common.config import load_config
from common.datasets import default_data_root, load_dataset
from common.protocol import EVALUATE, OPTIONAL, REPLIES, RIDER, SHARE, TRAIN, UNSHARE
from common.sharing import shared_pairs
from harness.inprocess import run_inprocess
from server_app.state import ServerState

# what may leave a node in each phase: exactly the records and keys the protocol declares
ALLOWED = {phase: REPLIES[action].RECORDS for phase, action in
           {"unshare": UNSHARE, "share": SHARE, "train": TRAIN, "evaluate": EVALUATE}.items()}


@pytest.fixture(scope="module", params=[False, True], ids=["evaluate-messages", "eval-in-train"])
def tapped_run(tmp_path_factory, request):
    if not (default_data_root() / "ml-100k" / "u.data").exists():
        pytest.skip("ML-100K not available")
    tmp = tmp_path_factory.mktemp("privacy")
    config = {"max-users": 60, "num-rounds": 2, "eval-every": 1, "sharing-ratio": 0.3,
              "fraction-train": 1.0, "eval-in-train": request.param,
              "state-dir": str(tmp / "state"), "out-dir": str(tmp / "out")}
    replies = []
    result = run_inprocess(config, 3, tap=lambda phase, msg: replies.append((phase, msg)))
    return load_config(config), replies, result


def test_every_reply_only_carries_whitelisted_fields(tapped_run):
    cfg, replies, _ = tapped_run
    folded = cfg.eval_in_train   # every node trains every round: no evaluate message then
    assert {phase for phase, _ in replies} == {"share", "train"} | (set() if folded else {"evaluate"})
    rider = {name: set(keys) for name, keys in RIDER.items()}
    for phase, msg in replies:
        records = {name: set(record.keys()) for name, record in msg.content.items()}
        expected = {name: set(keys) for name, keys in ALLOWED[phase].items()}
        riding = {name: keys for name, keys in records.items() if name not in expected}
        optional = {name: set(keys) for name, keys in OPTIONAL.get(phase, {}).items()} \
            if folded and phase == "train" else {}
        assert riding in ({**optional}, {**optional, **rider}), phase
        assert {name: keys for name, keys in records.items() if name in expected} == expected


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
    state = ServerState.load(cfg, result["server_state_dir"])
    assert {tuple(p) for p in state.edges.pairs()} == shared


def test_train_and_evaluate_replies_carry_no_user_ids(tapped_run):
    cfg, replies, _ = tapped_run
    num_items = load_dataset(cfg.dataset, max_users=cfg.max_users).num_items
    counted = {"train": 0, "evaluate": 0}
    for phase, msg in replies:
        if phase not in counted:
            continue
        counted[phase] += 1
        arrays = {f"{name}/{key}": array for name, record in msg.content.array_records.items()
                  for key, array in record.items()}
        if phase == "evaluate":
            assert arrays == {}                          # metric sums only
        else:                                            # item rows only
            assert set(arrays) == {"update/index", "update/values", "update/counts"}
            index = arrays["update/index"].numpy()
            assert index.dtype == np.int64 and (index < num_items).all()
    # 3 nodes x 2 rounds each; with eval-in-train the metric sums ride on the train replies
    assert counted["train"] == 6 and counted["evaluate"] == (0 if cfg.eval_in_train else 6)


def test_an_honest_run_has_no_rejected_reply(tapped_run):
    """The server's bounds (row change, counts, catalog, metric ranges) admit honest nodes."""
    _, _, result = tapped_run
    rejected = [reason for r in result["rounds"] for p in r["phases"].values() for reason in p["rejected"]]
    assert rejected == [] and all(r["phases"]["train"]["ok"] == 3 for r in result["rounds"])
