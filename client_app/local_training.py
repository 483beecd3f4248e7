"""Local training and evaluation of all the users a node hosts, vectorized (no per-user loop).

The node's model is matrix factorisation with *private* user rows ``e_u`` (they never leave
the node) and a local copy of the global item table ``e_i``. When the server shares its
graph views, scores fuse local and global representations (docs/method.md §3.4):

    s(u, i) = <e_u + 1[u shares] g_u, e_i + h_i>

where ``g_u`` / ``h_i`` are the server's LightGCN views (fixed during local training).
The local loss is (docs/method.md §3.2)

    L = BPR(D_u) + lambda_cl * InfoNCE(e_u, g_u; tau) + reg * ||theta_batch||^2

over all the node's interactions (shared and private). With no graph (sharing ratio 0)
``g = h = 0`` and ``lambda_cl`` has nothing to align: this is plain federated BPR-MF.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from common.losses import bpr_loss, info_nce, l2_penalty
from common.metrics import evaluate_ranking


@dataclass(frozen=True)
class LocalHyper:
    epochs: int
    lr: float
    batch_size: int
    reg: float
    cl_weight: float
    cl_temperature: float
    fusion: str = "sum"
    cl_side: str = "user"      # "user": e_u ~ g_u (sharing users); "item": e_i ~ h_i; "both"


@dataclass(frozen=True)
class GlobalView:
    """What the server sent for this round; user rows are in node-local order."""

    item_emb: torch.Tensor              # (I, d) global (FedAvg) item table
    item_graph: torch.Tensor | None     # (I, d) server graph item views h_i, or None
    user_graph: torch.Tensor            # (n_u, d) g_u, zero rows for users who share nothing
    user_shares: torch.Tensor           # (n_u,) bool
    negatives: torch.Tensor | None      # (M, d) pooled contrastive negatives
    user_weight: torch.Tensor | None = None  # (n_u,) share of each user's training data the server holds


@dataclass(frozen=True)
class LocalUpdate:
    """Result of a round of local training."""

    user_emb: torch.Tensor   # (n_u, d) new private user table (stays on the node)
    index: np.ndarray        # (r,) int64 changed item rows
    values: np.ndarray       # (r, d) float32 their new values
    counts: np.ndarray       # (r,) float32 training samples that touched each row (FedAvg weight)
    loss: float
    num_examples: int


def fused_tables(user_emb: torch.Tensor, item_emb: torch.Tensor, view: GlobalView,
                 fusion: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """The representations whose dot product is the score.

    ``sum``: ``(e_u + g_u, e_i + h_i)``, shapes (n_u, d), (I, d);
    ``concat``: ``([e_u, g_u], [e_i, h_i])``, i.e. ``s = <e_u, e_i> + <g_u, h_i>``;
    ``weighted``: ``s = w_u <g_u, h_i> + (1 - w_u) <e_u, e_i + h_i>`` with ``w_u`` the share
    of user u's training interactions the server holds (``view.user_weight``): a user who
    shares everything is scored by the graph model alone, one who shares nothing by the local
    user vector against the fused item views; shapes (n_u, 2d), (I, 2d).
    ``ego``: the same form with ``g_u`` the user's ego view (:func:`ego_user_views`, over all
    of the user's interactions) and ``w_u`` the run's ``ego-weight``.
    """
    item_graph = torch.zeros_like(item_emb) if view.item_graph is None else view.item_graph
    if fusion == "concat":
        return torch.cat([user_emb, view.user_graph], 1), torch.cat([item_emb, item_graph], 1)
    if fusion in ("weighted", "ego"):   # ego: user_graph holds the ego views, weight ego-weight
        weight = torch.zeros(len(user_emb), 1) if view.user_weight is None \
            else view.user_weight.unsqueeze(1)
        return (torch.cat([weight * view.user_graph, (1 - weight) * user_emb], 1),
                torch.cat([item_graph, item_emb + item_graph], 1))
    return user_emb + view.user_graph, item_emb + item_graph


def ego_user_views(pairs: torch.Tensor, in_graph: torch.Tensor, num_users: int,
                   item_sum: torch.Tensor, item_degree: torch.Tensor, user_base: torch.Tensor,
                   num_layers: int) -> torch.Tensor:
    """``(n_u, d)`` each hosted user's LightGCN view over their *whole* training history.

    The server's graph holds only shared edges, so its view g_u of a user sees only what the
    user shared. Here the node propagates the server's item layers over the user's full ego
    graph (CDCGNNFed's device-side view; LightGCN, He et al. SIGIR 2020, eq. 3 and 8):

        ĝ_u = 1/(L+1) · (z_u + Σ_{i∈N(u)} S_i / sqrt(|N(u)| · d_i))

    with ``S`` ``(I, d)`` the item-layer sum (:func:`common.models.lightgcn_item_layer_sum`),
    ``d_i`` the item's degree in the shared graph plus one for an edge the graph does not hold
    (a private one), ``N(u)`` all of u's training items and ``z_u`` u's layer-0 row on the
    server (zero for a user who shares nothing). When everything u has is in the graph this
    is exactly the server's g_u. Nothing here leaves the node.

    ``pairs`` ``(n, 2)`` [local user, item]; ``in_graph`` ``(n,)`` bool, the pair is shared;
    ``item_degree`` ``(I,)``; ``user_base`` ``(n_u, d)``.
    """
    users, items = pairs[:, 0], pairs[:, 1]
    degree = (item_degree[items] + (~in_graph).long()).clamp(min=1).float()
    user_degree = torch.bincount(users, minlength=num_users).float()
    weight = (user_degree[users] * degree).rsqrt()
    spread = torch.zeros(num_users, item_sum.shape[1]).index_add_(0, users, item_sum[items] * weight[:, None])
    return (user_base + spread) / (num_layers + 1)


def _user_alignment(user: torch.Tensor, view: GlobalView, user_index: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """InfoNCE between a sharing user's local row ``e_u`` and global view ``g_u``, against the
    other sharing users of the batch and the pooled negatives (0 without sharing users)."""
    sharing = torch.unique(user_index[view.user_shares[user_index]])
    if not len(sharing):
        return user.new_zeros(())
    return info_nce(user[sharing], view.user_graph[sharing], view.negatives, temperature)


def _batch_loss(user: torch.Tensor, item: torch.Tensor, view: GlobalView, user_index, pos, neg,
                hp: LocalHyper, item_only: torch.Tensor | None = None) -> torch.Tensor:
    users, items = fused_tables(user, item, view, hp.fusion)
    u_vec = users[user_index]
    if item_only is not None and item_only.any():   # pseudo-positives: the user does not learn them
        u_vec = torch.where(item_only[:, None], u_vec.detach(), u_vec)
    pos_scores = (u_vec * items[pos]).sum(-1)
    neg_scores = (u_vec * items[neg]).sum(-1)
    loss = bpr_loss(pos_scores, neg_scores)
    loss = loss + hp.reg * l2_penalty(user[user_index], item[pos], item[neg])
    if hp.cl_weight > 0 and hp.cl_side in ("user", "both"):
        loss = loss + hp.cl_weight * _user_alignment(user, view, user_index, hp.cl_temperature)
    if hp.cl_weight > 0 and hp.cl_side in ("item", "both") and view.item_graph is not None:
        items_in_batch = torch.unique(pos)
        loss = loss + hp.cl_weight * info_nce(item[items_in_batch], view.item_graph[items_in_batch],
                                              None, hp.cl_temperature)
    return loss


def _schedule(num_pairs: int, num_items: int, hp: LocalHyper,
              generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(batch, negatives)`` of every step: a permutation of the ``num_pairs`` samples per
    epoch cut into batches, one uniform negative item per sample. Drawn up front (nothing
    depends on the model), in the order training consumes them."""
    steps = []
    for _ in range(hp.epochs):
        order = torch.randperm(num_pairs, generator=generator)
        for batch in order.split(hp.batch_size):
            steps.append((batch, torch.randint(num_items, (len(batch),), generator=generator)))
    return steps


def train_local(user_emb: torch.Tensor, pairs: torch.Tensor, view: GlobalView, hp: LocalHyper,
                seed: int, pseudo: torch.Tensor | None = None) -> LocalUpdate:
    """``hp.epochs`` epochs of mini-batch BPR over ``pairs`` ((n, 2) [local user, item]).

    Only the item rows the round touches (positives and sampled negatives, ``r`` of them) are
    trained, as an ``(r, d)`` table: a row without a gradient has zero Adam moments and does
    not move, so this equals Adam over the whole ``(I, d)`` table while costing O(r·d) per
    step instead of O(I·d) -- a client's work grows with its interactions, not the catalog.

    ``pseudo`` ((m, 2), optional): pseudo-positives (common/upload_privacy.py) trained like
    ``pairs`` except that the user rows get no gradient from them."""
    item_only = torch.zeros(len(pairs), dtype=torch.bool)
    if pseudo is not None and len(pseudo):
        item_only = torch.cat([item_only, torch.ones(len(pseudo), dtype=torch.bool)])
        pairs = torch.cat([pairs, pseudo])
    generator = torch.Generator().manual_seed(seed)
    steps = _schedule(len(pairs), view.item_emb.shape[0], hp, generator)
    rows = torch.unique(torch.cat([pairs[:, 1], *(neg for _, neg in steps)]))   # (r,) sorted
    local = replace(view, item_emb=view.item_emb[rows],
                    item_graph=None if view.item_graph is None else view.item_graph[rows])
    user = user_emb.detach().clone().requires_grad_(True)
    item = local.item_emb.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([user, item], lr=hp.lr)
    positive = torch.searchsorted(rows, pairs[:, 1].contiguous())
    counts = torch.zeros(len(rows))
    total = 0.0
    for batch, neg_items in steps:
        neg = torch.searchsorted(rows, neg_items)
        loss = _batch_loss(user, item, local, pairs[batch, 0], positive[batch], neg, hp,
                           item_only[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        counts.index_add_(0, positive[batch], torch.ones(len(batch)))
        counts.index_add_(0, neg, torch.ones(len(batch)))
        total += loss.item()
    return LocalUpdate(user_emb=user.detach(), index=rows.numpy().astype(np.int64),
                       values=item.detach().numpy().astype(np.float32),
                       counts=counts.numpy().astype(np.float32),
                       loss=total / max(len(steps), 1), num_examples=len(pairs) * hp.epochs)


def evaluate_local(user_emb: torch.Tensor, view: GlobalView, known: torch.Tensor,
                   truth: torch.Tensor, fusion: str = "sum",
                   batch_users: int = 1024) -> dict[str, float]:
    """Full-ranking metric sums for the node's users (the one evaluator, on fused tables).

    ``user_emb`` ``(n_u, d)`` private rows; ``known`` ``((n, 2) [local user, item])`` are masked
    out of the ranking; ``truth`` ``((m, 2))`` are the held-out interactions. Which pairs are
    known for which split is :func:`common.metrics.split_pairs`' rule. Returns sums plus
    ``num-users`` (:func:`common.metrics.evaluate_ranking`).
    """
    users, items = fused_tables(user_emb, view.item_emb, view, fusion)
    return evaluate_ranking(users, items, known, truth, user_batch=batch_users)
