"""Shard sub-models: one BPR-MF or LightGCN per shard, trained only on that shard's interactions.

RecEraser (Chen et al., WWW 2022, §3.3): every shard S_k trains its own base model with the same
hyper-parameters; here the project's models (:mod:`common.models`, LightGCN on PyG ``LGConv``)
and training step (:func:`common.centralized.train_step`: BPR + per-batch L2 on layer-0 rows,

    L_k = 1/B Σ_b softplus(ŷ_{u,j} − ŷ_{u,i}) + reg · (‖e_u‖² + ‖e_i‖² + ‖e_j‖²) / (2B),

one uniform negative per interaction per epoch rejecting the user's positives *in the shard*).
LightGCN propagates over the shard's own graph (:func:`common.graph.build_graph` of S_k, all U+I
nodes), as the reference code does with a per-shard adjacency.

:func:`train_submodel` is a pure function of (interaction *set*, sizes, config, seed): the pairs
are put in canonical (user, item) order first, torch and numpy are seeded from ``seed``. That is
what makes unlearning exact: retraining a shard without the withdrawn interactions gives the
model a from-scratch training on the remaining data gives, bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from common.centralized import make_model, sample_negatives, train_step
from common.graph import build_graph


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters shared by every sub-model (and by the full Retrain baseline)."""

    model: str = "lightgcn"          # "lightgcn" | "bprmf"
    epochs: int = 20
    embedding_dim: int = 64
    num_layers: int = 3
    batch_size: int = 2048
    lr: float = 1e-3
    reg: float = 1e-4


@dataclass
class SubModel:
    """A trained sub-model.

    Attributes:
        state: the layer-0 tables ``{"user_emb.weight": (U, d), "item_emb.weight": (I, d)}``.
        user_out: ``(U, d)`` output (propagated for LightGCN) user embeddings, detached.
        item_out: ``(I, d)`` output item embeddings, detached.
        num_interactions: |S_k| it was trained on.
        seconds: training wall time.
    """

    state: dict[str, Tensor]
    user_out: Tensor
    item_out: Tensor
    num_interactions: int
    seconds: float


def canonical_pairs(pairs: np.ndarray, num_items: int) -> np.ndarray:
    """``(n, 2)`` int64 distinct ``[user, item]`` rows sorted by (user, item)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    keys = np.unique(pairs[:, 0] * num_items + pairs[:, 1])
    return np.column_stack([keys // num_items, keys % num_items])


def shard_seed(seed: int, shard: int) -> int:
    """The seed of shard k's sub-model: fixed per (run seed, shard), reused on retraining."""
    return int(np.random.SeedSequence([seed, shard]).generate_state(1)[0])


def train_submodel(pairs: np.ndarray, num_users: int, num_items: int, config: TrainConfig,
                   seed: int, on_epoch: Callable[[int, Tensor, Tensor], None] | None = None
                   ) -> SubModel:
    """Train ``config.model`` from scratch on the interaction set ``pairs`` (``(n, 2)``).

    ``on_epoch(epoch, user_out, item_out)`` (optional, for training curves) sees the detached
    outputs after each epoch (1-based); it does not change the training.
    Returns the :class:`SubModel`; identical inputs give bit-identical tables.
    """
    started = time.perf_counter()
    train = canonical_pairs(pairs, num_items)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    graph = build_graph(torch.from_numpy(train[:, 0]), torch.from_numpy(train[:, 1]),
                        num_users, num_items)
    net = make_model(config.model, num_users, num_items, config.embedding_dim, config.num_layers)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    positive_keys = train[:, 0] * num_items + train[:, 1]                     # sorted
    for epoch in range(config.epochs if len(train) else 0):
        order = rng.permutation(len(train))
        users, positives = train[order, 0], train[order, 1]
        negatives = sample_negatives(users, positive_keys, num_items, rng)
        for start in range(0, len(users), config.batch_size):
            batch = slice(start, start + config.batch_size)
            train_step(net, graph, optimizer, torch.from_numpy(users[batch]),
                       torch.from_numpy(positives[batch]), torch.from_numpy(negatives[batch]),
                       config.reg)
        if on_epoch is not None:
            with torch.no_grad():
                on_epoch(epoch + 1, *(t.detach().clone() for t in net(graph)))
    net.eval()
    with torch.no_grad():
        user_out, item_out = net(graph)
    state = {name: tensor.detach().clone() for name, tensor in net.state_dict().items()}
    return SubModel(state, user_out.detach().clone(), item_out.detach().clone(), len(train),
                    time.perf_counter() - started)


def pretrain_embeddings(pairs: np.ndarray, num_users: int, num_items: int, epochs: int = 10,
                        embedding_dim: int = 64, lr: float = 1e-2, batch_size: int = 8192,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """BPR-MF embeddings pre-trained on ``pairs`` for the partitions (RecEraser §3.2).

    Returns ``(U, d)`` p_u and ``(I, d)`` q_i as float64 numpy arrays.
    """
    config = TrainConfig(model="bprmf", epochs=epochs, embedding_dim=embedding_dim,
                         batch_size=batch_size, lr=lr)
    model = train_submodel(pairs, num_users, num_items, config, seed)
    return model.user_out.double().numpy(), model.item_out.double().numpy()
