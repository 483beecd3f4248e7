"""Where a fused score's quality comes from: the federated (fused) metrics beside the server's
graph views alone and the clients' local tables alone, every ``--every`` rounds of one run.

    python bench/fusion_probe.py --dataset ml-100k --rounds 60 --set sharing-ratio=1.0 fusion=sum \
        --out bench/out/probe.json

One user per client (the cross-user setting), the real strategy and ClientApps in one process
(harness/session.py). ``fused`` is what the nodes report (the one evaluator over their fused
tables); ``server`` ranks with ``(g_u, h_i)`` = the server's LightGCN views; ``local`` with the
private user rows (read from each node's disk) against the FedAvg item table. The last two are
computed centrally by the same evaluator (common.metrics.evaluate_split). This probe is what
showed that, with ``sum`` fusion, users who share everything scored worse than the graph model
alone (docs/design.md, "Models and scoring").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common_args import new_scratch, print_table, remove_scratch, write_json  # noqa: E402
from bench.quality import parse_set  # noqa: E402
from common.config import load_config  # noqa: E402
from common.manifest import run_manifest  # noqa: E402
from common.metrics import SPLITS, evaluate_split, finalize  # noqa: E402
from harness.session import Session, new_session  # noqa: E402


def _ndcg(users: np.ndarray, items: np.ndarray, ds) -> dict[str, float]:
    tables = torch.from_numpy(np.ascontiguousarray(users)), torch.from_numpy(np.ascontiguousarray(items))
    return {split: finalize(evaluate_split(*tables, ds.train, ds.valid, ds.test, split))["ndcg@20"]
            for split in SPLITS}


def _local_users(session: Session, num_users: int, dim: int) -> np.ndarray:
    """Private user rows from each node's disk (one user per node; zeros before a node trained)."""
    users = np.zeros((num_users, dim), np.float32)
    for pid, node_dir in enumerate(session.node_dirs()):
        saved = sorted(node_dir.glob("user-emb-*.npz"))
        if saved:
            with np.load(saved[0]) as table:
                users[pid] = table["weight"][0]
    return users


def _weighted(local: np.ndarray, state, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted fusion with one global weight ``w`` for every user (client_app/local_training.py
    ``fused_tables``): users ``[w g_u, (1 - w) e_u]``, items ``[h_i, e_i + h_i]``."""
    graph_users, graph_items = state.views
    return (np.concatenate([weight * graph_users, (1 - weight) * local], 1),
            np.concatenate([graph_items, state.item_emb + graph_items], 1))


def probe(session: Session, ds, dim: int, weights: list[float] = ()) -> dict:
    _, fused = session.strategy.evaluate(session.grid, list(session.grid.get_node_ids()),
                                         session.next_round - 1)
    state = session.state
    row = {"round": session.next_round - 1,
           **{f"fused {s}": fused[s]["ndcg@20"] for s in SPLITS}}
    if state.views is not None:
        row.update({f"server {s}": v for s, v in _ndcg(*state.views, ds).items()})
    local_users = _local_users(session, ds.num_users, dim)
    local = _ndcg(local_users, state.item_emb, ds)
    for weight in weights if state.views is not None else ():   # evaluation only: training unchanged
        row.update({f"w={weight} {s}": v for s, v in _ndcg(*_weighted(local_users, state, weight), ds).items()})
    return {**row, **{f"local {s}": v for s, v in local.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--fraction-train", type=float, default=0.1)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--weights", type=float, nargs="*", default=[],
                        help="also rank with weighted fusion at these fixed global weights w")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    scratch = new_scratch("fedshare-probe-")
    config = {"dataset": args.dataset, "fraction-train": args.fraction_train, "eval-every": 0,
              **parse_set(args.set), "state-dir": str(scratch / "state"),
              "out-dir": str(scratch / "results")}
    cfg = load_config(config)
    ds = cfg.load_data()
    session = new_session(cfg, ds.num_users, scratch)
    rows = []
    for _ in range(args.rounds // args.every):
        session.run_rounds(args.every)
        rows.append(probe(session, ds, cfg.embedding_dim, args.weights))
        print_table(rows[-1:], list(rows[-1]))
    write_json(args.out, {"rows": rows, "manifest": run_manifest(cfg.as_dict(), cfg.seed, ds.fingerprint),
                          "bench": vars(args)})
    remove_scratch(scratch)


if __name__ == "__main__":
    main()
