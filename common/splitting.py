"""Interaction arrays: canonical form, dense ids, seeded per-user splits and user partitions.

Arrays are ``(n, 2)`` int64 ``[user, item]`` tables. Splits are decided by seeded hashes, so they
are identical across calls, processes and row orders. numpy only.
"""

from __future__ import annotations

import numpy as np

_EMPTY_PAIRS = np.empty((0, 2), dtype=np.int64)
_MASK64 = (1 << 64) - 1

# --------------------------------------------------------------------------- array helpers


def canonical_pairs(pairs: np.ndarray) -> np.ndarray:
    """Sort ``(n, 2)`` non-negative pairs by (user, item) and drop duplicates."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return _EMPTY_PAIRS.copy()
    width = int(pairs[:, 1].max()) + 1
    if int(pairs[:, 0].max()) < (2**63 - 1) // width and pairs.min() >= 0:
        # One int64 key per pair: a single 1-D sort instead of a two-key lexsort.
        keys = np.sort(pairs[:, 0] * width + pairs[:, 1])
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]  # np.unique is slow on numpy 2.4
        return np.column_stack([keys // width, keys % width])
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    pairs = pairs[order]
    keep = np.ones(len(pairs), dtype=bool)
    keep[1:] = (pairs[1:] != pairs[:-1]).any(axis=1)
    return np.ascontiguousarray(pairs[keep])


def dense_ids(raw_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Map raw ids to 0-based ids in sorted raw-id order; returns (ids, number of distinct ids)."""
    top = int(raw_ids.max())
    if top <= 4 * len(raw_ids) + 1_000_000:
        # Small id range (the MovieLens case): an O(n) lookup table beats np.unique's sort.
        present = np.zeros(top + 1, dtype=bool)
        present[raw_ids] = True
        lookup = np.cumsum(present) - 1
        return lookup[raw_ids], int(lookup[-1]) + 1
    uniq, inverse = np.unique(raw_ids, return_inverse=True)
    return inverse.reshape(-1), len(uniq)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wraps modulo 2**64 by design)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _pair_keys(pairs: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 per (user, item): depends on nothing else, so on no row order."""
    seed_word = np.uint64((seed * 0x9E3779B97F4A7C15) & _MASK64)
    users = pairs[:, 0].astype(np.uint64)
    items = pairs[:, 1].astype(np.uint64)
    return _mix64(_mix64(users ^ seed_word) ^ items)


def _shuffle_within_users(users: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Permutation sorting rows by (user, key); ties keep input order (inputs are canonical)."""
    if len(users) == 0 or users.max() < 2**24:
        # One uint64 sort key (user in the top 24 bits, key's top 40 bits below) beats lexsort.
        composite = (users.astype(np.uint64) << np.uint64(40)) | (keys >> np.uint64(24))
        return np.argsort(composite, kind="stable")
    return np.lexsort((keys, users))


def _split_sizes(counts: np.ndarray, ratio: float) -> np.ndarray:
    """``max(1, round(ratio * n))`` for users with ``n >= 3`` (0 for a ratio of 0), else 0."""
    if ratio == 0:
        return np.zeros_like(counts)
    sizes = np.maximum(1, np.rint(ratio * counts).astype(np.int64))
    return np.where(counts >= 3, sizes, 0)


def split_per_user(pairs: np.ndarray, num_users: int, *, seed: int, valid_ratio: float,
                   test_ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded per-user split of interactions into (train, valid, test).

    A user with ``n >= 3`` interactions gets ``max(1, round(test_ratio * n))`` test and
    ``max(1, round(valid_ratio * n))`` valid interactions (a ratio of 0 gives 0; for extreme ratios
    both are capped so at least one interaction stays in train); smaller users keep everything in train. Which interactions go
    where is decided by a seeded hash of ``(seed, user, item)``: identical across calls and
    processes, independent of row order and of the other users. Duplicates are dropped; each output
    is sorted by (user, item).
    """
    if not (0 <= valid_ratio < 1 and 0 <= test_ratio < 1 and valid_ratio + test_ratio < 1):
        raise ValueError(f"need 0 <= valid_ratio, test_ratio and valid_ratio + test_ratio < 1, "
                         f"got valid_ratio={valid_ratio}, test_ratio={test_ratio}")
    pairs = canonical_pairs(pairs)
    if len(pairs) and (pairs.min() < 0 or pairs[:, 0].max() >= num_users):
        raise ValueError(f"pairs hold ids outside [0, num_users={num_users})")
    users = pairs[:, 0]
    order = _shuffle_within_users(users, _pair_keys(pairs, seed))
    counts = np.bincount(users, minlength=num_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(pairs), dtype=np.int64)
    rank[order] = np.arange(len(pairs)) - starts[users[order]]
    n_test = np.minimum(_split_sizes(counts, test_ratio), np.maximum(counts - 1, 0))
    n_valid = np.minimum(_split_sizes(counts, valid_ratio), np.maximum(counts - n_test - 1, 0))
    in_test = rank < n_test[users]
    in_valid = ~in_test & (rank < (n_test + n_valid)[users])
    # Boolean masks keep the canonical (user, item) order of `pairs`.
    return pairs[~in_test & ~in_valid], pairs[in_valid], pairs[in_test]


def partition_users(num_users: int, partition_id: int, num_partitions: int) -> np.ndarray:
    """Users of one partition: contiguous blocks of ``np.array_split(np.arange(num_users), num_partitions)``."""
    if num_partitions < 1 or not 0 <= partition_id < num_partitions:
        raise ValueError(f"need 0 <= partition_id < num_partitions, "
                         f"got partition_id={partition_id}, num_partitions={num_partitions}")
    size, extra = divmod(num_users, num_partitions)   # the first `extra` blocks get one more
    start = partition_id * size + min(partition_id, extra)
    return np.arange(start, start + size + (partition_id < extra), dtype=np.int64)



def _key_of(pairs: np.ndarray, width: int) -> np.ndarray:
    return pairs[:, 0] * width + pairs[:, 1]


def split_last_out(pairs: np.ndarray, order: np.ndarray, num_users: int, *,
                   valid: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-last-out per user: the latest interaction is test, the one before it valid.

    Args:
        pairs: ``(n, 2)`` int64 ``[user, item]`` (duplicates allowed: a pair's time is its latest).
        order: ``(n,)`` timestamps (or file positions); ties are broken by row order.
        num_users: U (ids in ``[0, U)``).
        valid: also hold out a validation interaction.

    Users with fewer than 3 distinct items keep everything in train (as :func:`split_per_user`).
    Returns canonical ``(train, valid, test)``.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    time_rank = np.empty(len(pairs), dtype=np.int64)                 # time, ties by row order
    time_rank[np.argsort(np.asarray(order, dtype=np.float64), kind="stable")] = np.arange(len(pairs))
    width = int(pairs[:, 1].max(initial=0)) + 1
    rows = np.lexsort((time_rank, _key_of(pairs, width)))             # by pair, then time
    grouped = pairs[rows]
    last_of_pair = np.ones(len(rows), dtype=bool)
    last_of_pair[:-1] = (grouped[1:] != grouped[:-1]).any(axis=1)
    latest, pairs = rows[last_of_pair], grouped[last_of_pair]     # each pair once, at its latest
    by_time = np.lexsort((time_rank[latest], pairs[:, 0]))          # by user, then time
    users = pairs[by_time, 0]
    counts = np.bincount(users, minlength=num_users)
    from_end = np.empty(len(pairs), dtype=np.int64)
    from_end[by_time] = np.cumsum(counts)[users] - 1 - np.arange(len(pairs))  # 0: the latest
    eligible = counts[pairs[:, 0]] >= 3
    in_test = eligible & (from_end == 0)
    in_valid = eligible & (from_end == 1) & valid
    return (canonical_pairs(pairs[~in_test & ~in_valid]), canonical_pairs(pairs[in_valid]),
            canonical_pairs(pairs[in_test]))


def carve_validation(train: np.ndarray, test: np.ndarray, num_users: int, *, seed: int,
                     valid_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """A seeded validation part carved from a given ``train`` split: ``(train', valid)``.

    Per user as :func:`split_per_user` (``test_ratio=0``); a pair that is also in ``test`` (a
    given split should not have any) stays in train, so valid and test are always disjoint.
    """
    new_train, valid, _ = split_per_user(train, num_users, seed=seed, valid_ratio=valid_ratio,
                                         test_ratio=0.0)
    if len(valid) and len(test):
        width = int(max(valid[:, 1].max(), np.max(test[:, 1]))) + 1
        clash = np.isin(_key_of(valid, width), _key_of(np.asarray(test, np.int64), width))
        new_train, valid = canonical_pairs(np.concatenate([new_train, valid[clash]])), valid[~clash]
    return new_train, valid


def k_core(pairs: np.ndarray, k: int) -> np.ndarray:
    """Keep ``(n, 2)`` pairs whose user and item both have at least ``k`` interactions, repeated
    until stable (the k-core of the bipartite graph). ``k <= 1`` keeps everything."""
    pairs = canonical_pairs(pairs)
    while k > 1 and len(pairs):
        user_deg = np.bincount(pairs[:, 0])[pairs[:, 0]]
        item_deg = np.bincount(pairs[:, 1])[pairs[:, 1]]
        keep = (user_deg >= k) & (item_deg >= k)
        if keep.all():
            break
        pairs = pairs[keep]
    return pairs
