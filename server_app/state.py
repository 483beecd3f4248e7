"""The server's explicit state: catalog, item table, shared-edge store, graph model, snapshots.

The graph is derived from the edge store (``build_graph(edges)``), never stored beside it.
Edges are persisted atomically under the server state directory whenever they change.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Message

from common.atomic import atomic_write_bytes
from common.config import RunConfig
from common.graph import Graph, build_graph
from server_app.edge_store import EdgeStore
from server_app.graph_model import ServerGraphModel, ServerHyper
from server_app.validation import ReplyError, parse_share

log = logging.getLogger("flwr.fedshare")


@dataclass(frozen=True)
class Catalog:
    """Id spaces and data fingerprint, as reported (and agreed on) by the nodes."""

    num_users: int
    num_items: int
    fingerprint: str


class ServerState:
    def __init__(self, cfg: RunConfig, state_dir: Path):
        self.cfg = cfg
        self.state_dir = Path(state_dir)
        self.catalog: Catalog | None = None
        self.item_emb: np.ndarray | None = None
        self.edges: EdgeStore | None = None
        self.edges_version = 0
        self.graph: Graph | None = None
        self._graph_version = -1
        self.model: ServerGraphModel | None = None
        self.views: tuple[np.ndarray, np.ndarray] | None = None
        self.owner: dict[int, int] = {}               # user -> node that shares for it
        self.node_users: dict[int, np.ndarray] = {}   # node -> its sharing users (sorted)
        self.synced_nodes: set[int] = set()
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------- initialisation
    def initialize(self, catalog: Catalog) -> None:
        """Fresh tables for ``catalog``; snapshot 0 is the state before any shared data."""
        cfg = self.cfg
        self.catalog = catalog
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.item_emb = (0.1 * torch.randn(catalog.num_items, cfg.embedding_dim,
                                           generator=generator)).numpy()
        self.edges = EdgeStore(catalog.num_users, catalog.num_items)
        hp = ServerHyper(cfg.server_epochs, cfg.server_batch_size, cfg.server_lr, cfg.reg,
                         cfg.cl_weight, cfg.cl_temperature, cfg.num_layers)
        self.model = ServerGraphModel(catalog.num_users, catalog.num_items, cfg.embedding_dim,
                                      hp, seed=cfg.seed + 2)
        self.maybe_snapshot(0, cfg.snapshot_round_list)

    def _check_catalog(self, reply: Message) -> None:
        metrics = reply.content.metric_records["metrics"]
        fingerprint = str(reply.content.config_records["catalog"]["fingerprint"]) \
            if "catalog" in reply.content.config_records else ""
        reported = Catalog(int(metrics["num-users"]), int(metrics["num-items"]), fingerprint)
        if self.catalog is None:
            self.initialize(reported)
        elif reported != self.catalog:
            raise ReplyError(f"node data {reported} differs from the federation's {self.catalog}")

    # ------------------------------------------------------------- sharing
    def apply_share(self, node: int, reply: Message, rnd: int) -> int:
        """Validate and store a node's newly shared pairs; returns how many were new."""
        pairs, _ = parse_share(reply, self.catalog and self.catalog.num_users,
                               self.catalog and self.catalog.num_items)
        self._check_catalog(reply)
        users = np.unique(pairs[:, 0])
        foreign = [int(u) for u in users if self.owner.get(int(u), node) != node]
        if foreign:
            raise ReplyError(f"claims users {foreign[:5]} that another node shares for")
        before = len(self.edges)
        self.edges = self.edges.add(pairs[:, 0], pairs[:, 1], rnd)
        for user in users.tolist():
            self.owner[user] = node
        known = self.node_users.get(node, np.zeros(0, np.int64))
        self.node_users[node] = np.union1d(known, users).astype(np.int64)
        if len(self.edges) != before:
            self.edges_version += 1
            self.edges.save(self.state_dir / "edges.npz")
        return len(self.edges) - before

    def mark_pending(self, node: int, pending: bool) -> None:
        """A node with unsynced sharing gets a ``query.share`` in its next round."""
        if pending:
            self.synced_nodes.discard(node)
        else:
            self.synced_nodes.add(node)

    # ------------------------------------------------------------- graph
    def rebuild_graph_if_changed(self) -> None:
        if self._graph_version == self.edges_version:
            return
        self._graph_version = self.edges_version
        if len(self.edges) == 0:
            self.graph, self.views = None, None
            return
        pairs = torch.from_numpy(self.edges.pairs())
        self.graph = build_graph(pairs[:, 0], pairs[:, 1], self.catalog.num_users,
                                 self.catalog.num_items)

    def refresh_views(self) -> None:
        users, items = self.model.views(self.graph)
        self.views = (users.numpy(), items.numpy())

    def pooled_negatives(self, rng: np.random.Generator, count: int, pool: int):
        """``(count, d)`` means of ``pool`` random sharing users' global views, or None.

        Pooling means no single user's global vector is sent to another node."""
        if self.views is None or count == 0:
            return None
        sharing = self.edges.users()
        if len(sharing) == 0:
            return None
        picks = rng.choice(sharing, size=(count, pool), replace=True)
        return self.views[0][picks].mean(axis=1).astype(np.float32)

    # ------------------------------------------------------------- snapshots
    def maybe_snapshot(self, rnd: int, schedule: tuple[int, ...]) -> None:
        if rnd not in schedule or self.model is None:
            return
        tables = self.model.tables()
        self.snapshots[rnd] = tables
        buffer = io.BytesIO()
        torch.save(tables, buffer)
        atomic_write_bytes(self.state_dir / "snapshots" / f"round-{rnd}.pt", buffer.getvalue())
        log.info("snapshot of the server model at round %d", rnd)
