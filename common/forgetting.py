"""Forgetting metrics: how much a model still "knows" withdrawn interactions.

* :func:`pair_ranks` -- rank of item ``i`` for user ``u`` among all items the user does not
  (still) share, under a model's scores (1 = top).
* :func:`membership_auc` -- an interaction-level membership-inference attack: a logistic
  regression on score features, trained on known members (still-shared pairs) and
  non-members (never-seen pairs), evaluated as the AUC of separating target pairs (the
  withdrawn ones) from fresh non-members. 0.5 = indistinguishable from never-seen.
* :func:`forget_set` -- which shared pairs a forget-set experiment withdraws (random, core or
  edge users, a fraction of the shared pairs).
"""

from __future__ import annotations

import numpy as np
import torch


def pair_ranks(users: torch.Tensor, items: torch.Tensor, pairs: np.ndarray,
               known: np.ndarray) -> np.ndarray:
    """``1 + #{j not in known_u, j != i : s_uj > s_ui}`` for every pair ((m, 2) [user, item]).

    ``users`` (U, d) / ``items`` (I, d) are the model's tables, ``known`` ((k, 2)) the pairs
    the model is entitled to know (excluded from the competition)."""
    ranks = np.zeros(len(pairs), dtype=np.int64)
    for user in np.unique(pairs[:, 0]):
        scores = users[int(user)] @ items.T
        competing = torch.ones(items.shape[0], dtype=torch.bool)
        competing[torch.from_numpy(known[known[:, 0] == user, 1])] = False
        rows = np.nonzero(pairs[:, 0] == user)[0]
        targets = torch.from_numpy(pairs[rows, 1])
        above = (scores[None, :] > scores[targets][:, None]) & competing[None, :]
        above[torch.arange(len(targets)), targets] = False
        ranks[rows] = above.sum(1).numpy() + 1
    return ranks


def score_features(users: torch.Tensor, items: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
    """Per-pair attack features: raw score, score z-scored over the user's items, and the
    score's percentile among the user's items. Shape (m, 3)."""
    scores = users[torch.from_numpy(pairs[:, 0])] @ items.T          # (m, I)
    own = scores[torch.arange(len(pairs)), torch.from_numpy(pairs[:, 1])]
    z = (own - scores.mean(1)) / (scores.std(1) + 1e-8)
    percentile = (scores < own[:, None]).float().mean(1)
    return torch.stack([own, z, percentile], 1).numpy()


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney)."""
    values = np.concatenate([positive, negative])
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    # average ranks over ties
    _, starts, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    avg = starts + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    rank_sum = ranks[: len(positive)].sum()
    return float((rank_sum - len(positive) * (len(positive) + 1) / 2) /
                 (len(positive) * len(negative)))


def _fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 300) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    mean, std = x.mean(0), x.std(0) + 1e-8
    features = torch.from_numpy((x - mean) / std).float()
    weights = torch.zeros(x.shape[1] + 1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=steps)
    labels = torch.from_numpy(y).float()

    def closure():
        optimizer.zero_grad()
        logits = features @ weights[:-1] + weights[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return mean, std, weights.detach()


def membership_auc(users: torch.Tensor, items: torch.Tensor, members: np.ndarray,
                   non_members: np.ndarray, targets: np.ndarray,
                   target_negatives: np.ndarray) -> float:
    """AUC of the attack separating ``targets`` from ``target_negatives`` after training on
    ``members`` (label 1) and ``non_members`` (label 0)."""
    x = np.concatenate([score_features(users, items, members),
                        score_features(users, items, non_members)])
    y = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    mean, std, weights = _fit_logistic(x, y)

    def attack(pairs: np.ndarray) -> np.ndarray:
        feats = torch.from_numpy((score_features(users, items, pairs) - mean) / std).float()
        return (feats @ weights[:-1] + weights[-1]).numpy()

    return auc(attack(targets), attack(target_negatives))


def sample_never_seen(all_pairs: np.ndarray, users: np.ndarray, per_user: int, num_items: int,
                      seed: int) -> np.ndarray:
    """For each of ``users``, ``per_user`` random items they never interacted with."""
    rng = np.random.default_rng(seed)
    seen = set(map(tuple, all_pairs.tolist()))
    out = []
    for user in users.tolist():
        picked = 0
        while picked < per_user:
            item = int(rng.integers(num_items))
            if (user, item) not in seen:
                out.append((user, item))
                picked += 1
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


FORGET_KINDS = ("random", "core", "edge")


def forget_set(shared: np.ndarray, kind: str, fraction: float, seed: int) -> np.ndarray:
    """The ``(m, 2)`` shared pairs withdrawn in a forget-set experiment (CURE4Rec, NeurIPS 2024
    D&B): whole users withdraw everything they share, users taken in order until the pairs
    reach ``fraction`` of ``shared`` (the last user may take it a little over).

    ``kind``: ``random`` (a seeded permutation of the sharing users), ``core`` (most shared
    pairs first: the most active users) or ``edge`` (fewest first: the least active). Ties in
    activity are broken by the seeded permutation, so every kind is deterministic under ``seed``."""
    if kind not in FORGET_KINDS:
        raise ValueError(f"forget-set kind {kind!r}: expected one of {', '.join(FORGET_KINDS)}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"forget-set fraction {fraction}: expected a value in (0, 1]")
    if len(shared) == 0:
        return shared.reshape(0, 2)
    users, degree = np.unique(shared[:, 0], return_counts=True)
    order = np.random.default_rng(seed).permutation(len(users))
    if kind != "random":   # stable sort keeps the seeded order among equally active users
        sign = -1 if kind == "core" else 1
        order = order[np.argsort(sign * degree[order], kind="stable")]
    taken = np.cumsum(degree[order])
    count = int(np.searchsorted(taken, np.ceil(fraction * len(shared)))) + 1
    chosen = users[order[:count]]
    return shared[np.isin(shared[:, 0], chosen)]


def pairs_in(pairs: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Boolean per row of ``pairs`` ((n, 2) [user, item]): is it one of ``subset``'s rows?"""
    def key(p: np.ndarray) -> np.ndarray:
        return p[:, 0].astype(np.int64) << 32 | p[:, 1].astype(np.int64)
    return np.isin(key(pairs.reshape(-1, 2)), key(subset.reshape(-1, 2)))
