import pytest
import torch
import torch.nn.functional as F

from client_app.local_training import (GlobalView, LocalHyper, evaluate_local, fused_tables,
                                       train_local)
from common.metrics import mask_scores, ranking_metric_sums

NUM_USERS, NUM_ITEMS, DIM = 30, 40, 8


def _group_split(seed=0):
    """Users in 2 groups; group g likes items g*20 .. g*20+19: 14 known, 6 held out per user."""
    gen = torch.Generator().manual_seed(seed)
    known, held = [], []
    for u in range(NUM_USERS):
        order = torch.randperm(20, generator=gen) + (u % 2) * 20
        known += [(u, int(i)) for i in order[:14]]
        held += [(u, int(i)) for i in order[14:]]
    return torch.tensor(known), torch.tensor(held)


def _pairs():
    return _group_split()[0]


def _view(item_emb, user_graph=None, shares=None, item_graph=None, negatives=None):
    user_graph = torch.zeros(NUM_USERS, DIM) if user_graph is None else user_graph
    shares = torch.zeros(NUM_USERS, dtype=torch.bool) if shares is None else shares
    return GlobalView(item_emb, item_graph, user_graph, shares, negatives)


def _hp(**kw):
    base = dict(epochs=20, lr=0.05, batch_size=64, reg=0.0, cl_weight=0.0, cl_temperature=0.5)
    return LocalHyper(**{**base, **kw})


def test_update_reports_touched_rows_with_counts():
    torch.manual_seed(0)
    pairs = _pairs()
    update = train_local(0.1 * torch.randn(NUM_USERS, DIM), pairs,
                         _view(0.1 * torch.randn(NUM_ITEMS, DIM)), _hp(epochs=2), seed=1)
    assert set(pairs[:, 1].tolist()) <= set(update.index.tolist())
    assert update.counts.sum() == 2 * 2 * len(pairs)  # one positive + one negative per sample
    assert update.values.shape == (len(update.index), DIM) and update.num_examples == 2 * len(pairs)


def test_training_learns_the_group_structure():
    torch.manual_seed(0)
    pairs, truth = _group_split()
    view = _view(0.1 * torch.randn(NUM_ITEMS, DIM))
    update = train_local(0.1 * torch.randn(NUM_USERS, DIM), pairs, view, _hp(), seed=0)
    trained = _view(view.item_emb.clone().index_copy_(0, torch.from_numpy(update.index),
                                                      torch.from_numpy(update.values)))
    sums = evaluate_local(update.user_emb, trained, pairs, truth)
    assert sums["recall@10"] / sums["num-users"] > 0.8  # a random ranking gives 10/26


def test_evaluation_is_additive_over_partitions_and_matches_direct_metrics():
    torch.manual_seed(1)
    users, items = torch.randn(NUM_USERS, DIM), torch.randn(NUM_ITEMS, DIM)
    known, truth = _pairs()[::3], _pairs()[1::3]
    view = _view(items)
    whole = evaluate_local(users, view, known, truth, batch_users=7)
    direct = ranking_metric_sums(mask_scores(users @ items.T, known[:, 0], known[:, 1]),
                                 truth[:, 0], truth[:, 1])
    assert whole.keys() == direct.keys()
    assert all(abs(whole[k] - direct[k]) < 1e-9 for k in whole)
    half = NUM_USERS // 2
    parts = []
    for lo, hi in ((0, half), (half, NUM_USERS)):
        sel_k = (known[:, 0] >= lo) & (known[:, 0] < hi)
        sel_t = (truth[:, 0] >= lo) & (truth[:, 0] < hi)
        shift = torch.tensor([lo, 0])
        part_view = GlobalView(items, None, torch.zeros(hi - lo, DIM),
                               torch.zeros(hi - lo, dtype=torch.bool), None)
        parts.append(evaluate_local(users[lo:hi], part_view, known[sel_k] - shift, truth[sel_t] - shift))
    assert all(abs(parts[0][k] + parts[1][k] - whole[k]) < 1e-9 for k in whole)


