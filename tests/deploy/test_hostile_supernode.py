"""A hostile SuperNode in a real federation on loopback (deploy/federation.sh, separate
processes): the FAB's ClientApp is harness/hostile_app.py, and the node whose node config
sets ``hostile-rate=1`` attacks every reply (harness/hostile.py). Every attack it applied must
be rejected by the server with a message naming that node, no honest node may be rejected, the
run must complete with the ServerApp alive, and `stop` must leave no process behind.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from common.datasets import default_data_root, load_dataset
from harness.federation import SCRIPT, Federation, stage_app
from harness.hostile_app import ATTACK_LOG
from tests.deploy.test_federation import _alive, reaper  # noqa: F401 (fixture)
from tests.ranking import random_ranker_recall

PHASE_OF = {"train": "train", "evaluate": "evaluate", "query.share": "share",
            "query.unshare": "unshare"}


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="no ML-100K")
def test_hostile_supernode_is_rejected_by_name_and_the_run_completes(tmp_path, reaper):  # noqa: F811
    ds = load_dataset("ml-100k", max_users=150)
    app = stage_app(tmp_path / "app", "harness.hostile_app:app")
    hostile = (f"hostile-rate=1.0 hostile-seed=3 hostile-users={ds.num_users} "
               f"hostile-items={ds.num_items} hostile-spare-round=2")
    fed = Federation(tmp_path, 3, "insecure", {1: hostile}, app, default_data_root())
    try:
        fed.start()
        pids = fed.pids()
        run = fed.run('num-rounds=2 max-users=150 eval-every=1 fraction-train=1.0 '
                      'sharing-ratio=0.5 round-timeout=90 run-name="hostile"')
        assert run.wait(timeout=600) == 0, fed.run_log_tail(40) + fed.logs()
        assert _alive(pids["superlink"]) and _alive(pids["superexec-serverapp"])
    finally:
        stopped = fed.stop()
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not [pid for pid in fed.pids().values() if _alive(pid)]
    assert not [pid for pid in pids.values() if _alive(pid)]

    result = json.loads(next(fed.out_dir.glob("fedshare-*-hostile.json")).read_text())
    rounds = {r["round"]: r for r in result["rounds"]}
    assert sorted(rounds) == [1, 2]
    applied = [json.loads(line) for line in
               (fed.run_dir / "state" / "node-1" / ATTACK_LOG).read_text().splitlines()]
    # rate 1: every reply of round 1 and 2 was attacked but the spared final evaluation
    assert {(a["round"], a["kind"]) for a in applied} >= {(1, "train"), (2, "train")}
    node = {a["node"] for a in applied}
    assert len(node) == 1
    named = f"node {node.pop()}:"
    for attack in applied:
        rejected = rounds[attack["round"]]["phases"][PHASE_OF[attack["kind"]]]["rejected"]
        assert any(m.startswith(named) for m in rejected), (attack, rejected)
    every_rejection = [m for r in result["rounds"] for p in r["phases"].values()
                       for m in p["rejected"]]
    assert every_rejection and all(m.startswith(named) for m in every_rejection), every_rejection
    # the two honest nodes trained every round; the final evaluation covers every node's users
    assert all(r["phases"]["train"]["ok"] >= 2 for r in result["rounds"])
    final = result["final"]
    assert final["num-users"] == len(set(ds.test[:, 0].tolist()))
    assert final["recall@20"] > 2 * random_ranker_recall(ds, 20), final


def test_node_config_extra_reaches_only_its_supernode(tmp_path):
    """federation.sh --node-config-extra: the extra node config lands on the named SuperNode's
    command line only; an index outside the federation is refused with a message naming it."""
    script = [str(SCRIPT), "--run-dir", str(tmp_path / "run"), "--nodes", "3"]
    env = {k: v for k, v in os.environ.items() if k not in ("NODES", "NODE_CONFIG_EXTRA")}
    shown = subprocess.run(script + ["--node-config-extra", "1:hostile-rate=0.5 hostile-seed=3",
                                     "print-commands"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    nodes = {line.split(":", 1)[0]: line for line in shown.stdout.splitlines()
             if line.startswith("supernode-")}
    assert sorted(nodes) == ["supernode-0", "supernode-1", "supernode-2"]
    assert "hostile-rate=0.5\\ hostile-seed=3" in nodes["supernode-1"]
    assert "hostile" not in nodes["supernode-0"] + nodes["supernode-2"]
    refused = subprocess.run(script + ["--node-config-extra", "3:hostile-rate=1", "print-commands"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "--node-config-extra must be 'I:KEY=VALUE ...' with 0 <= I < 3 (got '3:hostile-rate=1')" \
        in refused.stderr
