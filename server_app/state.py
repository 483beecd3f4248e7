"""The server's explicit state: catalog, item table, shared-edge store, graph model, snapshots,
unshare bookkeeping and the running unlearning task.

The graph is derived from the edge store (``build_graph(edges)``), never stored beside it.
Whenever edges change, the edge file and the checkpoint are rewritten atomically *before*
anything is acknowledged to a node.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from flwr.app import Message

from common.atomic import atomic_write_json
from common.config import RunConfig
from common.graph import Graph, build_graph
from server_app import checkpoint
from server_app.edge_store import EdgeStore
from server_app.records import Catalog, UnshareOutcome
from server_app.graph_model import ServerGraphModel, ServerHyper
from server_app.unlearning import UnlearningTask, start_task
from server_app.validation import ReplyError, parse_share

log = logging.getLogger("flwr.fedshare")


class ServerState:
    def __init__(self, cfg: RunConfig, state_dir: Path):
        self.cfg = cfg
        self.state_dir = Path(state_dir)
        self.round = 0
        self.generation = 0                           # bumped by a `retrain` unlearning
        self.catalog: Catalog | None = None
        self.item_emb: np.ndarray | None = None
        self.edges: EdgeStore | None = None
        self.edges_version = 0
        self._dirty = False                           # edges changed since last persisted
        self.graph: Graph | None = None
        self._graph_version = -1
        self.model: ServerGraphModel | None = None
        self.views: tuple[np.ndarray, np.ndarray] | None = None
        self.owner: dict[int, int] = {}               # user -> node that shares for it
        self.node_users: dict[int, np.ndarray] = {}   # node -> its sharing users (sorted)
        self.seen_nodes: set[int] = set()
        self.online: set[int] = set()                 # nodes connected this round
        self.synced_nodes: set[int] = set()
        self.unshare_nodes: set[int] = set()          # nodes with pending unshare requests
        self.outcomes: dict[int, UnshareOutcome] = {} # request id -> outcome (no pairs kept)
        self.pending_acks: dict[int, list[UnshareOutcome]] = {}
        self.unlearning: UnlearningTask | None = None
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.history: list[dict] = []                 # one record per finished round

    # ------------------------------------------------------------- initialisation
    def initialize(self, catalog: Catalog) -> None:
        """Fresh tables for ``catalog``; snapshot 0 is the state before any shared data."""
        self.catalog = catalog
        self.edges = EdgeStore(catalog.num_users, catalog.num_items)
        self.reset_models()

    def reset_models(self) -> None:
        """Re-initialise item table and server model with the run's seeds (a new generation)."""
        cfg, catalog = self.cfg, self.catalog
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.item_emb = (0.1 * torch.randn(catalog.num_items, cfg.embedding_dim,
                                           generator=generator)).numpy()
        hp = ServerHyper(cfg.server_epochs, cfg.server_batch_size, cfg.server_lr, cfg.reg,
                         cfg.cl_weight, cfg.cl_temperature, cfg.num_layers)
        self.model = ServerGraphModel(catalog.num_users, catalog.num_items, cfg.embedding_dim,
                                      hp, seed=cfg.seed + 2)
        self.views, self.snapshots, self.unlearning = None, {}, None
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
        foreign = [int(u) for u in users if not self._may_act_for(node, int(u))]
        if foreign:
            raise ReplyError(f"claims users {foreign[:5]} that another node shares for")
        before = len(self.edges)
        self.edges = self.edges.add(pairs[:, 0], pairs[:, 1], rnd)
        for user in users.tolist():
            self.owner[user] = node
        known = self.node_users.get(node, np.zeros(0, np.int64))
        self.node_users[node] = np.union1d(known, users).astype(np.int64)
        if len(self.edges) != before:
            self._edges_changed()
        return len(self.edges) - before

    def _may_act_for(self, node: int, user: int) -> bool:
        """A node may share/unshare for a user it owns or nobody online owns (a restarted
        SuperNode comes back with a new node id and takes its users over)."""
        owner = self.owner.get(user)
        return owner is None or owner == node or owner not in self.online

    def mark_pending(self, node: int, pending_share: bool, pending_unshare: bool) -> None:
        """Nodes with unsynced sharing / pending requests get a query in their next round."""
        self.seen_nodes.add(node)
        (self.synced_nodes.discard if pending_share else self.synced_nodes.add)(node)
        (self.unshare_nodes.add if pending_unshare else self.unshare_nodes.discard)(node)

    # ------------------------------------------------------------- unsharing
    def _judge(self, node: int, request_id: int, user: int, items: np.ndarray) -> UnshareOutcome:
        if request_id in self.outcomes:          # a re-sent request: same answer again
            return self.outcomes[request_id]
        if user not in self.owner or not self._may_act_for(node, user):
            return UnshareOutcome(request_id, True, f"user {user} is not shared by this node")
        held = self.edges.contains(np.full(len(items), user), items)
        if not held.all():
            return UnshareOutcome(request_id, True, f"user {user} never shared "
                                  f"{int((~held).sum())} of the {len(items)} requested items")
        return UnshareOutcome(request_id, False)

    def apply_unshares(self, node: int, requests: dict[int, tuple[int, np.ndarray]]) -> np.ndarray:
        """Judge and apply a node's requests; persist; queue the acks. Returns the pairs
        removed (for the caller to start unlearning and then drop)."""
        removed = []
        for request_id, (user, items) in requests.items():
            outcome = self._judge(node, request_id, user, items)
            if not outcome.refused and request_id not in self.outcomes:
                self.owner[user] = node
                removed.append(np.stack([np.full(len(items), user), items], axis=1))
            self.outcomes[request_id] = outcome
            self.pending_acks.setdefault(node, []).append(outcome)
        pairs = np.concatenate(removed) if removed else np.zeros((0, 2), np.int64)
        return pairs

    def remove_edges(self, pairs: np.ndarray) -> int:
        """Withdraw ``pairs``: edges gone, graph rebuilt, files rewritten. Returns the round
        the earliest of them had entered the graph."""
        entered = int(self.edges.rounds_of(pairs[:, 0], pairs[:, 1]).min())
        self.edges = self.edges.remove(pairs[:, 0], pairs[:, 1])
        for user in np.unique(pairs[:, 0]).tolist():
            if self.edges.count_by_user(np.array([user]))[0] == 0:
                self.owner.pop(user, None)
        self._edges_changed()
        self.rebuild_graph_if_changed()
        return entered

    def start_unlearning(self, old_graph: Graph, pairs: np.ndarray, entered_round: int) -> None:
        """Begin (or merge into) the contrastive unlearning task for withdrawn ``pairs``."""
        if self.cfg.unlearning_method == "retrain":
            self.generation += 1
            self.reset_models()
            log.info("retrain: new model generation %d from the remaining shared data",
                     self.generation)
            return
        if self.cfg.unlearning_method != "contrastive" or self.cfg.unlearn_rounds == 0:
            return
        task = start_task(self.model.tables(), self.snapshots, old_graph, self.graph, pairs,
                          entered_round, self.cfg.num_layers, self.cfg.unlearn_hops,
                          self.cfg.unlearn_rounds)
        if self.unlearning is not None:  # merge: keep both sets of affected nodes
            previous = self.unlearning
            keep = ~torch.isin(previous.nodes, task.nodes)
            task = replace(task, nodes=torch.cat([previous.nodes[keep], task.nodes]),
                           positive=torch.cat([previous.positive[keep], task.positive]),
                           negative=torch.cat([previous.negative[keep], task.negative]),
                           weight=torch.cat([previous.weight[keep], task.weight]))
        self.unlearning = task
        log.info("contrastive unlearning: %d affected nodes, snapshot of round %d, %d rounds",
                 len(task.nodes), task.snapshot_round, task.rounds_left)

    def take_acks(self, node: int) -> list[UnshareOutcome]:
        return self.pending_acks.pop(node, [])

    def _edges_changed(self) -> None:
        self.edges_version += 1
        self._dirty = True

    def persist_edges(self) -> None:
        """Rewrite the edge file and the checkpoint if edges changed (before any ack)."""
        if self._dirty:
            self.edges.save(self.state_dir / "edges.npz")
            self.save()
            self._dirty = False

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

    # ------------------------------------------------------------- persistence
    def maybe_snapshot(self, rnd: int, schedule: tuple[int, ...]) -> None:
        if rnd not in schedule or self.model is None:
            return
        self.snapshots[rnd] = self.model.tables()
        log.info("snapshot of the server model at round %d", rnd)

    def save(self) -> None:
        """Atomic checkpoint of everything (edges, models, snapshots, request outcomes)."""
        if self.catalog is not None:
            checkpoint.save(self, self.state_dir / checkpoint.CHECKPOINT_FILE)
        atomic_write_json(self.state_dir / "requests.json", {
            str(k): {"refused": v.refused, "reason": v.reason} for k, v in self.outcomes.items()})
