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


def test_judging_many_unshare_requests_reads_the_store_once_not_per_request(tmp_path):
    """10^5 requests against a store of 10^5 edges: the store is searched a constant number
    of times (its O(E) key table built), not once per request (counted with the profiler;
    not timed)."""
    import cProfile
    import pstats

    from common.config import load_config
    from server_app.records import Catalog
    from server_app.state import ServerState
    from server_app.withdrawal import Withdrawal

    cfg = load_config({"state-dir": str(tmp_path), "unlearning-method": "naive"})
    state = ServerState(cfg, tmp_path / "server")
    state.initialize(Catalog(1000, 200, "fp"))
    users, items = np.divmod(np.arange(100_000), 100)
    state.add_edges(np.stack([users % 1000, items], 1), 1)
    state.registry.connect([1])
    state.registry.claim(1, np.arange(1000))
    requests = {r: (r % 1000, np.array([r % 100])) for r in range(100_000)}
    profiler = cProfile.Profile()
    profiler.runcall(Withdrawal(cfg, state).judge, 1, requests)
    calls = {f[2]: n for f, (n, *_rest) in pstats.Stats(profiler).stats.items()
             if f[0].endswith("edge_store.py")}
    assert calls["_keys"] <= 4, calls
    assert len(state.outcomes) == 100_000 and not any(a.refused for a in state.outcomes.values())
