"""Balanced data partitions of training interactions into K shards (RecEraser, §3.2).

Chen, Sun, Zhang, Ding, "Recommendation Unlearning", WWW 2022 (RecEraser). Three balanced
partitions of the training interactions Y built from pre-trained embeddings (p_u for users, q_i
for items), plus SISA's random partition as the reference:

* UBP (user-based, Alg. 1): balanced k-means over user embeddings. K anchor users are drawn at
  random; each iteration computes  d(u, k) = ‖p_u − a_k‖,  assigns users to anchors in
  increasing order of distance with every shard capped at ⌈U/K⌉ users, then re-estimates each
  anchor as the mean of its members, a_k = 1/|S_k| Σ_{u∈S_k} p_u. A user's interactions follow
  the user.
* IBP (item-based): the same over item embeddings q_i (cap ⌈I/K⌉ items).
* InBP (interaction-based, Alg. 2): anchors are (user, item) pairs a_k = (p_{a_k}, q_{a_k});
  d((u, i), k) = ‖p_{a_k} − p_u‖ · ‖q_{a_k} − q_i‖;  capped at ⌈|Y|/K⌉ interactions per shard;
  anchors re-estimated as the mean user and mean item embedding of the shard.
* random (SISA, Bourtoule et al., S&P 2021): a seeded permutation cut into K near-equal parts.

"In increasing order of distance with caps" is the greedy: sort all (point, shard) pairs by
distance, walk the list, give a point to a shard if the point is unassigned and the shard not full.
:func:`capped_greedy_assign` computes exactly that in at most K + 1 vectorised rounds (each round
fills at least one shard), so ML-1M's ~1M interactions take seconds, not a Python loop over |Y|·K.

Everything is numpy; deterministic under ``seed`` (ties broken by point index).
"""

from __future__ import annotations

import math

import numpy as np

from common.sharing import hash_uniform

METHODS = ("ubp", "ibp", "inbp", "random")
HASH_PLACEMENTS = ("user", "random")
_SALT_SHARD = 0x5EED_0005   # (0x5EED_0001..4: common.sharing)


