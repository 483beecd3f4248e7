"""Ego views (``fusion = "ego"``): a node computes each user's LightGCN view over the user's
whole history from the server's item layers (client_app/local_training.py ego_user_views)."""

import numpy as np
import pytest
import torch

from client_app.local_training import ego_user_views
from common.datasets import default_data_root
from common.graph import build_graph
from server_app.graph_model import ServerGraphModel, ServerHyper
from tests.test_evaluation import _assert_equals_central, _cfg
from harness.session import new_session
from harness.unlearning_runs import served_views

HP = ServerHyper(epochs=1.0, batch_size=64, lr=0.05, reg=0.0, cl_weight=0.0, cl_temperature=1.0,
                 num_layers=3)


def _trained_model(pairs: np.ndarray, num_users: int, num_items: int):
    graph = build_graph(torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1]),
                        num_users, num_items)
    model = ServerGraphModel(num_users, num_items, 8, HP, seed=1)
    model.train(graph, torch.from_numpy(pairs), None)
    return model, graph


def test_a_user_whose_history_is_all_in_the_graph_gets_exactly_the_servers_view():
    rng = np.random.default_rng(0)
    pairs = np.unique(rng.integers(0, [12, 20], size=(90, 2)), axis=0)
    model, graph = _trained_model(pairs, 12, 20)
    server_users, _ = model.views(graph)
    ego = model.ego_tables(graph)
    views = ego_user_views(torch.from_numpy(pairs), torch.ones(len(pairs), dtype=torch.bool), 12,
                           ego.items, ego.degree, ego.users, HP.num_layers)
    torch.testing.assert_close(views, server_users, atol=1e-6, rtol=1e-5)


def test_private_items_enter_with_their_degree_plus_one_and_unknown_items_add_nothing():
    """Hand-computed: user 0 has a shared item 0 (degree 2 in the graph), a private item 1
    (degree 1, +1 for the private edge) and a private item 2 no one shared (degree 0)."""
    item_sum = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    degree = torch.tensor([2, 1, 0])
    pairs = torch.tensor([[0, 0], [0, 1], [0, 2]])
    base = torch.tensor([[4.0, 4.0]])
    view = ego_user_views(pairs, torch.tensor([True, False, False]), 1, item_sum, degree, base, 3)
    expected = (base[0] + item_sum[0] / np.sqrt(3 * 2) + item_sum[1] / np.sqrt(3 * 2)) / 4
    torch.testing.assert_close(view[0], expected)


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="ML-100K not available")
def test_federated_ego_evaluation_at_full_sharing_scores_by_the_servers_views(tmp_path):
    """Through real ClientApps: at sharing ratio 1 every node's ego views are the server's views,
    so the federated metrics equal a central evaluation of the server's graph views alone."""
    cfg = _cfg(tmp_path, **{"sharing-ratio": 1.0, "fusion": "ego"})
    session = new_session(cfg, 4, tmp_path / "fed")
    session.run_rounds(2)
    _, federated = session.strategy.evaluate(session.grid, [1, 2, 3, 4], 2)
    user_views, item_views = (torch.from_numpy(v) for v in session.state.views)
    _assert_equals_central(federated, user_views, item_views, cfg.load_data())


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="ML-100K not available")
def test_federated_ego_evaluation_with_private_data_uses_it(tmp_path):
    """At sharing ratio 0.5 the nodes' ego views see the private half too: the federated metrics
    equal a central evaluation of ego views computed from the full training set, and differ
    from the server's views alone."""
    cfg = _cfg(tmp_path, **{"sharing-ratio": 0.5, "fusion": "ego"})
    session = new_session(cfg, 4, tmp_path / "fed")
    session.run_rounds(2)
    _, federated = session.strategy.evaluate(session.grid, [1, 2, 3, 4], 2)
    ds, state = cfg.load_data(), session.state
    train = np.array(ds.train)
    in_graph = state.edges.contains(train[:, 0], train[:, 1])
    assert 0 < int(in_graph.sum()) < len(train)
    views, items = served_views(session, train)
    _assert_equals_central(federated, views, items, ds)
    with pytest.raises(AssertionError):
        _assert_equals_central(federated, torch.from_numpy(state.views[0]),
                               torch.from_numpy(state.views[1]), ds)
