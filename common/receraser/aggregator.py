"""Aggregating K shard sub-models into one recommender (RecEraser §3.4, and its baselines).

Inputs are the frozen sub-model outputs stacked per row: users ``(U, K, d)``, items ``(I, K, d)``
(``stack[:, k]`` is shard k's embedding). Every aggregator maps a ``(b, K, d)`` slice of rows to
``(b, d')`` vectors whose inner product is the ensemble's score, so the one project evaluator
(:func:`common.metrics.evaluate_split`) ranks them all.

* :class:`AttentionAggregator`, RecEraser's adaptive aggregation (Chen et al., WWW 2022, Eq. 5–8).
  Per shard a linear transfer into a shared space, then attention over shards, separately for
  users (W_1, b_1, h_1) and items (W_2, b_2, h_2):

      ê_u^k = W_k e_u^k + b_k                                   (transfer, W_k: (d, d))
      α_uk  = exp(h_1ᵀ ReLU(W_1 ê_u^k + b_1)) / Σ_j exp(h_1ᵀ ReLU(W_1 ê_u^j + b_1))
      e_u   = Σ_k α_uk ê_u^k,   likewise e_i with β_ik;   ŷ_ui = ⟨e_u, e_i⟩

  (W_1: (a, d), a = d/2 as in the reference code). Deviation: W_k starts at the identity and b_k at
  0 (the reference draws them N(0, 0.01²)), so training starts from the plain average.
* :class:`AverageAggregator`, SISA (Bourtoule et al., S&P 2021): ŷ_ui = 1/K Σ_k ⟨e_u^k, e_i^k⟩.
* :class:`StaticWeightAggregator`, GraphEraser-style (Chen et al., CCS 2022, learning-based
  aggregation): one learned weight per shard, w = softmax(θ), ŷ_ui = Σ_k w_k ⟨e_u^k, e_i^k⟩.

The last two score shard by shard, so their vectors are the K shard embeddings concatenated,
``d' = K·d`` (users scaled by the shard weight). :func:`train_aggregator` fits any of them with BPR
on the training interactions, sub-models frozen.

LightGCN variant (``AggregatorConfig.propagate_layers = L > 0``, as the reference code's
``train_agg_model2``): the stacks are the sub-models' *layer-0* tables and the aggregated tables
are propagated L LightGCN layers over the full training graph (SIGIR 2020 eq. 7–8),
e = 1/(L+1) Σ_l Â^l E_agg, before scoring. Without it the aggregator combines the sub-models'
propagated outputs directly (no graph work per step; cheaper to retrain on unlearning).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from common.centralized import sample_negatives
from common.graph import Graph
from common.losses import bpr_loss
from common.models import lightgcn_propagate

AGGREGATORS = ("attention", "average", "static")


class AttentionAggregator(nn.Module):
    """RecEraser attention aggregation (Eq. 5–8) over K shards of dimension d."""

    def __init__(self, num_shards: int, dim: int, attention_dim: int | None = None) -> None:
        super().__init__()
        attention_dim = attention_dim or max(dim // 2, 1)
        self.transfer_weight = nn.Parameter(torch.eye(dim).repeat(num_shards, 1, 1))  # (K, d, d)
        self.transfer_bias = nn.Parameter(torch.zeros(num_shards, dim))               # (K, d)
        self.user_attention = _attention_mlp(dim, attention_dim)
        self.item_attention = _attention_mlp(dim, attention_dim)

    def transfer(self, stack: Tensor) -> Tensor:
        """ê^k = W_k e^k + b_k: ``(b, K, d)`` → ``(b, K, d)``."""
        return torch.einsum("bkd,kde->bke", stack, self.transfer_weight) + self.transfer_bias

    def attention(self, stack: Tensor, side: str) -> Tensor:
        """``(b, K)`` softmax weights over shards (rows sum to 1) for ``(b, K, d)`` rows."""
        mlp = self.user_attention if side == "user" else self.item_attention
        return torch.softmax(mlp(self.transfer(stack)).squeeze(-1), dim=1)

    def rows(self, stack: Tensor, side: str) -> Tensor:
        """e = Σ_k α_k ê^k: ``(b, K, d)`` → ``(b, d)``."""
        transferred = self.transfer(stack)
        mlp = self.user_attention if side == "user" else self.item_attention
        weights = torch.softmax(mlp(transferred).squeeze(-1), dim=1)                  # (b, K)
        return (weights.unsqueeze(-1) * transferred).sum(dim=1)


def _attention_mlp(dim: int, attention_dim: int) -> nn.Sequential:
    """h ᵀ ReLU(W x + b): ``(…, d)`` → ``(…, 1)``; W Glorot-normal, b = 0, h = 0.01 (reference)."""
    hidden = nn.Linear(dim, attention_dim)
    nn.init.normal_(hidden.weight, std=math.sqrt(2.0 / (dim + attention_dim)))
    nn.init.zeros_(hidden.bias)
    score = nn.Linear(attention_dim, 1, bias=False)
    nn.init.constant_(score.weight, 0.01)
    return nn.Sequential(hidden, nn.ReLU(), score)


class StaticWeightAggregator(nn.Module):
    """GraphEraser-style static weights w = softmax(θ) ``(K,)``, θ learned (starts uniform)."""

    def __init__(self, num_shards: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_shards))

    def weights(self) -> Tensor:
        """``(K,)`` shard weights, summing to 1."""
        return torch.softmax(self.logits, dim=0)

    def rows(self, stack: Tensor, side: str) -> Tensor:
        """Users: concat_k w_k e_u^k; items: concat_k e_i^k; ``(b, K, d)`` → ``(b, K·d)``."""
        if side == "user":
            stack = stack * self.weights()[None, :, None]
        return stack.reshape(stack.shape[0], -1)


class AverageAggregator(nn.Module):
    """SISA averaging: users concat_k e_u^k / K, items concat_k e_i^k; no parameters."""

    def rows(self, stack: Tensor, side: str) -> Tensor:
        """``(b, K, d)`` → ``(b, K·d)``."""
        if side == "user":
            stack = stack / stack.shape[1]
        return stack.reshape(stack.shape[0], -1)


def make_aggregator(kind: str, num_shards: int, dim: int) -> nn.Module:
    """An untrained aggregator by name (:data:`AGGREGATORS`)."""
    if kind == "attention":
        return AttentionAggregator(num_shards, dim)
    if kind == "static":
        return StaticWeightAggregator(num_shards)
    if kind == "average":
        return AverageAggregator()
    raise ValueError(f"unknown aggregator {kind!r}; expected one of {', '.join(AGGREGATORS)}")


def aggregate_tables(aggregator: nn.Module, user_stack: Tensor, item_stack: Tensor,
                     graph: Graph | None = None, num_layers: int = 0) -> tuple[Tensor, Tensor]:
    """The ensemble's ``(U, d')`` user and ``(I, d')`` item embeddings from ``(U, K, d)`` /
    ``(I, K, d)`` stacks, propagated ``num_layers`` LightGCN layers over ``graph`` if given.
    Differentiable; wrap in ``torch.no_grad()`` for inference."""
    user_out, item_out = aggregator.rows(user_stack, "user"), aggregator.rows(item_stack, "item")
    if graph is not None and num_layers > 0:
        user_out, item_out = lightgcn_propagate(user_out, item_out, graph, num_layers)
    return user_out, item_out


@dataclass(frozen=True)
class AggregatorConfig:
    """How the aggregator is trained (BPR over all training interactions, sub-models frozen)."""

    kind: str = "attention"
    epochs: int = 2
    batch_size: int = 16384
    lr: float = 1e-2
    reg: float = 0.0
    propagate_layers: int = 0        # L > 0: LightGCN variant over the full graph (see above)


def _bpr_step(aggregator: nn.Module, optimizer: torch.optim.Optimizer, user_stack: Tensor,
              item_stack: Tensor, users: Tensor, positives: Tensor, negatives: Tensor,
              reg: float, graph: Graph | None = None, num_layers: int = 0) -> float:
    """One BPR step on ``(B,)`` triples; rows of each distinct user/item are aggregated once."""
    if graph is not None and num_layers > 0:
        user_out, item_out = aggregate_tables(aggregator, user_stack, item_stack, graph,
                                              num_layers)
        pos_scores = (user_out[users] * item_out[positives]).sum(1)
        neg_scores = (user_out[users] * item_out[negatives]).sum(1)
    elif isinstance(aggregator, StaticWeightAggregator):
        pos_scores, neg_scores = _static_scores(aggregator, user_stack, item_stack, users,
                                                positives, negatives)
    else:
        pos_scores, neg_scores = _row_scores(aggregator, user_stack, item_stack, users,
                                             positives, negatives)
    loss = bpr_loss(pos_scores, neg_scores)
    if reg > 0:
        loss = loss + reg * sum(p.pow(2).sum() for p in aggregator.parameters())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _static_scores(aggregator: "StaticWeightAggregator", user_stack: Tensor, item_stack: Tensor,
                   users: Tensor, positives: Tensor,
                   negatives: Tensor) -> tuple[Tensor, Tensor]:
    """``(B,)`` positive and negative Σ_k w_k ⟨e_u^k, e_i^k⟩; the frozen ``(B, K)`` per-shard
    scores are computed without autograd (only w is learned)."""
    with torch.no_grad():
        user_rows = user_stack[users]                                             # (B, K, d)
        pos_shard = (user_rows * item_stack[positives]).sum(-1)                   # (B, K)
        neg_shard = (user_rows * item_stack[negatives]).sum(-1)
    weights = aggregator.weights()
    return pos_shard @ weights, neg_shard @ weights


def _row_scores(aggregator: nn.Module, user_stack: Tensor, item_stack: Tensor, users: Tensor,
                positives: Tensor, negatives: Tensor) -> tuple[Tensor, Tensor]:
    """``(B,)`` positive and negative ⟨e_u, e_i⟩ of the aggregated rows."""
    user_ids, user_pos = torch.unique(users, return_inverse=True)
    item_ids, item_pos = torch.unique(torch.cat([positives, negatives]), return_inverse=True)
    user_vec = aggregator.rows(user_stack[user_ids], "user")[user_pos]                # (B, d')
    item_vec = aggregator.rows(item_stack[item_ids], "item")[item_pos]                # (2B, d')
    pos_vec, neg_vec = item_vec[:len(users)], item_vec[len(users):]
    return (user_vec * pos_vec).sum(1), (user_vec * neg_vec).sum(1)


def train_aggregator(user_stack: Tensor, item_stack: Tensor, pairs: np.ndarray, num_items: int,
                     config: AggregatorConfig, seed: int,
                     graph: Graph | None = None) -> tuple[nn.Module, float]:
    """Build and fit ``config.kind`` on the training ``pairs`` ``(n, 2)`` (canonical order).

    Args:
        user_stack: ``(U, K, d)`` frozen sub-model user embeddings.
        item_stack: ``(I, K, d)`` frozen sub-model item embeddings.
        pairs: training interactions, sorted by (user, item) (the result is a function of them
            and ``seed``). num_items: I.  config: see :class:`AggregatorConfig`.  seed: init + sampler.
        graph: the full training graph of ``pairs``; required when ``config.propagate_layers > 0``.

    Returns:
        The trained aggregator (eval mode) and the training seconds.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    num_shards, dim = user_stack.shape[1], user_stack.shape[2]
    aggregator = make_aggregator(config.kind, num_shards, dim)
    params = list(aggregator.parameters())
    user_stack, item_stack = user_stack.detach(), item_stack.detach()
    if params and len(pairs):
        optimizer = torch.optim.Adam(params, lr=config.lr)
        keys = pairs[:, 0] * num_items + pairs[:, 1]
        for _ in range(config.epochs):
            order = rng.permutation(len(pairs))
            users, positives = pairs[order, 0], pairs[order, 1]
            negatives = sample_negatives(users, keys, num_items, rng)
            for start in range(0, len(users), config.batch_size):
                batch = slice(start, start + config.batch_size)
                _bpr_step(aggregator, optimizer, user_stack, item_stack,
                          torch.from_numpy(users[batch]), torch.from_numpy(positives[batch]),
                          torch.from_numpy(negatives[batch]), config.reg, graph,
                          config.propagate_layers)
    return aggregator.eval(), time.perf_counter() - started
