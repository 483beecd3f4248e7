import json

import numpy as np
import pytest

from common.sharing import hash_uniform, load_sharing_file, select_shared, shared_pairs, sharing_ratios


def _pairs(num_users=20, per_user=30, num_items=500, seed=1):
    rng = np.random.default_rng(seed)
    rows = [np.stack([np.full(per_user, u), rng.choice(num_items, per_user, replace=False)], 1)
            for u in range(num_users)]
    return np.concatenate(rows).astype(np.int64)


def test_hash_uniform_is_deterministic_and_uniform():
    keys = np.arange(100_000)
    a, b = hash_uniform(3, 7, keys), hash_uniform(3, 7, keys)
    assert np.array_equal(a, b) and a.min() >= 0 and a.max() < 1
    assert abs(a.mean() - 0.5) < 0.01
    assert not np.array_equal(a, hash_uniform(4, 7, keys))


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_fixed_ratio_shares_rounded_fraction_of_each_user(ratio):
    pairs = _pairs()
    shared = shared_pairs(pairs, ratio, "fixed", seed=0)
    counts = np.bincount(shared[:, 0], minlength=20)
    assert (counts == round(ratio * 30)).all()
    assert {tuple(p) for p in shared} <= {tuple(p) for p in pairs}


def test_selection_ignores_row_order_and_partitioning():
    pairs = _pairs()
    full = shared_pairs(pairs, 0.5, "fixed", seed=0)
    shuffled = pairs[np.random.default_rng(0).permutation(len(pairs))]
    one_node = pairs[pairs[:, 0] < 7]
    as_set = lambda a: {tuple(p) for p in a}
    assert as_set(shared_pairs(shuffled, 0.5, "fixed", 0)) == as_set(full)
    assert as_set(shared_pairs(one_node, 0.5, "fixed", 0)) == {p for p in as_set(full) if p[0] < 7}
    assert as_set(shared_pairs(pairs, 0.5, "fixed", 1)) != as_set(full)


def test_distributions():
    users = np.arange(10_000)
    uniform = sharing_ratios(users, 0.25, "uniform", 0)
    assert abs(uniform.mean() - 0.25) < 0.01 and uniform.max() <= 0.5
    binary = sharing_ratios(users, 0.3, "all-or-nothing", 0)
    assert set(np.unique(binary)) == {0.0, 1.0} and abs(binary.mean() - 0.3) < 0.02
    with pytest.raises(ValueError, match="sharing-distribution"):
        sharing_ratios(users, 0.3, "zipf", 0)


def test_select_shared_mask_matches_quota():
    pairs = _pairs(num_users=3, per_user=10)
    mask = select_shared(pairs, {0: 0.0, 1: 0.34, 2: 1.0}, seed=5)
    assert np.bincount(pairs[mask, 0], minlength=3).tolist() == [0, 3, 10]


def test_explicit_sharing_file(tmp_path):
    pairs = _pairs(num_users=2, per_user=5)
    chosen = pairs[pairs[:, 0] == 1][:2, 1].tolist()
    path = tmp_path / "share.json"
    path.write_text(json.dumps({"1": chosen}))
    shared = shared_pairs(pairs, 0.0, "fixed", 0, load_sharing_file(path))
    assert shared[:, 0].tolist() == [1, 1] and sorted(shared[:, 1]) == sorted(chosen)
    path.write_text(json.dumps({"1": [99999]}))
    with pytest.raises(ValueError, match="not among their training interactions"):
        shared_pairs(pairs, 0.0, "fixed", 0, load_sharing_file(path))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="share.json"):
        load_sharing_file(path)
