"""RecEraser unlearning is exact: affected shards retrained are bit-identical to from-scratch
training without the withdrawn interactions, other shards untouched, aggregator retrained."""

import numpy as np
import pytest
import torch

from common.receraser import (AggregatorConfig, RecEraser, RecEraserConfig, TrainConfig,
                              canonical_pairs, shard_seed, train_aggregator, train_submodel)
from common.graph import build_graph
from tests.common.test_centralized import _clustered_dataset


def _ensemble(model, partition="inbp"):
    ds = _clustered_dataset()
    config = RecEraserConfig(
        num_shards=4, partition=partition, pretrain_epochs=3, seed=7,
        submodel=TrainConfig(model=model, epochs=3, batch_size=64, lr=0.01, num_layers=2),
        aggregator=AggregatorConfig(kind="attention", epochs=2, batch_size=128))
    ensemble = RecEraser.build(ds.train, ds.num_users, ds.num_items, config)
    ensemble.refresh()
    return ds, ensemble


def _equal_models(first, second):
    return (all(torch.equal(first.state[k], second.state[k]) for k in first.state)
            and torch.equal(first.user_out, second.user_out)
            and torch.equal(first.item_out, second.item_out))


@pytest.mark.parametrize("model", ["bprmf", "lightgcn"])
def test_unlearning_retrains_affected_shards_exactly(model):
    ds, ensemble = _ensemble(model)
    before = list(ensemble.submodels)
    before_pairs = [ensemble.shard_pairs(shard) for shard in range(4)]
    rng = np.random.default_rng(0)
    withdrawn = ensemble.pairs[rng.choice(len(ensemble.pairs), size=3, replace=False)]
    expected = sorted({int(k) for k in ensemble.shard_of[
        np.isin(ensemble.pairs[:, 0] * ds.num_items + ensemble.pairs[:, 1],
                withdrawn[:, 0] * ds.num_items + withdrawn[:, 1])]})
    result = ensemble.unlearn(withdrawn)
    assert result["affected"] == expected == result["shards"] and len(expected) < 4
    withdrawn_keys = set(map(tuple, withdrawn.tolist()))
    for shard in range(4):
        if shard not in expected:
            assert ensemble.submodels[shard] is before[shard]          # untouched
            continue
        remaining = np.array(sorted(set(map(tuple, before_pairs[shard].tolist()))
                                    - withdrawn_keys), dtype=np.int64)
        np.testing.assert_array_equal(ensemble.shard_pairs(shard), remaining)
        scratch = train_submodel(remaining, ds.num_users, ds.num_items, ensemble.config.submodel,
                                 shard_seed(7, shard))
        assert _equal_models(ensemble.submodels[shard], scratch)       # bit-identical
        assert not _equal_models(ensemble.submodels[shard], before[shard])
    aggregator, _ = train_aggregator(*ensemble.stacks(), canonical_pairs(ensemble.pairs,
                                     ds.num_items), ds.num_items, ensemble.config.aggregator,
                                     shard_seed(7, 4))
    for name, tensor in aggregator.state_dict().items():
        assert torch.equal(tensor, ensemble.aggregator.state_dict()[name]), name


def test_unlearned_ensemble_equals_one_built_without_the_data():
    """Same partition, withdrawn pairs never given: identical aggregated embeddings."""
    ds, ensemble = _ensemble("bprmf", partition="ubp")
    withdrawn = ensemble.pairs[[3, 50, 120]]
    ensemble.unlearn(withdrawn)
    clean = RecEraser(ds.num_users, ds.num_items, ensemble.config, ensemble.partition,
                      canonical_pairs(ds.train, ds.num_items))           # the pairs it was fit on
    clean.withdraw(withdrawn)      # removes rows before any training: nothing was learned from them
    clean.refresh()
    for mine, theirs in zip(ensemble.embeddings(), clean.embeddings()):
        assert torch.equal(mine, theirs)


def test_add_marks_only_the_receiving_shards_stale():
    ds, ensemble = _ensemble("bprmf", partition="ubp")
    new_pairs = np.array([[0, 99], [0, 98]])                            # user 0's shard only
    new_pairs = new_pairs[~np.isin(new_pairs[:, 0] * ds.num_items + new_pairs[:, 1],
                                   ensemble.pairs[:, 0] * ds.num_items + ensemble.pairs[:, 1])]
    shards = ensemble.add(new_pairs)
    assert set(shards.tolist()) == {int(ensemble.partition.user_shard[0])} == ensemble.stale
    with pytest.raises(RuntimeError):
        ensemble.embeddings()
    stale = sorted(ensemble.stale)
    assert ensemble.refresh()["shards"] == stale and not ensemble.stale
    user_out, item_out = ensemble.embeddings()
    assert user_out.shape == (ds.num_users, ensemble.config.submodel.embedding_dim)


def test_propagating_aggregator_forgets_the_withdrawn_edges():
    """LightGCN variant: the aggregator's full graph and weights are rebuilt without D."""
    ds = _clustered_dataset()
    config = RecEraserConfig(
        num_shards=3, partition="random", seed=1,
        submodel=TrainConfig(model="lightgcn", epochs=2, batch_size=128, lr=0.01, num_layers=2),
        aggregator=AggregatorConfig(kind="attention", epochs=2, batch_size=256,
                                    propagate_layers=2))
    ensemble = RecEraser.build(ds.train, ds.num_users, ds.num_items, config)
    ensemble.refresh()
    withdrawn = ensemble.pairs[[0, 1, 2, 40]]
    ensemble.unlearn(withdrawn)
    edges = set(map(tuple, ensemble.graph.edge_index.T.tolist()))
    assert not any((u, ds.num_users + i) in edges for u, i in withdrawn.tolist())
    assert ensemble.graph.num_interactions == len(ds.train) - 4
    remaining = canonical_pairs(ensemble.pairs, ds.num_items)
    graph = build_graph(torch.from_numpy(remaining[:, 0]), torch.from_numpy(remaining[:, 1]),
                        ds.num_users, ds.num_items)
    aggregator, _ = train_aggregator(*ensemble.stacks(), remaining, ds.num_items,
                                     config.aggregator, shard_seed(1, 3), graph)
    for name, tensor in aggregator.state_dict().items():
        assert torch.equal(tensor, ensemble.aggregator.state_dict()[name]), name
