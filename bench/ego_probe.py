"""How much a user's private history adds when the node propagates the server's item layers
over it (ego views, docs/design.md "Ego views"), measured centrally and without federation:

    python bench/ego_probe.py --dataset ml-100k --ratio 0.5 --out bench/out/ego-probe.json

A LightGCN is trained on the shared part of the training set only (what the server holds at
sharing ratio ``--ratio``; the sharing policy of the runs), selected on validation, and then
scored three ways by the one evaluator (training items masked): with its own user views
(the server's view of each user), with ego views over each user's *whole* history (the
node's computation, `client_app.local_training.ego_user_views`), and with ego views without the
layer-0 user row (what a user who shares nothing gets).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common_args import print_table, write_json  # noqa: E402
from client_app.local_training import ego_user_views  # noqa: E402
from common.centralized import train_centralized  # noqa: E402
from common.config import load_config  # noqa: E402
from common.datasets import Dataset  # noqa: E402
from common.graph import build_graph  # noqa: E402
from common.manifest import run_manifest  # noqa: E402
from common.metrics import SPLITS, evaluate_split, finalize  # noqa: E402
from common.sharing import shared_pairs  # noqa: E402
from server_app.graph_model import ServerGraphModel, ServerHyper  # noqa: E402


def _ndcg(users: torch.Tensor, items: torch.Tensor, ds: Dataset) -> dict[str, float]:
    return {split: finalize(evaluate_split(users, items, ds.train, ds.valid, ds.test, split))["ndcg@20"]
            for split in SPLITS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--reg", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config({"dataset": args.dataset, "sharing-ratio": args.ratio})
    ds = cfg.load_data()
    shared = shared_pairs(ds.train, args.ratio, "fixed", cfg.seed)
    held = Dataset(f"{ds.name}-shared", ds.num_users, ds.num_items, shared, ds.valid, ds.test)
    result = train_centralized(held, "lightgcn", args.epochs, lr=args.lr, reg=args.reg,
                               batch_size=args.batch_size, eval_every=10, patience=4,
                               seed=cfg.seed, log=lambda *a: None, keep_model=True)
    net = result["model_state"]
    hp = ServerHyper(1.0, args.batch_size, args.lr, args.reg, 0.0, 1.0, cfg.num_layers)
    model = ServerGraphModel(ds.num_users, ds.num_items, cfg.embedding_dim, hp, seed=0)
    with torch.no_grad():   # the trained tables as the server's (same propagation and masks)
        model.user_weight.copy_(net["user_emb.weight"])
        model.item_weight.copy_(net["item_emb.weight"])
    graph = build_graph(torch.from_numpy(shared[:, 0]), torch.from_numpy(shared[:, 1]),
                        ds.num_users, ds.num_items)
    server_users, server_items = model.views(graph)
    ego = model.ego_tables(graph)
    train = torch.from_numpy(np.array(ds.train))
    key = ds.train[:, 0] * ds.num_items + ds.train[:, 1]
    in_graph = torch.from_numpy(np.isin(key, shared[:, 0] * ds.num_items + shared[:, 1]))
    rows = [{"user view": "server's (shared part)", **_ndcg(server_users, server_items, ds)}]
    for name, base in (("ego (whole history)", ego.users), ("ego, no layer-0 row", torch.zeros_like(ego.users))):
        views = ego_user_views(train, in_graph, ds.num_users, ego.items, ego.degree, base, cfg.num_layers)
        rows.append({"user view": name, **_ndcg(views, server_items, ds)})
    print_table(rows, ["user view", *SPLITS])
    write_json(args.out, {"rows": rows, "best_epoch": result["best_epoch"], "bench": vars(args),
                          "manifest": run_manifest(cfg.as_dict(), cfg.seed, ds.fingerprint)})


if __name__ == "__main__":
    main()
