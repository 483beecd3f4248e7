"""Quality benchmark: FedAvg vs FedShare at several sharing ratios vs centralized LightGCN.

    python bench/quality.py --dataset ml-100k --out bench/out/quality-ml-100k.json

Every federated row runs the real ServerApp strategy and ClientApp handlers (in one
process, see harness/inprocess.py) for ``--rounds`` rounds; the centralized rows train for
the same number of epochs with the same evaluator. Writes one JSON list of rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common_args import print_table, write_json  # noqa: E402
from harness.inprocess import run_inprocess  # noqa: E402
from common.centralized import train_centralized  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.manifest import run_manifest  # noqa: E402

COLUMNS = ["method", "sharing_ratio", "recall@20", "ndcg@20", "recall@10", "ndcg@10",
           "rounds", "seconds"]


def federated_row(method: str, base: dict, overrides: dict, nodes: int) -> dict:
    config = {**base, **overrides}
    start = time.perf_counter()
    result = run_inprocess(config, nodes)
    final = result["final"]
    return {"method": method, "sharing_ratio": config.get("sharing-ratio", 0.5),
            **{k: final[k] for k in ("recall@20", "ndcg@20", "recall@10", "ndcg@10")},
            "rounds": config["num-rounds"], "seconds": round(time.perf_counter() - start, 1),
            "manifest": result["manifest"]}


def centralized_row(dataset: str, model: str, epochs: int, lr: float, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    ds = load_dataset(dataset)
    result = train_centralized(ds, model, epochs, lr=lr, log=lambda *a, **k: None)
    metrics = result["metrics"]
    config = {"model": model, "epochs": epochs, "lr": lr, "dataset": dataset}
    return {"method": f"centralized-{model}", "sharing_ratio": 1.0,
            **{k: metrics[k] for k in ("recall@20", "ndcg@20", "recall@10", "ndcg@10")},
            "rounds": epochs, "seconds": round(result["seconds"], 1),
            "manifest": run_manifest(config, 0, ds.fingerprint)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--fraction-train", type=float, default=0.2)
    parser.add_argument("--centralized-lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="fedshare-quality-")
    base = {"dataset": args.dataset, "num-rounds": args.rounds, "eval-every": args.rounds,
            "fraction-train": args.fraction_train, "torch-threads": args.threads,
            "state-dir": f"{scratch}/state", "out-dir": f"{scratch}/results"}
    plan = [
        ("fedavg", {"sharing-ratio": 0.0}),
        ("fedavg-5-local-epochs", {"sharing-ratio": 0.0, "local-epochs": 5, "batch-size": 256}),
        ("fedshare", {"sharing-ratio": 0.25}),
        ("fedshare", {"sharing-ratio": 0.5}),
        ("fedshare", {"sharing-ratio": 1.0}),
        ("fedshare+cl", {"sharing-ratio": 0.5, "cl-weight": 0.1}),
    ]
    rows = []
    for method, overrides in plan:
        rows.append(federated_row(method, base, overrides, args.nodes))
        print_table(rows[-1:], COLUMNS)
    for model in ("lightgcn", "bprmf"):
        rows.append(centralized_row(args.dataset, model, args.rounds, args.centralized_lr,
                                    args.threads))
    print()
    print_table(rows, COLUMNS)
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
