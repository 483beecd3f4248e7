"""RecEraser balanced partitions: exact capped greedy, caps, determinism, and that each balanced
partition groups similar users / items / interactions more tightly than a random one."""

import math

import numpy as np
import pytest

from common.receraser.partition import (METHODS, capped_greedy_assign, partition_interactions)

NUM_USERS, NUM_ITEMS, NUM_SHARDS, DIM = 120, 90, 4, 8


def _brute_force_greedy(distance, capacity):
    """The reference walk: all (point, shard) pairs by (distance, point), take if free and open."""
    shard_of, remaining = np.full(distance.shape[0], -1), capacity.copy()
    for _, point, shard in sorted((distance[p, k], p, k) for p in range(distance.shape[0])
                                  for k in range(distance.shape[1])):
        if shard_of[point] < 0 and remaining[shard] > 0:
            shard_of[point], remaining[shard] = shard, remaining[shard] - 1
    return shard_of


def _clustered(seed=0):
    """Users and items drawn around 4 well-separated centres; each user likes items of its centre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(4, DIM))
    user_group, item_group = rng.integers(0, 4, NUM_USERS), rng.integers(0, 4, NUM_ITEMS)
    user_emb = centres[user_group] + rng.normal(size=(NUM_USERS, DIM))
    item_emb = centres[item_group] + rng.normal(size=(NUM_ITEMS, DIM))
    pairs = [(u, i) for u in range(NUM_USERS) for i in range(NUM_ITEMS)
             if item_group[i] == user_group[u] and rng.random() < 0.5]
    return np.array(pairs, dtype=np.int64), user_emb, item_emb


def test_capped_greedy_matches_the_sequential_walk():
    rng = np.random.default_rng(1)
    for _ in range(100):
        num_points, num_shards = int(rng.integers(1, 30)), int(rng.integers(1, 6))
        distance = rng.random((num_points, num_shards))
        distance[rng.random(distance.shape) < 0.2] = 0.5            # ties
        capacity = np.full(num_shards, math.ceil(num_points / num_shards)) \
            + rng.integers(0, 2, num_shards)
        np.testing.assert_array_equal(capped_greedy_assign(distance, capacity),
                                      _brute_force_greedy(distance, capacity))


@pytest.mark.parametrize("method", METHODS)
def test_no_shard_above_its_cap_and_deterministic(method):
    pairs, user_emb, item_emb = _clustered()
    fit = lambda seed: partition_interactions(pairs, NUM_USERS, NUM_ITEMS, method, NUM_SHARDS,
                                              user_emb=user_emb, item_emb=item_emb, seed=seed)
    part = fit(0)
    assert part.shard_of.shape == (len(pairs),) and part.shard_of.min() >= 0
    assert part.shard_of.max() < NUM_SHARDS
    if method in ("ubp", "ibp"):
        column = 0 if method == "ubp" else 1
        ids = np.unique(pairs[:, column])
        owners = {(int(pair[column]), int(shard)) for pair, shard in zip(pairs, part.shard_of)}
        assert len(owners) == len(ids)                             # one shard per user / item
        per_shard = np.bincount([shard for _, shard in owners], minlength=NUM_SHARDS)
        assert per_shard.max() <= math.ceil(len(ids) / NUM_SHARDS)
    else:
        assert part.sizes().max() <= math.ceil(len(pairs) / NUM_SHARDS)
    np.testing.assert_array_equal(fit(0).shard_of, part.shard_of)
    assert not np.array_equal(fit(1).shard_of, part.shard_of)


def _spread(emb, group):
    """Mean distance of each row to the mean of its group."""
    means = np.stack([emb[group == g].mean(0) for g in np.unique(group)])
    return np.linalg.norm(emb - means[np.searchsorted(np.unique(group), group)], axis=1)


@pytest.mark.parametrize("method", ["ubp", "ibp", "inbp"])
def test_balanced_partition_is_tighter_than_random(method):
    pairs, user_emb, item_emb = _clustered()
    part = partition_interactions(pairs, NUM_USERS, NUM_ITEMS, method, NUM_SHARDS,
                                  user_emb=user_emb, item_emb=item_emb, seed=0)
    shuffled = np.random.default_rng(0).permutation(part.shard_of)  # same sizes, random members
    user_vec, item_vec = user_emb[pairs[:, 0]], item_emb[pairs[:, 1]]

    def cost(shard_of):  # InBP's own criterion ‖p − p̄_k‖·‖q − q̄_k‖ (UBP/IBP: one factor)
        user_part, item_part = _spread(user_vec, shard_of), _spread(item_vec, shard_of)
        return {"ubp": user_part, "ibp": item_part, "inbp": user_part * item_part}[method].mean()

    assert cost(part.shard_of) < 0.5 * cost(shuffled)


@pytest.mark.parametrize("method", METHODS)
def test_assign_places_new_edges_deterministically(method):
    pairs, user_emb, item_emb = _clustered()
    part = partition_interactions(pairs, NUM_USERS, NUM_ITEMS, method, NUM_SHARDS,
                                  user_emb=user_emb, item_emb=item_emb, seed=0)
    fresh = np.array([[0, 1], [5, 7], [NUM_USERS - 1, NUM_ITEMS - 1]])
    shards = part.assign(fresh)
    assert shards.shape == (3,) and shards.min() >= 0 and shards.max() < NUM_SHARDS
    np.testing.assert_array_equal(part.assign(fresh), shards)
    if method in ("ubp", "ibp"):                   # a known user / item keeps its shard
        np.testing.assert_array_equal(part.assign(pairs[:20]), part.shard_of[:20])
