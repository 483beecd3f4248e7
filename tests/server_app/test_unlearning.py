import torch

from common.graph import build_graph
from server_app.unlearning import (affected_nodes, snapshot_before,
                                   unlearning_storage_bytes, withdrawn_fraction)


def _graph(pairs, num_users=3, num_items=4):
    pairs = torch.tensor(pairs)
    return build_graph(pairs[:, 0], pairs[:, 1], num_users, num_items)


def test_affected_nodes_by_hops():
    graph = _graph([[0, 0], [1, 0], [1, 1], [2, 3]])   # items are nodes 3..6
    seed = torch.tensor([0])
    assert affected_nodes(graph, seed, 0).tolist() == [0]
    assert affected_nodes(graph, seed, 1).tolist() == [0, 3]
    assert affected_nodes(graph, seed, 2).tolist() == [0, 1, 3]
    assert affected_nodes(graph, seed, 3).tolist() == [0, 1, 3, 4]


def test_withdrawn_fraction():
    old = _graph([[0, 0], [0, 1], [1, 0]])
    new = _graph([[0, 0], [1, 0]])
    fraction = withdrawn_fraction(old, new)
    assert fraction[0].item() == 0.5 and fraction[1].item() == 0.0     # users
    assert fraction[3].item() == 0.0 and fraction[4].item() == 1.0     # items 0, 1
    assert withdrawn_fraction(old, None)[:2].tolist() == [1.0, 1.0]


def test_snapshot_before_picks_last_one_before_entry():
    snaps = {0: "s0", 5: "s5", 10: "s10"}
    assert snapshot_before(snaps, 7) == (5, "s5")
    assert snapshot_before(snaps, 5) == (0, "s0")
    assert snapshot_before(snaps, 11) == (10, "s10")


def test_storage_accounting():
    snaps = {0: {"user": torch.zeros(3, 4), "item": torch.zeros(5, 4)}}
    assert unlearning_storage_bytes(snaps, num_edges=10) == (3 + 5) * 4 * 4 + 10 * 8

