"""What the server knows about the nodes: who is online, what each still owes, and which node
speaks for which user.

* ``online``: nodes connected this round; ``seen``: nodes that ever replied to ``train``.
* ``synced``: nodes whose shared sets the server holds in full (no ``query.share`` needed);
  ``unshare_pending``: nodes that flagged pending unshare requests.
* ``answers``: unshare answers persisted but not yet delivered, per node.
* ownership: one relation user -> node (the node that shares for the user); the users of a
  node are derived from it, never stored beside it.

Only ownership is durable (saved with the server state): the rest is rebuilt from the
nodes' next replies after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common.protocol import UnshareAnswer


@dataclass
class NodeRegistry:
    online: set[int] = field(default_factory=set)
    seen: set[int] = field(default_factory=set)
    synced: set[int] = field(default_factory=set)
    unshare_pending: set[int] = field(default_factory=set)
    answers: dict[int, list[UnshareAnswer]] = field(default_factory=dict)
    owner: dict[int, int] = field(default_factory=dict)     # user -> node
    _by_node: dict[int, np.ndarray] | None = field(default=None, repr=False)  # derived cache

    # ------------------------------------------------------------------ per round
    def connect(self, nodes: list[int]) -> None:
        self.online = set(nodes)

    def needs_unshare_query(self, node: int) -> bool:
        """New nodes and nodes that flagged pending requests are asked for them."""
        return node in self.unshare_pending or node not in self.seen

    def needs_share_query(self, node: int) -> bool:
        return node not in self.synced

    def note_train_reply(self, node: int, pending_sharing: bool, pending_unshare: bool) -> None:
        """Nodes with unsynced sharing / pending requests get a query in their next round."""
        self.seen.add(node)
        (self.synced.discard if pending_sharing else self.synced.add)(node)
        (self.unshare_pending.add if pending_unshare else self.unshare_pending.discard)(node)

    def flag_unshare(self, nodes) -> None:
        """Ask ``nodes`` for unshare requests in their next round (as a flag in a train
        reply would; harnesses use it to skip that round trip)."""
        self.unshare_pending.update(nodes)

    # ------------------------------------------------------------------ answers
    def queue_answer(self, node: int, answer: UnshareAnswer) -> None:
        self.answers.setdefault(node, []).append(answer)

    def take_answers(self, node: int) -> tuple[UnshareAnswer, ...]:
        return tuple(self.answers.pop(node, []))

    # ------------------------------------------------------------------ ownership
    def may_act_for(self, node: int, user: int) -> bool:
        """A node may share/unshare for a user it owns or nobody online owns (a restarted
        SuperNode comes back with a new node id and takes its users over)."""
        owner = self.owner.get(user)
        return owner is None or owner == node or owner not in self.online

    def claim(self, node: int, users) -> None:
        for user in np.asarray(users).tolist():
            self.owner[int(user)] = node
        self._by_node = None

    def release(self, users) -> None:
        """Users who share nothing any more belong to no node."""
        for user in np.asarray(users).tolist():
            self.owner.pop(int(user), None)
        self._by_node = None

    def is_owned(self, user: int) -> bool:
        return user in self.owner

    def users_of(self, node: int) -> np.ndarray:
        """Sorted int64 ids of the users ``node`` shares for."""
        if self._by_node is None:
            grouped: dict[int, list[int]] = {}
            for user, owner in self.owner.items():
                grouped.setdefault(owner, []).append(user)
            self._by_node = {n: np.array(sorted(u), np.int64) for n, u in grouped.items()}
        return self._by_node.get(node, np.zeros(0, np.int64))

    # ------------------------------------------------------------------ durability
    def to_dict(self) -> dict:
        return {"owner": dict(self.owner)}

    @classmethod
    def from_dict(cls, saved: dict) -> "NodeRegistry":
        return cls(owner={int(u): int(n) for u, n in saved["owner"].items()})
