"""The paper's setting through Flower's own runtime: `flwr run .` (deploy/simulate.sh) with one
user per SuperNode on a slice of ML-100K, 2 rounds; every node hosts exactly one user, the
server's sampling picks a fraction of them per round, and both splits are evaluated."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from common.datasets import default_data_root, load_dataset

ROOT = Path(__file__).resolve().parents[1]
USERS = 24


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="no ML-100K")
def test_flwr_run_with_one_user_per_supernode(tmp_path):
    env = {**os.environ, "NODES": str(USERS), "FLWR_HOME": str(tmp_path / "flwr"),
           "FEDSHARE_STATE_DIR": str(tmp_path / "state"), "FEDSHARE_OUT_DIR": str(tmp_path / "out"),
           "FEDSHARE_DATA_DIR": str(default_data_root())}
    overrides = (f"num-rounds=2 max-users={USERS} eval-every=1 fraction-train=0.25 "
                 "sharing-ratio=0.5 local-epochs=2")
    proc = subprocess.run([str(ROOT / "deploy" / "simulate.sh"), overrides], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(next((tmp_path / "out").glob("fedshare-ml-100k-*.json")).read_text())
    assert [r["nodes_sampled"] for r in result["rounds"]] == [6, 6]      # 25 % of 24 nodes
    ds = load_dataset("ml-100k", max_users=USERS)
    for split, pairs in (("valid_metrics", ds.valid), ("metrics", ds.test)):
        assert result["rounds"][-1][split]["num-users"] == len(np.unique(pairs[:, 0]))
    # one ledger per node (every node evaluated), each with exactly its one user
    ledgers = [json.loads(p.read_text()) for p in (tmp_path / "state").rglob("ledger.json")]
    hosted = sorted(int(u) for ledger in ledgers for u in ledger["users"])
    assert len(ledgers) == USERS and hosted == list(range(USERS))
    assert result["best"]["round"] in (1, 2)
