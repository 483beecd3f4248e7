"""Tests for common.graph: edge_index / Â of a hand-made graph, set semantics, validation."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.graph import Graph, build_graph

# 2 users, 3 items; interactions (u0,i0) (u0,i1) (u1,i1) (u1,i2).
# Node ids: u0=0, u1=1, i0=2, i1=3, i2=4.  Degrees: u0 2, u1 2, i0 1, i1 2, i2 1.
USERS = torch.tensor([0, 0, 1, 1])
ITEMS = torch.tensor([0, 1, 1, 2])


def _same_graph(a: Graph, b: Graph) -> None:
    assert (a.num_users, a.num_items) == (b.num_users, b.num_items)
    assert torch.equal(a.edge_index, b.edge_index)
    assert torch.equal(a.adj.crow_indices(), b.adj.crow_indices())
    assert torch.equal(a.adj.col_indices(), b.adj.col_indices())
    assert torch.equal(a.adj.values(), b.adj.values())


def test_edge_index_is_sorted_and_symmetric():
    graph = build_graph(USERS, ITEMS, 2, 3)
    expected = torch.tensor([[0, 0, 1, 1, 2, 3, 3, 4],
                             [2, 3, 3, 4, 0, 0, 1, 1]])
    assert graph.edge_index.dtype == torch.long
    assert torch.equal(graph.edge_index, expected)
    assert graph.num_nodes == 5 and graph.num_interactions == 4


def test_adj_matches_hand_computed_normalisation():
    graph = build_graph(USERS, ITEMS, 2, 3)
    assert graph.adj.layout == torch.sparse_csr and graph.adj.dtype == torch.float32
    half, root_half = 1 / math.sqrt(2 * 2), 1 / math.sqrt(2 * 1)   # 1/sqrt(deg_u deg_i)
    expected = torch.zeros(5, 5)
    for user, item, weight in [(0, 2, root_half), (0, 3, half), (1, 3, half), (1, 4, root_half)]:
        expected[user, item] = expected[item, user] = weight
    torch.testing.assert_close(graph.adj.to_dense(), expected)


def test_adj_equals_dense_formula():
    torch.manual_seed(0)
    users, items = torch.randint(0, 7, (40,)), torch.randint(0, 9, (40,))
    graph = build_graph(users, items, 7, 9)
    adjacency = torch.zeros(16, 16)
    adjacency[users, items + 7] = 1.0
    adjacency[items + 7, users] = 1.0
    degree = adjacency.sum(dim=1)
    inv_sqrt = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    torch.testing.assert_close(graph.adj.to_dense(), inv_sqrt[:, None] * adjacency * inv_sqrt)


def test_order_and_duplicates_do_not_matter():
    reference = build_graph(USERS, ITEMS, 2, 3)
    perm = torch.tensor([3, 1, 0, 2])
    shuffled = build_graph(USERS[perm], ITEMS[perm], 2, 3)
    duplicated = build_graph(torch.cat([USERS, USERS[:2]]), torch.cat([ITEMS, ITEMS[:2]]), 2, 3)
    _same_graph(reference, shuffled)
    _same_graph(reference, duplicated)


def test_empty_edge_set():
    empty = torch.empty(0, dtype=torch.long)
    graph = build_graph(empty, empty, 2, 3)
    assert graph.edge_index.shape == (2, 0)
    assert graph.adj.shape == (5, 5)
    assert torch.equal(graph.adj.to_dense(), torch.zeros(5, 5))


@pytest.mark.parametrize("users, items, message", [
    ([0, 2], [0, 1], "user id 2"),
    ([0, -1], [0, 1], "user id -1"),
    ([0, 1], [0, 3], "item id 3"),
])
def test_out_of_range_ids_raise(users, items, message):
    with pytest.raises(ValueError, match=message):
        build_graph(torch.tensor(users), torch.tensor(items), 2, 3)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        build_graph(torch.tensor([0, 1]), torch.tensor([0]), 2, 3)


def test_client_path_modules_do_not_import_torch_geometric_or_flwr():
    code = "import sys, common.graph, common.losses, common.metrics; " \
           "print(any(m.startswith(('torch_geometric', 'flwr')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"
