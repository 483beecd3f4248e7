import numpy as np
import torch

from common.graph import build_graph
from server_app.edge_store import EdgeStore


def test_add_is_idempotent_and_keeps_first_round():
    store = EdgeStore(5, 7).add(np.array([1, 0, 1]), np.array([3, 2, 3]), 1)
    assert store.pairs().tolist() == [[0, 2], [1, 3]] and store.round.tolist() == [1, 1]
    store = store.add(np.array([1, 4]), np.array([3, 6]), 2)
    assert store.pairs().tolist() == [[0, 2], [1, 3], [4, 6]]
    assert store.round.tolist() == [1, 1, 2]


def test_remove_and_counts():
    store = EdgeStore(5, 7).add(np.array([0, 0, 2]), np.array([1, 2, 3]), 1)
    store = store.remove(np.array([0]), np.array([2]))
    assert store.pairs().tolist() == [[0, 1], [2, 3]]
    assert store.count_by_user(np.array([0, 1, 2])).tolist() == [1, 0, 1]
    assert store.users().tolist() == [0, 2]


def test_graph_after_removal_equals_graph_built_without_those_edges():
    rng = np.random.default_rng(0)
    user, item = rng.integers(0, 30, 200), rng.integers(0, 40, 200)
    store = EdgeStore(30, 40).add(user, item, 1).remove(user[:50], item[:50])
    keep = ~np.isin(user * 40 + item, user[:50] * 40 + item[:50])
    scratch = build_graph(torch.from_numpy(user[keep]), torch.from_numpy(item[keep]), 30, 40)
    pairs = torch.from_numpy(store.pairs())
    rebuilt = build_graph(pairs[:, 0], pairs[:, 1], 30, 40)
    assert torch.equal(rebuilt.edge_index, scratch.edge_index)
    assert torch.equal(rebuilt.adj.to_dense(), scratch.adj.to_dense())


def test_save_load_round_trip(tmp_path):
    store = EdgeStore(5, 7).add(np.array([1, 2]), np.array([3, 4]), 3)
    store.save(tmp_path / "edges.npz")
    loaded = EdgeStore.load(tmp_path / "edges.npz")
    assert loaded.pairs().tolist() == store.pairs().tolist()
    assert loaded.round.tolist() == [3, 3] and (loaded.num_users, loaded.num_items) == (5, 7)


def test_graph_after_removing_edges_equals_graph_built_without_them():
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 20, 150), rng.integers(0, 30, 150)   # with duplicates
    store = EdgeStore(20, 30).add(users, items, 1)
    gone = rng.random(150) < 0.3
    store = store.remove(users[gone], items[gone])
    removed = set(zip(users[gone].tolist(), items[gone].tolist()))
    survivors = sorted({(u, i) for u, i in zip(users.tolist(), items.tolist())} - removed,
                       reverse=True)                                   # another order
    assert removed and survivors
    after = torch.from_numpy(store.pairs())
    graph = build_graph(after[:, 0], after[:, 1], 20, 30)
    scratch = build_graph(torch.tensor([u for u, _ in survivors]),
                          torch.tensor([i for _, i in survivors]), 20, 30)
    assert len(store) == len(survivors)
    assert torch.equal(graph.edge_index, scratch.edge_index)
    assert torch.equal(graph.adj.to_dense(), scratch.adj.to_dense())
