"""Personalized sharing policy: which of a user's interactions the server may see.

Every decision is a pure function of ``(seed, user, item)`` through a counter-based
hash, so a node that holds only its own users computes exactly the same shared
sets as a global computation would, whatever the row order or partitioning.

Policies (``sharing-distribution``):

* ``fixed``: every user shares a fraction ``rho`` of their training interactions.
* ``uniform``: user ``u`` draws ``rho_u ~ U(0, 2 rho)`` clipped to ``[0, 1]`` (mean ~ ``rho``).
* ``all-or-nothing``: user ``u`` shares everything with probability ``rho``, else nothing.

An explicit ``sharing-file`` (JSON ``{"<user>": [item, ...]}``) overrides the policy for
the users it lists; they must be a subset of that user's training interactions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SALT_RATIO = 0x5EED_0001
_SALT_ITEM = 0x5EED_0002


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a bijective, well-mixed map of uint64 words."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, salt: int, *keys: np.ndarray) -> np.ndarray:
    """Deterministic U[0, 1) numbers, one per element of the broadcast ``keys``."""
    with np.errstate(over="ignore"):
        state = _mix(np.uint64(seed) * _GOLDEN + np.uint64(salt))
        for key in keys:
            state = _mix(state ^ (np.asarray(key, dtype=np.int64).astype(np.uint64) + _GOLDEN))
    return (state >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def sharing_ratios(users: np.ndarray, ratio: float, distribution: str, seed: int) -> np.ndarray:
    """Per-user sharing ratio ``rho_u`` for ``users`` (shape ``(n,)``, float64)."""
    draw = hash_uniform(seed, _SALT_RATIO, users)
    if distribution == "fixed":
        return np.full(len(users), float(ratio))
    if distribution == "uniform":
        return np.clip(draw * 2.0 * ratio, 0.0, 1.0)
    if distribution == "all-or-nothing":
        return (draw < ratio).astype(np.float64)
    raise ValueError(f"unknown sharing-distribution {distribution!r}")


def select_shared(pairs: np.ndarray, ratios_by_user: dict[int, float] | np.ndarray,
                  seed: int) -> np.ndarray:
    """Boolean mask over ``pairs`` (``(n, 2)`` [user, item]): the interactions to share.

    User ``u`` shares its ``round(rho_u * n_u)`` interactions with the smallest
    hash keys; ``ratios_by_user`` is indexed by user id.
    """
    if len(pairs) == 0:
        return np.zeros(0, dtype=bool)
    user = pairs[:, 0]
    order = _policy_order(pairs, seed)
    sorted_user = user[order]
    starts = np.searchsorted(sorted_user, sorted_user, side="left")
    rank_in_user = np.arange(len(order)) - starts
    uniq, counts = np.unique(user, return_counts=True)  # sorted, aligned with sorted_user
    ratio = np.asarray([ratios_by_user[int(u)] for u in uniq], dtype=np.float64)
    quota_sorted = np.repeat(np.rint(ratio * counts).astype(np.int64), counts)
    mask = np.zeros(len(pairs), dtype=bool)
    mask[order] = rank_in_user < quota_sorted
    return mask


def _policy_order(pairs: np.ndarray, seed: int) -> np.ndarray:
    """Row order of ``pairs`` by (user, hash key): a ratio ρ shares a user's first ρ·n rows."""
    keys = hash_uniform(seed, _SALT_ITEM, pairs[:, 0], pairs[:, 1])
    return np.lexsort((keys, pairs[:, 0]))


def policy_order(pairs: np.ndarray, seed: int) -> np.ndarray:
    """``pairs`` ((n, 2) [user, item]) sorted by user, then in the order in which a growing
    sharing ratio shares them (what a user's ``set-ratio`` follows)."""
    return pairs[_policy_order(pairs, seed)] if len(pairs) else pairs


def load_sharing_file(path: str | Path) -> dict[int, np.ndarray]:
    """Explicit share lists ``{user: items}``; errors name the file and the bad entry."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"sharing-file {path}: cannot read JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"sharing-file {path}: expected an object {{user: [items]}}")
    explicit = {}
    for key, items in raw.items():
        if not str(key).isdigit() or not isinstance(items, list) or \
                not all(isinstance(i, int) and i >= 0 for i in items):
            raise ValueError(f"sharing-file {path}: bad entry for user {key!r}")
        explicit[int(key)] = np.unique(np.asarray(items, dtype=np.int64))
    return explicit


def shared_pairs(train: np.ndarray, ratio: float, distribution: str, seed: int,
                 explicit: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """The ``(m, 2)`` [user, item] pairs that the users in ``train`` share."""
    users = np.unique(train[:, 0]) if len(train) else np.zeros(0, dtype=np.int64)
    ratios = dict(zip(users.tolist(), sharing_ratios(users, ratio, distribution, seed).tolist()))
    mask = select_shared(train, ratios, seed)
    for user, items in (explicit or {}).items():
        rows = train[:, 0] == user
        if not rows.any():
            continue  # a user hosted on another node
        missing = np.setdiff1d(items, train[rows, 1])
        if len(missing):
            raise ValueError(f"sharing-file: user {user} lists items {missing[:5].tolist()} "
                             "that are not among their training interactions")
        mask[rows] = np.isin(train[rows, 1], items)
    return train[mask]


_SALT_WITHDRAW_USER = 0x5EED_0003
_SALT_WITHDRAW_ITEM = 0x5EED_0004


def scheduled_withdrawals(shared: np.ndarray, user_fraction: float, item_fraction: float,
                          seed: int) -> np.ndarray:
    """The ``(m, 2)`` shared pairs withdrawn by a scheduled (experimental) unshare.

    A sharing user withdraws with probability ``user_fraction`` (hash of ``(seed, user)``);
    a withdrawing user withdraws ``round(item_fraction * |S_u|)`` of their shared pairs."""
    if len(shared) == 0:
        return shared
    users = np.unique(shared[:, 0])
    chosen = users[hash_uniform(seed, _SALT_WITHDRAW_USER, users) < user_fraction]
    candidates = shared[np.isin(shared[:, 0], chosen)]
    ratios = {int(u): item_fraction for u in chosen}
    return candidates[select_shared(candidates, ratios, seed ^ _SALT_WITHDRAW_ITEM)]
