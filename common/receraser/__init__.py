"""RecEraser (Chen, Sun, Zhang, Ding, "Recommendation Unlearning", WWW 2022): exact unlearning
by shards. Flower-free; see ``docs/receraser.md``."""

from common.receraser.aggregator import (AGGREGATORS, AggregatorConfig, AttentionAggregator,
                                         AverageAggregator, StaticWeightAggregator,
                                         aggregate_tables, make_aggregator, train_aggregator)
from common.receraser.partition import (METHODS, Partition, balanced_kmeans,
                                        capped_greedy_assign, interaction_kmeans,
                                        partition_interactions, random_partition)
from common.receraser.submodels import (SubModel, TrainConfig, canonical_pairs,
                                        pretrain_embeddings, shard_seed, train_submodel)
from common.receraser.unlearn import RecEraser, RecEraserConfig

__all__ = [
    "AGGREGATORS", "AggregatorConfig", "AttentionAggregator", "AverageAggregator",
    "StaticWeightAggregator", "aggregate_tables", "make_aggregator", "train_aggregator",
    "METHODS", "Partition", "balanced_kmeans", "capped_greedy_assign", "interaction_kmeans",
    "partition_interactions", "random_partition", "SubModel", "TrainConfig", "canonical_pairs",
    "pretrain_embeddings", "shard_seed", "train_submodel", "RecEraser", "RecEraserConfig",
]
