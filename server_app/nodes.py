"""What the server knows about the nodes: who is online, what each still owes, and which node
speaks for which user.

* ``online``: nodes connected this round; ``unresponsive``: nodes whose last message got no
  reply (a listed node that does not answer cannot hold on to its users, see
  :meth:`NodeRegistry.may_act_for`).
* ``last_contact``: the last round each node replied to anything (its pending unshare
  requests ride on every reply, so this bounds how long a request can wait: nodes not heard
  from for ``unshare-poll-every`` rounds are polled with ``query.unshare`` if they may hold
  shared data, see :meth:`NodeRegistry.poll_targets`); ``poll_now``:
  nodes to poll this round whatever the period (a temporary refusal is retried at once).
* ``synced``: nodes whose shared sets the server holds in full (no ``query.share`` needed).
* ``answers``: unshare answers persisted but not yet delivered, per node.
* ownership: one relation user -> identity of the node that shares for the user; the users
  of a node are derived from it, never stored beside it. With SuperNode authentication a
  node's identity is its public key (``key:<sha256>``, from the SuperLink's node list): the
  first authenticated claim binds the user to that key for good, so a restarted node (same
  key) keeps its users and no other node can take them. Without authentication the
  identity is the node id (``node:<id>``), which a restarted SuperNode does not keep: its
  users go to the next node that claims them once the old id is gone or silent.

Only ownership is durable (saved with the server state): the rest is rebuilt from the
nodes' next replies after a restart.
"""

from __future__ import annotations

import hashlib
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
    owner: dict[int, str] = field(default_factory=dict)     # user -> node identity
    keys: dict[int, str] = field(default_factory=dict)      # node -> key identity (authenticated)
    _by_owner: dict[str, np.ndarray] | None = field(default=None, repr=False)  # derived cache

    # ------------------------------------------------------------------ per round
    def connect(self, nodes: list[int], public_keys: dict[int, bytes] | None = None) -> None:
        """This round's nodes and, with SuperNode authentication, their public keys."""
        self.online = set(nodes)
        self.keys = {n: key_identity(k) for n, k in (public_keys or {}).items() if k}

    def identity(self, node: int) -> str:
        """Who ``node`` is: its public key when authenticated, else its (volatile) id."""
        return self.keys.get(node) or f"node:{node}"

    def poll_targets(self, nodes: list[int], sampled: list[int], rnd: int, every: int) -> list[int]:
        """Nodes to poll for unshare requests: flagged ones, and those that may hold shared
        data, not sampled and not heard from for ``every`` rounds (sampled nodes' requests
        ride on their replies)."""
        sampled = set(sampled)
        holders = self._possible_holders()
        return [n for n in nodes if n in self.poll_now or
                (n not in sampled and (holders is None or self.identity(n) in holders)
                 and rnd - self.last_contact.get(n, 0) >= every)]

    def _possible_holders(self) -> set[str] | None:
        """Identities of the nodes whose users the server holds edges of; None (every node
        may) while a user's unauthenticated owner is gone or silent: a restarted SuperNode
        comes back under a new id and could be that owner. A node that shares nothing has
        nothing to withdraw, so it is not polled."""
        owners = self._groups().keys()
        ids = [_node_of(o) for o in owners]
        orphaned = any(n is not None and (n not in self.online or n in self.unresponsive)
                       for n in ids)
        return None if orphaned else set(owners)

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
        """A node may share/unshare for a user it owns or nobody owns. A user bound to a key
        stays with it; one bound to a bare node id is taken over once that id is gone or
        failed to answer (a restarted SuperNode comes back with a new id)."""
        owner = self.owner.get(user)
        if owner is None or owner == self.identity(node):
            return True
        return not self.is_bound(user) and (_node_of(owner) not in self.online
                                            or _node_of(owner) in self.unresponsive)

    def is_bound(self, user: int) -> bool:
        """Whether ``user`` belongs to an authenticated node's key (never taken over)."""
        return self.owner.get(user, "").startswith("key:")

    def claim(self, node: int, users) -> None:
        identity = self.identity(node)
        for user in np.asarray(users).tolist():
            self.owner[int(user)] = identity
        self._by_owner = None

    def release(self, users) -> None:
        """Users who share nothing any more belong to no node."""
        for user in np.asarray(users).tolist():
            self.owner.pop(int(user), None)
        self._by_owner = None

    def is_owned(self, user: int) -> bool:
        return user in self.owner

    def users_of(self, node: int) -> np.ndarray:
        """Sorted int64 ids of the users ``node`` shares for."""
        return self._groups().get(self.identity(node), np.zeros(0, np.int64))

    def _groups(self) -> dict[str, np.ndarray]:
        """Owner identity -> its users (derived from ``owner``, cached until it changes)."""
        if self._by_owner is None:
            grouped: dict[str, list[int]] = {}
            for user, owner in self.owner.items():
                grouped.setdefault(owner, []).append(user)
            self._by_owner = {n: np.array(sorted(u), np.int64) for n, u in grouped.items()}
        return self._by_owner

    # ------------------------------------------------------------------ durability
    def to_dict(self) -> dict:
        return {"owner": dict(self.owner)}

    @classmethod
    def from_dict(cls, saved: dict) -> "NodeRegistry":
        """(States saved before identities held bare node ids.)"""
        return cls(owner={int(u): n if isinstance(n, str) else f"node:{int(n)}"
                          for u, n in saved["owner"].items()})


def key_identity(public_key: bytes) -> str:
    """A stable, printable identity for a SuperNode's public key."""
    return "key:" + hashlib.sha256(public_key).hexdigest()[:32]


def _node_of(identity: str) -> int | None:
    """The node id of a ``node:<id>`` identity (None for a key)."""
    return int(identity[5:]) if identity.startswith("node:") else None
