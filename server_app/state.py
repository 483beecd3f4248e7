"""The server's explicit state, and its one file on disk.

Durable: round, model generation, catalog, FedAvg item table, shared-edge store (each edge
stamped with the round it entered), server graph model with its optimizer, snapshots, user
ownership, unshare outcomes (request ids only: no withdrawn pair is ever written), the
running unlearning task, FRU's update log (``unlearning-method = "fru"``) and the round
history. :meth:`ServerState.save` writes all of it
atomically to ``<state dir>/state.pt``; :meth:`ServerState.load` reads it back.

Derived, never stored: the graph (a pure function of the edge store, rebuilt when the store
object changes) and the server's views (recomputed after every graph training).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from common.config import RunConfig
from common.graph import Graph, build_graph
from common.protocol import UnshareAnswer
from common.upload_privacy import initial_item_table
from server_app.aggregation import RowUpdate, aggregate_rows, apply_sums
from server_app.edge_store import EdgeStore
from server_app.graph_model import EgoTables, ServerGraphModel, ServerHyper
from server_app.nodes import NodeRegistry
from server_app.receraser_model import ReceraserGraphModel
from server_app.records import Catalog, RoundRecord
from server_app.state_file import clean_start, erase_in_other_runs, read_state, write_state
from server_app.unlearning import UnlearningTask, affected_nodes
from server_app.update_log import UpdateLog

log = logging.getLogger("flwr.fedshare")


@dataclass(frozen=True)
class Taint:
    """The current model generation trained on edges that were later withdrawn: the
    earliest of them ``entered`` in that round, the first erasure was in round ``erased``.
    Snapshots from round ``entered`` on carry their influence (none is kept or taken), and
    optimizer rows whose moments accumulate since before ``erased`` would too."""

    entered: int
    erased: int


class CatalogMismatch(ValueError):
    """A node reports other data than the federation's."""


