"""Deployment latency: a round on a real SuperLink + SuperNodes vs a simulation round.

    python bench/deployment.py --out bench/out/deployment.json

Runs the same config (3 nodes, every node every round, evaluation every other round) in
Flower's simulation runtime (`deploy/simulate.sh`) and on a real loopback federation
(`deploy/federation.sh`, TLS by default) four times: as Flower ships it (`flower-superexec`,
`flower-supernode`, task poll 1 s, evaluation in its own message), with poll 0.1 s and
`eval-in-train`, plus the warm ClientApp executor (`deploy/warm_superexec.py`), and as this
project runs it: that plus the quick SuperNode (`deploy/quick_supernode.py`).
Reports seconds per round and per phase (mean over rounds 2.., round 1 also shares), plus the
import time of the ClientApp module (paid by every `flwr-clientapp` process, i.e. per message
per node).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common_args import new_scratch, print_table, remove_scratch, write_json  # noqa: E402
from common.manifest import run_manifest  # noqa: E402

OVERRIDES = "num-rounds={rounds} max-users=150 eval-every=2 fraction-train=1.0 sharing-ratio=0.5"


def _result(out_dir: Path) -> dict:
    files = sorted(out_dir.glob("fedshare-*.json"))
    if len(files) != 1:
        raise RuntimeError(f"expected one result file in {out_dir}, found {files}")
    return json.loads(files[0].read_text())


def run_simulation(tmp: Path, rounds: int) -> dict:
    env = {**os.environ, "NODES": "3", "FLWR_HOME": str(tmp / "flwr"),
           "FEDSHARE_STATE_DIR": str(tmp / "state"), "FEDSHARE_OUT_DIR": str(tmp / "out")}
    subprocess.run([str(ROOT / "deploy" / "simulate.sh"), OVERRIDES.format(rounds=rounds)],
                   env=env, check=True, capture_output=True, timeout=1200)
    return _result(tmp / "out")


def run_deployment(tmp: Path, rounds: int, mode: str, poll: float, folded: bool,
                   executor: str, supernode: str) -> dict:
    """A loopback federation in ``mode`` with superexec task poll ``poll`` s; ``folded``:
    evaluation rides on the train messages (``eval-in-train``); ``executor``: what runs the
    ClientApp tasks (federation.sh ``--clientapp-exec``: ``flower`` or ``warm``);
    ``supernode``: what runs the SuperNodes (``--supernode-loop``: ``flower`` or ``quick``)."""
    env = {**os.environ, "FEDSHARE_OUT_DIR": str(tmp / "out"), "FEDSHARE_TIMINGS": "1",
           "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(poll)}
    script = [str(ROOT / "deploy" / "federation.sh"), "--run-dir", str(tmp / "fed"),
              "--mode", mode, "--certs-dir", str(tmp / "certs"),
              "--superlink-port", "18700", "--node-port-base", "18794",
              "--clientapp-exec", executor, "--supernode-loop", supernode]
    overrides = OVERRIDES.format(rounds=rounds) + f" eval-in-train={str(folded).lower()}"
    subprocess.run(script + ["start"], env=env, check=True, capture_output=True, timeout=300)
    try:
        subprocess.run(script + ["run", overrides], env=env, check=True, capture_output=True,
                       timeout=1800)
    finally:
        subprocess.run(script + ["stop"], env=env, capture_output=True, timeout=120)
    return {**_result(tmp / "out"), "timings": _timings(tmp / "fed" / "state")}


def _timings(state_dir: Path) -> list[dict]:
    """Every node's per-message timing lines (client_app/timing.py)."""
    return [json.loads(line) for path in sorted(state_dir.rglob("timings.jsonl"))
            for line in path.read_text().splitlines()]


