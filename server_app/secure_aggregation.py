"""The server's side of one round of secure aggregation (common/secagg.py has the protocol).

:class:`SecureRound` holds what the server learns during a round's ``query.secagg`` stages
and ``train``, stage by stage: a configure step (the request per node) and an aggregate step
(the replies). What it keeps is public by design: public keys, ciphertexts it cannot open,
masked vectors, and the shares the nodes reveal for the unmasking. Its result is the sum of
the survivors' encoded updates, decoded to per-row weighted FedAvg sums.

Who takes part: the round's sampled nodes that sent keys, then those that sent their
shares (the masking neighbours of each are fixed then); the nodes that then send a masked
vector are the survivors, the others of the shares stage are dropped (their pairwise masks
are removed with their revealed keys). A node refused at any stage drops out of the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from common import secagg
from common.protocol_secagg import SecAggInbox, SecAggReply, SecAggRequest
from common.secagg import SecAggError, SecAggParams
from server_app.validation import ReplyError


@dataclass
class SecureRound:
    """One round: ``nodes`` sampled, ``neighbours`` per node, ``threshold`` as a fraction of
    each node's share holders, values clipped to ``clip``."""

    rnd: int
    nodes: list[int]
    neighbours: int
    threshold_fraction: float
    clip: float
    seed: int
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)    # node -> (share, mask)
    announced: set[bytes] = field(default_factory=set)                    # every key in ``keys``
    ring: dict[int, list[int]] = field(default_factory=dict)
    inbox: dict[int, dict[int, bytes]] = field(default_factory=dict)      # dst -> src -> ciphertext
    sharers: list[int] = field(default_factory=list)
    total: np.ndarray | None = None
    survivors: list[int] = field(default_factory=list)
    revealed: dict[int, dict[int, bytes]] = field(default_factory=dict)
    examples: dict[int, int] = field(default_factory=dict)   # survivor -> its num-examples
    most_counts: dict[int, int] = field(default_factory=dict)   # survivor -> its largest row count

    @property
    def threshold(self) -> int:
        """Shares needed per secret: a fraction of the k + 1 holders, at least 2."""
        holders = min(self.neighbours, max(len(self.nodes) - 1, 1)) + 1
        return max(2, math.ceil(self.threshold_fraction * holders))

    @property
    def params(self) -> SecAggParams:
        return SecAggParams(len(self.nodes), self.threshold, self.clip)

    # ------------------------------------------------------------ stage keys
    def configure_keys(self) -> dict[int, SecAggRequest]:
        return {n: SecAggRequest("keys", self.rnd, self.threshold) for n in self.nodes}

    def aggregate_keys(self, node: int, reply: SecAggReply) -> None:
        """A node's two public keys; refused when they repeat keys already announced (its
        neighbours would refuse to share with a duplicate, and leave the round)."""
        if reply.blobs[0] == reply.blobs[1] or self.announced & set(reply.blobs):
            raise ReplyError("secagg public keys that repeat announced keys")
        if any(len(key) != 32 for key in reply.blobs):
            raise ReplyError("secagg public keys must be 32 bytes (X25519)")
        self.keys[node] = (reply.blobs[0], reply.blobs[1])
        self.announced |= set(reply.blobs)

    # ------------------------------------------------------------ stage shares
    def configure_shares(self) -> dict[int, SecAggRequest]:
        """Each node with keys gets its ring neighbours (among those) and their keys."""
        self.ring = secagg.neighbour_ring(sorted(self.keys), self.neighbours, self.seed)
        return {n: SecAggRequest("shares", self.rnd, self.threshold, np.array(peers, np.uint64),
                                 tuple(k for p in peers for k in self.keys[p]))
                for n, peers in self.ring.items()}

    def aggregate_shares(self, node: int, reply: SecAggReply) -> None:
        expected = set(self.ring.get(node, ()))
        sent = [int(v) for v in reply.nodes]
        if set(sent) != expected or len(sent) != len(expected):
            raise ReplyError(f"secagg shares for {sorted(set(sent))[:5]}, expected the node's "
                             f"{len(expected)} neighbours")
        for dst, ciphertext in zip(sent, reply.blobs):
            self.inbox.setdefault(dst, {})[node] = ciphertext
        self.sharers.append(node)

    def live(self, node: int) -> list[int]:
        """The neighbours ``node`` masks with: those whose shares reached it."""
        return sorted(v for v in self.ring.get(node, ()) if v in self.sharers)

    def train_inbox(self, node: int) -> SecAggInbox:
        sources = self.live(node)
        return SecAggInbox(len(self.nodes), self.threshold, self.clip,
                           np.array(sources, np.uint64),
                           tuple(self.inbox.get(node, {})[s] for s in sources))

    # ------------------------------------------------------------ train (masked vectors)
    def receive_masked(self, node: int, masked: np.ndarray | None, length: int,
                       num_examples: int, most_count: int) -> None:
        if node not in self.sharers:
            raise ReplyError("a masked vector from a node that shared no secrets this round")
        if masked is None or masked.shape != (length,):
            raise ReplyError(f"masked vector of shape {None if masked is None else masked.shape}, "
                             f"expected ({length},)")
        self.total = masked.copy() if self.total is None else self.total + masked
        self.survivors.append(node)
        self.examples[node] = num_examples
        self.most_counts[node] = most_count

    @property
    def dropped(self) -> list[int]:
        return sorted(set(self.sharers) - set(self.survivors))

    # ------------------------------------------------------------ stage unmask
    def configure_unmask(self) -> dict[int, SecAggRequest]:
        if self.total is None:
            return {}
        survivors, dropped = np.array(sorted(self.survivors), np.uint64), np.array(self.dropped, np.uint64)
        return {n: SecAggRequest("unmask", self.rnd, self.threshold, survivors=survivors,
                                 dropped=dropped) for n in sorted(self.survivors)}

    def aggregate_unmask(self, node: int, reply: SecAggReply) -> None:
        self.revealed[node] = {int(v): share for v, share in zip(reply.nodes, reply.blobs)}

    def result(self, num_items: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """``(I, d)`` sum of count-weighted row changes and ``(I,)`` sum of counts over the
        survivors; :class:`SecAggError` when too few shares came back to unmask."""
        if self.total is None:
            raise SecAggError("no masked vector arrived")
        mask_public = {n: keys[1] for n, keys in self.keys.items()}
        total = secagg.unmask(self.total, sorted(self.survivors), self.dropped, self.revealed,
                              {n: self.live(n) for n in self.sharers}, mask_public, self.threshold)
        secagg.check_sum(total, num_items, dim, len(self.survivors), self.params,
                         sum(self.most_counts.values()))
        return secagg.decode(total, num_items, dim, len(self.survivors), self.params)