class ServerState:
    def __init__(self, cfg: RunConfig, state_dir: Path):
        self.cfg = cfg
        self.state_dir = Path(state_dir)
        self.round = 0                                # last completed round
        self.generation = 0                           # bumped by a `retrain` unlearning
        self.catalog: Catalog | None = None
        self.item_emb: np.ndarray | None = None
        self.edges: EdgeStore | None = None
        self.model: ServerGraphModel | None = None
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.registry = NodeRegistry()
        self.outcomes: dict[int, UnshareAnswer] = {}  # request id -> answer (no pairs kept)
        self.unlearning: UnlearningTask | None = None
        self.taint: Taint | None = None
        self.updates: UpdateLog | None = None   # FRU's log of the graph model's updates
        self.history: list[RoundRecord] = []
        self.views: tuple[np.ndarray, np.ndarray] | None = None
        self.ego: EgoTables | None = None   # derived with the views when fusion = "ego"
        self._graph: tuple[EdgeStore | None, Graph | None] = (None, None)  # (of store, graph)
        self._saved_edges: EdgeStore | None = None

    # ------------------------------------------------------------- tables
    def initialize(self, catalog: Catalog) -> None:
        """Fresh tables for ``catalog``; snapshot 0 is the state before any shared data."""
        self.catalog = catalog
        self.edges = EdgeStore(catalog.num_users, catalog.num_items)
        self.reset_models()

    def reset_models(self) -> None:
        """Re-initialise item table and server model with the run's seeds."""
        cfg, catalog = self.cfg, self.catalog
        self.item_emb = initial_item_table(cfg.seed, catalog.num_items, cfg.embedding_dim)
        self.model = _graph_model(cfg, catalog)
        self.views, self.snapshots, self.unlearning, self.taint = None, {}, None, None
        self.ego = None
        self.updates = UpdateLog(cfg.fru_alpha) if cfg.unlearning_method == "fru" else None
        self.maybe_snapshot(0)

    def new_generation(self) -> None:
        """Retrain from scratch on what is still shared: new models, nodes reset their rows."""
        self.generation += 1
        self.reset_models()

    def check_catalog(self, reported: Catalog) -> None:
        """The first report fixes the federation's catalog; later ones must agree. With
        ``data-fingerprint`` set, even the first must name that dataset (a hostile first
        node cannot fix a forged catalog that every honest node is then refused against)."""
        expected = self.cfg.data_fingerprint_expected
        if expected and reported.fingerprint != expected:
            raise CatalogMismatch(f"node data fingerprint {reported.fingerprint[:64]!r} is not "
                                  f"the run's data-fingerprint {expected!r}")
        if self.catalog is None:
            self.initialize(reported)
        elif reported != self.catalog:
            raise CatalogMismatch(f"node data {reported} differs from the federation's "
                                  f"{self.catalog}")

    def apply_row_updates(self, updates: list[RowUpdate]) -> None:
        if updates:
            self.item_emb = aggregate_rows(self.item_emb, updates)

    def apply_row_sums(self, weighted: np.ndarray, counts: np.ndarray, max_change: float) -> None:
        """A secure-aggregation round's sums (:func:`apply_sums`)."""
        self.item_emb = apply_sums(self.item_emb, weighted, counts, max_change)

    # ------------------------------------------------------------- edges and graph
    def add_edges(self, pairs: np.ndarray, rnd: int) -> int:
        """Store newly shared ``pairs`` ((m, 2)); returns how many were new."""
        before = len(self.edges)
        added = self.edges.add(pairs[:, 0], pairs[:, 1], rnd)
        if len(added) != before:
            self.edges = added
        return len(self.edges) - before

    def remove_edges(self, pairs: np.ndarray) -> tuple[Graph | None, int]:
        """Withdraw stored ``pairs``; returns the graph they were part of and the round the
        earliest of them entered. Users left with no edge belong to no node any more."""
        old_graph = self.graph
        entered = int(self.edges.rounds_of(pairs[:, 0], pairs[:, 1]).min())
        self.edges = self.edges.remove(pairs[:, 0], pairs[:, 1])
        users = np.unique(pairs[:, 0])
        self.registry.release(users[self.edges.count_by_user(users) == 0])
        return old_graph, entered

    @property
    def graph(self) -> Graph | None:
        """``build_graph`` of the edge store (cached per store value; None when empty)."""
        source, graph = self._graph
        if source is not self.edges:
            graph = _graph_of(self.edges)
            self._graph = (self.edges, graph)
            if graph is None:
                self.views, self.ego = None, None
        return graph

    def forget(self, old_graph: Graph, pairs: np.ndarray, entered: int, hops: int) -> None:
        """After erasing ``pairs`` (the earliest entered in round ``entered``): drop the
        snapshots taken since, reset the optimizer moments of the rows within ``hops`` of
        them in ``old_graph``, and remember the taint (no later snapshot of this model
        generation is taken)."""
        erased = self.round + 1
        self.snapshots = {r: s for r, s in self.snapshots.items() if r < entered}
        seeds = torch.from_numpy(np.unique(np.concatenate(
            [pairs[:, 0], old_graph.num_users + pairs[:, 1]])))
        rows = affected_nodes(old_graph, seeds, hops)
        users, items = rows[rows < old_graph.num_users], rows[rows >= old_graph.num_users]
        self.model.reset_moments(users, items - old_graph.num_users, erased)
        self.taint = Taint(min(entered, self.taint.entered) if self.taint else entered,
                           self.taint.erased if self.taint else erased)

    def erase_elsewhere(self, pairs: np.ndarray) -> None:
        """Erase ``pairs`` from the other runs' state files under the same server root."""
        erase_in_other_runs(self.state_dir, self.catalog.fingerprint, pairs)

    def record_outcome(self, answer: UnshareAnswer) -> None:
        self.outcomes[answer.request_id] = answer

    def set_unlearning(self, task: UnlearningTask | None) -> None:
        self.unlearning = task

    # ------------------------------------------------------------- server model
    def train_graph(self, extra=None, steps: int | None = None, rnd: int | None = None) -> float:
        """Train the server model on the current graph (BPR over the shared edges, item-side
        alignment to the FedAvg table when enabled, plus ``extra``). ``rnd``: this is round
        ``rnd``'s own graph step, whose update FRU's log keeps (when the run keeps one)."""
        before = self.model.tables() if self.updates is not None and rnd is not None else None
        loss = self.model.train(self.graph, torch.from_numpy(self.edges.pairs()),
                                self._alignment_targets(), extra, steps=steps)
        if before is not None:
            self.updates.record(rnd, self.model.hp.epochs, before, self.model.tables())
        return loss

    def calibrate(self, rnd: int, epochs: float) -> None:
        """FRU's calibration of a replayed round ``rnd``: ``epochs`` of training on the
        edges stored that had entered by then (the withdrawn ones are no longer stored)."""
        edges = self.edges.until(rnd)
        if len(edges):
            self.model.train(_graph_of(edges), torch.from_numpy(edges.pairs()),
                             self._alignment_targets(), epochs=epochs)

    def _alignment_targets(self) -> torch.Tensor | None:
        return torch.from_numpy(self.item_emb) if self.cfg.server_cl_weight > 0 else None

    def refresh_views(self) -> None:
        """Views of the current model; None while it is not trained on the current graph.
        Ego tables come with them when the model has them (a RecEraser ensemble has none: its
        nodes then score as with ``weighted`` fusion)."""
        views = self.model.views(self.graph)
        self.views = None if views is None else (views[0].numpy(), views[1].numpy())
        self.ego = self.model.ego_tables(self.graph) \
            if self.views is not None and self.cfg.fusion == "ego" else None

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

    def maybe_snapshot(self, rnd: int) -> None:
        """Keep a snapshot if ``rnd`` is scheduled -- unless the model carries the influence
        of withdrawn edges (then it could never serve as a clean target)."""
        if rnd not in self.cfg.snapshot_round_list or self.model is None \
                or isinstance(self.model, ReceraserGraphModel):   # unlearns without snapshots
            return
        if self.taint is not None and rnd >= self.taint.entered:
            log.info("no snapshot at round %d: the model still carries withdrawn edges", rnd)
            return
        self.snapshots[rnd] = self.model.tables()
        log.info("snapshot of the server model at round %d", rnd)

    def finish_round(self, record: RoundRecord) -> None:
        """Close round ``record.round``: snapshot if scheduled, history, then save."""
        if not record.skipped:
            self.maybe_snapshot(record.round)
            self.round = record.round  # the last completed round (what a restart resumes after)
        self.history.append(record)
        self.save()

    # ------------------------------------------------------------- persistence
    def persist_edges(self) -> None:
        """Save if the edge store changed since the last save (before any acknowledgement)."""
        if self.edges is not self._saved_edges:
            self.save()

    def save(self) -> None:
        """Atomically rewrite ``state.pt`` (nothing before the catalog is known)."""
        if self.catalog is None:
            return
        write_state(self.state_dir, self._payload())
        self._saved_edges = self.edges

    def _payload(self) -> dict:
        edges = self.edges
        return {
            "round": self.round, "generation": self.generation, "catalog": asdict(self.catalog),
            "item_emb": torch.from_numpy(self.item_emb),
            "edges": {"user": torch.from_numpy(edges.user), "item": torch.from_numpy(edges.item),
                      "round": torch.from_numpy(edges.round)},
            "model": self.model.state_dict(), "snapshots": self.snapshots,
            "registry": self.registry.to_dict(),
            "outcomes": {k: (v.refused, v.reason) for k, v in self.outcomes.items()},
            "unlearning": None if self.unlearning is None else asdict(self.unlearning),
            "taint": None if self.taint is None else asdict(self.taint), "owed_retrain": False,
            "updates": None if self.updates is None else self.updates.to_dict(),
            "history": [record.to_dict() for record in self.history],
        }

    @classmethod
    def load(cls, cfg: RunConfig, state_dir: Path) -> "ServerState":
        """The state saved under ``state_dir``, or a fresh one when nothing was saved.

        Leftover temporary files of interrupted writes are removed first; a run whose
        pairs were withdrawn while it was idle starts its owed retrain here."""
        state = cls(cfg, state_dir)
        clean_start(state.state_dir)
        saved = read_state(state.state_dir)
        if saved is not None:
            state._restore(saved)
        return state

    def _restore(self, saved: dict) -> None:
        self.initialize(Catalog(**saved["catalog"]))
        self.round, self.generation = saved["round"], saved["generation"]
        self.item_emb = saved["item_emb"].numpy()
        edges = saved["edges"]
        self.edges = EdgeStore(self.catalog.num_users, self.catalog.num_items,
                               edges["user"].numpy(), edges["item"].numpy(), edges["round"].numpy())
        self._saved_edges = self.edges
        self.registry = NodeRegistry.from_dict(saved["registry"])
        self.outcomes = {k: UnshareAnswer(k, *v) for k, v in saved["outcomes"].items()}
        self.history = [RoundRecord.from_dict(r) for r in saved["history"]]
        if saved.get("owed_retrain"):
            log.warning("%s: shared pairs were withdrawn while this run was idle; its server "
                        "model starts a new generation from what is still shared", self.state_dir)
            self.new_generation()
            self.save()
            return
        self.model.load_state_dict(saved["model"])
        self.snapshots = saved["snapshots"]
        self.unlearning = None if saved["unlearning"] is None else UnlearningTask(**saved["unlearning"])
        self.taint = Taint(**saved["taint"]) if saved.get("taint") else None
        self.updates = _update_log(self.cfg, saved.get("updates"), self.round)
        if self.graph is not None:   # derived: a restarted server serves the same views
            self.refresh_views()

    def clone(self, cfg: RunConfig, state_dir: Path) -> "ServerState":
        """An independent in-memory copy running under ``cfg`` and saving to ``state_dir``."""
        cache, self._graph = self._graph, (None, None)  # sparse CSR tensors can't deepcopy
        try:
            twin = copy.deepcopy(self)
        finally:
            self._graph = cache
        twin.cfg, twin.state_dir = cfg, Path(state_dir)
        twin.updates = _update_log(cfg, twin.updates, twin.round)
        return twin


