"""Tests for common.models: LightGCN propagation vs a dense computation, gradients, BPR-MF."""

import torch

from common.graph import build_graph
from common.losses import bpr_loss
from common.models import BPRMF, LightGCN, lightgcn_propagate


def _small_graph(seed: int = 0, num_users: int = 6, num_items: int = 8, n: int = 20):
    generator = torch.Generator().manual_seed(seed)
    users = torch.randint(0, num_users, (n,), generator=generator)
    items = torch.randint(0, num_items, (n,), generator=generator)
    return build_graph(users, items, num_users, num_items)


def _dense_lightgcn(user_weight, item_weight, adj_dense, num_layers):
    """mean_{k=0..L} Â^k E^(0) with a dense Â."""
    layer = torch.cat([user_weight, item_weight])
    total = layer.clone()
    for _ in range(num_layers):
        layer = adj_dense @ layer
        total = total + layer
    final = total / (num_layers + 1)
    return final[:user_weight.shape[0]], final[user_weight.shape[0]:]


def test_propagate_matches_dense_computation():
    graph = _small_graph()
    user_weight, item_weight = torch.randn(6, 4), torch.randn(8, 4)
    for num_layers in (0, 1, 3):
        users, items = lightgcn_propagate(user_weight, item_weight, graph, num_layers)
        want_users, want_items = _dense_lightgcn(user_weight, item_weight, graph.adj.to_dense(),
                                                 num_layers)
        assert users.shape == (6, 4) and items.shape == (8, 4)
        torch.testing.assert_close(users, want_users)
        torch.testing.assert_close(items, want_items)


def test_propagate_gradients_match_dense_autograd():
    graph = _small_graph(seed=3)
    user_weight = torch.randn(6, 4, requires_grad=True)
    item_weight = torch.randn(8, 4, requires_grad=True)
    users, items = lightgcn_propagate(user_weight, item_weight, graph, 3)
    ((users[:3] ** 2).sum() + items[1:4].sum()).backward()

    dense_user = user_weight.detach().clone().requires_grad_(True)
    dense_item = item_weight.detach().clone().requires_grad_(True)
    want_users, want_items = _dense_lightgcn(dense_user, dense_item, graph.adj.to_dense(), 3)
    ((want_users[:3] ** 2).sum() + want_items[1:4].sum()).backward()

    assert user_weight.grad is not None and item_weight.grad is not None
    assert user_weight.grad.abs().sum() > 0 and item_weight.grad.abs().sum() > 0
    torch.testing.assert_close(user_weight.grad, dense_user.grad)
    torch.testing.assert_close(item_weight.grad, dense_item.grad)


def test_lightgcn_forward_uses_its_tables():
    graph = _small_graph()
    model = LightGCN(6, 8, embedding_dim=5, num_layers=2)
    users, items = model(graph)
    want_users, want_items = lightgcn_propagate(model.user_emb.weight, model.item_emb.weight,
                                                graph, 2)
    torch.testing.assert_close(users, want_users)
    torch.testing.assert_close(items, want_items)
    assert model.user_emb.weight.shape == (6, 5) and model.item_emb.weight.shape == (8, 5)


def test_bprmf_returns_raw_tables():
    model = BPRMF(6, 8, embedding_dim=5)
    users, items = model()
    assert users is model.user_emb.weight and items is model.item_emb.weight
    users_again, _ = model(_small_graph())
    assert users_again is model.user_emb.weight


def test_lightgcn_smoke_training_reduces_bpr_loss():
    torch.manual_seed(0)
    num_users, num_items = 20, 20
    users = torch.arange(num_users).repeat_interleave(4)
    items = (users % 4) * 5 + torch.arange(4).repeat(num_users)       # 4 clusters of 5 items
    graph = build_graph(users, items, num_users, num_items)
    negatives = (items + 5) % num_items                                # another cluster's item
    model = LightGCN(num_users, num_items, embedding_dim=8, num_layers=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)

    def loss_now():
        user_out, item_out = model(graph)
        pos = (user_out[users] * item_out[items]).sum(1)
        neg = (user_out[users] * item_out[negatives]).sum(1)
        return bpr_loss(pos, neg)

    initial = loss_now().item()
    for _ in range(30):
        loss = loss_now()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_now().item() < 0.5 * initial
