"""Would neighbour sampling make the server's graph step cheaper? What one batch touches.

    python bench/sampling_coverage.py --dataset gowalla --out bench/out/sampling-coverage.json

The server epoch grows faster than linearly because every mini-batch propagates over the whole
shared graph (docs/scaling.md). The textbook fix is to propagate only over a sampled L-hop
neighbourhood of the batch (GraphSAGE/PinSage-style; PyG's ``LinkNeighborLoader``). This
measures, without training, what such a step would touch on a real graph: seeds are a batch's
users, positive items and one uniform negative item per pair; each layer samples ``fanout``
neighbours (with replacement) of the previous layer's nodes; reported are the distinct nodes
reached and the sampled edges, against the full graph's nodes and directed edges.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common_args import print_table, write_json  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.manifest import run_manifest  # noqa: E402


def csr(pairs: np.ndarray, num_users: int, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ptr (N+1,), neighbours (2E,))`` of the symmetric user–item graph (items at U + i)."""
    row = np.concatenate([pairs[:, 0], pairs[:, 1] + num_users])
    col = np.concatenate([pairs[:, 1] + num_users, pairs[:, 0]])
    order = np.argsort(row, kind="stable")
    counts = np.bincount(row, minlength=num_users + num_items)
    return np.concatenate([[0], np.cumsum(counts)]), col[order]


def sampled_step(ptr: np.ndarray, neighbours: np.ndarray, seeds: np.ndarray, fanout: int,
                 layers: int, rng: np.random.Generator) -> tuple[int, int]:
    """``(distinct nodes reached, sampled edges)`` of an ``layers``-hop sample from ``seeds``."""
    degree = np.diff(ptr)
    reached, frontier, edges = set(seeds.tolist()), seeds, 0
    for _ in range(layers):
        frontier = frontier[degree[frontier] > 0]
        offsets = (rng.random((len(frontier), fanout)) * degree[frontier, None]).astype(np.int64)
        picked = neighbours[(ptr[frontier, None] + offsets).ravel()]
        edges += picked.size
        frontier = np.unique(picked)
        reached.update(frontier.tolist())
    return len(reached), edges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="gowalla")
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument("--fanouts", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ds = load_dataset(args.dataset)
    manifest = run_manifest(vars(args), args.seed, ds.fingerprint)
    pairs, num_nodes = ds.train, ds.num_users + ds.num_items
    ptr, neighbours = csr(pairs, ds.num_users, ds.num_items)
    rng = np.random.default_rng(args.seed)
    rows = []
    for batch_size in args.batch_sizes:
        for fanout in args.fanouts:
            batch = pairs[rng.integers(len(pairs), size=batch_size)]
            negatives = rng.integers(ds.num_items, size=batch_size)
            seeds = np.unique(np.concatenate([batch[:, 0], batch[:, 1] + ds.num_users,
                                              negatives + ds.num_users]))
            nodes, edges = sampled_step(ptr, neighbours, seeds, fanout, args.layers, rng)
            rows.append({"batch": batch_size, "fanout": fanout, "layers": args.layers,
                         "seeds": len(seeds), "nodes_reached": nodes,
                         "nodes_share": round(nodes / num_nodes, 3), "sampled_edges": edges,
                         "edges_share": round(edges / len(neighbours), 3)})
    print(f"{args.dataset}: {num_nodes} nodes, {len(neighbours)} directed edges")
    print_table(rows, list(rows[0]))
    write_json(args.out, {"dataset": args.dataset, "nodes": num_nodes,
                          "directed_edges": len(neighbours), "rows": rows,
                          "manifest": manifest})


if __name__ == "__main__":
    main()
