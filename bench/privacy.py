"""Upload privacy benchmark (issue 11): a curious server attacks the train uploads of a real
in-process run (the ServerApp strategy and the ClientApp handlers exchanging serialised
messages) and tries to infer each user's private (unshared) training interactions.

    python bench/privacy.py --setting cross-user --ratios 0.5 --out bench/out/privacy.json
    python bench/privacy.py --setting nodes --nodes 100 --defences none padded ...

Per setting, ρ and defence (``--defences``: names of ``DEFENCES`` below, each a set of
run-config values), the run trains ``--rounds`` rounds; the uploads of ``--attack-per-round``
sampled clients in each of the last ``--attack-rounds`` rounds are attacked
(harness/upload_attacks.py) over every (user, item) the server does not know shared. Rows:
mean AUC, precision, recall and F1 (best threshold; and at the count the reply implies) of
each attack, the random-guess F1 beside them, and the bytes uploaded per client per round.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common_args import new_scratch, print_table, remove_scratch, write_json  # noqa: E402
from bench.quality import parse_set  # noqa: E402
from common.config import load_config  # noqa: E402
from common.manifest import run_manifest  # noqa: E402
from common.sharing import shared_pairs  # noqa: E402
from harness.session import new_session  # noqa: E402
from harness.upload_attacks import ATTACKS, capture, evaluate, negatives_replay  # noqa: E402

# each defence is a set of run-config values (common/config.py documents the keys)
DEFENCES = {name: {"upload-mode": "rows", **values} for name, values in {
    "none": {},
    "withhold": {"upload-mode": "none"},
    "padded": {"upload-padding": 1.0},
    "padded-3": {"upload-padding": 3.0},
    "coarse": {"upload-counts": "coarse"},
    "withhold+coarse": {"upload-mode": "none", "upload-counts": "coarse"},
    "dp-10": {"dp-epsilon": 10.0},
    "dp-10-all": {"dp-epsilon": 10.0, "upload-rows": "all", "upload-counts": "coarse"},
    "dp-1-all": {"dp-epsilon": 1.0, "upload-rows": "all", "upload-counts": "coarse"},
    "padded+coarse+dp-10": {"upload-padding": 1.0, "upload-counts": "coarse", "dp-epsilon": 10.0},
    "default": {"upload-mode": "auto"},
    "secagg": {"secure-aggregation": True},
    "secagg+coarse": {"secure-aggregation": True, "upload-counts": "coarse"},
}.items()}
COLUMNS = ["setting", "rho", "defence", "attack", "auc", "f1", "precision", "recall", "f1@k",
           "random_f1", "uploads", "replayed", "size_exact", "bytes_up"]


def _private_pairs(cfg) -> np.ndarray:
    ds = cfg.load_data()
    shared = shared_pairs(ds.train, cfg.sharing_ratio, cfg.sharing_distribution, cfg.seed)
    keys = shared[:, 0] * ds.num_items + shared[:, 1]
    return ds.train[~np.isin(ds.train[:, 0] * ds.num_items + ds.train[:, 1], keys)]


def attacked_run(config: dict, nodes: int, rounds: int, attack_rounds: int, per_round: int,
                 workdir: Path) -> tuple[list[dict], list]:
    """Run ``rounds`` rounds; evaluations of the attacked uploads and the round records."""
    cfg = load_config(config)
    session = new_session(cfg, nodes, workdir)
    first, taken, uploads = rounds - attack_rounds + 1, {}, []

    def keep(node: int, rnd: int) -> bool:
        if rnd < first or taken.get(rnd, 0) >= per_round:
            return False
        taken[rnd] = taken.get(rnd, 0) + 1
        return True

    session.strategy.tap = capture(session.strategy, keep, uploads)
    records = session.run_rounds(rounds)
    private = _private_pairs(cfg)
    return [evaluate(u, private, cfg.local_epochs, cfg.seed, negatives_replay(u, cfg, nodes))
            for u in uploads], records


def _bytes_per_upload(records) -> float:
    train = [r.phases["train"] for r in records if "train" in r.phases]
    return sum(p.bytes_up for p in train) / max(sum(p.ok for p in train), 1)


def summarise(evaluations: list[dict], base: dict) -> list[dict]:
    """One row per attack: means over the attacked uploads."""
    rows = []
    for name in ATTACKS:
        got = [e[name] for e in evaluations if name in e]
        if not got:
            continue
        row = {**base, "attack": name, "uploads": len(got),
               "replayed": float(np.mean([e["replayed"] for e in evaluations])),
               "size_exact": float(np.mean([e["size_exact"] for e in evaluations])),
               "random_f1": float(np.mean([e["random_f1"] for e in evaluations]))}
        for metric in ("auc", "f1", "precision", "recall", "f1@k"):
            row[metric] = float(np.nanmean([g[metric] for g in got]))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--out", required=True)
    parser.add_argument("--settings", nargs="+", choices=("cross-user", "nodes"),
                        default=["cross-user"])
    parser.add_argument("--nodes", type=int, default=100, help="nodes of the 'nodes' setting")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5])
    parser.add_argument("--defences", nargs="+", default=["none"], choices=sorted(DEFENCES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attack-rounds", type=int, default=1, help="the last N rounds are attacked")
    parser.add_argument("--attack-per-round", type=int, default=30)
    parser.add_argument("--fraction-train", type=float, default=0.1)
    parser.add_argument("--max-users", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    scratch = new_scratch("fedshare-privacy-")
    base = {"dataset": args.dataset, "num-rounds": args.rounds, "eval-every": 0,
            "fraction-train": args.fraction_train, "max-users": args.max_users,
            **parse_set(args.set)}
    first = load_config(base)   # the manifest before the work: the code that runs
    manifest = run_manifest(base, first.seed, first.load_data().fingerprint)
    rows, details = [], []
    for setting in args.settings:
        for rho in args.ratios:
            for defence in args.defences:
                config = {**base, **DEFENCES[defence], "sharing-ratio": rho,
                          "state-dir": str(scratch / f"{setting}-{rho}-{defence}"),
                          "out-dir": str(scratch / "results")}
                cfg = load_config(config)
                nodes = cfg.load_data().num_users if setting == "cross-user" else args.nodes
                evaluations, records = attacked_run(config, nodes, args.rounds, args.attack_rounds,
                                                    args.attack_per_round,
                                                    scratch / f"{setting}-{rho}-{defence}")
                found = summarise(evaluations, {"setting": setting, "rho": rho,
                                                "defence": defence,
                                                "bytes_up": _bytes_per_upload(records)})
                print_table(found, COLUMNS, )
                rows += found
                details.append({"setting": setting, "rho": rho, "defence": defence,
                                "config": config, "uploads": evaluations})
                write_json(args.out, {"rows": rows, "details": details, "bench": vars(args),
                                      "manifest": manifest})
    print()
    print_table(rows, COLUMNS)
    remove_scratch(scratch)


if __name__ == "__main__":
    main()
