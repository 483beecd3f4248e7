"""Tests for common.metrics: hand-computed Recall/NDCG, masking, skipped rows, PyG agreement.

PyG's definitions (torch_geometric 2.8.1, ``torch_geometric/metrics/link_pred.py``), read from
the source:

* ``LinkPredRecall(k)``: per example ``hits in pred_index_mat[:, :k] / label_count`` where
  ``label_count`` is the number of ground-truth pairs of the row -> the denominator is |T_u|
  (not min(|T_u|, k)), as ours.
* ``LinkPredNDCG(k)`` (unweighted): DCG = Σ_r rel_r / log2(r + 1) over the first k predictions,
  IDCG = Σ_{r=1..min(label_count, k)} 1 / log2(r + 1) (``idcg[label_count.clamp(max=k)]``) ->
  as ours.
* Both average over examples with ``label_count > 0`` only (``total += (label_count > 0).sum()``)
  -> as ours (rows without truth are skipped).
* They take the top-k *indices* (``pred_index_mat``), not scores: ranking / masking / tie
  breaking are the caller's; we give them our ``torch.topk`` of the masked scores.

Where they differ: PyG counts *duplicate* ground-truth pairs in ``label_count`` (and both copies
as relevant), while we use set semantics (a duplicate counts once). The comparison therefore uses
duplicate-free truth; ``test_duplicate_truth_pairs_count_once`` pins our behaviour.
"""

import pytest
import torch

from common.metrics import (KS, add_sums, evaluate_ranking, evaluate_split, finalize, mask_scores,
                            ranking_metric_sums, split_pairs)

# Hand-made example, ks = (1, 3, 5), 6 items.
#   row 0: ranking 0,1,2,3,4,5; truth {1, 4} at ranks 2 and 5.
#   row 1: ranking 5,4,3,2,1,0; truth {5} at rank 1.
#   row 2: no truth -> skipped.
#   row 3: items 0, 1 masked (training) -> ranking 5,4,3,2; truth {2} at rank 4.
SCORES = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                       [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                       [0.3, 0.1, 0.2, 0.6, 0.5, 0.4],
                       [1.0, 0.9, 0.1, 0.2, 0.3, 0.4]])
TRAIN_ROW, TRAIN_ITEM = torch.tensor([3, 3]), torch.tensor([0, 1])
TRUTH_ROW, TRUTH_ITEM = torch.tensor([0, 0, 1, 3]), torch.tensor([1, 4, 5, 2])
# 1/log2(3) = 0.6309297535714575, 1/log2(5) = 0.43067655807339306, 1/log2(6) = 0.38685280723454163
EXPECTED_SUMS = {
    "recall@1": 1.0,                 # 0 + 1 + 0
    "ndcg@1": 1.0,                   # 0 + 1 + 0
    "recall@3": 1.5,                 # 1/2 + 1 + 0
    "ndcg@3": 1.3868528072345416,    # (1/log2 3)/(1 + 1/log2 3) + 1 + 0
    "recall@5": 3.0,                 # 1 + 1 + 1
    "ndcg@5": 2.0547270780772307,    # (1/log2 3 + 1/log2 6)/(1 + 1/log2 3) + 1 + 1/log2 5
    "num-users": 3.0,
}


def test_hand_computed_sums():
    masked = mask_scores(SCORES, TRAIN_ROW, TRAIN_ITEM)
    sums = ranking_metric_sums(masked, TRUTH_ROW, TRUTH_ITEM, ks=(1, 3, 5))
    assert sums.keys() == EXPECTED_SUMS.keys()
    for key, value in EXPECTED_SUMS.items():
        assert sums[key] == pytest.approx(value, rel=1e-9), key


def test_default_keys_and_k_beyond_item_count():
    masked = mask_scores(SCORES, TRAIN_ROW, TRAIN_ITEM)
    sums = ranking_metric_sums(masked, TRUTH_ROW, TRUTH_ITEM)
    assert list(sums) == ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@50",
                          "ndcg@50", "num-users"]
    # every truth item is within the 6 ranked items: recall 1 for each of the 3 rows
    assert sums["recall@10"] == pytest.approx(3.0)
    assert sums["ndcg@50"] == pytest.approx(EXPECTED_SUMS["ndcg@5"])


def test_mask_scores_copies_and_excludes_training_items():
    masked = mask_scores(SCORES, TRAIN_ROW, TRAIN_ITEM)
    assert torch.isneginf(masked[3, :2]).all()
    assert not torch.isinf(SCORES).any()                  # input untouched
    assert torch.equal(masked[:3], SCORES[:3])
    # unmasked, row 3's two top items are 0 and 1; the truth item 2 is then at rank 6 > 5
    unmasked = ranking_metric_sums(SCORES, TRUTH_ROW, TRUTH_ITEM, ks=(5,))
    assert unmasked["recall@5"] == pytest.approx(2.0)