def message_breakdown(result: dict) -> dict:
    """Mean seconds per train/evaluate message of rounds 2..: from its creation on the server
    to its ClientApp process's start (SuperNode poll, superexec poll, spawn), the process's
    imports, Flower's ClientApp setup (reading the message from the SuperNode), our handler;
    and per round the way back (model-phase time after the last handler of each phase ended:
    reply push, SuperNode poll, ServerApp poll)."""
    lines = [t for t in result["timings"]
             if t["type"] in ("train", "evaluate") and int(t["round"]) > 1]
    if not lines:
        return {}
    groups: dict[tuple[int, str], list[dict]] = {}
    for t in lines:
        groups.setdefault((int(t["round"]), t["type"]), []).append(t)
    spans = sum(max(t["end"] for t in g) - min(t["created"] for t in g) for g in groups.values())
    rounds = [r for r in result["rounds"] if r["round"] > 1]
    phases = sum(r["phases"].get(p, {}).get("seconds", 0.0) for r in rounds
                 for p in ("train", "evaluate"))
    mean = lambda key: sum(key(t) for t in lines) / len(lines)  # noqa: E731
    return {"messages_per_node_round": len(lines) / len(rounds) / 3,
            "to_process_start": mean(lambda t: t["process"] - t["created"]),
            "imports": mean(lambda t: t["imported"] - t["process"]),
            "flower_setup": mean(lambda t: t["start"] - t["imported"]),
            "handler": mean(lambda t: t["end"] - t["start"]),
            "way_back_per_round": (phases - spans) / len(rounds)}


def per_round(result: dict) -> dict:
    """Mean seconds of rounds 2.. (round 1 also shares), total and per phase."""
    rounds = [r for r in result["rounds"] if r["round"] > 1]
    phases = sorted({p for r in rounds for p in r["phases"]})
    return {"round_seconds": sum(r["seconds"] for r in rounds) / len(rounds),
            "first_round_seconds": result["rounds"][0]["seconds"],
            **{f"{p}_seconds": sum(r["phases"].get(p, {}).get("seconds", 0.0) for r in rounds)
               / len(rounds) for p in phases}}


WARM_UP = "sys.path.insert(0, 'deploy'); import warm_superexec; warm_superexec.warm_up(); "


def clientapp_import_seconds(prelude: str = "") -> float:
    """Wall-clock seconds of ``import client_app.app`` in a fresh interpreter after
    ``prelude``: nothing (what every ``flwr-clientapp`` process pays) or ``WARM_UP`` (what a
    child of the warm executor pays, deploy/warm_superexec.py)."""
    code = (f"import sys, time; {prelude}t = time.perf_counter(); import client_app.app; "
            "print(time.perf_counter() - t)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


# runtime key -> (label, superexec task poll s, eval-in-train, ClientApp executor, SuperNode)
DEPLOYMENTS = {
    "flower": ("deployment, Flower defaults", 1.0, False, "flower", "flower"),
    "fast-poll": ("deployment, poll 0.1 + eval-in-train", 0.1, True, "flower", "flower"),
    "warm": ("deployment, poll 0.1 + eval-in-train + warm executor", 0.1, True, "warm",
             "flower"),
    "quick": ("deployment, poll 0.1 + eval-in-train + warm executor + quick SuperNode", 0.1,
              True, "warm", "quick")}
RUNTIMES = ("simulation", *DEPLOYMENTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", choices=("insecure", "tls"), default="tls")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES),
                        help="which runtimes to measure (default: all)")
    args = parser.parse_args()
    tmp = new_scratch("fedshare-deploy-")
    idle_poll = os.environ.get("FEDSHARE_SUPERNODE_IDLE_POLL", "default")
    manifest = run_manifest({"overrides": OVERRIDES.format(rounds=args.rounds), "nodes": 3,
                             "mode": args.mode, "supernode_idle_poll": idle_poll},
                            0, "")   # before the work: the code that runs
    rows = []
    if "simulation" in args.runtimes:
        rows.append({"runtime": "simulation",
                     **per_round(run_simulation(tmp / "sim", args.rounds))})
    for key, (name, poll, folded, executor, supernode) in DEPLOYMENTS.items():
        if key not in args.runtimes:
            continue
        folder = tmp / name.replace(" ", "-").replace(",", "").replace("+", "")
        result = run_deployment(folder, args.rounds, args.mode, poll, folded, executor,
                                supernode)
        rows.append({"runtime": f"{name} ({args.mode})", **per_round(result),
                     **message_breakdown(result)})
    imports, warm_imports = clientapp_import_seconds(), clientapp_import_seconds(WARM_UP)
    columns = ["runtime"] + sorted({k for row in rows for k in row} - {"runtime"})
    print_table(rows, columns)
    print(f"import client_app.app: {imports:.2f} s per flwr-clientapp process, "
          f"{warm_imports:.2f} s in a child of the warm executor")
    write_json(args.out, {"rows": rows, "clientapp_import_seconds": imports,
                          "warm_clientapp_import_seconds": warm_imports,
                          "manifest": manifest})
    remove_scratch(tmp)


if __name__ == "__main__":
    main()
