"""Quality benchmark: FedAvg vs FedShare (tuned with equal effort, chosen on validation) vs
centralized LightGCN / BPR-MF, in the cross-user setting (one user per node) or with
many users per node.

    python bench/quality.py --dataset ml-100k --setting cross-user --out bench/out/q.json
    python bench/quality.py --dataset ml-100k --setting cross-user --plan sweep --out ...

Plans:
* ``main``: FedAvg (ρ = 0) and FedShare at ``--ratios``, each tuned over the same ``--grid`` of
  client configurations (so both get the same number of runs); the configuration with the best
  validation NDCG@20 is reported with its test metrics at its best validation round.
  Centralized LightGCN and BPR-MF, validated every epoch, complete the table.
* ``sweep``: FedShare at every ``--ratios`` value (and the ``uniform`` distribution at 0.5) with
  one configuration (``--set``), FedAvg beside it.
* ``alignment``: FedShare at ρ = 0.5 over ``--grid`` without the InfoNCE alignment and with it
  on each of ``--cl-sides`` (weight ``--cl-weight``; ``--set`` adds e.g. ``cl-temperature``).

Every federated run is the real ServerApp strategy and ClientApp handlers in one process
(harness/inprocess.py), evaluated by the one evaluator on the validation and test splits every
``--eval-every`` rounds, stopped after ``--patience`` evaluations without improvement.
Rows: ``{method, sharing_ratio, setting, recall@20, ndcg@20, recall@10, ndcg@10, best_round,
rounds_run, seconds, config, grid, curve, manifest}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common_args import new_scratch, print_table, remove_scratch, write_json  # noqa: E402
from common import progress  # noqa: E402
from common.centralized import train_centralized  # noqa: E402
from common.config import DATA_KEYS, load_config  # noqa: E402
from common.manifest import run_manifest  # noqa: E402
from harness.inprocess import run_inprocess  # noqa: E402
from server_app.exchange import evaluated_subset  # noqa: E402

COLUMNS = ["method", "sharing_ratio", "setting", "recall@20", "ndcg@20", "recall@10", "ndcg@10",
           "best_round", "rounds_run", "seconds", "config"]
METRICS = ("recall@20", "ndcg@20", "recall@10", "ndcg@10")


def parse_grid(text: str) -> list[dict]:
    """``"local-epochs=1,5 local-lr=0.01"`` -> the product of the listed values."""
    axes = []
    for item in text.split():
        key, values = item.split("=", 1)
        axes.append([(key, json.loads(v)) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)] or [{}]


def parse_set(items: list[str]) -> dict:
    """``["cl-weight=0.1", "fusion=concat"]`` -> typed values (JSON where it parses)."""
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def federated_run(base: dict, overrides: dict, nodes: int) -> dict:
    """One run; its test metrics at the best validation round and its validation curve."""
    config = {**base, **overrides}
    start = time.perf_counter()
    result = run_inprocess(config, nodes)
    best = result["best"]
    curve = [(r["round"], r["valid_metrics"].get("ndcg@20"), r["metrics"].get("ndcg@20"))
             for r in result["rounds"] if r.get("valid_metrics")]
    return {"config": overrides, "best_round": best["round"], "valid_ndcg@20": best["valid"].get("ndcg@20"),
            "test": best["test"], "rounds_run": len(result["rounds"]), "curve": curve,
            "seconds": round(time.perf_counter() - start, 1), "manifest": result["manifest"]}


def tuned_row(method: str, base: dict, fixed: dict, grid: list[dict], nodes: int,
              setting: str, runs_log: str | None = None, bar=None) -> dict:
    """Every grid point under ``fixed``; the row is the one with the best validation NDCG@20.
    Each finished run is appended to ``runs_log`` and advances ``bar``."""
    runs = []
    for point in grid:
        runs.append(federated_run(base, {**fixed, **point}, nodes))
        if runs_log is not None:  # every finished run is kept, even if the grid is cut short
            with open(runs_log, "a") as sink:
                sink.write(json.dumps({"method": method, **runs[-1]}) + "\n")
        progress.write(f"  {method} {runs[-1]['config']}: valid ndcg@20 "
                       f"{runs[-1]['valid_ndcg@20']:.4f} at round {runs[-1]['best_round']} "
                       f"({runs[-1]['seconds']} s)")
        if bar is not None:
            bar.update(1)
    best = max(runs, key=lambda run: run["valid_ndcg@20"])
    return {"method": method, "sharing_ratio": fixed.get("sharing-ratio", base["sharing-ratio"]),
            "setting": setting, **{k: best["test"][k] for k in METRICS},
            "best_round": best["best_round"], "rounds_run": best["rounds_run"],
            "seconds": round(sum(r["seconds"] for r in runs), 1), "config": best["config"],
            "grid": [{k: r[k] for k in ("config", "valid_ndcg@20", "best_round", "seconds")}
                     for r in runs], "curve": best["curve"], "manifest": best["manifest"]}


def evaluated_users(ds, args, seed: int):
    """``ds`` with validation and test kept for the users the federated runs evaluate: with
    ``--eval-fraction`` < 1 in the cross-user setting (node n hosts user n - 1) the same seeded
    subset, so centralized and federated rows are measured on the same users."""
    if args.eval_fraction >= 1.0 or args.setting != "cross-user":
        return ds
    users = np.asarray(evaluated_subset(range(1, ds.num_users + 1), args.eval_fraction, seed)) - 1
    return replace(ds, fingerprint="", valid=ds.valid[np.isin(ds.valid[:, 0], users)],
                   test=ds.test[np.isin(ds.test[:, 0], users)])


def centralized_row(cfg, model: str, args, bar=None) -> dict:
    """Centralized ``model`` tuned over ``--central-grid`` (lr, reg), chosen on validation (of
    the users the federated rows evaluate, :func:`evaluated_users`)."""
    ds, runs = evaluated_users(cfg.load_data(), args, cfg.seed), []
    manifest = run_manifest({"model": model, "dataset": cfg.dataset, "bench": vars(args)},
                            cfg.seed, ds.fingerprint)   # before the work: the code that runs
    for point in parse_grid(args.central_grid):
        point = {"lr": args.central_lr, **point}
        result = train_centralized(ds, model, args.central_epochs, lr=point["lr"],
                                   reg=point.get("reg", 1e-4), batch_size=args.central_batch_size,
                                   eval_every=args.central_eval_every,
                                   patience=args.central_patience, log=lambda *a, **k: None,
                                   show_progress=True)
        runs.append((point, result))
        progress.write(f"  centralized-{model} {point}: valid ndcg@20 "
                       f"{result['valid_metrics']['ndcg@20']:.4f} at epoch {result['best_epoch']}")
        if bar is not None:
            bar.update(1)
    point, result = max(runs, key=lambda run: run[1]["valid_metrics"]["ndcg@20"])
    config = {"model": model, "epochs": args.central_epochs, "batch_size": args.central_batch_size,
              **point}
    return {"method": f"centralized-{model}", "sharing_ratio": 1.0, "setting": "centralized",
            **{k: result["metrics"][k] for k in METRICS}, "best_round": result["best_epoch"],
            "rounds_run": result["epochs"], "seconds": round(sum(r["seconds"] for _, r in runs), 1),
            "config": config, "grid": [{"config": p, "valid_ndcg@20": r["valid_metrics"]["ndcg@20"],
                                        "best_round": r["best_epoch"]} for p, r in runs],
            "curve": [(e["epoch"], e["valid"]["ndcg@20"], None)
                      for e in result["curve"] if "valid" in e],
            "manifest": {**manifest, "config": {**config, "dataset": cfg.dataset}}}


def plan_rows(args, base: dict, nodes: int) -> list[tuple[str, dict, list[dict]]]:
    """``(method, fixed overrides, grid)`` of every federated row of the plan."""
    grid, fixed = parse_grid(args.grid), parse_set(args.set)
    if args.plan == "main":
        return [("fedavg" if r == 0 else "fedshare", {**fixed, "sharing-ratio": r}, grid)
                for r in args.ratios]
    if args.plan == "sweep":
        rows = [("fedavg" if r == 0 else "fedshare", {**fixed, "sharing-ratio": r}, [{}])
                for r in args.ratios]
        return rows + [("fedshare-uniform", {**fixed, "sharing-ratio": 0.5,
                                             "sharing-distribution": "uniform"}, [{}])]
    plain = ("fedshare", {**fixed, "sharing-ratio": 0.5, "cl-weight": 0.0}, grid)
    return [plain] + [(f"fedshare+alignment-{side}", {**fixed, "sharing-ratio": 0.5,
                                                     "cl-weight": args.cl_weight, "cl-side": side}, grid)
                      for side in args.cl_sides]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k", help="a dataset name or a path")
    parser.add_argument("--setting", choices=("cross-user", "nodes"), default="cross-user")
    parser.add_argument("--plan", choices=("main", "sweep", "alignment"), default="main")
    parser.add_argument("--out", required=True)
    parser.add_argument("--nodes", type=int, default=100, help="nodes of the 'nodes' setting")
    parser.add_argument("--rounds", type=int, default=100, help="at most this many rounds")
    parser.add_argument("--fraction-train", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--eval-fraction", type=float, default=1.0,
                        help="evaluate a fixed seeded fraction of the clients (large datasets)")
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--ratios", type=float, nargs="*", default=[0.0, 0.5, 1.0],
                        help="sharing ratios of the federated rows (none: centralized rows only)")
    parser.add_argument("--grid", default="local-epochs=1,5",
                        help='client configurations tried for every method, e.g. "local-epochs=1,5 local-lr=0.01,0.03"')
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="run-config values fixed for every run")
    parser.add_argument("--cl-weight", type=float, default=0.1)
    parser.add_argument("--cl-sides", nargs="+", default=["user", "item", "both"],
                        choices=("user", "item", "both"), help="alignment plan: sides compared")
    parser.add_argument("--central-epochs", type=int, default=200)
    parser.add_argument("--central-lr", type=float, default=0.001)
    parser.add_argument("--central-batch-size", type=int, default=2048)
    parser.add_argument("--central-grid", default="lr=0.001,0.01 reg=0.0001,0.001",
                        help="centralized configurations tried per model (chosen on validation)")
    parser.add_argument("--central-eval-every", type=int, default=5)
    parser.add_argument("--central-patience", type=int, default=10)
    parser.add_argument("--max-users", type=int, default=0, help="keep users 0..N-1 (quick runs)")
    parser.add_argument("--no-centralized", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    scratch = new_scratch("fedshare-quality-")
    base = {"dataset": args.dataset, "num-rounds": args.rounds, "eval-every": args.eval_every,
            "eval-fraction": args.eval_fraction,
            "patience": args.patience, "fraction-train": args.fraction_train,
            "max-users": args.max_users,
            "torch-threads": args.threads, "sharing-ratio": 0.5,
            "state-dir": f"{scratch}/state", "out-dir": f"{scratch}/results"}
    # data keys of --set (e.g. given-valid) define the data of every row, centralized included
    base.update({k: v for k, v in parse_set(args.set).items() if k in DATA_KEYS})
    cfg = load_config(base)
    nodes = cfg.load_data().num_users if args.setting == "cross-user" else args.nodes
    print(f"{args.dataset}: {nodes} nodes ({args.setting}), plan {args.plan}", flush=True)
    plan = plan_rows(args, base, nodes)
    central = [] if args.plan != "main" or args.no_centralized else ["lightgcn", "bprmf"]
    total = (sum(len(grid) for _, _, grid in plan)
             + len(central) * len(parse_grid(args.central_grid)))
    rows = []
    # one bar over every run of the plan (its ETA assumes runs of equal length); the server's
    # per-round log lines (with their own time-left estimate) scroll above it
    with progress.redirect_logging("flwr"), \
            progress.bar(total, "benchmark runs", unit="run") as bar:
        for method, fixed, grid in plan:
            rows.append(tuned_row(method, base, fixed, grid, nodes, args.setting,
                                  f"{args.out}.runs.jsonl", bar))
            with progress.above_bars():
                print_table(rows[-1:], COLUMNS)
                write_json(args.out, rows)
        for model in central:
            rows.append(centralized_row(cfg, model, args, bar))
            with progress.above_bars():
                write_json(args.out, rows)
    for row in rows:
        row["bench"] = vars(args)
    print()
    print_table(rows, COLUMNS)
    write_json(args.out, rows)
    remove_scratch(scratch)


if __name__ == "__main__":
    main()
