"""Unlearning benchmark: learn, withdraw forget sets, unlearn with each method under one budget.

    python bench/unlearning.py --dataset ml-100k --out bench/out/unlearning-ml-100k.json

Learning phase: ``--learn-rounds`` FedShare rounds with the real ServerApp strategy and
ClientApp handlers (harness/inprocess.py), in the multi-user-node setting (``--nodes``) or the
cross-user one (one user per node). Then, for each forget set of ``--forget``, unshare requests
are written into the nodes' ledgers exactly as the CLI does, and each method runs on its own copy
of the learned federation under the budget of harness/unlearning_runs.py (every model measured
after the same number of training rounds; Retrain's catch-up rounds are its cost, the others'
cost is the erasure and the unlearning work the request caused):

* ``random-F`` / ``core-F`` / ``edge-F``: whole sharing users (random; most active first; least
  active first) withdraw everything they share, until F % of the shared pairs (CURE4Rec);
* ``sequential-N``: N requests in N successive rounds, each 1 % of the shared pairs (random
  users among those still sharing); rows for the first request alone (``requests`` 1, its own
  Retrain) and for all N, so degradation over repeated unlearning shows as a growing gap.

Rows: ``{setting, forget_set, fraction, requests, method, recall@20, ndcg@20, mia_auc,
mia_auc_fused, upload_mia_auc, withdrawn_mean_rank, shared_mean_rank, never_seen_mean_rank, popularity_auc,
rounds, trained_rounds, unlearn_seconds, retrain_seconds, storage_bytes}``.
Ranks and ``mia_auc`` use the server (global) model (for ``receraser`` the aggregated
ensemble); ``mia_auc_fused`` the scores users actually get (ego views over each user's whole
history, withdrawn items included: they stay on the device); ``upload_mia_auc`` the server
reading, from the uploads after the request, which withdrawn items a node still trains on
(:func:`upload_mia`). ``popularity_auc``: the same
targets scored by item popularity alone. Storage: what the method keeps for unlearning,
measured (snapshots + edge round stamps; for ``fru`` plus its update log, docs/design.md "FRU
in FedShare"; for ``receraser`` the ensemble). When fru is run, the LightGCN federation learns
with ``unlearning-method = "fru"`` (the log changes no training; the other methods' copies
drop it).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common_args import new_scratch, print_table, remove_scratch, write_json  # noqa: E402
from common.config import RunConfig, load_config  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.forgetting import (FORGET_KINDS, auc, forget_set, membership_auc,  # noqa: E402
                               pair_ranks, pairs_in, sample_never_seen)
from common.manifest import run_manifest  # noqa: E402
from harness.session import Session, new_session, shared_pairs  # noqa: E402
from harness.unlearning_runs import Budget, UnlearningRun, run_unlearning, served_views  # noqa: E402
from harness.upload_attacks import UPLOAD_ATTACKS, Upload, capture, evaluate  # noqa: E402
from server_app.unlearning import unlearning_storage_bytes  # noqa: E402

METHODS = ("retrain", "naive", "contrastive", "fru", "receraser")
FORGET_SETS = tuple(f"{kind}-{pct}" for kind in FORGET_KINDS for pct in (5, 10, 20)) + ("sequential-10",)
SEQUENTIAL_STEP = 0.01   # each request of a sequential forget set: 1 % of the shared pairs
COLUMNS = ["forget_set", "requests", "method", "fraction", "recall@20", "ndcg@20", "mia_auc",
           "mia_auc_fused", "upload_mia_auc", "withdrawn_mean_rank", "rounds", "unlearn_seconds", "retrain_seconds",
           "storage_bytes"]
MAX_TARGETS = 5000  # withdrawn pairs scored (a seeded sample when there are more)


def forget_requests(shared: np.ndarray, name: str, seed: int) -> list[list[np.ndarray]]:
    """The request lists of forget set ``name``: one list, or for ``sequential-N`` the first
    request alone and then all N (each drawn from what the earlier ones left shared)."""
    kind, _, amount = name.partition("-")
    if kind != "sequential":
        return [[forget_set(shared, kind, int(amount) / 100, seed)]]
    requests, left = [], shared
    for k in range(int(amount)):
        requests.append(forget_set(left, "random", SEQUENTIAL_STEP, seed + k))
        left = left[~pairs_in(left, requests[-1])]
    return [requests[:1], requests]


def attack_pairs(session: Session, ds, withdrawn: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The pair sets of the forgetting metrics, drawn once per run (seeded)."""
    shared = session.state.edges.pairs()
    rng = np.random.default_rng(seed)
    if len(withdrawn) > MAX_TARGETS:
        withdrawn = withdrawn[np.sort(rng.choice(len(withdrawn), MAX_TARGETS, replace=False))]
    everything = np.concatenate([ds.train, ds.valid, ds.test])
    wusers = np.unique(withdrawn[:, 0])
    return {"shared": shared, "withdrawn": withdrawn,
            "never": sample_never_seen(everything, wusers, 10, ds.num_items, seed),
            "still": shared[rng.choice(len(shared), min(len(shared), 2000), replace=False)],
            "members": shared[rng.choice(len(shared), min(len(shared), 4000), replace=False)],
            "non_members": sample_never_seen(everything, np.unique(shared[:, 0]), 4, ds.num_items,
                                             seed + 1),
            "target_neg": sample_never_seen(everything, wusers, 10, ds.num_items, seed + 2)}