def test_rows_without_truth_are_skipped():
    sums = ranking_metric_sums(SCORES, torch.tensor([1]), torch.tensor([5]), ks=(1,))
    assert sums == {"recall@1": 1.0, "ndcg@1": 1.0, "num-users": 1.0}
    empty = ranking_metric_sums(SCORES, torch.empty(0, dtype=torch.long),
                                torch.empty(0, dtype=torch.long), ks=(1,))
    assert empty == {"recall@1": 0.0, "ndcg@1": 0.0, "num-users": 0.0}


def test_duplicate_truth_pairs_count_once():
    once = ranking_metric_sums(SCORES, TRUTH_ROW, TRUTH_ITEM, ks=(3,))
    twice = ranking_metric_sums(SCORES, torch.cat([TRUTH_ROW, TRUTH_ROW[:1]]),
                                torch.cat([TRUTH_ITEM, TRUTH_ITEM[:1]]), ks=(3,))
    assert once == twice


def test_out_of_range_truth_raises():
    with pytest.raises(ValueError):
        ranking_metric_sums(SCORES, torch.tensor([4]), torch.tensor([0]))
    with pytest.raises(ValueError):
        ranking_metric_sums(SCORES, torch.tensor([0]), torch.tensor([6]))


def test_finalize_divides_by_num_users():
    means = finalize(EXPECTED_SUMS)
    assert means["recall@3"] == pytest.approx(0.5)
    assert means["ndcg@5"] == pytest.approx(2.0547270780772307 / 3)
    assert means["num-users"] == 3.0
    assert finalize({"recall@10": 0.0, "num-users": 0.0}) == {"recall@10": 0.0, "num-users": 0.0}


def test_sums_over_row_blocks_add_up():
    masked, truth_row, truth_item = _random_case(7)
    whole = ranking_metric_sums(masked, truth_row, truth_item)
    top, bottom = truth_row < 40, truth_row >= 40
    parts = add_sums(ranking_metric_sums(masked[:40], truth_row[top], truth_item[top]),
                     ranking_metric_sums(masked[40:], truth_row[bottom] - 40, truth_item[bottom]))
    assert parts.keys() == whole.keys()
    for key in whole:
        assert parts[key] == pytest.approx(whole[key], rel=1e-12)


def _random_case(seed: int, num_rows: int = 64, num_items: int = 120):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(num_rows, num_items, generator=generator)
    train = torch.rand(num_rows, num_items, generator=generator) < 0.2
    truth_prob = torch.rand(num_rows, 1, generator=generator) * 0.6    # 0..60 % -> up to >50 items
    truth = (torch.rand(num_rows, num_items, generator=generator) < truth_prob) & ~train
    truth[:5] = False                                                 # some rows without truth
    train_row, train_item = train.nonzero(as_tuple=True)
    truth_row, truth_item = truth.nonzero(as_tuple=True)               # duplicate-free
    return mask_scores(scores, train_row, train_item), truth_row, truth_item


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_pyg_link_pred_metrics(seed):
    from torch_geometric.metrics import LinkPredNDCG, LinkPredRecall

    masked, truth_row, truth_item = _random_case(seed)
    ours = finalize(ranking_metric_sums(masked, truth_row, truth_item, KS))
    assert torch.bincount(truth_row).max() > max(KS)       # exercises IDCG's min(|T_u|, k)
    label_index = torch.stack([truth_row, truth_item])
    for k in KS:
        top_items = torch.topk(masked, k, dim=1).indices
        recall, ndcg = LinkPredRecall(k), LinkPredNDCG(k)
        # two update() calls: PyG accumulates sums like our federated reporting
        for rows in (slice(0, 30), slice(30, None)):
            part = (truth_row >= rows.start) & (truth_row < (rows.stop or masked.shape[0]))
            shifted = label_index[:, part] - torch.tensor([[rows.start], [0]])
            recall.update(top_items[rows], shifted)
            ndcg.update(top_items[rows], shifted)
        assert ours[f"recall@{k}"] == pytest.approx(float(recall.compute()), rel=1e-5)
        assert ours[f"ndcg@{k}"] == pytest.approx(float(ndcg.compute()), rel=1e-5)
    assert ours["num-users"] == float(truth_row.unique().numel())


