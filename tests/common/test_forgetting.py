import numpy as np
import pytest
import torch

from common.forgetting import auc, forget_set, membership_auc, pair_ranks, pairs_in, sample_never_seen


def test_auc_hand_computed():
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0]), np.array([2.0])) == 0.0
    # pos {1, 3}, neg {2, 3}: pairs (1,2)=0 (1,3)=0 (3,2)=1 (3,3)=0.5 -> 1.5 / 4
    assert auc(np.array([1.0, 3.0]), np.array([2.0, 3.0])) == 0.375


def test_pair_ranks_exclude_known_items():
    users = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[5.0, 0], [4.0, 0], [3.0, 0], [2.0, 0]])
    known = np.array([[0, 0]])                 # item 0 is known: it does not compete
    ranks = pair_ranks(users, items, np.array([[0, 2], [0, 1], [0, 3]]), known)
    assert ranks.tolist() == [2, 1, 3]


def test_membership_attack_separates_members_only_when_the_model_remembers():
    torch.manual_seed(0)
    users, items = torch.randn(20, 8), torch.randn(200, 8)
    scores = users @ items.T
    top = scores.argsort(1, descending=True)
    members = np.array([(u, int(top[u, k])) for u in range(20) for k in range(0, 10)])
    remembered = np.array([(u, int(top[u, k])) for u in range(20) for k in range(10, 15)])
    everything = np.concatenate([members, remembered])
    non = sample_never_seen(everything, np.arange(20), 10, 200, seed=1)
    fresh = sample_never_seen(everything, np.arange(20), 10, 200, seed=2)
    assert membership_auc(users, items, members, non, remembered, fresh) > 0.9
    random_pairs = sample_never_seen(everything, np.arange(20), 5, 200, seed=3)
    assert abs(membership_auc(users, items, members, non, random_pairs, fresh) - 0.5) < 0.15


# forget sets (CURE4Rec's random / core / edge users) ------------------------------------
def _activity_pairs() -> np.ndarray:
    """User u shares u + 1 items (users 0..5: 21 pairs)."""
    return np.array([(u, i) for u in range(6) for i in range(u + 1)], dtype=np.int64)


def test_core_takes_the_most_active_users_until_the_fraction_is_reached():
    shared = _activity_pairs()
    picked = forget_set(shared, "core", 0.4, seed=0)      # 0.4 * 21 = 8.4 -> users 5 (6) + 4 (5)
    assert sorted(set(picked[:, 0].tolist())) == [4, 5]
    assert len(picked) == 11


def test_edge_takes_the_least_active_users_first():
    shared = _activity_pairs()
    picked = forget_set(shared, "edge", 0.25, seed=0)     # 5.25 -> users 0, 1, 2 (1 + 2 + 3 = 6)
    assert sorted(set(picked[:, 0].tolist())) == [0, 1, 2]


def test_forget_sets_withdraw_whole_users_and_only_shared_pairs():
    shared = _activity_pairs()
    for kind in ("random", "core", "edge"):
        picked = forget_set(shared, kind, 0.3, seed=3)
        users = np.unique(picked[:, 0])
        assert len(picked) == int(np.isin(shared[:, 0], users).sum())   # every pair of each user
        assert len(picked) >= 0.3 * len(shared)
        assert {tuple(p) for p in picked.tolist()} <= {tuple(p) for p in shared.tolist()}


def test_random_forget_set_is_seeded():
    shared = np.array([(u, i) for u in range(200) for i in range(3)], dtype=np.int64)
    first = forget_set(shared, "random", 0.1, seed=1)
    assert np.array_equal(first, forget_set(shared, "random", 0.1, seed=1))
    assert not np.array_equal(first, forget_set(shared, "random", 0.1, seed=2))
    assert len(first) == 60                                # 20 whole users of 3 pairs


def test_forget_set_rejects_unknown_kinds_and_fractions():
    with pytest.raises(ValueError, match="forget-set kind 'middle'"):
        forget_set(_activity_pairs(), "middle", 0.1, seed=0)
    with pytest.raises(ValueError, match="forget-set fraction 0"):
        forget_set(_activity_pairs(), "core", 0.0, seed=0)


def test_pairs_in_matches_whole_rows_only():
    pairs = np.array([[1, 2], [2, 1], [3, 4]])
    assert pairs_in(pairs, np.array([[2, 1], [9, 9]])).tolist() == [False, True, False]
    assert pairs_in(pairs, np.zeros((0, 2), np.int64)).tolist() == [False] * 3