def forgetting(session: Session, ds, withdrawn: np.ndarray, seed: int) -> dict:
    """Ranks of withdrawn / still-shared / never-seen pairs under the server model, and the
    membership-inference AUC on the withdrawn pairs, on the server model and on the scores
    users get."""
    p = attack_pairs(session, ds, withdrawn, seed)
    users, items = session.state.model.propagated(session.state.graph)
    served = served_views(session, np.array(ds.train))
    attack = lambda u, i: membership_auc(u, i, p["members"], p["non_members"],  # noqa: E731
                                         p["withdrawn"], p["target_neg"])
    return {
        "withdrawn_mean_rank": float(pair_ranks(users, items, p["withdrawn"], p["shared"]).mean()),
        "shared_mean_rank": float(pair_ranks(users, items, p["still"], p["shared"]).mean()),
        "never_seen_mean_rank": float(pair_ranks(users, items, p["never"], p["shared"]).mean()),
        "mia_auc": attack(users, items),
        "mia_auc_fused": attack(*served) if served is not None else None,
        "popularity_auc": popularity_auc(p["shared"], ds.num_items, p["withdrawn"], p["target_neg"]),
    }


def popularity_auc(shared: np.ndarray, num_items: int, targets: np.ndarray,
                   negatives: np.ndarray) -> float:
    """AUC of an attack that knows only item popularity (in the still-shared edges): the
    floor any score-based attack reaches on a model that ranks popular items high."""
    popularity = np.bincount(shared[:, 1], minlength=num_items).astype(np.float64)
    return auc(popularity[targets[:, 1]], popularity[negatives[:, 1]])


def upload_mia(uploads: list[Upload], learned: Session, withdrawn: np.ndarray, epochs: int) -> float:
    """The server's interaction-level attack after the request, in the federated spirit: from
    each upload of a node hosting a withdrawing user (the server remembers who shared through
    which node before the request), the AUC of telling the withdrawn items (which the node may
    still train on: unsharing is not deleting) from every other item the server does not know
    as shared; the best attack per upload, averaged (0.5: nothing told)."""
    scores = []
    for upload in uploads:
        users = np.union1d(upload.users, learned.state.registry.users_of(upload.node))
        gone = withdrawn[np.isin(withdrawn[:, 0], users) & ~pairs_in(withdrawn, upload.shared)]
        if len(gone):        # the node's withdrawals the server had carried out by then
            result = evaluate(replace(upload, users=users), gone, epochs)
            scores.append(max(result[name]["auc"] for name in UPLOAD_ATTACKS))
    return float(np.mean(scores)) if scores else float("nan")


def _family(method: str) -> str:
    """Which learned federation a method starts from: the ensemble's own, or the LightGCN's."""
    return "receraser" if method == "receraser" else "lightgcn"


def learn(cfg: RunConfig, family: str, args, nodes: int, scratch: Path) -> Session:
    """``--learn-rounds`` rounds of a fresh federation (server model of ``family``)."""
    if family == "receraser":
        cfg = cfg.model_copy(update={"unlearning_method": "receraser"})
    elif "fru" in args.methods.split(","):   # FRU's update log is kept; it changes no training
        cfg = cfg.model_copy(update={"unlearning_method": "fru"})
    session = new_session(cfg, nodes, scratch / f"learned-{family}")
    session.run_rounds(args.learn_rounds)
    return session


