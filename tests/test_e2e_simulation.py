"""End to end through Flower's own runtime: `flwr run .` (`fedshare simulate`, i.e.
deploy/simulate.sh) on a small real slice of ML-100K, 2 rounds, 3 simulated SuperNodes (2 sampled
per round, so Flower's 64-bit node ids go through our sampling); the metrics it writes must beat
a random ranker. The local SuperLink that `flwr run` starts is stopped by PID by the script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.datasets import default_data_root, load_dataset
from tests.ranking import random_ranker_recall

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="no ML-100K")
def test_flwr_run_two_rounds_beats_random(tmp_path):
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"),
           "FEDSHARE_STATE_DIR": str(tmp_path / "state"), "FEDSHARE_OUT_DIR": str(tmp_path / "out"),
           "FEDSHARE_DATA_DIR": str(default_data_root())}
    overrides = ["num-rounds=2 max-users=150 eval-every=1", "fraction-train=0.67",
                 "sharing-ratio=0.5 server-epochs=3.0 local-epochs=2"]   # joined by the script
    proc = subprocess.run([sys.executable, "-m", "fedshare", "simulate", "--nodes", "3",
                           *overrides], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "round 1/2 | " in proc.stdout and " left" in proc.stdout   # Flower's log, time left
    files = list((tmp_path / "out").glob("fedshare-ml-100k-*.json"))
    assert len(files) == 1, proc.stdout[-2000:]
    result = json.loads(files[0].read_text())
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    assert all(r["nodes_sampled"] == 2 for r in result["rounds"])
    assert result["manifest"]["packages"]["flwr"] == "1.41.0"
    assert len(result["manifest"]["data_fingerprint"]) == 64
    final = result["final"]
    ds = load_dataset("ml-100k", max_users=150)
    assert final["num-users"] == len(np.unique(ds.test[:, 0]))
    assert final["recall@20"] > 3 * random_ranker_recall(ds, 20), final
    assert result["rounds"][-1]["shared_edges"] > 0
    # the local simulation SuperLink started for this run is gone
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "flwr")], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


def test_flwr_run_whose_nodes_cannot_read_data_fails_with_the_reason(tmp_path):
    env = {**os.environ, "NODES": "2", "FLWR_HOME": str(tmp_path / "flwr"),
           "FEDSHARE_STATE_DIR": str(tmp_path / "state"), "FEDSHARE_OUT_DIR": str(tmp_path / "out"),
           "FEDSHARE_DATA_DIR": str(tmp_path / "no-data-here")}
    proc = subprocess.run([str(ROOT / "deploy" / "simulate.sh"), "num-rounds=1 max-users=20"],
                          env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-2000:]
    assert "every round was skipped" in output and "no-data-here" in output
    assert "did not complete (finished:failed)" in output


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="no ML-100K")
def test_flwr_run_with_secure_aggregation_sums_through_flowers_runtime(tmp_path):
    """The secagg stages keep each node's round secrets in Flower's ``context.state`` between
    messages (a ClientApp process per message): every stage of both rounds is answered by
    both sampled nodes and the masked sums are unmasked and applied."""
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"),
           "FEDSHARE_STATE_DIR": str(tmp_path / "state"), "FEDSHARE_OUT_DIR": str(tmp_path / "out"),
           "FEDSHARE_DATA_DIR": str(default_data_root())}
    overrides = ["num-rounds=2 max-users=60 eval-every=2 fraction-train=0.67",
                 "sharing-ratio=0 secure-aggregation=true local-epochs=1"]
    proc = subprocess.run([sys.executable, "-m", "fedshare", "simulate", "--nodes", "3",
                           *overrides], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(next((tmp_path / "out").glob("fedshare-ml-100k-*.json")).read_text())
    for record in result["rounds"]:
        phases = record["phases"]
        assert [phases[p]["ok"] for p in ("secagg-keys", "secagg-shares", "train",
                                          "secagg-unmask")] == [2, 2, 2, 2], phases
        assert not any(phases[p]["rejected"] for p in phases), phases
        assert phases["train"]["rows_up"] == 0          # no row went up in the clear
