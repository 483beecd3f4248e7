"""Unlearning benchmark: learn, withdraw, then unlearn with each method and compare.

    python bench/unlearning.py --dataset ml-100k --out bench/out/unlearning-ml-100k.json

Learning phase: ``--learn-rounds`` FedShare rounds (every node sampled) with the real
ServerApp strategy and ClientApp handlers (harness/inprocess.py). Then, for each scenario
(``one-user``: one sharing user withdraws everything; ``users-all``: 10 % of sharing users
withdraw everything; ``random-30``: 30 % of every user's shared interactions), unshare
requests are written into the nodes' ledgers exactly as the CLI does, and each method runs on
its own copy of the learned federation:

* ``contrastive`` / ``naive``: ``--unlearn-rounds`` further rounds (the first one carries
  the requests);
* ``retrain``: the server starts a new model generation on the remaining shared data
  (clients reset their user rows) and trains ``--learn-rounds`` rounds from scratch;
* ``fru``: FRU on the server graph model (docs/design.md "FRU in FedShare"): the LightGCN
  learning phase keeps its update log (the federation is learned with ``unlearning-method =
  "fru"`` when fru is run: the log changes no training, so naive and contrastive start from
  the same model, without the log); the first of ``--unlearn-rounds`` rounds rolls back and
  replays (in the unshare phase);
* ``receraser``: its own learning phase (the server model is the RecEraser ensemble from
  round 1, same seeds and nodes), then ``--unlearn-rounds`` rounds; the first retrains the
  affected shards and the aggregator from scratch (in the unshare phase).

Rows: ``{scenario, method, recall@20, ndcg@20, withdrawn_mean_rank, shared_mean_rank,
never_seen_mean_rank, mia_auc, popularity_auc, unlearn_seconds, retrain_seconds,
storage_bytes, fru_fedrec_estimated_bytes}`` (``popularity_auc``: the same targets scored by item
popularity alone, the floor of a score attack on a model that ranks popular items high); ranks and the membership attack use the server (global) model (for
``receraser`` the aggregated ensemble). Storage: snapshots + edge round stamps, for
``receraser`` the K sub-models' tables and the aggregator (the ensemble itself), for ``fru``
the measured bytes of its update log plus snapshots and stamps.
``fru_fedrec_estimated_bytes``: FRU in its FedRec form, estimated (every participating
client's uploaded item rows of every round; 0 when rows are not uploaded).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common_args import print_table, write_json  # noqa: E402
from common.config import RunConfig, load_config  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.manifest import run_manifest  # noqa: E402
from common.forgetting import auc, membership_auc, pair_ranks, sample_never_seen  # noqa: E402
from harness.session import Session, clone, new_session, withdraw  # noqa: E402
from server_app.records import RoundRecord  # noqa: E402
from server_app.unlearning import fru_storage_bytes, unlearning_storage_bytes  # noqa: E402

SCENARIOS = {"one-user": (1.0, 1.0, 1), "users-all": (0.1, 1.0, None),
             "random-30": (1.0, 0.3, None)}  # user fraction, item fraction, most users
METHODS = ("retrain", "naive", "contrastive", "fru", "receraser")
COLUMNS = ["scenario", "method", "recall@20", "ndcg@20", "withdrawn_mean_rank",
           "shared_mean_rank", "never_seen_mean_rank", "mia_auc", "popularity_auc", "unlearn_seconds",
           "retrain_seconds", "storage_bytes", "fru_fedrec_estimated_bytes"]


MAX_TARGETS = 5000  # withdrawn pairs scored (a seeded sample when there are more)


def forgetting(session: Session, ds, withdrawn: np.ndarray, seed: int) -> dict:
    """Ranks of withdrawn / still-shared / never-seen pairs under the server model, and the
    membership-inference AUC on the withdrawn pairs."""
    state = session.state
    users, items = state.model.propagated(state.graph)
    shared = state.edges.pairs()
    rng = np.random.default_rng(seed)
    if len(withdrawn) > MAX_TARGETS:
        withdrawn = withdrawn[np.sort(rng.choice(len(withdrawn), MAX_TARGETS, replace=False))]
    everything = np.concatenate([ds.train, ds.valid, ds.test])
    wusers = np.unique(withdrawn[:, 0])
    never = sample_never_seen(everything, wusers, 10, ds.num_items, seed)
    still = shared[rng.choice(len(shared), min(len(shared), 2000), replace=False)]
    members = shared[rng.choice(len(shared), min(len(shared), 4000), replace=False)]
    sharing_users = np.unique(shared[:, 0])
    non_members = sample_never_seen(everything, sharing_users, 4, ds.num_items, seed + 1)
    target_neg = sample_never_seen(everything, wusers, 10, ds.num_items, seed + 2)
    return {
        "withdrawn_mean_rank": float(pair_ranks(users, items, withdrawn, shared).mean()),
        "shared_mean_rank": float(pair_ranks(users, items, still, shared).mean()),
        "never_seen_mean_rank": float(pair_ranks(users, items, never, shared).mean()),
        "mia_auc": membership_auc(users, items, members, non_members, withdrawn, target_neg),
        "popularity_auc": popularity_auc(shared, ds.num_items, withdrawn, target_neg),
    }


def popularity_auc(shared: np.ndarray, num_items: int, targets: np.ndarray,
                   negatives: np.ndarray) -> float:
    """AUC of an attack that knows only item popularity (in the still-shared edges): the
    floor any score-based attack reaches on a model that ranks popular items high."""
    popularity = np.bincount(shared[:, 1], minlength=num_items).astype(np.float64)
    return auc(popularity[targets[:, 1]], popularity[negatives[:, 1]])


def unlearn_seconds(records: list[RoundRecord], method: str) -> float:
    """Time of the unlearning step: for Retrain every round of the retraining; otherwise the
    unshare phase (erasure) plus the dedicated contrastive unlearning steps."""
    if method == "retrain":
        return sum(r.seconds for r in records)
    return records[0].phases["unshare"].seconds + \
        sum(r.phases["graph"].unlearn_seconds for r in records)


def _family(method: str) -> str:
    """Which learned federation a method starts from: the ensemble's own, or the LightGCN's."""
    return "receraser" if method == "receraser" else "lightgcn"


def learn(cfg: RunConfig, family: str, args, scratch: Path) -> Session:
    """``--learn-rounds`` rounds of a fresh federation (server model of ``family``; the
    LightGCN one keeps FRU's update log when fru is run)."""
    if family == "receraser":
        cfg = cfg.model_copy(update={"unlearning_method": "receraser"})
    elif "fru" in args.methods.split(","):         # the log changes no training
        cfg = cfg.model_copy(update={"unlearning_method": "fru"})
    session = new_session(cfg, args.nodes, scratch / f"learned-{family}")
    session.run_rounds(args.learn_rounds)
    return session


def run_method(learned: Session, cfg: RunConfig, method: str, scenario: str, args, ds,
               scratch: Path) -> dict:
    session = clone(learned, scratch / f"{scenario}-{method}", cfg.model_copy(
        update={"unlearning_method": method}))
    withdrawn = withdraw(session, *SCENARIOS[scenario][:2], args.seed, SCENARIOS[scenario][2])
    rounds = args.learn_rounds if method == "retrain" else args.unlearn_rounds
    shards = list(session.state.model.shards) if method == "receraser" else []
    records = session.run_rounds(rounds)
    metrics = session.evaluate()
    row = {"scenario": scenario, "method": method, "withdrawn_pairs": len(withdrawn),
           "recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"],
           **forgetting(session, ds, withdrawn, args.seed),
           "unlearn_seconds": unlearn_seconds(records, method),
           "storage_bytes": storage_bytes(session, method),
           "fru_fedrec_estimated_bytes": fru_storage_bytes(learned.history + records,
                                                           cfg.embedding_dim)}
    if method == "receraser":   # sub-models replaced by a retraining
        row["shards_retrained"] = sum(a is not b for a, b in zip(shards, session.state.model.shards))
    return row


