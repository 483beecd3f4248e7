"""Ablation: aggregator kind / epochs / lr / propagation on the same LightGCN InBP shards
(30 epochs, batch 8192, Adam 0.01) on ml-1m-receraser.

    PYTHONPATH=. .venv/bin/python bench/receraser_ablation.py

Writes ``bench/out/receraser-ablation-lightgcn-inbp.json`` (one row per aggregator setting).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from common.metrics import evaluate_split, finalize
from common.datasets import load_dataset
from common.receraser import AggregatorConfig, RecEraser, RecEraserConfig, TrainConfig

SETTINGS = (("average", 1, 0.01, 0), ("attention", 2, 0.01, 0), ("attention", 8, 0.01, 0),
            ("attention", 8, 0.001, 0), ("static", 2, 0.01, 0), ("attention", 4, 0.01, 3))


def main() -> None:
    torch.set_num_threads(1)
    ds = load_dataset("ml-1m-receraser")
    submodel = TrainConfig(model="lightgcn", epochs=30, batch_size=8192, lr=0.01)
    config = RecEraserConfig(partition="inbp", submodel=submodel,
                             aggregator=AggregatorConfig(kind="average"))
    ensemble = RecEraser.build(ds.train, ds.num_users, ds.num_items, config, log=print)
    print("shards", sum(ensemble.refresh()["shard_seconds"].values()), flush=True)
    rows = []
    for kind, epochs, lr, layers in SETTINGS:
        variant = ensemble.with_aggregator(AggregatorConfig(kind=kind, epochs=epochs, lr=lr,
                                                            propagate_layers=layers))
        variant.train_aggregator()
        metrics = finalize(evaluate_split(*variant.embeddings(), ds.train, ds.valid, ds.test, "test"))
        rows.append({"kind": kind, "epochs": epochs, "lr": lr, "propagate": layers,
                     "recall20": metrics["recall@20"], "ndcg20": metrics["ndcg@20"],
                     "seconds": variant.aggregator_seconds})
        print(rows[-1], flush=True)
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/receraser-ablation-lightgcn-inbp.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