def capped_greedy_assign(distance: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Capped greedy assignment in order of distance.

    Args:
        distance: ``(n, K)`` float, distance of point p to shard k (smaller is closer).
        capacity: ``(K,)`` int, most points shard k may take; ``capacity.sum() >= n``.

    Returns:
        ``(n,)`` int64 shard of every point: the result of walking all (p, k) pairs sorted by
        (distance, p) and taking a pair when p is free and k not full.
    """
    num_points, num_shards = distance.shape
    if int(np.sum(capacity)) < num_points:
        raise ValueError(f"capacity {int(np.sum(capacity))} < {num_points} points")
    shard_of = np.full(num_points, -1, dtype=np.int64)
    remaining = np.asarray(capacity, dtype=np.int64).copy()
    pending = np.arange(num_points)
    while pending.size:
        accepted, best = _greedy_round(distance[pending], remaining)
        shard_of[pending[accepted]] = best[accepted]
        remaining -= np.bincount(best[accepted], minlength=num_shards)
        pending = pending[~accepted]
    return shard_of


def _greedy_round(distance: np.ndarray, remaining: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One round: every pending point proposes its nearest open shard; accept up to the first fill.

    ``distance`` is ``(m, K)`` for the pending points (in point order); returns the ``(m,)`` bool
    accepted mask and the ``(m,)`` proposed shards. The walk is exact until the first shard fills
    at distance τ* (the smallest τ_k, the distance of shard k's ``remaining[k]``-th proposal):
    proposals at or before τ* are accepted, the rest wait for the next round.
    """
    num_points, num_shards = distance.shape
    open_distance = np.where(remaining > 0, distance, np.inf)                 # (m, K)
    best = np.argmin(open_distance, axis=1)                                   # (m,)
    best_distance = open_distance[np.arange(num_points), best]                # (m,)
    order = np.lexsort((np.arange(num_points), best_distance, best))          # by shard, dist, id
    starts = np.searchsorted(best[order], np.arange(num_shards))
    counts = np.bincount(best, minlength=num_shards)
    rank = np.empty(num_points, dtype=np.int64)
    rank[order] = np.arange(num_points) - starts[best[order]]
    fills = counts >= remaining
    fill_at = np.where(fills, best_distance[order][np.minimum(starts + remaining - 1,
                                                               num_points - 1)], np.inf)
    tau = fill_at[remaining > 0].min() if np.any(fills & (remaining > 0)) else np.inf
    accepted = (rank < remaining[best]) & (best_distance <= tau)
    return accepted, best


def _group_mean(values: np.ndarray, group: np.ndarray, num_groups: int,
                previous: np.ndarray) -> np.ndarray:
    """``(K, d)`` mean of ``values`` ``(n, d)`` rows per ``group`` ``(n,)``; empty groups keep
    their ``previous`` row."""
    sums = np.zeros((num_groups, values.shape[1]))
    if values.shape[0] < 50_000:
        np.add.at(sums, group, values)                       # small n: unbuffered add is fine
    else:
        _scatter_sum(sums, group, values)
    counts = np.bincount(group, minlength=num_groups)[:, None]
    return np.where(counts > 0, sums / np.maximum(counts, 1), previous)


def _scatter_sum(out: np.ndarray, group: np.ndarray, values: np.ndarray) -> None:
    """``out[k] += Σ_{group==k} values`` via a stable sort and ``np.add.reduceat`` (fast for big n)."""
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    out[sorted_group[starts]] += np.add.reduceat(values[order], starts, axis=0)


def _pairwise_distance(points: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """``(n, K)`` Euclidean distances ‖x_p − a_k‖ between ``(n, d)`` points and ``(K, d)`` anchors."""
    squared = ((points ** 2).sum(1)[:, None] - 2.0 * points @ anchors.T
               + (anchors ** 2).sum(1)[None, :])
    return np.sqrt(np.maximum(squared, 0.0))


def balanced_kmeans(points: np.ndarray, num_shards: int, iterations: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """UBP / IBP core (RecEraser Alg. 1): balanced k-means, every shard capped at ⌈n/K⌉ points.

    Args:
        points: ``(n, d)`` embeddings (users for UBP, items for IBP).
        num_shards: K.
        iterations: T, assignment + anchor re-estimation rounds (≥ 1).
        rng: draws the K initial anchors among the points.

    Returns:
        ``(n,)`` int64 shard of every point and the ``(K, d)`` final anchors.
    """
    points = np.asarray(points, dtype=np.float64)
    num_points = points.shape[0]
    capacity = np.full(num_shards, math.ceil(num_points / num_shards), dtype=np.int64)
    anchors = points[rng.choice(num_points, size=num_shards, replace=False)]
    shard_of = np.zeros(num_points, dtype=np.int64)
    for _ in range(max(iterations, 1)):
        shard_of = capped_greedy_assign(_pairwise_distance(points, anchors), capacity)
        anchors = _group_mean(points, shard_of, num_shards, anchors)
    return shard_of, anchors


def interaction_kmeans(pairs: np.ndarray, user_emb: np.ndarray, item_emb: np.ndarray,
                       num_shards: int, iterations: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """InBP core (RecEraser Alg. 2): distance ‖p_a − p_u‖·‖q_a − q_i‖, cap ⌈|Y|/K⌉ interactions.

    Args:
        pairs: ``(n, 2)`` int64 ``[user, item]`` training interactions Y.
        user_emb: ``(U, d)`` pre-trained p_u.  item_emb: ``(I, d)`` pre-trained q_i.
        num_shards: K.  iterations: T ≥ 1.  rng: draws the K anchor interactions.

    Returns:
        ``(n,)`` shard per interaction, ``(K, d)`` user-side and ``(K, d)`` item-side anchors.
    """
    user_emb = np.asarray(user_emb, dtype=np.float64)
    item_emb = np.asarray(item_emb, dtype=np.float64)
    users, items = pairs[:, 0], pairs[:, 1]
    capacity = np.full(num_shards, math.ceil(len(pairs) / num_shards), dtype=np.int64)
    seeds = rng.choice(len(pairs), size=num_shards, replace=False)
    user_anchor, item_anchor = user_emb[users[seeds]], item_emb[items[seeds]]
    shard_of = np.zeros(len(pairs), dtype=np.int64)
    for _ in range(max(iterations, 1)):
        distance = (_pairwise_distance(user_emb, user_anchor)[users]
                    * _pairwise_distance(item_emb, item_anchor)[items])          # (n, K)
        shard_of = capped_greedy_assign(distance, capacity)
        user_anchor = _group_mean(user_emb[users], shard_of, num_shards, user_anchor)
        item_anchor = _group_mean(item_emb[items], shard_of, num_shards, item_anchor)
    return shard_of, user_anchor, item_anchor


def random_partition(num_interactions: int, num_shards: int,
                     rng: np.random.Generator) -> np.ndarray:
    """SISA: a seeded permutation of the n interactions cut into K near-equal parts; ``(n,)``."""
    shard_of = np.empty(num_interactions, dtype=np.int64)
    for shard, rows in enumerate(np.array_split(rng.permutation(num_interactions), num_shards)):
        shard_of[rows] = shard
    return shard_of


def hash_shards(pairs: np.ndarray, num_shards: int, seed: int, by: str = "random") -> np.ndarray:
    """``(m,)`` shards of ``(m, 2)`` pairs by a seeded splitmix64 hash, a function of the ids only.

    ``by = "user"``: every interaction of a user in the same shard (a user's withdrawal touches
    one shard); ``"random"``: a hash of the pair (SISA). Nothing here depends on any data, so
    the layout carries no trace of interactions (the data-dependent partitions above do).
    """
    if by not in HASH_PLACEMENTS:
        raise ValueError(f"unknown hash placement {by!r}; expected one of {HASH_PLACEMENTS}")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    keys = (pairs[:, 0],) if by == "user" else (pairs[:, 0], pairs[:, 1])
    shards = np.floor(hash_uniform(seed, _SALT_SHARD, *keys) * num_shards).astype(np.int64)
    return np.minimum(shards, num_shards - 1)


class Partition:
    """A fitted partition: the shard of every training interaction, and how to place new ones.

    Attributes:
        method: one of :data:`METHODS`.
        num_shards: K.
        shard_of: ``(n,)`` int64 shard of each interaction of the pairs it was fitted on.
        user_anchor / item_anchor: ``(K, d)`` anchors (UBP: users only; IBP: items only; InBP:
            both; random: none).
        user_shard / item_shard: ``(U,)`` / ``(I,)`` shard of each user (UBP) / item (IBP),
            −1 for ids seen in no interaction.

    :meth:`assign` places interactions that arrive later (a server's shared-edge store) without
    re-partitioning: the owner's shard for UBP/IBP, the nearest anchor otherwise. It does not
    enforce the caps; re-partition on a schedule to restore balance.
    """

    def __init__(self, method: str, num_shards: int, shard_of: np.ndarray, *, seed: int,
                 user_emb: np.ndarray | None = None, item_emb: np.ndarray | None = None,
                 user_anchor: np.ndarray | None = None, item_anchor: np.ndarray | None = None,
                 user_shard: np.ndarray | None = None, item_shard: np.ndarray | None = None):
        self.method, self.num_shards, self.seed = method, num_shards, seed
        self.shard_of = np.asarray(shard_of, dtype=np.int64)
        self.user_emb, self.item_emb = user_emb, item_emb
        self.user_anchor, self.item_anchor = user_anchor, item_anchor
        self.user_shard, self.item_shard = user_shard, item_shard

    def sizes(self) -> np.ndarray:
        """``(K,)`` number of fitted interactions per shard."""
        return np.bincount(self.shard_of, minlength=self.num_shards)

    def assign(self, pairs: np.ndarray) -> np.ndarray:
        """``(m,)`` shard ids for ``(m, 2)`` new ``[user, item]`` interactions (deterministic)."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        users, items = pairs[:, 0], pairs[:, 1]
        if self.method == "random":
            key = (users * 0x9E3779B1 + items * 0x85EBCA77 + self.seed) % (2**31 - 1)
            return key % self.num_shards
        if self.method == "ubp":
            return self._owner_or_nearest(self.user_shard, users, self.user_emb, self.user_anchor)
        if self.method == "ibp":
            return self._owner_or_nearest(self.item_shard, items, self.item_emb, self.item_anchor)
        distance = (_pairwise_distance(self.user_emb[users], self.user_anchor)
                    * _pairwise_distance(self.item_emb[items], self.item_anchor))
        return np.argmin(distance, axis=1)

    @staticmethod
    def _owner_or_nearest(owner_shard: np.ndarray, ids: np.ndarray, emb: np.ndarray,
                          anchor: np.ndarray) -> np.ndarray:
        """The shard owning each id, or the nearest anchor for ids no shard owns yet."""
        shard = owner_shard[ids].copy()
        new = shard < 0
        if np.any(new):
            shard[new] = np.argmin(_pairwise_distance(emb[ids[new]], anchor), axis=1)
        return shard


def partition_interactions(pairs: np.ndarray, num_users: int, num_items: int, method: str,
                           num_shards: int, *, user_emb: np.ndarray | None = None,
                           item_emb: np.ndarray | None = None, iterations: int = 5,
                           seed: int = 0) -> Partition:
    """Partition ``(n, 2)`` training interactions into K shards with UBP / IBP / InBP / random.

    ``user_emb`` ``(U, d)`` and ``item_emb`` ``(I, d)`` are embeddings pre-trained on ``pairs``
    (not needed for "random"). UBP/IBP balance users/items (⌈U/K⌉, ⌈I/K⌉ per shard) over the ids
    that occur in ``pairs``; InBP and random balance interactions (⌈n/K⌉).
    """
    if method not in METHODS:
        raise ValueError(f"unknown partition {method!r}; expected one of {', '.join(METHODS)}")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    if method == "random":
        return Partition(method, num_shards, random_partition(len(pairs), num_shards, rng),
                         seed=seed)
    if method == "inbp":
        shard_of, user_anchor, item_anchor = interaction_kmeans(
            pairs, user_emb, item_emb, num_shards, iterations, rng)
        return Partition(method, num_shards, shard_of, seed=seed, user_emb=user_emb,
                         item_emb=item_emb, user_anchor=user_anchor, item_anchor=item_anchor)
    column, size, emb = (0, num_users, user_emb) if method == "ubp" else (1, num_items, item_emb)
    present = np.unique(pairs[:, column])
    id_shard, anchor = balanced_kmeans(emb[present], num_shards, iterations, rng)
    owner = np.full(size, -1, dtype=np.int64)
    owner[present] = id_shard
    side = {"user_shard": owner, "user_anchor": anchor, "user_emb": user_emb} if column == 0 \
        else {"item_shard": owner, "item_anchor": anchor, "item_emb": item_emb}
    return Partition(method, num_shards, owner[pairs[:, column]], seed=seed, **side)
