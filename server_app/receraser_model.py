"""The server's graph model as a RecEraser ensemble (``unlearning-method = "receraser"``).

RecEraser (Chen, Sun, Zhang, Ding, WWW 2022) over the shared-edge store: every edge sits in one
of K shards chosen by a seeded hash (:func:`common.receraser.partition.hash_shards`: of the user,
so one user's edges share a shard, or of the pair), a function of (seed, user, item) only. Shard
k's LightGCN is ``train_submodel(edges of k, shard_seed(seed, k))`` and the attention aggregator
(RecEraser Eq. 5–8) is trained from scratch on all edges with the sub-models frozen, so the whole
ensemble is a pure function of the edge store, like the graph. The global views sent to clients
are the aggregated (propagated, masked) tables.

* Edges arriving make their shards *stale* (a shard's edge count differs from the count it was
  trained on); :meth:`train` (the server's graph step) retrains stale shards from scratch.
* A withdrawal (:meth:`forget`) deletes the affected shards' sub-models and the aggregator at
  once, before the erasure is saved and answered; they are retrained right after the save
  (:class:`server_app.withdrawal.Receraser`), or at the next graph step after a restart.
  Afterwards every shard and the aggregator are bit-identical to a training from scratch on the
  remaining edges; no optimizer state outlives a training, so nothing else can remember them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from common.config import RunConfig
from common.graph import Graph, build_graph
from common.models import lightgcn_propagate
from common.receraser.aggregator import (AggregatorConfig, aggregate_tables, make_aggregator,
                                         train_aggregator)
from common.receraser.partition import hash_shards
from common.receraser.submodels import TrainConfig, canonical_pairs, shard_seed, train_submodel
from server_app.graph_model import mask_unseen

KIND = "receraser"


def graph_pairs(graph: Graph) -> np.ndarray:
    """``(E, 2)`` [user, item] edges of ``graph`` (its user -> item half)."""
    src, dst = graph.edge_index
    users = src < graph.num_users
    return torch.stack([src[users], dst[users] - graph.num_users], 1).numpy()


class ReceraserGraphModel:
    """K shard LightGCNs (layer-0 tables + the edge count each was trained on) and an aggregator."""

    moments_since = None   # no optimizer survives a training: nothing to reset or audit

    def __init__(self, num_users: int, num_items: int, cfg: RunConfig, seed: int):
        self.num_users, self.num_items, self.seed = num_users, num_items, seed
        self.num_shards, self.placement = cfg.receraser_shards, cfg.receraser_partition
        self.num_layers = cfg.num_layers
        self.train_config = TrainConfig(
            model="lightgcn", epochs=cfg.receraser_epochs, embedding_dim=cfg.embedding_dim,
            num_layers=cfg.num_layers, batch_size=cfg.server_batch_size, lr=cfg.server_lr,
            reg=cfg.server_reg)
        self.aggregator_config = AggregatorConfig(
            kind="attention", epochs=cfg.receraser_aggregator_epochs,
            batch_size=cfg.server_batch_size, lr=cfg.server_lr)
        self.shards: list[dict | None] = [None] * self.num_shards   # {"user", "item", "edges"}
        self.aggregator: torch.nn.Module | None = None
        self.aggregator_edges = -1                  # edge count the aggregator was trained on
        self._outputs: dict[int, tuple[Tensor, Tensor]] = {}   # derived: propagated tables

    # ------------------------------------------------------------------ layout
    def shard_of(self, pairs: np.ndarray) -> np.ndarray:
        return hash_shards(pairs, self.num_shards, self.seed, self.placement)

    def shard_pairs(self, pairs: np.ndarray, shard: int) -> np.ndarray:
        """Shard ``shard``'s edges among ``pairs``, in canonical (user, item) order."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        return canonical_pairs(pairs[self.shard_of(pairs) == shard], self.num_items)

    def stale(self, pairs: np.ndarray) -> list[int]:
        """Shards without a sub-model or trained on another edge count than they hold now
        (removals delete the sub-model, so a count change means edges arrived)."""
        counts = np.bincount(self.shard_of(pairs), minlength=self.num_shards)
        return [k for k, shard in enumerate(self.shards)
                if shard is None or shard["edges"] != counts[k]]

    # ------------------------------------------------------------------ training
    def train(self, graph: Graph, pairs: Tensor, targets=None, extra=None, steps=None) -> float:
        """The graph step: retrain the stale shards from scratch, then the aggregator if any
        shard changed. Returns 0.0 (no running loss: each training starts from scratch; the
        round record times the graph step)."""
        if extra is not None or steps is not None:
            raise ValueError("the RecEraser ensemble trains shards from scratch only")
        pairs = np.asarray(pairs, dtype=np.int64)
        stale = self.stale(pairs)
        with torch.random.fork_rng():   # the sub-model trainers seed torch's global generator
            for shard in stale:
                self._train_shard(pairs, shard)
            if stale or self.aggregator is None or self.aggregator_edges != len(pairs):
                self._train_aggregator(pairs, graph)
        return 0.0

    def _train_shard(self, pairs: np.ndarray, shard: int) -> None:
        own = self.shard_pairs(pairs, shard)
        model = train_submodel(own, self.num_users, self.num_items, self.train_config,
                               shard_seed(self.seed, shard))
        self.shards[shard] = {"user": model.state["user_emb.weight"],
                              "item": model.state["item_emb.weight"], "edges": len(own)}
        self._outputs[shard] = (model.user_out, model.item_out)

    def _train_aggregator(self, pairs: np.ndarray, graph: Graph) -> None:
        users, items = self.stacks(graph)
        self.aggregator, _ = train_aggregator(
            users, items, canonical_pairs(pairs, self.num_items), self.num_items,
            self.aggregator_config, shard_seed(self.seed, self.num_shards))
        self.aggregator_edges = len(pairs)

    def stacks(self, graph: Graph) -> tuple[Tensor, Tensor]:
        """Frozen sub-model outputs: users ``(U, K, d)``, items ``(I, K, d)`` (each shard's
        tables propagated over its own edges of ``graph``; cached)."""
        missing = [k for k in range(self.num_shards) if k not in self._outputs]
        if missing:
            pairs = graph_pairs(graph)
            for k in missing:
                self._outputs[k] = self._propagate(k, self.shard_pairs(pairs, k))
        return (torch.stack([self._outputs[k][0] for k in range(self.num_shards)], 1),
                torch.stack([self._outputs[k][1] for k in range(self.num_shards)], 1))

    def _propagate(self, shard: int, own: np.ndarray) -> tuple[Tensor, Tensor]:
        tables = self.shards[shard]
        own_graph = build_graph(torch.from_numpy(own[:, 0]), torch.from_numpy(own[:, 1]),
                                self.num_users, self.num_items)
        with torch.no_grad():
            return lightgcn_propagate(tables["user"], tables["item"], own_graph, self.num_layers)

    # ------------------------------------------------------------------ unlearning
    def forget(self, pairs: np.ndarray) -> list[int]:
        """Delete the sub-models of the shards holding ``pairs`` and the aggregator (both were
        trained on them); returns those shards. :meth:`train` retrains them from scratch."""
        affected = sorted(int(k) for k in np.unique(self.shard_of(pairs)))
        for shard in affected:
            self.shards[shard] = None
            self._outputs.pop(shard, None)
        self.aggregator, self.aggregator_edges = None, -1
        return affected

    # ------------------------------------------------------------------ serving
    def ready(self, graph: Graph | None) -> bool:
        """Every shard and the aggregator trained on exactly the edges of ``graph``."""
        return graph is not None and self.aggregator is not None \
            and self.aggregator_edges == graph.edge_index.shape[1] // 2 \
            and not self.stale(graph_pairs(graph))

    def propagated(self, graph: Graph | None) -> tuple[Tensor, Tensor]:
        """The aggregated ``(U, d)`` / ``(I, d)`` tables (scores are inner products)."""
        if not self.ready(graph):
            raise RuntimeError("the ensemble is stale: train() it on the current graph first")
        with torch.no_grad():
            return aggregate_tables(self.aggregator, *self.stacks(graph))

    def ego_tables(self, graph: Graph) -> None:
        """None: an ensemble has no single set of item layers to propagate on a node, so its
        nodes score as with ``weighted`` fusion (the server's views, weighted by the share held)."""
        return None

    def views(self, graph: Graph) -> tuple[Tensor, Tensor] | None:
        """Global views from the aggregated model (unseen rows zero), or None while stale."""
        if not self.ready(graph):
            return None
        return mask_unseen(*self.propagated(graph), graph)

    def reset_moments(self, users: Tensor, items: Tensor, rnd: int) -> None:
        """Nothing to reset: each sub-model's optimizer ends with its training."""

    def storage_bytes(self) -> int:
        """Bytes of the ensemble's parameters (K shard tables + aggregator)."""
        tables = sum(t.numel() * t.element_size() for s in self.shards if s is not None
                     for t in (s["user"], s["item"]))
        if self.aggregator is None:
            return tables
        return tables + sum(p.numel() * p.element_size() for p in self.aggregator.parameters())

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        return {"kind": KIND, "shards": list(self.shards), "aggregator_edges": self.aggregator_edges,
                "aggregator": None if self.aggregator is None else self.aggregator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != KIND or len(state["shards"]) != self.num_shards:
            raise ValueError(f"the saved server model is not a {self.num_shards}-shard RecEraser "
                             "ensemble; resume it with its own run config or use a new run-name")
        self.shards, self._outputs = list(state["shards"]), {}
        self.aggregator, self.aggregator_edges = None, state["aggregator_edges"]
        if state["aggregator"] is not None:
            dim = self.train_config.embedding_dim
            self.aggregator = make_aggregator("attention", self.num_shards, dim)
            self.aggregator.load_state_dict(state["aggregator"])
            self.aggregator.eval()
