"""Are RecEraser's shard sub-models under-trained at Retrain's epochs? A training curve.

    .venv/bin/python bench/receraser_epochs.py --partition inbp --checkpoints 30,60,120 \
        --out bench/out/receraser-epochs-inbp.json

On ``ml-1m-receraser`` with LightGCN (the settings of ``bench/receraser.py``): the partition's
shards are trained once to the largest checkpoint; at every checkpoint the shards' outputs are
taken, the attention aggregator (and SISA averaging) is trained on them from scratch and the
ensemble is scored by the one project evaluator; ``calibrated`` (no training) averages
per-user z-scored shard scores, a diagnostic of cross-shard calibration; ``item-presence`` /
``pair-presence`` (no training) weight shard k's score by the share of the item's (and the
user's) interactions in shard k. ``--retrain`` also trains full Retrain to the
largest checkpoint with the same curve. This split has no validation part: the curve is a
diagnostic over a fixed budget, not a model selection (a deployment would stop each shard on
validation).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common_args import print_table, write_json  # noqa: E402
from bench.receraser import log, metrics_of  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.manifest import run_manifest  # noqa: E402
from common.receraser import (AggregatorConfig, RecEraser, RecEraserConfig,  # noqa: E402
                              TrainConfig, shard_seed, train_aggregator, train_submodel)
from common.receraser.aggregator import aggregate_tables  # noqa: E402

COLUMNS = ["model", "epochs", "aggregator", "recall@20", "ndcg@20", "seconds"]


def curve(pairs, ds, config: TrainConfig, seed: int, checkpoints: list[int]) -> dict:
    """Outputs ``{epoch: (user_out, item_out)}`` of one training at each checkpoint."""
    taken = {}

    def keep(epoch, users, items):
        if epoch in checkpoints:
            taken[epoch] = (users, items)
    train_submodel(pairs, ds.num_users, ds.num_items, config, seed, on_epoch=keep)
    return taken


def calibrated_tables(users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-user z-scored shard scores, averaged, as inner products: for shard k,
    (s_k(u, i) - mean_i s_k(u, i)) / std_i s_k(u, i) = <e_u^k / sigma_uk, e_i^k - mean_i e_i^k>,
    sigma_uk^2 = e_u^k' C_k e_u^k (C_k the item covariance of shard k). Diagnostic: if the
    shards' score scales differ per user, this fixes their calibration without training."""
    centred = items - items.mean(0, keepdim=True)                                # (I, K, d)
    cov = torch.einsum("ikd,ike->kde", centred, centred) / items.shape[0]        # (K, d, d)
    sigma = torch.einsum("ukd,kde,uke->uk", users, cov, users).clamp_min(1e-12).sqrt()
    users = users / sigma.unsqueeze(-1) / users.shape[1]
    return users.reshape(users.shape[0], -1), centred.reshape(centred.shape[0], -1)


def presence_tables(users: torch.Tensor, items: torch.Tensor, shard_pairs: list, num_users: int,
                    num_items: int, user_side: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Score = sum_k w_ik (w_uk) <e_u^k, e_i^k>, w_ik the share of item i's interactions in
    shard k (and w_uk the user's): each pair is scored by the shards that saw it. Diagnostic
    of whether gating by presence, not calibration, is what the aggregator has to learn."""
    def shares(column: int, size: int) -> torch.Tensor:
        counts = torch.stack([torch.bincount(torch.from_numpy(p[:, column]), minlength=size)
                              for p in shard_pairs], 1).float()                  # (n, K)
        return counts / counts.sum(1, keepdim=True).clamp_min(1.0)
    items = items * shares(1, num_items).unsqueeze(-1)
    if user_side:
        users = users * shares(0, num_users).unsqueeze(-1)
    return users.reshape(users.shape[0], -1), items.reshape(items.shape[0], -1)


def ensemble_rows(ds, args, config: TrainConfig, checkpoints: list[int]) -> list[dict]:
    rec = RecEraser.build(ds.train, ds.num_users, ds.num_items, RecEraserConfig(
        num_shards=args.num_shards, partition=args.partition, submodel=config, seed=args.seed),
        log=log)
    started, outputs = time.perf_counter(), []
    for shard in range(args.num_shards):
        outputs.append(curve(rec.shard_pairs(shard), ds, config, shard_seed(args.seed, shard),
                             checkpoints))
        log(f"shard {shard} trained to {max(checkpoints)} epochs")
    seconds, rows = time.perf_counter() - started, []
    for epoch in checkpoints:
        users = torch.stack([o[epoch][0] for o in outputs], 1)
        items = torch.stack([o[epoch][1] for o in outputs], 1)
        for kind in ("attention", "average"):
            aggregator, agg_seconds = train_aggregator(
                users, items, rec.pairs, ds.num_items,
                AggregatorConfig(kind=kind, epochs=args.agg_epochs, batch_size=16384, lr=0.01),
                shard_seed(args.seed, args.num_shards))
            with torch.no_grad():
                tables = aggregate_tables(aggregator, users, items)
            rows.append({"model": f"{args.partition}", "epochs": epoch, "aggregator": kind,
                         **metrics_of(*tables, ds),
                         "seconds": seconds * epoch / max(checkpoints) + agg_seconds})
            log(str(rows[-1]))
        shard_pairs = [rec.shard_pairs(k) for k in range(args.num_shards)]
        for name, tables in (
                ("calibrated", calibrated_tables(users, items)),
                ("item-presence", presence_tables(users, items, shard_pairs, ds.num_users,
                                                  ds.num_items, user_side=False)),
                ("pair-presence", presence_tables(users, items, shard_pairs, ds.num_users,
                                                  ds.num_items, user_side=True))):
            rows.append({"model": f"{args.partition}", "epochs": epoch, "aggregator": name,
                         **metrics_of(*tables, ds), "seconds": seconds * epoch / max(checkpoints)})
            log(str(rows[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m-receraser")
    parser.add_argument("--partition", default="inbp")
    parser.add_argument("--checkpoints", default="30,60,120")
    parser.add_argument("--num-shards", type=int, default=10)
    parser.add_argument("--agg-epochs", type=int, default=2)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    config = TrainConfig(model="lightgcn", epochs=max(checkpoints), batch_size=8192, lr=0.01,
                         reg=1e-4)
    rows = ensemble_rows(ds, args, config, checkpoints)
    if args.retrain:
        started = time.perf_counter()
        taken = curve(ds.train, ds, config, args.seed, checkpoints)
        seconds = time.perf_counter() - started
        rows += [{"model": "Retrain", "epochs": e, "aggregator": "-", **metrics_of(*taken[e], ds),
                  "seconds": seconds * e / max(checkpoints)} for e in checkpoints]
    print_table(rows, COLUMNS)
    write_json(args.out, {"manifest": run_manifest(vars(args), args.seed, ds.fingerprint),
                          "rows": rows})


if __name__ == "__main__":
    main()
