"""End-to-end smoke tests of the centralized reference on a tiny clustered dataset."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from common.centralized import main, make_model, sample_negatives, train_centralized

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
    result = train_centralized(_with_validation(), model, epochs=5, embedding_dim=16,
                               num_layers=2, batch_size=128, lr=0.02, reg=1e-4, seed=0,
                               eval_every=1, patience=0, log=lines.append)
    assert set(result) >= {"model", "epochs", "seconds", "seconds_per_epoch", "metrics", "curve",
                           "best_epoch", "valid_metrics", "selection"}
    assert result["model"] == model and len(result["curve"]) == 5 and len(lines) >= 5
    valid_curve = [entry["valid"]["ndcg@20"] for entry in result["curve"]]
    assert result["best_epoch"] == 1 + int(np.argmax(valid_curve))
    assert result["valid_metrics"]["ndcg@20"] == max(valid_curve)
    assert result["curve"][-1]["loss"] < result["curve"][0]["loss"]
    metrics = result["metrics"]
    assert metrics["num-users"] == NUM_USERS
    # 6 train + 2 valid items masked: a random ranking of the other 92 items
    assert metrics["recall@10"] > 3 * RANDOM_RECALL_AT_10, metrics


def test_training_is_reproducible():
    first = train_centralized(_clustered_dataset(), "bprmf", 2, embedding_dim=8, batch_size=256,
                              lr=0.01, seed=3, log=lambda _: None)
    second = train_centralized(_clustered_dataset(), "bprmf", 2, embedding_dim=8, batch_size=256,
                               lr=0.01, seed=3, log=lambda _: None)
    assert first["metrics"] == second["metrics"]
    assert [e["loss"] for e in first["curve"]] == [e["loss"] for e in second["curve"]]


def test_negatives_avoid_positives():
    ds = _clustered_dataset()
    keys = np.unique(ds.train[:, 0] * NUM_ITEMS + ds.train[:, 1])
    users = np.repeat(np.arange(NUM_USERS), 50)
    negatives = sample_negatives(users, keys, NUM_ITEMS, np.random.default_rng(0))
    assert not np.isin(users * NUM_ITEMS + negatives, keys).any()


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


def _with_validation(seed: int = 0) -> SimpleNamespace:
    """The clustered data with 2 of each user's 8 training items moved to a validation part."""
    ds = _clustered_dataset(seed)
    rows = np.arange(len(ds.train))
    in_valid = rows % TRAIN_PER_USER < 2
    return SimpleNamespace(**{**vars(ds), "train": ds.train[~in_valid], "valid": ds.train[in_valid]})


def test_test_metrics_mask_validation_items():
    """Scoring test ranks neither training nor validation items (the federated rule).

    With 0 epochs the reported metrics are those of the seeded initial model, so they can be
    recomputed here from the same embeddings with both masking rules.
    """
    from common.metrics import finalize, mask_scores, ranking_metric_sums

    ds = _with_validation()
    result = train_centralized(ds, "bprmf", 0, embedding_dim=8, seed=5, log=lambda _: None)
    torch.manual_seed(5)
    net = make_model("bprmf", NUM_USERS, NUM_ITEMS, 8, 1)
    scores = (net.user_emb.weight @ net.item_emb.weight.T).detach()

    def means(masked_pairs: np.ndarray) -> dict:
        masked = mask_scores(scores, torch.from_numpy(masked_pairs[:, 0]),
                             torch.from_numpy(masked_pairs[:, 1]))
        return finalize(ranking_metric_sums(masked, torch.from_numpy(ds.test[:, 0]),
                                            torch.from_numpy(ds.test[:, 1])))

    federated_rule = means(np.concatenate([ds.train, ds.valid]))
    train_only = means(ds.train)
    assert federated_rule != train_only                 # the data tells the two rules apart
    for key, value in federated_rule.items():
        assert result["metrics"][key] == pytest.approx(value, rel=1e-9), key


def test_reports_test_metrics_of_the_best_validation_epoch():
    """The reported test metrics are the best epoch's model's, not the last epoch's."""
    ds = _with_validation()
    kwargs = dict(embedding_dim=8, batch_size=64, lr=0.2, seed=1, log=lambda _: None)
    long_run = train_centralized(ds, "bprmf", 8, patience=0, **kwargs)
    best = long_run["best_epoch"]
    assert best is not None and best < 8 == long_run["epochs"]   # validation peaks before the end
    rerun = train_centralized(ds, "bprmf", best, patience=0, **kwargs)
    assert rerun["metrics"] == long_run["metrics"]


def test_early_stopping_stops_after_patience():
    ds = _with_validation()
    result = train_centralized(ds, "bprmf", 60, embedding_dim=8, batch_size=64, lr=0.2, seed=0,
                               patience=2, log=lambda _: None)
    selection = result["selection"]
    assert selection["stopped_early"] and result["epochs"] < 60
    assert result["epochs"] == result["best_epoch"] + 2


def test_without_validation_the_last_epoch_is_tested():
    result = train_centralized(_clustered_dataset(), "bprmf", 2, embedding_dim=8, seed=0,
                               log=lambda _: None)
    assert result["selection"]["best_step"] is None and result["best_epoch"] == 2
    assert "valid" not in result["curve"][-1]
