"""Federated evaluation is the one evaluator: the metrics the server aggregates from the real
ClientApps (several nodes, serialised messages) equal a centralized evaluation of the same
tables; model selection picks the best validation round and can stop a run early."""

import numpy as np
import pytest
import torch

from common.config import load_config
from common.datasets import default_data_root, partition_users
from common.metrics import SPLITS, evaluate_split, finalize
from harness.session import clone, new_session
from server_app.exchange import selection

pytestmark = pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(),
                                reason="ML-100K not available")


def _cfg(tmp_path, **overrides):
    return load_config({"max-users": 80, "num-rounds": 6, "eval-every": 1, "fraction-train": 1.0,
                        "sharing-ratio": 0.5, "state-dir": str(tmp_path / "x"),
                        "out-dir": str(tmp_path / "out"), **overrides})


def _central_tables(session) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused tables the nodes score with, put together: private user rows from each
    node's disk plus the server's global views."""
    state = session.state
    user_views, item_views = state.views
    users = torch.zeros(state.catalog.num_users, user_views.shape[1])
    for context, node_dir in zip(session.grid.contexts.values(), session.node_dirs()):
        pid, num = context.node_config["partition-id"], context.node_config["num-partitions"]
        with np.load(node_dir / "user-emb-run-1.npz") as saved:
            users[partition_users(state.catalog.num_users, pid, num)] = torch.from_numpy(saved["weight"])
    users += torch.from_numpy(user_views)
    return users, torch.from_numpy(state.item_emb + item_views)


def _assert_equals_central(federated, users, items, ds) -> None:
    """Federated metric sums of every split equal the one evaluator run on ``(users, items)``."""
    for split in SPLITS:
        central = finalize(evaluate_split(users, items, ds.train, ds.valid, ds.test, split))
        assert federated[split]["num-users"] == central["num-users"] > 0
        for key, value in central.items():
            assert federated[split][key] == pytest.approx(value, abs=1e-6), (split, key)


def test_federated_metrics_equal_centralized_ones_on_the_same_tables(tmp_path):
    cfg = _cfg(tmp_path, fusion="sum")  # the tables below are put together by the sum rule
    session = new_session(cfg, 4, tmp_path / "fed")
    session.run_rounds(2)
    _, federated = session.strategy.evaluate(session.grid, [1, 2, 3, 4], 2)
    _assert_equals_central(federated, *_central_tables(session), cfg.load_data())


def test_selection_reports_the_best_validation_round_and_patience_stops_the_run(tmp_path):
    cfg = _cfg(tmp_path, **{"patience": 1, "local-lr": 0.5, "num-rounds": 12})  # lr too high:
    session = new_session(cfg, 2, tmp_path / "fed")                            # it overshoots
    records = session.run_rounds(12)
    valid = [r.valid_metrics["ndcg@20"] for r in records]
    chosen = selection(session.state.history, cfg.patience)
    assert chosen.best_step == records[int(np.argmax(valid))].round
    assert chosen.best_test == records[int(np.argmax(valid))].metrics
    assert len(records) < 12 and chosen.should_stop               # stopped early...
    assert valid[-1] <= max(valid) and records[-1].round == chosen.best_step + 1  # ...one round after


def test_weighted_fusion_scores_users_who_share_everything_by_the_graph_model(tmp_path):
    """At sharing ratio 1 the server holds every training interaction of every user, so
    ``fusion = "weighted"`` must score exactly by the server's graph views (the local rows get
    weight 0): the federated metrics equal a central evaluation of the server views alone."""
    cfg = _cfg(tmp_path, **{"sharing-ratio": 1.0, "fusion": "weighted"})
    session = new_session(cfg, 4, tmp_path / "fed")
    session.run_rounds(2)
    _, federated = session.strategy.evaluate(session.grid, [1, 2, 3, 4], 2)
    user_views, item_views = (torch.from_numpy(v) for v in session.state.views)
    _assert_equals_central(federated, user_views, item_views, cfg.load_data())


def test_eval_fraction_evaluates_the_same_seeded_subset_every_time(tmp_path):
    cfg = _cfg(tmp_path, **{"eval-fraction": 0.5, "num-rounds": 2, "eval-every": 1})
    session = new_session(cfg, 8, tmp_path / "fed")
    records = session.run_rounds(2)
    evaluated = [session.strategy.eval_nodes(range(1, 9)) for _ in range(3)]
    assert len(evaluated[0]) == 4 and evaluated[0] == evaluated[1] == evaluated[2]
    assert all(r.phases["evaluate"].sent == 4 for r in records)
    ds = cfg.load_data()   # the metrics count exactly the users of those nodes
    users = np.concatenate([partition_users(ds.num_users, n - 1, 8) for n in evaluated[0]])
    with_test = np.intersect1d(users, ds.test[:, 0])
    assert records[-1].metrics["num-users"] == len(with_test)


def test_evaluation_folded_into_train_equals_a_separate_evaluation_of_the_same_model(tmp_path):
    """``eval-in-train``: the nodes evaluate the model their train message brings before
    training on it. With a server step that leaves the model as it was (``server-epochs`` 0)
    that model is the one a separate evaluate message gets before the round: the metric sums
    are the same (weighted fusion, so the private rows count and training would change them)."""
    cfg = _cfg(tmp_path, **{"fusion": "weighted", "server-epochs": 0, "eval-every": 0})
    learned = new_session(cfg, 4, tmp_path / "learned")
    learned.run_rounds(2)
    separate = clone(learned, tmp_path / "separate", cfg)
    _, before = separate.strategy.evaluate(separate.grid, [1, 2, 3, 4], 3)
    folded_cfg = cfg.model_copy(update={"eval_in_train": True, "eval_every": 1})
    folded = clone(learned, tmp_path / "folded", folded_cfg)
    record = folded.run_rounds(1)[0]
    assert record.phases["evaluate"].sent == 0 and record.phases["evaluate"].ok == 4
    assert record.metrics == before["test"] and record.valid_metrics == before["valid"]
    separate.run_rounds(1)
    _, after = separate.strategy.evaluate(separate.grid, [1, 2, 3, 4], 3)
    assert after["test"] != before["test"]          # training did change the fused scores


def test_folded_evaluation_still_sends_evaluate_messages_to_nodes_that_do_not_train(tmp_path):
    cfg = _cfg(tmp_path, **{"eval-in-train": True, "fraction-train": 0.5, "eval-every": 1})
    session = new_session(cfg, 6, tmp_path / "fed")
    record = session.run_rounds(2)[-1]
    assert record.phases["train"].sent == 3
    assert record.phases["evaluate"].sent == 3 and record.phases["evaluate"].ok == 6
    ds = cfg.load_data()
    assert record.metrics["num-users"] == len(np.unique(ds.test[:, 0]))


def test_float16_downloads_halve_the_bytes_and_barely_move_the_metrics(tmp_path):
    runs = {}
    for precision in ("float32", "float16"):
        cfg = _cfg(tmp_path / precision, **{"download-precision": precision, "num-rounds": 3,
                                            "eval-every": 3})
        session = new_session(cfg, 4, tmp_path / precision / "fed")
        runs[precision] = session.run_rounds(3)[-1]
    wide, narrow = runs["float32"], runs["float16"]
    assert narrow.phases["train"].bytes_down < 0.6 * wide.phases["train"].bytes_down
    assert abs(narrow.metrics["ndcg@20"] - wide.metrics["ndcg@20"]) < 0.01