def _update_log(cfg: RunConfig, saved: UpdateLog | dict | None, rnd: int) -> UpdateLog | None:
    """The update log a state continues under ``cfg``: the saved one for ``fru`` (new rounds
    kept with ``cfg``'s alpha), none for the other methods; a run switched to ``fru`` after
    round ``rnd`` starts one there (it cannot roll back past it: its withdrawals retrain)."""
    if cfg.unlearning_method != "fru":
        return None
    if saved is None:
        return UpdateLog(cfg.fru_alpha, origin=rnd)
    log = UpdateLog.from_dict(saved) if isinstance(saved, dict) else saved
    log.alpha = cfg.fru_alpha
    return log


def _graph_of(edges: EdgeStore | None) -> Graph | None:
    """``build_graph`` of a store's edges (None when there are none)."""
    if edges is None or not len(edges):
        return None
    pairs = torch.from_numpy(edges.pairs())
    return build_graph(pairs[:, 0], pairs[:, 1], edges.num_users, edges.num_items)


def _graph_model(cfg: RunConfig, catalog: Catalog) -> ServerGraphModel | ReceraserGraphModel:
    """The server's graph model: a RecEraser ensemble for ``unlearning-method = "receraser"``,
    otherwise one LightGCN with its optimizer."""
    if cfg.unlearning_method == "receraser":
        return ReceraserGraphModel(catalog.num_users, catalog.num_items, cfg, seed=cfg.seed + 2)
    hp = ServerHyper(cfg.server_epochs, cfg.server_batch_size, cfg.server_lr, cfg.server_reg,
                     cfg.server_cl_weight, cfg.cl_temperature, cfg.num_layers,
                     cfg.server_epoch_steps)
    return ServerGraphModel(catalog.num_users, catalog.num_items, cfg.embedding_dim, hp,
                            seed=cfg.seed + 2)
