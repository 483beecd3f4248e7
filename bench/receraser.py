"""RecEraser benchmark: quality and unlearning time of exact shard unlearning vs full Retrain.

    .venv/bin/python bench/receraser.py --model lightgcn --out bench/out/receraser-lightgcn.json

On ``ml-1m-receraser`` (RecEraser's own ML-1M split) for one base model: full Retrain; RecEraser
with UBP / IBP / InBP partitions (attention aggregation); SISA (random shards + averaging); the
GraphEraser-style static learned weights; plus every other partition × aggregator pair, all on
the same shards with the same budget and scored by the one project evaluator
(:func:`common.metrics.evaluate_split`, the one evaluator). Then unlearning: ``--requests`` single-interaction
withdrawals per RecEraser partition (retrain the affected shard + the aggregator), and a random
1 % / 5 % of the interactions withdrawn at once (InBP), each timed against the full Retrain.
Writes ``{"manifest", "rows", "unlearning"}`` JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common_args import print_table, write_json  # noqa: E402
from common.metrics import evaluate_split, finalize  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.manifest import run_manifest  # noqa: E402
from common.receraser import (AggregatorConfig, RecEraser, RecEraserConfig,  # noqa: E402
                              TrainConfig, train_submodel)

COLUMNS = ["method", "partition", "aggregator", "recall@20", "ndcg@20", "ndcg_vs_retrain",
           "train_seconds"]
UNLEARN_COLUMNS = ["partition", "request", "affected", "seconds", "shard_seconds",
                   "aggregator_seconds", "speedup_vs_retrain", "ndcg@20"]
LABELS = {("random", "average"): "SISA", ("ubp", "static"): "GraphEraser-style",
          ("ubp", "attention"): "RecEraser-UBP", ("ibp", "attention"): "RecEraser-IBP",
          ("inbp", "attention"): "RecEraser-InBP"}


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def metrics_of(user_out, item_out, ds) -> dict:
    m = finalize(evaluate_split(user_out, item_out, ds.train, ds.valid, ds.test, "test"))
    return {k: m[k] for k in ("recall@20", "ndcg@20", "recall@10", "ndcg@10")}


def retrain_row(ds, config: TrainConfig, seed: int) -> dict:
    model = train_submodel(ds.train, ds.num_users, ds.num_items, config, seed)
    row = {"method": "Retrain", "partition": "-", "aggregator": "-",
           **metrics_of(model.user_out, model.item_out, ds), "train_seconds": model.seconds}
    log(f"Retrain: ndcg@20 {row['ndcg@20']:.4f} in {model.seconds:.1f} s")
    return row


def ensemble_rows(ds, base: RecEraserConfig, kinds: list[str]) -> tuple[list[dict], RecEraser]:
    """Train one partition's shards once; one row per aggregator; returns the attention ensemble."""
    ensemble = RecEraser.build(ds.train, ds.num_users, ds.num_items, base, log=log)
    shard_seconds = sum(ensemble.refresh(log=log)["shard_seconds"].values())
    rows, kept = [], ensemble
    for kind in kinds:
        variant = ensemble if kind == base.aggregator.kind else \
            ensemble.with_aggregator(AggregatorConfig(**{**asdict(base.aggregator), "kind": kind}))
        if variant is not ensemble:
            variant.train_aggregator()
        row = {"method": LABELS.get((base.partition, kind), f"{base.partition}+{kind}"),
               "partition": base.partition, "aggregator": kind,
               **metrics_of(*variant.embeddings(), ds),
               "train_seconds": shard_seconds + variant.aggregator_seconds,
               "shard_seconds_total": shard_seconds,
               "aggregator_seconds": variant.aggregator_seconds,
               "shard_sizes": ensemble.partition.sizes().tolist()}
        log(f"{row['method']}: ndcg@20 {row['ndcg@20']:.4f}, aggregator "
            f"{variant.aggregator_seconds:.1f} s")
        rows.append(row)
    return rows, kept


