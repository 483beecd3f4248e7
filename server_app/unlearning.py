"""Contrastive unlearning from a few embedding snapshots (docs/method.md §4), and storage accounting.

When shared edges ``R`` are withdrawn, the *affected nodes* ``A`` are the users and items of
``R`` and their L-hop neighbourhood in the old graph. For ``n in A`` and a few rounds the
server adds

    L_unlearn = InfoNCE( h_n(Z, G_new),  p_n,  {o_m : m in batch};  tau )

to its loss, where ``p = LightGCN(Z_snapshot, G_new)`` propagates the last snapshot taken
*before* the withdrawn data entered the graph over the new graph (the positive: a state
untouched by ``R``), and ``o = LightGCN(Z_now, G_old)`` is the current representation on the
old graph (the negatives: what ``R`` induced). BPR on the remaining shared data keeps utility.
Only node ids and embeddings are kept for this; the withdrawn pairs themselves are not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from common.graph import Graph
from common.losses import info_nce
from common.models import lightgcn_propagate

log = logging.getLogger("flwr.fedshare")
NEIGHBOUR_WEIGHT = 0.05  # pull on affected nodes that lost no edge themselves
UNLEARN_BATCH = 1024     # anchors per unlearning step (InfoNCE cost grows with its square)


@dataclass(frozen=True)
class UnlearningTask:
    nodes: torch.Tensor      # (a,) affected node ids (users 0..U-1, items U..U+I-1)
    positive: torch.Tensor   # (a, d) snapshot propagated on the new graph
    negative: torch.Tensor   # (a, d) current tables propagated on the old graph
    weight: torch.Tensor     # (a,) fraction of each node's old edges that were withdrawn
    rounds_left: int
    snapshot_round: int


def affected_nodes(graph: Graph, seed_nodes: torch.Tensor, hops: int) -> torch.Tensor:
    """Sorted ids of ``seed_nodes`` and every node within ``hops`` hops of them in ``graph``."""
    reached = torch.zeros(graph.num_users + graph.num_items, dtype=torch.bool)
    reached[seed_nodes] = True
    src, dst = graph.edge_index
    for _ in range(hops):
        frontier = torch.zeros_like(reached)
        frontier[dst[reached[src]]] = True
        if not (frontier & ~reached).any():
            break
        reached |= frontier
    return torch.nonzero(reached).flatten()


def snapshot_before(snapshots: dict[int, dict[str, torch.Tensor]], entered_round: int):
    """``(round, tables)`` of the last snapshot taken before ``entered_round``: the only
    kind that is a clean target. (Round 0, before any shared data, is always kept: the run
    config refuses contrastive unlearning without it.)"""
    earlier = [r for r in snapshots if r < entered_round]
    if not earlier:
        raise ValueError(f"no snapshot older than round {entered_round} to unlearn from "
                         "(snapshot-rounds must include 0)")
    chosen = max(earlier)
    return chosen, snapshots[chosen]


def snapshot_view(snapshot: dict[str, torch.Tensor], graph: Graph | None,
                  num_layers: int) -> torch.Tensor:
    """A snapshot propagated on ``graph`` (users then items): the contrastive positive."""
    with torch.no_grad():
        if graph is None:  # nothing shared any more: propagation is the identity
            return _stacked(snapshot["user"], snapshot["item"])
        return _stacked(*lightgcn_propagate(snapshot["user"], snapshot["item"], graph, num_layers))


def _stacked(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    return torch.cat([users, items], dim=0)


def start_task(tables: dict[str, torch.Tensor], snapshots, old_graph: Graph, new_graph: Graph | None,
               removed: np.ndarray, entered_round: int, num_layers: int, hops: int,
               rounds: int) -> UnlearningTask:
    """The unlearning task for withdrawn ``removed`` pairs ((m, 2) [user, item]); the
    affected nodes are their users and items and everything within ``hops`` hops of them
    in the old graph (docs/method.md uses L = ``num_layers``; fewer hops keep utility)."""
    num_users = old_graph.num_users
    seeds = torch.from_numpy(np.unique(np.concatenate([removed[:, 0], num_users + removed[:, 1]])))
    nodes = affected_nodes(old_graph, seeds, hops)
    weight = withdrawn_fraction(old_graph, new_graph)[nodes].clamp(min=NEIGHBOUR_WEIGHT)
    snap_round, snap = snapshot_before(snapshots, entered_round)
    positive = snapshot_view(snap, new_graph, num_layers)
    with torch.no_grad():
        negative = _stacked(*lightgcn_propagate(tables["user"], tables["item"], old_graph, num_layers))
    return UnlearningTask(nodes, positive[nodes], negative[nodes], weight, rounds, snap_round)


def isolated_nodes(old_graph: Graph, new_graph: Graph | None) -> torch.Tensor:
    """Ids (users, then items offset by U) of nodes whose every old edge was withdrawn. Such a
    row has no evidence left: contrastive unlearning re-initialises it at once (a fresh draw
    from the initial distribution) instead of pulling it back to its snapshot. The snapshot's
    row would be the exact pre-sharing value, but the items it trained with moved along it
    while it was near that value, so they would still score it up; a fresh row is what a
    retrain's row is to the remaining model: a vector nothing was trained with."""
    return torch.nonzero(withdrawn_fraction(old_graph, new_graph) >= 1.0).flatten()


def withdrawn_fraction(old_graph: Graph, new_graph: Graph | None) -> torch.Tensor:
    """Per node: the fraction of its old-graph edges that were withdrawn (0 if it had none)."""
    size = old_graph.num_users + old_graph.num_items
    old = torch.bincount(old_graph.edge_index[0], minlength=size).float()
    new = torch.zeros(size) if new_graph is None else \
        torch.bincount(new_graph.edge_index[0], minlength=size).float()
    return torch.where(old > 0, 1.0 - new / old.clamp(min=1.0), torch.zeros(size))


def unlearning_loss(task: UnlearningTask, users: torch.Tensor, items: torch.Tensor,
                    temperature: float, generator: torch.Generator, batch: int) -> torch.Tensor:
    """InfoNCE over a batch of affected nodes drawn in proportion to how much of their
    graph evidence was withdrawn, scaled by the mean withdrawn fraction: a user who
    withdrew everything is pulled back fully, one who withdrew 30 % of their edges gently,
    and BPR on the remaining edges keeps what is still shared (see module docstring)."""
    pick = torch.multinomial(task.weight, min(batch, UNLEARN_BATCH, len(task.nodes)),
                             replacement=True,
                             generator=generator)
    anchors = _stacked(users, items)[task.nodes[pick]]
    loss = info_nce(anchors, task.positive[pick], task.negative[pick], temperature)
    return task.weight.mean() * loss


def unlearning_storage_bytes(snapshots: dict[int, dict[str, torch.Tensor]], num_edges: int) -> int:
    """Bytes kept for unlearning: K snapshots of the server table plus edge round stamps."""
    table_bytes = sum(t.numel() * t.element_size() for s in snapshots.values() for t in s.values())
    return table_bytes + num_edges * 8