def storage_bytes(session: Session, method: str) -> int:
    state = session.state
    if method == "receraser":
        return state.model.storage_bytes()
    log_bytes = state.updates.storage_bytes() if method == "fru" else 0
    return log_bytes + unlearning_storage_bytes(state.snapshots, len(state.edges))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--out", required=True)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--learn-rounds", type=int, default=10)
    parser.add_argument("--unlearn-rounds", type=int, default=3)
    parser.add_argument("--max-users", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra run-config values, e.g. unlearn-hops=0")
    args = parser.parse_args()
    extra = {}
    for item in args.set:
        key, value = item.split("=", 1)
        extra[key] = json.loads(value) if value[:1].isdigit() or value[:1] in "-[{" else value
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="fedshare-unlearning-"))
    cfg = load_config({"dataset": args.dataset, "fraction-train": 1.0, "eval-every": 0,
                       "num-rounds": args.learn_rounds + args.unlearn_rounds,
                       "unlearn-rounds": args.unlearn_rounds, "max-users": args.max_users,
                       "snapshot-rounds": f"0,{args.learn_rounds // 2}", "seed": args.seed,
                       "torch-threads": args.threads, "state-dir": str(scratch / "unused"),
                       "out-dir": str(scratch / "out"), **extra})
    ds = load_dataset(cfg.dataset, max_users=cfg.max_users or None)
    methods, rows = args.methods.split(","), []
    learned = {family: learn(cfg, family, args, scratch)
               for family in {_family(m) for m in methods}}
    for scenario in args.scenarios.split(","):
        for method in methods:
            rows.append(run_method(learned[_family(method)], cfg, method, scenario, args, ds,
                                   scratch))
            print_table(rows[-1:], COLUMNS)
        retrain = [r["unlearn_seconds"] for r in rows if r["scenario"] == scenario
                   and r["method"] == "retrain"]
        for row in rows:
            if retrain and row["scenario"] == scenario:
                row["retrain_seconds"] = retrain[0]
    manifest = run_manifest({**cfg.as_dict(), "bench": vars(args)}, args.seed, ds.fingerprint)
    for row in rows:
        row["manifest"] = manifest
    print()
    print_table(rows, COLUMNS)
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
