"""Speed benchmark: a federated round over all users vs a centralized BPR-MF epoch.

    python bench/speed.py --dataset ml-1m --out bench/out/speed-ml-1m.json

Runs the real ServerApp strategy and ClientApp handlers in one process (harness/inprocess.py;
every node trains in turn, so a round is the sum of all nodes' work on this machine) with
every node sampled, and reports seconds per round split by phase, the centralized BPR-MF
epoch on the same interactions, bytes uploaded per client per round against the floor
(touched rows x d x 4 bytes) and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common_args import new_scratch, print_table, remove_scratch, write_json  # noqa: E402
from harness.inprocess import run_inprocess  # noqa: E402
from common.centralized import train_centralized  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.manifest import run_manifest  # noqa: E402


def federated_rounds(args, scratch: str) -> dict:
    config = {"dataset": args.dataset, "num-rounds": args.rounds, "eval-every": args.rounds,
              "fraction-train": 1.0, "sharing-ratio": args.sharing_ratio,
              "torch-threads": args.threads, "state-dir": f"{scratch}/state",
              "out-dir": f"{scratch}/out"}
    return run_inprocess(config, args.nodes)


def summarize(result: dict, nodes: int, dim: int) -> dict:
    steady = [r for r in result["rounds"] if r["round"] > 1]  # round 1 also uploads shares
    phase_names = ("share", "graph", "train")
    per_phase = {p: sum(r["phases"][p]["seconds"] for r in steady) / len(steady) for p in phase_names}
    train = [r["phases"]["train"] for r in steady]
    bytes_up = sum(t["bytes_up"] for t in train) / (len(train) * nodes)
    floor = sum(t["rows_up"] for t in train) * dim * 4 / (len(train) * nodes)
    evaluation = [r["phases"]["evaluate"]["seconds"] for r in result["rounds"]
                  if "evaluate" in r["phases"]]
    return {"round_seconds": sum(per_phase.values()), "phase_seconds": per_phase,
            "evaluate_seconds": evaluation[-1] if evaluation else None,
            "first_round_seconds": result["rounds"][0]["seconds"],
            "bytes_up_per_client_round": bytes_up, "bytes_up_floor": floor,
            "bytes_up_over_floor": bytes_up / floor if floor else None,
            "bytes_down_per_client_round": sum(t["bytes_down"] for t in train) / (len(train) * nodes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--out", required=True)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sharing-ratio", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scratch = new_scratch("fedshare-speed-")
    result = federated_rounds(args, scratch)
    summary = summarize(result, args.nodes, dim=64)
    ds = load_dataset(args.dataset)
    central = train_centralized(ds, "bprmf", 2, lr=0.01, log=lambda *a, **k: None)
    summary["centralized_bpr_epoch_seconds"] = central["seconds_per_epoch"]
    summary["round_over_bpr_epoch"] = summary["round_seconds"] / central["seconds_per_epoch"]
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary["config"] = vars(args)
    summary["manifest"] = result["manifest"]
    summary["manifest"]["bench"] = run_manifest(vars(args), 0, ds.fingerprint)["config"]
    rows = [{"measure": k, "value": v} for k, v in summary.items()
            if k not in ("manifest", "config", "phase_seconds")]
    rows += [{"measure": f"phase:{k}", "value": v} for k, v in summary["phase_seconds"].items()]
    print_table(rows, ["measure", "value"])
    write_json(args.out, summary)
    remove_scratch(scratch)


if __name__ == "__main__":
    main()
