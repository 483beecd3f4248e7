"""Deployment latency: a round on a real SuperLink + SuperNodes vs a simulation round.

    python bench/deployment.py --out bench/out/deployment.json

Runs the same config (3 nodes, every node every round) twice: `deploy/simulate.sh`
(Flower's simulation runtime) and `deploy/federation.sh` (insecure mode, loopback), reads
both result files and reports seconds per round and per phase, plus the import time of
the ClientApp module (paid by every `flwr-clientapp` process, i.e. per message per node).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common_args import print_table, write_json  # noqa: E402
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


def run_deployment(tmp: Path, rounds: int) -> dict:
    env = {**os.environ, "FEDSHARE_OUT_DIR": str(tmp / "out")}
    script = [str(ROOT / "deploy" / "federation.sh"), "--run-dir", str(tmp / "fed"),
              "--superlink-port", "18700", "--node-port-base", "18794"]
    subprocess.run(script + ["start"], env=env, check=True, capture_output=True, timeout=300)
    try:
        subprocess.run(script + ["run", OVERRIDES.format(rounds=rounds)], env=env, check=True,
                       capture_output=True, timeout=1800)
    finally:
        subprocess.run(script + ["stop"], env=env, capture_output=True, timeout=120)
    return _result(tmp / "out")


def per_round(result: dict) -> dict:
    """Mean seconds of rounds 2.. (round 1 also shares), total and per phase."""
    rounds = [r for r in result["rounds"] if r["round"] > 1]
    phases = sorted({p for r in rounds for p in r["phases"]})
    return {"round_seconds": sum(r["seconds"] for r in rounds) / len(rounds),
            "first_round_seconds": result["rounds"][0]["seconds"],
            **{f"{p}_seconds": sum(r["phases"].get(p, {}).get("seconds", 0.0) for r in rounds)
               / len(rounds) for p in phases}}


def clientapp_import_seconds() -> float:
    """``python -X importtime -c 'import client_app.app'``: cumulative microseconds -> s."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import client_app.app"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    line = [l for l in proc.stderr.splitlines() if re.search(r"\|\s+client_app\.app$", l)][-1]
    return int(line.split("|")[1]) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fedshare-deploy-"))
    rows = [{"runtime": "simulation", **per_round(run_simulation(tmp / "sim", args.rounds))},
            {"runtime": "deployment", **per_round(run_deployment(tmp / "dep", args.rounds))}]
    imports = clientapp_import_seconds()
    print_table(rows, list(rows[1].keys()))
    print(f"import client_app.app: {imports:.2f} s per flwr-clientapp process")
    write_json(args.out, {"rows": rows, "clientapp_import_seconds": imports,
                          "manifest": run_manifest({"overrides": OVERRIDES.format(rounds=args.rounds),
                                                    "nodes": 3}, 0, "")})


if __name__ == "__main__":
    main()