def test_fusion_rules():
    e_u, e_i, g_u, h_i = (torch.randn(NUM_USERS, DIM), torch.randn(NUM_ITEMS, DIM),
                          torch.randn(NUM_USERS, DIM), torch.randn(NUM_ITEMS, DIM))
    view = _view(e_i, user_graph=g_u, item_graph=h_i)
    users, items = fused_tables(e_u, e_i, view, "sum")
    assert torch.allclose(users @ items.T, (e_u + g_u) @ (e_i + h_i).T, atol=1e-5)
    users, items = fused_tables(e_u, e_i, view, "concat")
    assert torch.allclose(users @ items.T, e_u @ e_i.T + g_u @ h_i.T, atol=1e-5)
    users, items = fused_tables(e_u, e_i, _view(e_i), "sum")  # no graph: plain MF
    assert torch.equal(users, e_u) and torch.equal(items, e_i)


def test_weighted_fusion_follows_the_share_the_server_holds():
    e_u, e_i, g_u, h_i = (torch.randn(NUM_USERS, DIM), torch.randn(NUM_ITEMS, DIM),
                          torch.randn(NUM_USERS, DIM), torch.randn(NUM_ITEMS, DIM))
    weight = torch.linspace(0, 1, NUM_USERS)
    view = GlobalView(e_i, h_i, g_u, torch.ones(NUM_USERS, dtype=torch.bool), None, weight)
    users, items = fused_tables(e_u, e_i, view, "weighted")
    expected = weight[:, None] * (g_u @ h_i.T) + (1 - weight[:, None]) * (e_u @ (e_i + h_i).T)
    assert torch.allclose(users @ items.T, expected, atol=1e-4)
    assert torch.allclose((users @ items.T)[-1], g_u[-1] @ h_i.T, atol=1e-4)  # shares all: graph only
    assert torch.allclose((users @ items.T)[0], e_u[0] @ (e_i + h_i).T, atol=1e-4)  # shares nothing


def test_alignment_pulls_sharing_users_towards_their_global_view():
    torch.manual_seed(2)
    pairs, start = _pairs(), 0.1 * torch.randn(NUM_USERS, DIM)
    g_u = torch.randn(NUM_USERS, DIM)
    shares = torch.arange(NUM_USERS) < 10
    view = _view(0.1 * torch.randn(NUM_ITEMS, DIM), user_graph=g_u * shares[:, None], shares=shares)
    cos = lambda upd: F.cosine_similarity(upd.user_emb[:10], g_u[:10]).mean()
    plain = train_local(start, pairs, view, _hp(epochs=5), seed=3)
    aligned = train_local(start, pairs, view, _hp(epochs=5, cl_weight=1.0), seed=3)
    assert cos(aligned) > cos(plain) + 0.2


def test_item_side_alignment_pulls_trained_item_rows_towards_the_server_item_views():
    torch.manual_seed(4)
    pairs, start = _pairs(), 0.1 * torch.randn(NUM_USERS, DIM)
    h_i = torch.randn(NUM_ITEMS, DIM)
    view = _view(0.1 * torch.randn(NUM_ITEMS, DIM), item_graph=h_i)   # nobody shares a user row
    def cos(update):
        return F.cosine_similarity(torch.from_numpy(update.values), h_i[update.index]).mean()
    plain = train_local(start, pairs, view, _hp(epochs=5), seed=3)
    aligned = train_local(start, pairs, view, _hp(epochs=5, cl_weight=1.0, cl_side="item"), seed=3)
    user_only = train_local(start, pairs, view, _hp(epochs=5, cl_weight=1.0, cl_side="user"), seed=3)
    assert cos(aligned) > cos(plain) + 0.2
    assert torch.equal(torch.from_numpy(user_only.values), torch.from_numpy(plain.values))


