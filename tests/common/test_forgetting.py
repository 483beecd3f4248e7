import numpy as np
import torch

from common.forgetting import auc, membership_auc, pair_ranks, sample_never_seen


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