# --------------------------------------------------------------------------- the one evaluator
# Identity item vectors: user u's score of item i is USER_VECS[u, i].
#   user 0: ranking 0..5; train {0}, valid {1}, test {2, 5}
#     test  (mask 0, 1): ranking 2,3,4,5 -> test items at ranks 1 and 4
#     valid (mask 0):    ranking 1,2,... -> valid item at rank 1
#   user 1: ranking 5..0; train {5}, no valid, test {4} at rank 1 (skipped for valid)
#   user 2: train {3}, valid {0}, no test (skipped for test);
#     valid (mask 3): ranking 4,5,0,2,1 -> valid item at rank 3
USER_VECS = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                          [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                          [0.3, 0.1, 0.2, 0.6, 0.5, 0.4]])
ITEM_VECS = torch.eye(6)
TRAIN = torch.tensor([[0, 0], [1, 5], [2, 3]])
VALID = torch.tensor([[0, 1], [2, 0]])
TEST = torch.tensor([[0, 2], [0, 5], [1, 4]])
EXPECTED_TEST = {
    "recall@1": 1.5,                   # 1/2 + 1
    "ndcg@1": 2.0,                     # 1 + 1
    "recall@3": 1.5,                   # 1/2 + 1
    "ndcg@3": 1.6131471927654584,      # 1/(1 + 1/log2 3) + 1
    "recall@5": 2.0,                   # 1 + 1
    "ndcg@5": 1.8772153153380493,      # (1 + 1/log2 5)/(1 + 1/log2 3) + 1
    "num-users": 2.0,
}
EXPECTED_VALID = {"recall@1": 1.0, "ndcg@1": 1.0,     # user 0 hit at rank 1, user 2 at rank 3
                  "recall@3": 2.0, "ndcg@3": 1.5,     # 1 + 1/log2 4
                  "recall@5": 2.0, "ndcg@5": 1.5, "num-users": 2.0}


@pytest.mark.parametrize("split,expected", [("test", EXPECTED_TEST), ("valid", EXPECTED_VALID)])
@pytest.mark.parametrize("user_batch", [1, 2, 1024])
def test_evaluate_split_hand_computed(split, expected, user_batch):
    sums = evaluate_split(USER_VECS, ITEM_VECS, TRAIN, VALID, TEST, split, ks=(1, 3, 5),
                          user_batch=user_batch)
    assert sums.keys() == expected.keys()
    for key, value in expected.items():
        assert sums[key] == pytest.approx(value, rel=1e-12), (split, key)


def test_test_split_masks_validation_items():
    """Masking only training items ranks user 0's validation item 1 first: lower test metrics."""
    train_only = evaluate_ranking(USER_VECS, ITEM_VECS, TRAIN, TEST, ks=(1, 3, 5))
    assert train_only["ndcg@1"] == pytest.approx(1.0)          # user 0 misses at rank 1
    assert EXPECTED_TEST["ndcg@1"] == 2.0
    known, truth = split_pairs("test", TRAIN.numpy(), VALID.numpy(), TEST.numpy())
    assert sorted(map(tuple, known.tolist())) == sorted(map(tuple, torch.cat([TRAIN, VALID]).tolist()))
    assert torch.equal(truth, TEST)
    known, truth = split_pairs("valid", TRAIN, VALID, TEST)
    assert torch.equal(known, TRAIN) and torch.equal(truth, VALID)
    with pytest.raises(ValueError, match="unknown split 'train'"):
        split_pairs("train", TRAIN, VALID, TEST)


def test_evaluate_ranking_matches_direct_metrics_and_checks_ids():
    generator = torch.Generator().manual_seed(4)
    users, items = torch.randn(64, 16, generator=generator), torch.randn(120, 16, generator=generator)
    known = torch.nonzero(torch.rand(64, 120, generator=generator) < 0.2)
    truth = torch.nonzero(torch.rand(64, 120, generator=generator) < 0.1)
    truth = truth[truth[:, 0] >= 3]                                    # rows 0..2 have no truth
    direct = ranking_metric_sums(mask_scores(users @ items.T, known[:, 0], known[:, 1]),
                                 truth[:, 0], truth[:, 1])
    ours = evaluate_ranking(users, items, known[torch.randperm(len(known), generator=generator)],
                            truth, user_batch=9)
    assert ours.keys() == direct.keys() and ours["num-users"] == 61
    for key in direct:
        assert ours[key] == pytest.approx(direct[key], rel=1e-12), key
    with pytest.raises(ValueError, match="truth pairs outside"):
        evaluate_ranking(users, items, known, torch.tensor([[64, 0]]))
    with pytest.raises(ValueError, match="known pairs outside"):
        evaluate_ranking(users, items, torch.tensor([[0, 120]]), torch.tensor([[0, 0]]))
