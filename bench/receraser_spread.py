"""How far does each RecEraser partition spread a user's (an item's) interactions over shards?

    .venv/bin/python bench/receraser_spread.py --out bench/out/receraser-spread.json

On ``ml-1m-receraser`` with the embeddings and settings of ``bench/receraser.py`` (BPR-MF
pre-trained 10 epochs, K = 10, 5 iterations, seed 0): per partition, the mean number of shards
a user's interactions fall in, the mean share of a user's interactions in their largest shard,
and the same for items. A sub-model sees a user only through the user's interactions in its
shard: a partition that spreads users thin gives every sub-model little evidence per user.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common_args import print_table, write_json  # noqa: E402
from bench.receraser import log  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.manifest import run_manifest  # noqa: E402
from common.receraser import canonical_pairs, partition_interactions, pretrain_embeddings  # noqa: E402

COLUMNS = ["partition", "user_shards", "user_main_share", "item_shards", "item_main_share"]


def spread(ids: np.ndarray, shard_of: np.ndarray, num_shards: int) -> tuple[float, float]:
    """Mean shards per id, and mean share of an id's interactions in its largest shard."""
    counts = np.zeros((ids.max() + 1, num_shards))
    np.add.at(counts, (ids, shard_of), 1)
    counts = counts[counts.sum(1) > 0]
    return float((counts > 0).sum(1).mean()), float((counts.max(1) / counts.sum(1)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m-receraser")
    parser.add_argument("--num-shards", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    ds = load_dataset(args.dataset)
    pairs = canonical_pairs(ds.train, ds.num_items)
    user_emb, item_emb = pretrain_embeddings(pairs, ds.num_users, ds.num_items, epochs=10,
                                             seed=args.seed)
    rows = []
    for method in ("random", "ubp", "ibp", "inbp"):
        part = partition_interactions(pairs, ds.num_users, ds.num_items, method, args.num_shards,
                                      user_emb=user_emb, item_emb=item_emb, iterations=5,
                                      seed=args.seed)
        user_shards, user_main = spread(pairs[:, 0], part.shard_of, args.num_shards)
        item_shards, item_main = spread(pairs[:, 1], part.shard_of, args.num_shards)
        rows.append({"partition": method, "user_shards": user_shards, "user_main_share": user_main,
                     "item_shards": item_shards, "item_main_share": item_main})
        log(str(rows[-1]))
    print_table(rows, COLUMNS)
    write_json(args.out, {"manifest": run_manifest(vars(args), args.seed, ds.fingerprint),
                          "rows": rows})


if __name__ == "__main__":
    main()
