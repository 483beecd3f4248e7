"""End-to-end smoke tests of the centralized reference on a tiny clustered dataset."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from common.centralized import (_rows_of_users, _user_indptr, evaluate_embeddings, main,
                                sample_negatives, train_centralized)

NUM_USERS, NUM_ITEMS, NUM_GROUPS = 100, 100, 5
TRAIN_PER_USER, TEST_PER_USER = 8, 2


def _clustered_dataset(seed: int = 0) -> SimpleNamespace:
    """User u likes 10 of the 20 items of group u % 5: 8 in train, 2 in test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    group_size = NUM_ITEMS // NUM_GROUPS
    for user in range(NUM_USERS):
        group = user % NUM_GROUPS
        liked = group * group_size + rng.choice(group_size, TRAIN_PER_USER + TEST_PER_USER,
                                                replace=False)
        train += [(user, item) for item in liked[:TRAIN_PER_USER]]
        test += [(user, item) for item in liked[TRAIN_PER_USER:]]
    return SimpleNamespace(name="clustered", num_users=NUM_USERS, num_items=NUM_ITEMS,
                           train=np.array(train, dtype=np.int64),
                           valid=np.empty((0, 2), dtype=np.int64),
                           test=np.array(test, dtype=np.int64), fingerprint="synthetic")


# A random ranking of the 92 unmasked items puts each test item in the top 10 w.p. 10/92.
RANDOM_RECALL_AT_10 = 10 / (NUM_ITEMS - TRAIN_PER_USER)


@pytest.mark.parametrize("model", ["bprmf", "lightgcn"])
def test_training_beats_random_ranker(model):
    lines = []
    result = train_centralized(_clustered_dataset(), model, epochs=5, embedding_dim=16,
                               num_layers=2, batch_size=128, lr=0.02, reg=1e-4, seed=0,
                               eval_every=5, log=lines.append)
    assert set(result) >= {"model", "epochs", "seconds", "seconds_per_epoch", "metrics", "curve"}
    assert result["model"] == model and len(result["curve"]) == 5 and len(lines) >= 5
    assert result["curve"][-1]["loss"] < result["curve"][0]["loss"]
    metrics = result["metrics"]
    assert metrics["num-users"] == NUM_USERS
    assert metrics["recall@10"] > 3 * RANDOM_RECALL_AT_10, metrics


def test_training_is_reproducible():
    first = train_centralized(_clustered_dataset(), "bprmf", 2, embedding_dim=8, batch_size=256,
                              lr=0.01, seed=3, log=lambda _: None)
    second = train_centralized(_clustered_dataset(), "bprmf", 2, embedding_dim=8, batch_size=256,
                               lr=0.01, seed=3, log=lambda _: None)
    assert first["metrics"] == second["metrics"]
    assert [e["loss"] for e in first["curve"]] == [e["loss"] for e in second["curve"]]


def test_evaluate_embeddings_perfect_and_masked():
    """Users whose embedding points at exactly their test items get recall 1 in every batch."""
    ds = _clustered_dataset()
    user_out = torch.zeros(NUM_USERS, NUM_ITEMS)
    user_out[ds.test[:, 0], ds.test[:, 1]] = 1.0
    user_out[ds.train[:, 0], ds.train[:, 1]] = 5.0      # training items would win if not masked
    metrics = evaluate_embeddings(user_out, torch.eye(NUM_ITEMS), ds.train, ds.test, NUM_USERS,
                                  user_batch=7)
    assert metrics["recall@10"] == pytest.approx(1.0)
    assert metrics["ndcg@10"] == pytest.approx(1.0)
    assert metrics["num-users"] == NUM_USERS


def test_negatives_avoid_positives_and_rows_of_users():
    ds = _clustered_dataset()
    keys = np.unique(ds.train[:, 0] * NUM_ITEMS + ds.train[:, 1])
    users = np.repeat(np.arange(NUM_USERS), 50)
    negatives = sample_negatives(users, keys, NUM_ITEMS, np.random.default_rng(0))
    assert not np.isin(users * NUM_ITEMS + negatives, keys).any()
    indptr = _user_indptr(ds.train, NUM_USERS)
    rows = _rows_of_users(indptr, np.array([3, 0, 99]))
    assert set(ds.train[rows, 0]) == {0, 3, 99} and rows.size == 3 * TRAIN_PER_USER


def test_cli_writes_manifest_and_result(tmp_path, monkeypatch):
    import common.datasets

    monkeypatch.setattr(common.datasets, "load_dataset",
                        lambda *args, **kwargs: _clustered_dataset())
    out = tmp_path / "result.json"
    main(["--dataset", "ml-100k", "--model", "bprmf", "--epochs", "1", "--out", str(out),
          "--lr", "0.01", "--embedding-dim", "8"])
    record = json.loads(out.read_text())
    assert record["manifest"]["config"]["lr"] == 0.01
    assert record["manifest"]["data_fingerprint"] == "synthetic"
    assert record["result"]["model"] == "bprmf" and "recall@20" in record["result"]["metrics"]
