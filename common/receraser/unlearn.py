"""The RecEraser ensemble: partition, shard sub-models, aggregator, and exact unlearning.

RecEraser (Chen, Sun, Zhang, Ding, "Recommendation Unlearning", WWW 2022, §3.1): the training
interactions Y are split into K balanced shards S_1..S_K (:mod:`.partition`), one sub-model per
shard is trained on S_k alone (:mod:`.submodels`), and an aggregator trained on Y with the
sub-models frozen combines them (:mod:`.aggregator`). To forget interactions D ⊂ Y:

    affected = {k : S_k ∩ D ≠ ∅};   S_k ← S_k \\ D;   retrain M_k from scratch on S_k (same seed)
    for k ∈ affected;   retrain the aggregator from scratch on Y \\ D (same seed).

Every retrained piece is the from-scratch training on data without D, so the result is exactly
the model that would have been trained had D never been given (bit for bit, see the tests); the
other shards are not touched. Cost: |affected| sub-models plus the aggregator instead of all.

Server-facing API (the federated ``unlearning-method = "receraser"`` builds on it):
:meth:`RecEraser.add` places arriving edges in shards (marks them stale), :meth:`RecEraser.withdraw`
removes edges and marks their shards stale, :meth:`RecEraser.refresh` retrains the stale shards and
the aggregator, :meth:`RecEraser.embeddings` gives the aggregated ``(U, d')`` / ``(I, d')`` tables.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from common.graph import Graph, build_graph
from common.receraser.aggregator import AggregatorConfig, aggregate_tables, train_aggregator
from common.receraser.partition import Partition, partition_interactions
from common.receraser.submodels import (SubModel, TrainConfig, canonical_pairs,
                                        pretrain_embeddings, shard_seed, train_submodel)


@dataclass(frozen=True)
class RecEraserConfig:
    """Everything that defines a RecEraser run (K, partition, base model, aggregator, seed)."""

    num_shards: int = 10
    partition: str = "inbp"                 # ubp | ibp | inbp | random
    partition_iterations: int = 5
    pretrain_epochs: int = 10               # BPR-MF epochs for the partition embeddings
    submodel: TrainConfig = field(default_factory=TrainConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    seed: int = 0


class RecEraser:
    """A sharded recommender over a mutable interaction store ``(n, 2)`` with a shard per row."""

    def __init__(self, num_users: int, num_items: int, config: RecEraserConfig,
                 partition: Partition, pairs: np.ndarray) -> None:
        """Unfitted ensemble over ``pairs`` placed by ``partition`` (``partition.shard_of``)."""
        self.num_users, self.num_items, self.config = num_users, num_items, config
        self.partition = partition
        self.pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        self.shard_of = partition.shard_of.copy()
        self.submodels: list[SubModel | None] = [None] * config.num_shards
        self.stale: set[int] = set(range(config.num_shards))
        self.aggregator: nn.Module | None = None
        self.graph: Graph | None = None        # full graph the aggregator propagates over
        self.aggregator_seconds = 0.0

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, pairs: np.ndarray, num_users: int, num_items: int, config: RecEraserConfig,
              log: Callable[[str], Any] = lambda _: None) -> "RecEraser":
        """Pre-train embeddings on ``pairs``, partition them; sub-models not trained yet."""
        pairs = canonical_pairs(pairs, num_items)
        user_emb = item_emb = None
        if config.partition != "random":
            user_emb, item_emb = pretrain_embeddings(
                pairs, num_users, num_items, epochs=config.pretrain_epochs,
                embedding_dim=config.submodel.embedding_dim, seed=config.seed)
        started = time.perf_counter()
        partition = partition_interactions(
            pairs, num_users, num_items, config.partition, config.num_shards,
            user_emb=user_emb, item_emb=item_emb, iterations=config.partition_iterations,
            seed=config.seed)
        log(f"{config.partition}: shard sizes {partition.sizes().tolist()} "
            f"({time.perf_counter() - started:.1f} s)")
        return cls(num_users, num_items, config, partition, pairs)

    def with_aggregator(self, aggregator: AggregatorConfig) -> "RecEraser":
        """A copy sharing the trained sub-models, with another (untrained) aggregator."""
        other = RecEraser(self.num_users, self.num_items,
                          replace(self.config, aggregator=aggregator), self.partition, self.pairs)
        other.shard_of, other.submodels = self.shard_of.copy(), list(self.submodels)
        other.stale = set(self.stale)
        return other

    # ------------------------------------------------------------------ the store

    def shard_pairs(self, shard: int) -> np.ndarray:
        """``(n_k, 2)`` interactions of shard k in canonical (user, item) order."""
        return canonical_pairs(self.pairs[self.shard_of == shard], self.num_items)

    def add(self, pairs: np.ndarray) -> np.ndarray:
        """Store new interactions (as edges arrive); returns their ``(m,)`` shards, marked stale.

        Pairs already stored keep their shard. Call :meth:`refresh` to retrain.
        """
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        new = ~self._contains(pairs)
        first = np.zeros(len(pairs), dtype=bool)
        first[np.unique(self._keys(pairs), return_index=True)[1]] = True
        new &= first            # a pair repeated in ``pairs`` is stored once
        shards = np.full(len(pairs), -1, dtype=np.int64)
        shards[new] = self.partition.assign(pairs[new])
        self.pairs = np.concatenate([self.pairs, pairs[new]])
        self.shard_of = np.concatenate([self.shard_of, shards[new]])
        shards[~new] = self.shard_of[self._rows_of(pairs[~new])]
        self.stale.update(int(k) for k in np.unique(shards[new]))
        return shards

    def withdraw(self, pairs: np.ndarray) -> list[int]:
        """Remove interactions from the store; returns the affected shards (now stale)."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        rows = self._rows_of(pairs[self._contains(pairs)])
        affected = sorted(int(k) for k in np.unique(self.shard_of[rows]))
        keep = np.ones(len(self.pairs), dtype=bool)
        keep[rows] = False
        self.pairs, self.shard_of = self.pairs[keep], self.shard_of[keep]
        self.stale.update(affected)
        return affected

    def _keys(self, pairs: np.ndarray) -> np.ndarray:
        return pairs[:, 0] * self.num_items + pairs[:, 1]

    def _contains(self, pairs: np.ndarray) -> np.ndarray:
        return np.isin(self._keys(pairs), self._keys(self.pairs))

    def _rows_of(self, pairs: np.ndarray) -> np.ndarray:
        """Store rows of ``pairs`` (all must be stored)."""
        store_keys = self._keys(self.pairs)
        order = np.argsort(store_keys)
        return order[np.searchsorted(store_keys[order], self._keys(pairs))]

    # ------------------------------------------------------------------ training

    def train_shard(self, shard: int) -> SubModel:
        """Train shard k's sub-model from scratch on its current interactions (seed fixed per k;
        the aggregator's seed is ``shard_seed(seed, K)``)."""
        model = train_submodel(self.shard_pairs(shard), self.num_users, self.num_items,
                               self.config.submodel, shard_seed(self.config.seed, shard))
        self.submodels[shard] = model
        self.stale.discard(shard)
        return model

    def stacks(self) -> tuple[Tensor, Tensor]:
        """Frozen sub-model embeddings stacked: users ``(U, K, d)``, items ``(I, K, d)``.

        The outputs (propagated for LightGCN), or the layer-0 tables when the aggregator
        propagates itself (``config.aggregator.propagate_layers > 0``).
        """
        if any(model is None for model in self.submodels):
            raise RuntimeError("train every shard first (refresh())")
        if self.config.aggregator.propagate_layers > 0:
            return (torch.stack([m.state["user_emb.weight"] for m in self.submodels], dim=1),
                    torch.stack([m.state["item_emb.weight"] for m in self.submodels], dim=1))
        return (torch.stack([m.user_out for m in self.submodels], dim=1),
                torch.stack([m.item_out for m in self.submodels], dim=1))

    def full_graph(self) -> Graph | None:
        """The LightGCN graph of all stored interactions if the aggregator propagates, else None."""
        if self.config.aggregator.propagate_layers <= 0:
            return None
        return build_graph(torch.from_numpy(self.pairs[:, 0]), torch.from_numpy(self.pairs[:, 1]),
                           self.num_users, self.num_items)

    def train_aggregator(self) -> float:
        """Fit the aggregator from scratch on all stored interactions; returns its seconds."""
        started = time.perf_counter()
        user_stack, item_stack = self.stacks()
        self.graph = self.full_graph()
        self.aggregator, _ = train_aggregator(
            user_stack, item_stack, canonical_pairs(self.pairs, self.num_items), self.num_items,
            self.config.aggregator, shard_seed(self.config.seed, self.config.num_shards),
            self.graph)
        self.aggregator_seconds = time.perf_counter() - started
        return self.aggregator_seconds

    def refresh(self, log: Callable[[str], Any] = lambda _: None) -> dict[str, Any]:
        """Retrain every stale shard, then the aggregator. Returns what was retrained and times."""
        started = time.perf_counter()
        retrained, shard_seconds = sorted(self.stale), {}
        for shard in retrained:
            shard_seconds[shard] = self.train_shard(shard).seconds
            log(f"shard {shard}: {self.submodels[shard].num_interactions} interactions, "
                f"{shard_seconds[shard]:.1f} s")
        aggregator_seconds = self.train_aggregator()
        return {"shards": retrained, "shard_seconds": shard_seconds,
                "aggregator_seconds": aggregator_seconds,
                "seconds": time.perf_counter() - started}

    def unlearn(self, pairs: np.ndarray) -> dict[str, Any]:
        """Forget ``pairs``: withdraw them, retrain affected shards and the aggregator."""
        affected = self.withdraw(pairs)
        return {"affected": affected, **self.refresh()}

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """The ensemble's ``(U, d')`` user and ``(I, d')`` item embeddings (score = inner product)."""
        if self.aggregator is None or self.stale:
            raise RuntimeError("stale ensemble: call refresh() first")
        with torch.no_grad():
            return aggregate_tables(self.aggregator, *self.stacks(), self.graph,
                                    self.config.aggregator.propagate_layers)
