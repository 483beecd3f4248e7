"""RecEraser aggregators: attention rows are distributions over shards, the simple aggregators
score as their formulas say, and training learns to prefer the informative shard."""

import numpy as np
import pytest
import torch

from common.receraser.aggregator import (AggregatorConfig, AttentionAggregator,
                                         AverageAggregator, StaticWeightAggregator,
                                         aggregate_tables, train_aggregator)

NUM_SHARDS, DIM = 3, 8


def test_attention_rows_sum_to_one():
    torch.manual_seed(0)
    aggregator = AttentionAggregator(NUM_SHARDS, DIM)
    with torch.no_grad():           # make the attention far from uniform
        aggregator.user_attention[2].weight.normal_(std=3.0)
    stack = torch.randn(50, NUM_SHARDS, DIM) * 3
    aggregator.requires_grad_(False)
    for side in ("user", "item"):
        weights = aggregator.attention(stack, side)
        assert weights.shape == (50, NUM_SHARDS) and bool((weights >= 0).all())
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(50))
    assert float(aggregator.attention(stack, "user").std(dim=1).mean()) > 0.05
    manual = (aggregator.attention(stack, "user").unsqueeze(-1)
              * aggregator.transfer(stack)).sum(dim=1)
    torch.testing.assert_close(aggregator.rows(stack, "user"), manual)


def test_average_and_static_scores_follow_their_formulas():
    torch.manual_seed(0)
    user_stack, item_stack = torch.randn(5, NUM_SHARDS, DIM), torch.randn(7, NUM_SHARDS, DIM)
    per_shard = torch.einsum("ukd,ikd->uik", user_stack, item_stack)          # (U, I, K)
    user_out, item_out = aggregate_tables(AverageAggregator(), user_stack, item_stack)
    torch.testing.assert_close(user_out @ item_out.T, per_shard.mean(dim=2))
    static = StaticWeightAggregator(NUM_SHARDS)
    with torch.no_grad():
        static.logits.copy_(torch.tensor([2.0, 0.0, -1.0]))
    user_out, item_out = aggregate_tables(static, user_stack, item_stack)
    torch.testing.assert_close(user_out @ item_out.T, per_shard @ static.weights())
    torch.testing.assert_close(static.weights().sum(), torch.tensor(1.0))


def _one_informative_shard(seed=0):
    """Shard 0 holds embeddings that rank the training items first; shards 1, 2 are noise."""
    rng = np.random.default_rng(seed)
    num_users, num_items = 60, 40
    user_true, item_true = rng.normal(size=(num_users, DIM)), rng.normal(size=(num_items, DIM))
    scores = user_true @ item_true.T
    liked = np.argsort(-scores, axis=1)[:, :5]
    pairs = np.array(sorted((u, int(i)) for u in range(num_users) for i in liked[u]))
    user_stack = torch.tensor(rng.normal(size=(num_users, NUM_SHARDS, DIM)), dtype=torch.float32)
    item_stack = torch.tensor(rng.normal(size=(num_items, NUM_SHARDS, DIM)), dtype=torch.float32)
    user_stack[:, 0], item_stack[:, 0] = torch.tensor(user_true), torch.tensor(item_true)
    return user_stack, item_stack, pairs, num_items


@pytest.mark.parametrize("kind", ["static", "attention"])
def test_training_prefers_the_informative_shard(kind):
    user_stack, item_stack, pairs, num_items = _one_informative_shard()
    config = AggregatorConfig(kind=kind, epochs=10, batch_size=64, lr=0.05)
    aggregator, _ = train_aggregator(user_stack, item_stack, pairs, num_items, config, seed=0)
    if kind == "static":
        assert float(aggregator.weights()[0].detach()) > 0.6
    else:
        with torch.no_grad():
            weights = aggregator.attention(user_stack, "user").mean(dim=0)
        assert int(weights.argmax()) == 0 and float(weights[0]) > 1.0 / NUM_SHARDS + 0.05


def test_training_is_deterministic_under_a_seed():
    user_stack, item_stack, pairs, num_items = _one_informative_shard()
    config = AggregatorConfig(kind="attention", epochs=2, batch_size=64)
    first, _ = train_aggregator(user_stack, item_stack, pairs, num_items, config, seed=3)
    second, _ = train_aggregator(user_stack, item_stack, pairs, num_items, config, seed=3)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
