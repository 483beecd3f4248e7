"""The shared-edge store: every (user, item) pair users chose to share, with the round it entered.

An immutable value: ``add`` and ``remove`` return a new store, so the server graph
(:func:`common.graph.build_graph` of :meth:`EdgeStore.pairs`) is a pure function of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np




def _keys(user: np.ndarray, item: np.ndarray, num_items: int) -> np.ndarray:
    return user.astype(np.int64) * num_items + item.astype(np.int64)


@dataclass(frozen=True)
class EdgeStore:
    """Unique edges sorted by (user, item); ``round`` is when each entered the graph."""

    num_users: int
    num_items: int
    user: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    item: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    round: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.user)

    def pairs(self) -> np.ndarray:
        return np.stack([self.user, self.item], axis=1) if len(self) else np.zeros((0, 2), np.int64)

    def add(self, user: np.ndarray, item: np.ndarray, server_round: int) -> "EdgeStore":
        """Store with the new edges; an edge already present keeps its original round.

        Inserts into the sorted keys (O(E) per call) instead of re-sorting the store."""
        old = _keys(self.user, self.item, self.num_items)
        query = np.unique(_keys(np.asarray(user), np.asarray(item), self.num_items))
        pos = np.searchsorted(old, query)
        present = np.zeros(len(query), bool) if len(old) == 0 else \
            old[np.minimum(pos, len(old) - 1)] == query
        keys = np.insert(old, pos[~present], query[~present])
        rounds = np.insert(self.round, pos[~present], np.int64(server_round))
        return EdgeStore(self.num_users, self.num_items, keys // self.num_items,
                         keys % self.num_items, rounds.astype(np.int64))

    def remove(self, user: np.ndarray, item: np.ndarray) -> "EdgeStore":
        keep = ~np.isin(_keys(self.user, self.item, self.num_items),
                        _keys(user, item, self.num_items))
        return EdgeStore(self.num_users, self.num_items, self.user[keep], self.item[keep],
                         self.round[keep])

    def _positions(self, user: np.ndarray, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys = _keys(self.user, self.item, self.num_items)
        query = _keys(np.asarray(user), np.asarray(item), self.num_items)
        pos = np.clip(np.searchsorted(keys, query), 0, max(len(keys) - 1, 0))
        found = (keys[pos] == query) if len(keys) else np.zeros(len(query), bool)
        return pos, found

    def contains(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Boolean per queried pair: is it stored?"""
        return self._positions(user, item)[1]

    def rounds_of(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Round each queried (stored) pair entered the graph."""
        pos, found = self._positions(user, item)
        if not found.all():
            raise KeyError("some pairs are not stored")
        return self.round[pos]

    def count_by_user(self, users: np.ndarray) -> np.ndarray:
        """Number of stored edges of each of ``users``."""
        return np.searchsorted(self.user, users, "right") - np.searchsorted(self.user, users, "left")

    def until(self, server_round: int) -> "EdgeStore":
        """The edges stored that had entered by ``server_round`` (a replay's graph)."""
        keep = self.round <= server_round
        return EdgeStore(self.num_users, self.num_items, self.user[keep], self.item[keep],
                         self.round[keep])

    def users(self) -> np.ndarray:
        """Users with at least one shared edge."""
        return np.unique(self.user)