def _dense_reference(user_emb, pairs, view, hp, seed):
    """Adam over the whole item table (how local training worked before it became sparse)."""
    from client_app.local_training import _batch_loss
    generator = torch.Generator().manual_seed(seed)
    user = user_emb.clone().requires_grad_(True)
    item = view.item_emb.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([user, item], lr=hp.lr)
    for _ in range(hp.epochs):
        for batch in torch.randperm(len(pairs), generator=generator).split(hp.batch_size):
            neg = torch.randint(len(item), (len(batch),), generator=generator)
            loss = _batch_loss(user, item, view, pairs[batch, 0], pairs[batch, 1], neg, hp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return user.detach(), item.detach()


def test_training_only_touched_rows_equals_adam_over_the_whole_table():
    torch.manual_seed(3)
    pairs, catalog = _pairs()[::3], 400        # a catalog much larger than what a round touches
    graph = 0.1 * torch.randn(catalog, DIM)
    shares = torch.arange(NUM_USERS) % 3 == 0
    view = _view(0.1 * torch.randn(catalog, DIM), user_graph=0.1 * torch.randn(NUM_USERS, DIM) * shares[:, None],
                 shares=shares, item_graph=graph, negatives=torch.randn(4, DIM))
    hp = _hp(epochs=3, batch_size=16, reg=1e-3, cl_weight=0.1)
    user_emb = 0.1 * torch.randn(NUM_USERS, DIM)
    update = train_local(user_emb, pairs, view, hp, seed=5)
    user_ref, item_ref = _dense_reference(user_emb, pairs, view, hp, seed=5)
    moved = torch.nonzero((item_ref != view.item_emb).any(1)).flatten()
    assert 0 < len(update.index) < catalog
    assert set(moved.tolist()) <= set(update.index.tolist())
    assert torch.equal(update.user_emb, user_ref)
    assert torch.equal(torch.from_numpy(update.values), item_ref[update.index])

def test_nodes_sum_to_the_centralized_evaluation():
    """Federated evaluation (nodes' evaluate_local sums, added) == the one evaluator run centrally.

    Same user/item tables; each node holds a contiguous block of users in local ids and masks
    with the shared rule (split_pairs): train for validation, train + valid for test.
    """
    import numpy as np

    from common.datasets import partition_users
    from common.metrics import add_sums, evaluate_split, finalize, split_pairs

    torch.manual_seed(3)
    users, items = torch.randn(NUM_USERS, DIM), torch.randn(NUM_ITEMS, DIM)
    known, held = _group_split(seed=3)
    parts = {"train": known, "valid": held[0::3], "test": torch.cat([held[1::3], held[2::3]])}
    for split in ("valid", "test"):
        central = evaluate_split(users, items, parts["train"], parts["valid"], parts["test"], split)
        total: dict[str, float] = {}
        for node in range(4):
            hosted = torch.from_numpy(partition_users(NUM_USERS, node, 4))
            local = {name: _to_local(pairs, hosted) for name, pairs in parts.items()}
            node_known, node_truth = split_pairs(split, local["train"], local["valid"], local["test"])
            view = GlobalView(items, None, torch.zeros(len(hosted), DIM),
                              torch.zeros(len(hosted), dtype=torch.bool), None)
            total = add_sums(total, evaluate_local(users[hosted], view, node_known, node_truth))
        assert total.keys() == central.keys() and central["num-users"] == NUM_USERS
        assert np.allclose([total[k] for k in central], list(central.values()), rtol=1e-12, atol=0)
        assert finalize(total) == pytest.approx(finalize(central), rel=1e-12)


def _to_local(pairs: torch.Tensor, hosted: torch.Tensor) -> torch.Tensor:
    """The rows of ``pairs`` whose user is hosted, with users renumbered 0..len(hosted)-1."""
    mine = torch.isin(pairs[:, 0], hosted)
    return torch.stack([torch.searchsorted(hosted, pairs[mine, 0]), pairs[mine, 1]], 1)
