"""The user–item interaction graph and its LightGCN normalisation.

LightGCN (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
Recommendation", SIGIR 2020, eq. 7–8) propagates embeddings over the bipartite user–item graph
with the symmetric-normalised adjacency

    A = [[0, R], [R^T, 0]]                      (N, N),  N = U + I,  R the (U, I) interaction matrix
    Â = D^{-1/2} A D^{-1/2}                     Â_uv = 1 / sqrt(deg(u) · deg(v))  for every edge (u, v)

Node ids: users are ``0 .. U-1``, items are ``U .. U+I-1`` (item ``i`` is node ``U + i``).

This module is imported on the client path and therefore uses torch only (no torch_geometric,
no flwr): importing torch_geometric costs seconds per process.
"""

from __future__ import annotations

from dataclasses import dataclass

import warnings

import torch


@dataclass(frozen=True, eq=False)
class Graph:
    """An undirected bipartite user–item graph, a pure function of its edge set.

    Attributes:
        num_users: U.
        num_items: I.
        edge_index: ``(2, 2E)`` int64. Both directions of each of the E distinct interactions,
            ``(u, U+i)`` and ``(U+i, u)``, sorted lexicographically by (row, col); rows are
            targets and columns sources alike since the graph is symmetric.
        adj: ``(N, N)`` float32 **sparse CSR** tensor Â = D^{-1/2} A D^{-1/2} with the same
            non-zero pattern and order as ``edge_index`` (CSR is what ``torch.sparse.mm`` uses
            fastest on CPU). All-zero (nnz = 0) for an empty edge set.

    ``eq=False``: tensors do not support ``==`` as a boolean, so graphs compare by identity;
    compare ``edge_index`` / ``adj`` explicitly when needed.
    """

    num_users: int
    num_items: int
    edge_index: torch.Tensor
    adj: torch.Tensor

    @property
    def num_nodes(self) -> int:
        """N = U + I."""
        return self.num_users + self.num_items

    @property
    def num_interactions(self) -> int:
        """E, the number of distinct user–item pairs (half the directed edges)."""
        return int(self.edge_index.shape[1]) // 2


def _check_ids(index: torch.Tensor, upper: int, role: str) -> None:
    """Raise ``ValueError`` naming the first id of ``index`` outside ``[0, upper)``."""
    if index.numel() == 0:
        return
    bad = (index < 0) | (index >= upper)
    if bool(bad.any()):
        first = int(index[bad][0])
        raise ValueError(f"{role} id {first} out of range [0, {upper})")


def _as_index(index: torch.Tensor, role: str) -> torch.Tensor:
    """Validate a 1-D integer id tensor and return it as int64 on CPU."""
    index = torch.as_tensor(index)
    if index.dim() != 1:
        raise ValueError(f"{role} must be 1-D, got shape {tuple(index.shape)}")
    if index.dtype.is_floating_point or index.dtype == torch.bool or index.is_complex():
        raise ValueError(f"{role} must hold integer ids, got dtype {index.dtype}")
    return index.to(device="cpu", dtype=torch.long)


def unique_interactions(user_index: torch.Tensor, item_index: torch.Tensor,
                        num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct (user, item) pairs, sorted by (user, item).

    Args:
        user_index: ``(n,)`` int64 user ids.
        item_index: ``(n,)`` int64 item ids.
        num_items: I, used to build the key ``user * I + item``.

    Returns:
        ``(E,)`` user ids and ``(E,)`` item ids, E ≤ n.
    """
    stride = max(num_items, 1)
    key = torch.unique(user_index * stride + item_index, sorted=True)
    return key // stride, key % stride


def symmetric_edge_index(user_index: torch.Tensor, item_index: torch.Tensor,
                         num_users: int, num_items: int) -> torch.Tensor:
    """Both directions of each interaction as node ids, sorted by (row, col).

    Args:
        user_index: ``(E,)`` distinct-pair user ids.
        item_index: ``(E,)`` item ids of the same pairs.
        num_users: U (item ``i`` becomes node ``U + i``).
        num_items: I.

    Returns:
        ``(2, 2E)`` int64 ``edge_index``.
    """
    item_node = item_index + num_users
    row = torch.cat([user_index, item_node])
    col = torch.cat([item_node, user_index])
    order = torch.argsort(row * (num_users + num_items) + col)
    return torch.stack([row[order], col[order]])


def normalized_adjacency(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Â = D^{-1/2} A D^{-1/2} as a sparse CSR tensor (LightGCN eq. 8).

    Args:
        edge_index: ``(2, nnz)`` int64, sorted by (row, col), symmetric, no duplicates.
        num_nodes: N.

    Returns:
        ``(N, N)`` float32 sparse CSR tensor with value ``1/sqrt(deg(row) deg(col))`` per edge.
    """
    row, col = edge_index
    degree = torch.bincount(row, minlength=num_nodes).to(torch.float32)
    inv_sqrt = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    values = inv_sqrt[row] * inv_sqrt[col]
    crow = torch.zeros(num_nodes + 1, dtype=torch.long)
    crow[1:] = torch.cumsum(torch.bincount(row, minlength=num_nodes), dim=0)
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col.clone(), values, size=(num_nodes, num_nodes),
                                       check_invariants=False)


def build_graph(user_index: torch.Tensor, item_index: torch.Tensor,
                num_users: int, num_items: int) -> Graph:
    """Build the LightGCN graph of a set of (user, item) interactions.

    A pure function of the edge *set*: duplicate pairs are dropped and input order does not
    matter (the same set gives identical tensors).

    Args:
        user_index: ``(n,)`` integer user ids in ``[0, U)``.
        item_index: ``(n,)`` integer item ids in ``[0, I)``; pair ``k`` is
            ``(user_index[k], item_index[k])``.
        num_users: U.
        num_items: I.

    Returns:
        The :class:`Graph` (``edge_index`` ``(2, 2E)``, ``adj`` ``(U+I, U+I)`` CSR).

    Raises:
        ValueError: mismatched shapes, non-integer ids, or an id out of range (named).
    """
    if num_users < 0 or num_items < 0:
        raise ValueError(f"negative sizes: num_users={num_users}, num_items={num_items}")
    user_index = _as_index(user_index, "user_index")
    item_index = _as_index(item_index, "item_index")
    if user_index.shape != item_index.shape:
        raise ValueError(f"user_index {tuple(user_index.shape)} and item_index "
                         f"{tuple(item_index.shape)} differ in shape")
    _check_ids(user_index, num_users, "user")
    _check_ids(item_index, num_items, "item")
    users, items = unique_interactions(user_index, item_index, num_items)
    edge_index = symmetric_edge_index(users, items, num_users, num_items)
    adj = normalized_adjacency(edge_index, num_users + num_items)
    return Graph(num_users=num_users, num_items=num_items, edge_index=edge_index, adj=adj)
