"""What bounding the server's steps per epoch (`server-epoch-steps`) costs in quality and saves in
time, measured centrally on the server's own model and trainer:

    python bench/server_steps.py --dataset ml-1m --epoch-steps 0 24 --out bench/out/server-steps.json

The server graph model (`server_app.graph_model.ServerGraphModel`, exactly as the strategy builds
it) is trained on the shared part of the training set (sharing ratio ``--ratio``, the runs'
sharing policy) one epoch at a time, for each value of ``--epoch-steps`` (0: no bound, the
batch stays `server-batch-size`; N: at most N steps an epoch, the batch grows instead). Its
views are scored by the one evaluator every ``--eval-every`` epochs; test metrics are read at
the best validation epoch (early stop after ``--patience`` evaluations without a gain).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common_args import print_table, write_json  # noqa: E402
from common.config import load_config  # noqa: E402
from common.graph import build_graph  # noqa: E402
from common.manifest import run_manifest  # noqa: E402
from common.metrics import evaluate_split, finalize  # noqa: E402
from common.sharing import shared_pairs  # noqa: E402
from server_app.graph_model import ServerGraphModel, ServerHyper  # noqa: E402

COLUMNS = ["epoch_steps", "batch_size", "lr", "steps_per_epoch", "best_epoch", "epochs_run",
           "valid_ndcg@20", "ndcg@20", "recall@20", "seconds_per_epoch"]


def _metrics(views, ds, split: str) -> dict[str, float]:
    users, items = views
    return finalize(evaluate_split(users, items, ds.train, ds.valid, ds.test, split))


def fit(cfg, ds, pairs: torch.Tensor, epoch_steps: int, args) -> dict:
    """Train one server model to its best validation epoch; its row and validation curve."""
    hp = ServerHyper(1.0, cfg.server_batch_size, cfg.server_lr, cfg.server_reg, 0.0,
                     cfg.cl_temperature, cfg.num_layers, epoch_steps, args.lr_scaling)
    batch = hp.batch_size_for(len(pairs))
    model = ServerGraphModel(ds.num_users, ds.num_items, cfg.embedding_dim, hp, seed=cfg.seed)
    graph = build_graph(pairs[:, 0], pairs[:, 1], ds.num_users, ds.num_items)
    best, curve, seconds, waited, epoch = None, [], 0.0, 0, 0
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        model.train(graph, pairs, None)
        seconds += time.perf_counter() - started
        if epoch % args.eval_every:
            continue
        views = model.views(graph)   # one propagation for both splits
        valid = _metrics(views, ds, "valid")["ndcg@20"]
        curve.append({"epoch": epoch, "valid_ndcg@20": valid})
        if best is None or valid > best["valid_ndcg@20"]:
            best, waited = {"best_epoch": epoch, "valid_ndcg@20": valid,
                            **_metrics(views, ds, "test")}, 0
        else:
            waited += 1
            if waited >= args.patience:
                break
        print(f"epoch-steps {epoch_steps}: epoch {epoch} valid NDCG@20 {valid:.4f}", flush=True)
    return {"epoch_steps": epoch_steps, "batch_size": batch, "lr": hp.lr_for(batch),
            "steps_per_epoch": -(-len(pairs) // batch), "epochs_run": epoch,
            "seconds_per_epoch": seconds / epoch, **best, "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--ratio", type=float, default=1.0)
    parser.add_argument("--epoch-steps", type=int, nargs="+", default=[0, 24])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr-scaling", choices=("sqrt", "none"), default="sqrt",
                        help="how the server's lr follows a grown batch (the model's default: "
                             "sqrt, server-lr x sqrt(batch / server-batch-size))")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config({"dataset": args.dataset, "sharing-ratio": args.ratio})
    ds = cfg.load_data()
    manifest = run_manifest({**cfg.as_dict(), "bench": vars(args)}, cfg.seed, ds.fingerprint)
    pairs = torch.from_numpy(shared_pairs(ds.train, args.ratio, cfg.sharing_distribution,
                                          cfg.seed))
    rows = []
    for epoch_steps in args.epoch_steps:
        rows.append(fit(cfg, ds, pairs, epoch_steps, args))
        print_table(rows[-1:], COLUMNS)
        write_json(args.out, {"rows": rows, "shared_edges": len(pairs), "manifest": manifest})
    print_table(rows, COLUMNS)


if __name__ == "__main__":
    main()
