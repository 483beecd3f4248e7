"""What the server knows about the nodes: who is online, what each still owes, and which node
speaks for which user.

* ``online``: nodes connected this round; ``unresponsive``: nodes whose last message got no
  reply (a listed node that does not answer cannot hold on to its users, see
  :meth:`NodeRegistry.may_act_for`).
* ``last_contact``: the last round each node replied to anything (its pending unshare
  requests ride on every reply, so this bounds how long a request can wait: nodes not heard
  from for ``unshare-poll-every`` rounds are polled with ``query.unshare``); ``poll_now``:
  nodes to poll this round whatever the period (a temporary refusal is retried at once).
* ``synced``: nodes whose shared sets the server holds in full (no ``query.share`` needed).
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
    unresponsive: set[int] = field(default_factory=set)
    last_contact: dict[int, int] = field(default_factory=dict)
    poll_now: set[int] = field(default_factory=set)
    synced: set[int] = field(default_factory=set)
    answers: dict[int, list[UnshareAnswer]] = field(default_factory=dict)
    owner: dict[int, int] = field(default_factory=dict)     # user -> node
    _by_node: dict[int, np.ndarray] | None = field(default=None, repr=False)  # derived cache

    # ------------------------------------------------------------------ per round
    def connect(self, nodes: list[int]) -> None:
        self.online = set(nodes)

    def poll_targets(self, nodes: list[int], sampled: list[int], rnd: int, every: int) -> list[int]:
        """Nodes to poll for unshare requests: flagged ones, and those not sampled and not
        heard from for ``every`` rounds (sampled nodes' requests ride on their replies)."""
        sampled = set(sampled)
        return [n for n in nodes if n in self.poll_now or
                (n not in sampled and rnd - self.last_contact.get(n, 0) >= every)]

    def polled(self, nodes) -> None:
        self.poll_now.difference_update(nodes)

    def note_reply(self, node: int, rnd: int) -> None:
        self.last_contact[node] = rnd
        self.unresponsive.discard(node)

    def note_lost(self, node: int) -> None:
        self.unresponsive.add(node)

    def needs_share_query(self, node: int) -> bool:
        return node not in self.synced

    def note_train_reply(self, node: int, pending_sharing: bool) -> None:
        """Nodes with unsynced sharing get a share query in their next round."""
        (self.synced.discard if pending_sharing else self.synced.add)(node)

    def flag_unshare(self, nodes) -> None:
        """Poll ``nodes`` for unshare requests in the next round whatever the period."""
        self.poll_now.update(nodes)

    # ------------------------------------------------------------------ answers
    def queue_answer(self, node: int, answer: UnshareAnswer) -> None:
        self.answers.setdefault(node, []).append(answer)

    def take_answers(self, node: int) -> tuple[UnshareAnswer, ...]:
        return tuple(self.answers.pop(node, []))

    # ------------------------------------------------------------------ ownership
    def may_act_for(self, node: int, user: int) -> bool:
        """A node may share/unshare for a user it owns, or that nobody responsive owns (a
        restarted SuperNode comes back with a new node id and takes its users over, even
        while its old id is still listed, once that id failed to answer)."""
        owner = self.owner.get(user)
        return owner is None or owner == node or owner not in self.online \
            or owner in self.unresponsive

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