def method_row(run: UnlearningRun, uploads: list[Upload], learned: Session, ds, seed: int) -> dict:
    metrics = run.session.evaluate()
    state = run.session.state
    storage = state.model.storage_bytes() if run.method == "receraser" else \
        unlearning_storage_bytes(state.snapshots, len(state.edges)) + \
        (state.updates.storage_bytes() if run.method == "fru" else 0)
    return {"method": run.method, "withdrawn_pairs": len(run.withdrawn),
            "recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"],
            **forgetting(run.session, ds, run.withdrawn, seed),
            "upload_mia_auc": upload_mia(uploads, learned, run.withdrawn,
                                         run.session.strategy.cfg.local_epochs),
            "rounds": run.rounds, "trained_rounds": run.trained_rounds,
            "unlearn_seconds": round(run.extra_seconds, 4), "storage_bytes": storage}


def forget_set_rows(name: str, learned: dict[str, Session], cfg: RunConfig, args, ds,
                    scratch: Path) -> list[dict]:
    """Every method on every request list of forget set ``name``."""
    shared = shared_pairs(learned["lightgcn" if "lightgcn" in learned else "receraser"])
    budget, rows = Budget(args.learn_rounds, args.unlearn_rounds), []
    for requests in forget_requests(shared, name, args.seed):
        cell = []
        for method in args.methods.split(","):
            uploads: list[Upload] = []
            run = run_unlearning(learned[_family(method)], cfg, method, requests, budget,
                                 scratch / f"{name}-{len(requests)}-{method}",
                                 lambda s: capture(s.strategy, lambda node, rnd: True, uploads))
            cell.append({"setting": args.setting, "forget_set": name, "requests": len(requests),
                         "fraction": round(sum(map(len, requests)) / len(shared), 4),
                         **method_row(run, uploads, learned[_family(method)], ds, args.seed)})
            print_table(cell[-1:], COLUMNS)
        retrain = [r["unlearn_seconds"] for r in cell if r["method"] == "retrain"]
        for row in cell:
            row["retrain_seconds"] = retrain[0] if retrain else None
        rows += cell
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--out", required=True)
    parser.add_argument("--setting", choices=("nodes", "cross-user"), default="nodes")
    parser.add_argument("--nodes", type=int, default=10, help="nodes of the 'nodes' setting")
    parser.add_argument("--fraction-train", type=float, default=1.0)
    parser.add_argument("--learn-rounds", type=int, default=10)
    parser.add_argument("--unlearn-rounds", type=int, default=3,
                        help="rounds every method runs after the (last) request, its own included")
    parser.add_argument("--max-users", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--forget", nargs="+", default=list(FORGET_SETS),
                        help="forget sets: KIND-PERCENT (KIND random, core, edge) or sequential-N")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra run-config values, e.g. unlearn-hops=0")
    args = parser.parse_args()
    for name in args.forget:
        kind, _, amount = name.partition("-")
        if kind not in FORGET_KINDS + ("sequential",) or not amount.isdigit() or int(amount) < 1:
            parser.error(f"--forget {name!r}: expected KIND-PERCENT (KIND one of "
                         f"{', '.join(FORGET_KINDS)}) or sequential-N")
    return args


def main() -> None:
    args = parse_args()
    extra = {}
    for item in args.set:
        key, value = item.split("=", 1)
        extra[key] = json.loads(value) if value[:1].isdigit() or value[:1] in "-[{" else value
    torch.set_num_threads(args.threads)
    scratch = new_scratch("fedshare-unlearning-")
    cfg = load_config({"dataset": args.dataset, "fraction-train": args.fraction_train,
                       "eval-every": 0, "num-rounds": 10_000,
                       "unlearn-rounds": args.unlearn_rounds, "max-users": args.max_users,
                       "snapshot-rounds": f"0,{args.learn_rounds // 2}", "seed": args.seed,
                       "torch-threads": args.threads, "state-dir": str(scratch / "unused"),
                       "out-dir": str(scratch / "out"), **extra})
    ds = load_dataset(cfg.dataset, max_users=cfg.max_users or None)
    # taken before any work: the git revision is the code that runs, even if the tree changes
    manifest = run_manifest({**cfg.as_dict(), "bench": vars(args)}, args.seed, ds.fingerprint)
    nodes = ds.num_users if args.setting == "cross-user" else args.nodes
    learned = {family: learn(cfg, family, args, nodes, scratch)
               for family in {_family(m) for m in args.methods.split(",")}}
    rows = []
    for name in args.forget:
        rows += forget_set_rows(name, learned, cfg, args, ds, scratch)
        write_json(args.out, rows)
    for row in rows:
        row["manifest"] = manifest
    print()
    print_table(rows, COLUMNS)
    write_json(args.out, rows)
    remove_scratch(scratch)


if __name__ == "__main__":
    main()
