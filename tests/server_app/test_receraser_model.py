"""The server's RecEraser ensemble on small synthetic data: hash placement, exact unlearning
(the retrained shards and the aggregator bit-identical to a from-scratch training on the
remaining edges, the other shards untouched), staleness as edges arrive, and persistence."""

import numpy as np
import pytest
import torch

from common.config import load_config
from common.graph import build_graph
from common.receraser import shard_seed, train_submodel
from common.receraser.partition import hash_shards
from server_app.receraser_model import ReceraserGraphModel

USERS, ITEMS = 40, 30


def _pairs(seed: int = 0, count: int = 400) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, USERS * ITEMS, count))
    return np.stack([keys // ITEMS, keys % ITEMS], 1)


def _graph(pairs: np.ndarray):
    return build_graph(torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1]), USERS, ITEMS)


def _model(partition: str = "user") -> ReceraserGraphModel:
    cfg = load_config({"unlearning-method": "receraser", "receraser-shards": 4,
                       "receraser-partition": partition, "receraser-epochs": 3,
                       "receraser-aggregator-epochs": 2, "embedding-dim": 8,
                       "server-batch-size": 64})
    return ReceraserGraphModel(USERS, ITEMS, cfg, seed=7)


def _trained(pairs: np.ndarray, partition: str = "user") -> ReceraserGraphModel:
    model = _model(partition)
    model.train(_graph(pairs), torch.from_numpy(pairs))
    return model


def test_hash_placement_is_a_seeded_function_of_the_ids():
    pairs = _pairs()
    by_user = hash_shards(pairs, 4, seed=3, by="user")
    assert np.array_equal(by_user, hash_shards(pairs[::-1], 4, seed=3, by="user")[::-1])
    for user in np.unique(pairs[:, 0]):                     # a user's edges share one shard
        assert len(np.unique(by_user[pairs[:, 0] == user])) == 1
    by_pair = hash_shards(pairs, 4, seed=3, by="random")
    assert np.bincount(by_pair, minlength=4).min() > len(pairs) / 4 * 0.7
    assert not np.array_equal(by_pair, hash_shards(pairs, 4, seed=4, by="random"))
    with pytest.raises(ValueError, match="unknown hash placement"):
        hash_shards(pairs, 4, 0, by="inbp")


@pytest.mark.parametrize("partition", ["user", "random"])
def test_forgetting_retrains_exactly_the_affected_shards_from_scratch(partition):
    pairs = _pairs()
    model = _trained(pairs, partition)
    before = [dict(shard) for shard in model.shards]
    withdrawn = pairs[pairs[:, 0] == pairs[0, 0]][:3]
    affected = model.forget(withdrawn)
    assert all(model.shards[k] is None for k in affected) and model.aggregator is None
    assert model.views(_graph(pairs)) is None                 # never served while stale
    remaining = pairs[~np.isin(pairs[:, 0] * ITEMS + pairs[:, 1],
                               withdrawn[:, 0] * ITEMS + withdrawn[:, 1])]
    model.train(_graph(remaining), torch.from_numpy(remaining))
    config = model.train_config
    for k in range(4):
        if k in affected:
            scratch = train_submodel(model.shard_pairs(remaining, k), USERS, ITEMS, config,
                                     shard_seed(7, k))
            assert torch.equal(model.shards[k]["user"], scratch.state["user_emb.weight"])
            assert torch.equal(model.shards[k]["item"], scratch.state["item_emb.weight"])
            assert not torch.equal(model.shards[k]["user"], before[k]["user"])
        else:
            assert model.shards[k]["user"] is before[k]["user"]     # untouched
    fresh = _trained(remaining, partition)                    # never saw the withdrawn edges
    for name, value in fresh.aggregator.state_dict().items():
        assert torch.equal(model.aggregator.state_dict()[name], value), name
    assert all(torch.equal(a, b) for a, b in zip(model.views(_graph(remaining)),
                                                 fresh.views(_graph(remaining))))


def test_arriving_edges_make_their_shards_stale_and_nothing_else():
    pairs = _pairs()
    first, late = pairs[: len(pairs) - 5], pairs[len(pairs) - 5:]
    model = _trained(first)
    assert model.stale(first) == [] and model.ready(_graph(first))
    untouched = {k: model.shards[k]["user"] for k in range(4)}
    stale = model.stale(pairs)
    assert stale == sorted(set(model.shard_of(late).tolist()))
    assert not model.ready(_graph(pairs))
    model.train(_graph(pairs), torch.from_numpy(pairs))
    assert model.stale(pairs) == [] and model.ready(_graph(pairs))
    assert all(model.shards[k]["user"] is untouched[k] for k in range(4) if k not in stale)
    shards, aggregator = list(model.shards), model.aggregator
    model.train(_graph(pairs), torch.from_numpy(pairs))           # nothing changed: no training
    assert all(a is b for a, b in zip(model.shards, shards)) and model.aggregator is aggregator


def test_saved_and_loaded_ensemble_serves_the_same_views():
    pairs = _pairs()
    model = _trained(pairs)
    loaded = _model()
    loaded.load_state_dict(model.state_dict())
    views, again = model.views(_graph(pairs)), loaded.views(_graph(pairs))
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    assert model.storage_bytes() == loaded.storage_bytes() > 4 * (USERS + ITEMS) * 8 * 4
    with pytest.raises(ValueError, match="not a 4-shard RecEraser"):
        loaded.load_state_dict({"user": torch.zeros(1)})


def test_the_ensemble_only_trains_shards_from_scratch():
    pairs = _pairs()
    with pytest.raises(ValueError, match="from scratch only"):
        _model().train(_graph(pairs), torch.from_numpy(pairs), steps=3)