def unlearn_rows(ensemble: RecEraser, ds, requests: int, fractions: list[float],
                 retrain_seconds: float, seed: int) -> list[dict]:
    """Time single-interaction requests, then 1 % / 5 % withdrawals (cumulative on the store)."""
    rng = np.random.default_rng(seed)
    plan = [("1 interaction", 1)] * requests + [(f"{f:.0%} of interactions", f) for f in fractions]
    rows = []
    for name, amount in plan:
        count = amount if isinstance(amount, int) else int(round(amount * len(ensemble.pairs)))
        pairs = ensemble.pairs[rng.choice(len(ensemble.pairs), size=count, replace=False)]
        result = ensemble.unlearn(pairs)
        row = {"partition": ensemble.config.partition, "request": name, "withdrawn": count,
               "affected": len(result["affected"]), "seconds": result["seconds"],
               "shard_seconds": sum(result["shard_seconds"].values()),
               "aggregator_seconds": result["aggregator_seconds"],
               "speedup_vs_retrain": retrain_seconds / result["seconds"]}
        if not isinstance(amount, int):
            row["ndcg@20"] = metrics_of(*ensemble.embeddings(), ds)["ndcg@20"]
        log(f"unlearn {name} ({ensemble.config.partition}): {row['affected']} shards, "
            f"{row['seconds']:.1f} s, {row['speedup_vs_retrain']:.1f}x")
        rows.append(row)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m-receraser")
    parser.add_argument("--model", choices=("lightgcn", "bprmf"), default="lightgcn")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--reg", type=float, default=1e-4)
    parser.add_argument("--num-layers", type=int, default=3)
    parser.add_argument("--num-shards", type=int, default=10)
    parser.add_argument("--partitions", default="random,ubp,ibp,inbp")
    parser.add_argument("--aggregators", default="attention,average,static")
    parser.add_argument("--agg-epochs", type=int, default=2)
    parser.add_argument("--agg-batch-size", type=int, default=16384)
    parser.add_argument("--agg-lr", type=float, default=0.01)
    parser.add_argument("--agg-propagate", type=int, default=0,
                        help="LightGCN layers the aggregator propagates over the full graph")
    parser.add_argument("--requests", type=int, default=2,
                        help="single-interaction unlearning requests per RecEraser partition")
    parser.add_argument("--fractions", default="0.01,0.05", help="batch withdrawals (InBP)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    log(f"{ds.name}: {ds.num_users} users, {ds.num_items} items, {len(ds.train)} train, "
        f"{len(ds.test)} test; torch threads {torch.get_num_threads()}")
    submodel = TrainConfig(model=args.model, epochs=args.epochs, num_layers=args.num_layers,
                           batch_size=args.batch_size, lr=args.lr, reg=args.reg)
    aggregator = AggregatorConfig(kind="attention", epochs=args.agg_epochs,
                                  batch_size=args.agg_batch_size, lr=args.agg_lr,
                                  propagate_layers=args.agg_propagate)
    rows = [retrain_row(ds, submodel, args.seed)]
    retrain_seconds, retrain_ndcg = rows[0]["train_seconds"], rows[0]["ndcg@20"]
    unlearning: list[dict] = []
    fractions = [float(f) for f in args.fractions.split(",") if f]
    for partition in args.partitions.split(","):
        config = RecEraserConfig(num_shards=args.num_shards, partition=partition,
                                 submodel=submodel, aggregator=aggregator, seed=args.seed)
        part_rows, ensemble = ensemble_rows(ds, config, args.aggregators.split(","))
        rows += part_rows
        if partition != "random":
            unlearning += unlearn_rows(ensemble, ds, args.requests,
                                       fractions if partition == "inbp" else [],
                                       retrain_seconds, args.seed)
        for row in rows:
            row["ndcg_vs_retrain"] = row["ndcg@20"] / retrain_ndcg
        print_table(rows, COLUMNS)
        write_json(args.out, {"manifest": run_manifest(vars(args), args.seed, ds.fingerprint),
                              "rows": rows, "unlearning": unlearning})
    print()
    print_table(rows, COLUMNS)
    print()
    print_table(unlearning, UNLEARN_COLUMNS)


if __name__ == "__main__":
    main()
