"""Embedding models: LightGCN and BPR-MF, with separate user and item tables.

* LightGCN (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
  Recommendation", SIGIR 2020): E^(k+1) = Â E^(k) (eq. 7, matrix form), final embedding the
  layer mean  E = 1/(L+1) · Σ_{k=0..L} E^(k)  (eq. 8 with α_k = 1/(L+1)),
  score(u, i) = ⟨e_u, e_i⟩ (eq. 5).
* BPR-MF (Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009):
  the raw tables, score(u, i) = ⟨p_u, q_i⟩.

User and item tables are separate ``nn.Embedding`` modules so that user rows can stay on the
device in federated training while item rows are shared.

Server / centralized side only: imports ``torch_geometric`` (seconds per process).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import LGConv

from common.graph import Graph


class _SymmetricSparseMatmul(torch.autograd.Function):
    """``Â @ X`` whose backward reuses Â itself, valid because Â is symmetric.

    Forward: ``(N, N)`` sparse CSR Â times ``(N, d)`` dense X → ``(N, d)``.
    Backward: dL/dX = Â^T G = Â G. Stock ``torch.sparse.mm`` autograd transposes the CSR matrix
    (a CSC product) on every backward call, ~10× slower on CPU in our measurement. Â is a
    constant: no gradient flows to it.
    """

    @staticmethod
    def forward(ctx, adj: Tensor, features: Tensor) -> Tensor:  # type: ignore[override]
        ctx.adj = adj
        return torch.sparse.mm(adj, features)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        return None, torch.sparse.mm(ctx.adj, grad_output.contiguous())


class SymmetricLGConv(LGConv):
    """PyG ``LGConv`` for a pre-normalised, symmetric sparse adjacency.

    Same operator as ``LGConv(normalize=False)`` given the sparse Â (x' = Â x), with the
    sparse-dense product replaced by :class:`_SymmetricSparseMatmul` for a cheap backward.
    """

    def __init__(self) -> None:
        super().__init__(normalize=False)

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:
        return _SymmetricSparseMatmul.apply(adj_t, x)


_CONV = SymmetricLGConv()  # parameter-free: one shared instance


def lightgcn_propagate(user_weight: Tensor, item_weight: Tensor, graph: Graph,
                       num_layers: int) -> tuple[Tensor, Tensor]:
    """LightGCN propagation: E^(k+1) = Â E^(k), output mean_{k=0..L} E^(k) (SIGIR 2020, eq. 7–8).

    Args:
        user_weight: ``(U, d)`` layer-0 user embeddings.
        item_weight: ``(I, d)`` layer-0 item embeddings.
        graph: the graph whose ``adj`` is Â, ``(U+I, U+I)``.
        num_layers: L ≥ 0 (L = 0 returns the inputs).

    Returns:
        Propagated ``(U, d)`` user and ``(I, d)`` item embeddings; differentiable w.r.t. both
        weights.
    """
    num_users, num_items = user_weight.shape[0], item_weight.shape[0]
    if (num_users, num_items) != (graph.num_users, graph.num_items):
        raise ValueError(f"tables ({num_users} users, {num_items} items) do not match the graph "
                         f"({graph.num_users} users, {graph.num_items} items)")
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0, got {num_layers}")
    layer = torch.cat([user_weight, item_weight], dim=0)
    layer_sum = layer
    for _ in range(num_layers):
        layer = _CONV(layer, graph.adj)
        layer_sum = layer_sum + layer
    final = layer_sum / (num_layers + 1)
    return final[:num_users], final[num_users:]


@torch.no_grad()
def lightgcn_item_layer_sum(user_weight: Tensor, item_weight: Tensor, graph: Graph,
                            num_layers: int) -> Tensor:
    """``(I, d)`` S = Σ_{k=0..L-1} E_I^(k): the item layers a user's propagation reads.

    LightGCN's user output is e_u = 1/(L+1) · (e_u^(0) + Σ_{k=1..L} e_u^(k)) with
    e_u^(k+1) = Σ_{i∈N(u)} e_i^(k) / sqrt(|N(u)| |N(i)|) (SIGIR 2020, eq. 3 and 8), so
    Σ_{k=1..L} e_u^(k) = Σ_{i∈N(u)} S_i / sqrt(|N(u)| |N(i)|): with S and the item degrees
    anyone who knows N(u) can compute e_u without the rest of the graph.
    """
    layer = torch.cat([user_weight, item_weight], dim=0)
    layer_sum = torch.zeros_like(item_weight)
    for _ in range(num_layers):
        layer_sum = layer_sum + layer[graph.num_users:]
        layer = _CONV(layer, graph.adj)
    return layer_sum


def _embedding(num_rows: int, embedding_dim: int, init_std: float) -> nn.Embedding:
    """An ``(num_rows, d)`` table initialised N(0, init_std²) (LightGCN reference init)."""
    table = nn.Embedding(num_rows, embedding_dim)
    nn.init.normal_(table.weight, std=init_std)
    return table


class LightGCN(nn.Module):
    """LightGCN with separate ``(U, d)`` user and ``(I, d)`` item tables (layer-0 embeddings)."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64,
                 num_layers: int = 3, init_std: float = 0.1) -> None:
        super().__init__()
        self.user_emb = _embedding(num_users, embedding_dim, init_std)
        self.item_emb = _embedding(num_items, embedding_dim, init_std)
        self.num_layers = num_layers

    def forward(self, graph: Graph) -> tuple[Tensor, Tensor]:
        """Propagated ``(U, d)`` user and ``(I, d)`` item embeddings on ``graph``."""
        return lightgcn_propagate(self.user_emb.weight, self.item_emb.weight, graph,
                                  self.num_layers)


class BPRMF(nn.Module):
    """Matrix factorisation for BPR (Rendle et al., UAI 2009): ``(U, d)`` and ``(I, d)`` tables."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64,
                 init_std: float = 0.1) -> None:
        super().__init__()
        self.user_emb = _embedding(num_users, embedding_dim, init_std)
        self.item_emb = _embedding(num_items, embedding_dim, init_std)

    def forward(self, graph: Graph | None = None) -> tuple[Tensor, Tensor]:
        """The raw ``(U, d)`` user and ``(I, d)`` item tables; ``graph`` is ignored."""
        return self.user_emb.weight, self.item_emb.weight
