"""Ablation: aggregator kind / epochs / lr / propagation / batch on the same LightGCN shards
(30 epochs, batch 8192, Adam 0.01) on ml-1m-receraser.

    PYTHONPATH=. .venv/bin/python bench/receraser_ablation.py --partition inbp \
        --settings attention:4:0.01:3:16384 attention:60:0.05:3:0

A setting is ``kind:epochs:lr:propagate_layers[:batch]`` (batch 0: all interactions in one
step, full-batch). The shards are trained once; each setting fits its aggregator from scratch
on their frozen tables. Writes ``--out`` (one row per setting, plus the run manifest) after
every row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common.datasets import load_dataset
from common.manifest import run_manifest
from common.metrics import evaluate_split, finalize
from common.receraser import AggregatorConfig, RecEraser, RecEraserConfig, TrainConfig

DEFAULT_SETTINGS = ("average:1:0.01:0", "attention:2:0.01:0", "attention:8:0.01:0",
                    "attention:8:0.001:0", "static:2:0.01:0", "attention:4:0.01:3")


def parse_setting(text: str) -> AggregatorConfig:
    """``kind:epochs:lr:layers[:batch]`` -> an :class:`AggregatorConfig` (batch 0: full-batch)."""
    parts = text.split(":")
    if len(parts) not in (4, 5):
        raise SystemExit(f"--settings: {text!r} is not kind:epochs:lr:layers[:batch]")
    kind, epochs, lr, layers = parts[0], int(parts[1]), float(parts[2]), int(parts[3])
    batch = int(parts[4]) if len(parts) == 5 else AggregatorConfig.batch_size
    return AggregatorConfig(kind=kind, epochs=epochs, lr=lr, propagate_layers=layers,
                            batch_size=batch if batch > 0 else 1 << 40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partition", default="inbp")
    parser.add_argument("--shard-epochs", type=int, default=30)
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS))
    parser.add_argument("--out", default="bench/out/receraser-ablation-lightgcn-inbp.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    settings = [parse_setting(s) for s in args.settings]
    torch.set_num_threads(args.threads)
    ds = load_dataset("ml-1m-receraser")
    manifest = run_manifest(vars(args), 0, ds.fingerprint)   # before the work: the code that runs
    submodel = TrainConfig(model="lightgcn", epochs=args.shard_epochs, batch_size=8192, lr=0.01)
    config = RecEraserConfig(partition=args.partition, submodel=submodel,
                             aggregator=AggregatorConfig(kind="average"))
    ensemble = RecEraser.build(ds.train, ds.num_users, ds.num_items, config, log=print)
    print("shards", sum(ensemble.refresh()["shard_seconds"].values()), flush=True)
    rows, out = [], Path(args.out)
    for text, aggregator in zip(args.settings, settings):
        variant = ensemble.with_aggregator(aggregator)
        variant.train_aggregator()
        metrics = finalize(evaluate_split(*variant.embeddings(), ds.train, ds.valid, ds.test, "test"))
        rows.append({"partition": args.partition, "setting": text, "kind": aggregator.kind,
                     "epochs": aggregator.epochs, "lr": aggregator.lr,
                     "propagate": aggregator.propagate_layers, "batch": aggregator.batch_size,
                     "recall20": metrics["recall@20"], "ndcg20": metrics["ndcg@20"],
                     "seconds": variant.aggregator_seconds})
        print(rows[-1], flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rows": rows, "manifest": manifest}, indent=1))


if __name__ == "__main__":
    main()
