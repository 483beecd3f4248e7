"""A real federation on loopback through deploy/federation.sh: a SuperLink, 3 SuperNodes and
their SuperExecs (the warm ClientApp executor) as separate processes, TLS on, 2 FedShare rounds on a slice of ML-100K; the
result must beat a random ranker, and `stop` must leave no process behind. Plus: SuperNode
authentication refuses an unregistered SuperNode, and a taken port fails `start` cleanly.

Every test uses its own run folder, FLWR_HOME, certificates and free ports, so it cannot
collide with another federation on the machine.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from client_app.ledger import read_ledger
from common.datasets import default_data_root, load_dataset
from harness.federation import _port_free
from harness.federation import alive as _alive, cmdline as _cmdline, free_ports as _free_ports
from harness.federation import tail_logs
from tests.ranking import random_ranker_recall
from server_app.audit import audit_state_dir

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "federation.sh"
PR_SET_CHILD_SUBREAPER = 36

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("openssl", "curl", "ssh-keygen", "setsid")),
    reason="needs openssl, curl, ssh-keygen and setsid")


def _processes_mentioning(*needles: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _alive(int(entry.name)):
            cmd = _cmdline(int(entry.name))
            if any(n in cmd for n in needles) and "pytest" not in cmd:
                found.append(f"{entry.name}: {cmd}")
    return found


class Federation:
    """deploy/federation.sh on a private run folder, FLWR_HOME, certificates and ports."""

    def __init__(self, tmp: Path, mode: str, nodes: int = 3):
        self.tmp, self.mode, self.nodes = tmp, mode, nodes
        self.run_dir = tmp / "run"
        self.superlink_port, self.node_port_base = _free_ports(nodes)
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("MODE", "NODES", "ISOLATION", "SUPERLINK_PORT", "NODE_PORT_BASE",
                                 "FED_CONN", "KEYS_DIR", "FLEET_HOST", "FLEET_PORT",
                                 "FLEET_MAX_BODY")}
        self.env.update(FLWR_HOME=str(tmp / "flwr-home"), CERTS_DIR=str(tmp / "certs"),
                        FED_RUN_DIR=str(self.run_dir), FEDSHARE_OUT_DIR=str(tmp / "out"),
                        FEDSHARE_DATA_DIR=str(default_data_root()))
        self.pids: dict[str, int] = {}

    @property
    def ports(self) -> list[int]:
        return [self.superlink_port] + [self.node_port_base + i for i in range(self.nodes)]

    def sh(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self) -> subprocess.CompletedProcess:
        proc = self.sh("--mode", self.mode, "--nodes", str(self.nodes),
                       "--superlink-port", str(self.superlink_port),
                       "--node-port-base", str(self.node_port_base), "start", timeout=180)
        for pid_file in (self.run_dir / "pids").glob("*.pid"):
            self.pids[pid_file.stem] = int(pid_file.read_text().split()[0])
        return proc

    def logs(self, lines: int = 30) -> str:
        return tail_logs(self.run_dir, lines)

    def leftovers(self) -> list[str]:
        needles = [str(self.run_dir)] + [f"127.0.0.1:{p}" for p in self.ports] + \
                  [f"--port {p}" for p in self.ports]
        left = [f"{pid}: {_cmdline(pid)}" for pid in self.pids.values() if _alive(pid)]
        return left + _processes_mentioning(*needles)


@pytest.fixture
def reaper():
    """Orphaned federation processes are re-parented to this process (a child subreaper) and
    reaped here, so stopped processes do not linger as zombies on machines whose PID 1 does not
    reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    enabled = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    yield
    if enabled:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.1)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture
def federation(tmp_path, reaper, request):
    feds: list[Federation] = []

    def make(mode: str, nodes: int = 3) -> Federation:
        fed = Federation(tmp_path, mode, nodes)
        feds.append(fed)
        return fed

    yield make
    for fed in feds:   # whatever happened, stop what was started
        if (fed.run_dir / "pids").exists():
            fed.sh("stop", timeout=60)


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="no ML-100K")
def test_tls_federation_two_rounds_beats_random(federation):
    fed = federation("tls")
    fed.env["PYTHONDONTWRITEBYTECODE"] = "1"   # as in Flower's images (checked below)
    started = fed.start()
    assert started.returncode == 0, started.stdout + started.stderr + fed.logs()
    expected = {"superlink", "superexec-serverapp"} | {
        f"{kind}-{i}" for i in range(3) for kind in ("supernode", "superexec-clientapp")}
    assert set(fed.pids) == expected
    assert all(_alive(pid) for pid in fed.pids.values())

    # TLS: the SuperLink answers HTTPS with our CA, and the CLI connection uses that CA
    url = f"https://127.0.0.1:{fed.superlink_port}/health"
    health = subprocess.run(["curl", "-sf", "--cacert", str(fed.tmp / "certs" / "ca.crt"), url],
                            capture_output=True, timeout=30)
    assert health.returncode == 0
    plain = subprocess.run(["curl", "-sf", url.replace("https", "http")], capture_output=True,
                           timeout=30)
    assert plain.returncode != 0
    config = (fed.tmp / "flwr-home" / "config.toml").read_text()
    assert f'address = "127.0.0.1:{fed.superlink_port}"' in config
    assert "root-certificates" in config and "insecure" not in config

    overrides = "num-rounds=2 max-users=150 eval-every=1 fraction-train=1.0 sharing-ratio=0.5"
    run = fed.sh("run", overrides, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:] + fed.logs()
    files = list((fed.tmp / "out").glob("fedshare-ml-100k-*.json"))
    assert len(files) == 1, run.stdout[-3000:] + fed.logs()
    result = json.loads(files[0].read_text())
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    assert all(r["nodes_sampled"] == 3 for r in result["rounds"])
    ds = load_dataset("ml-100k", max_users=150)
    final = result["final"]
    assert final["num-users"] == len(np.unique(ds.test[:, 0]))
    assert final["recall@20"] > 3 * random_ranker_recall(ds, 20), final
    # `run` computed the data fingerprint from the operator's data: no node could fix another
    assert result["manifest"]["config"]["data-fingerprint"] == ds.fingerprint
    # each SuperNode's node config `state-dir` holds its sharing ledger
    for i in range(3):
        assert list((fed.run_dir / "state" / f"node-{i}").rglob("ledger.json")), i
    # every message ran in a child forked by the node's warm executor (deploy/warm_superexec.py)
    for i in range(3):
        log = (fed.run_dir / "logs" / f"superexec-clientapp-{i}.log").read_text()
        assert log.count("forked warm process") >= 2, log[-2000:]
    # the first task left the FAB's bytecode for the next ones (warm_superexec.py), although
    # PYTHONDONTWRITEBYTECODE=1; the FAB holds the apps' code only (pyproject fab-include)
    installed = list((fed.tmp / "flwr-home" / "apps").glob("*"))
    assert len(installed) == 1, installed
    assert list(installed[0].glob("client_app/__pycache__/app.*.pyc")), installed
    assert {p.name for p in installed[0].iterdir()} <= {
        "pyproject.toml", "common", "server_app", "client_app"}
    # and every SuperNode ran with its fixed waits shortened (deploy/quick_supernode.py)
    for i in range(3):
        log = (fed.run_dir / "logs" / f"supernode-{i}.log").read_text()
        assert "quick_supernode: idle poll 0.25 s" in log, log[-2000:]

    stopped = fed.sh("stop", timeout=60)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert fed.leftovers() == []
    assert not list((fed.run_dir / "pids").glob("*.pid"))


def test_supernode_auth_refuses_an_unregistered_supernode(federation):
    fed = federation("tls-auth", nodes=2)
    started = fed.start()
    assert started.returncode == 0, started.stdout + started.stderr + fed.logs()
    assert (fed.run_dir / "keys" / "node-1.pub").exists()

    env = {**fed.env, "PATH": f"{ROOT / '.venv' / 'bin'}:{fed.env['PATH']}",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    listed = subprocess.run(["flwr", "supernode", "list", "fedshare", "--format", "json"],
                            env=env, capture_output=True, text=True, timeout=60)
    nodes = json.loads(listed.stdout)["nodes"]
    assert sorted(n["status"] for n in nodes) == ["online", "online"], listed.stdout

    # a SuperNode with a key the SuperLink does not know is refused
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f",
                    str(fed.tmp / "rogue")], check=True, timeout=30)
    rogue_port = fed.node_port_base + 2
    assert _port_free(rogue_port)
    rogue = subprocess.run(
        ["flower-supernode", "--root-certificates", str(fed.tmp / "certs" / "ca.crt"),
         "--superlink", f"127.0.0.1:{fed.superlink_port}",
         "--auth-supernode-private-key", str(fed.tmp / "rogue"), "--isolation", "process",
         "--port", str(rogue_port), "--max-retries", "2",
         "--node-config", "partition-id=0 num-partitions=2"],
        env=env, capture_output=True, text=True, timeout=90)
    assert rogue.returncode != 0
    assert "Failed to activate SuperNode" in rogue.stdout + rogue.stderr
    listed = subprocess.run(["flwr", "supernode", "list", "fedshare", "--format", "json"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert len(json.loads(listed.stdout)["nodes"]) == 2

    stopped = fed.sh("stop", timeout=60)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert fed.leftovers() == []


def test_start_fails_clearly_when_a_port_is_taken(federation):
    fed = federation("insecure", nodes=2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", fed.node_port_base + 1))
        taken.listen()
        started = fed.start()
    assert started.returncode != 0
    assert f"port {fed.node_port_base + 1} on 127.0.0.1 is already in use" in started.stderr
    assert fed.pids == {}
    assert fed.leftovers() == []


def _wait_for_rounds(path: Path, rounds: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            result = json.loads(path.read_text())
            if len(result["rounds"]) >= rounds:
                return result
        time.sleep(1)
    raise TimeoutError(f"{path} did not reach {rounds} rounds")


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="no ML-100K")
def test_killed_supernode_is_reported_and_a_restarted_federation_resumes(federation):
    """SIGKILL a SuperNode after round 1: the run finishes with the other nodes and reports the
    lost node's users. Then stop and start the SuperLink (same database) and run again under
    the same run-name: it resumes after the last checkpointed round, unshare outcomes kept."""
    fed = federation("tls")
    started = fed.start()
    assert started.returncode == 0, started.stdout + started.stderr + fed.logs()
    common = ("max-users=150 eval-every=3 fraction-train=1.0 sharing-ratio=0.5 round-timeout=20 "
              'run-name="faulty" unshare-round=2 unshare-user-fraction=0.5')
    result_file = fed.tmp / "out" / "fedshare-ml-100k-rho0.5-faulty.json"
    run = subprocess.Popen([str(SCRIPT), "run", f"num-rounds=3 {common}"], env=fed.env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_rounds(result_file, 1, timeout=240)
        os.kill(fed.pids["supernode-2"], 9)
        output, _ = run.communicate(timeout=400)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output[-3000:] + fed.logs()
    first = json.loads(result_file.read_text())
    assert [r["round"] for r in first["rounds"]] == [1, 2, 3]
    lost = [entry for r in first["rounds"][1:] for entry in r["lost_nodes"]]
    assert lost and all(entry["users"] for entry in lost), first["rounds"][1:]
    assert first["rounds"][-1]["phases"]["train"]["ok"] == 2
    # the scheduled unshare requests of the surviving nodes were acknowledged, and no trace
    # of the withdrawn pairs is left in the server's state directory
    withdrawn = []
    for i in range(2):
        for ledger_file in (fed.run_dir / "state" / f"node-{i}").rglob("ledger.json"):
            for request in read_ledger(ledger_file.parent).requests:
                assert request.status == "done", request
                withdrawn += [(request.user, int(item)) for item in request.items]
    assert withdrawn
    report = audit_state_dir(fed.run_dir / "state" / "server" / "faulty",
                             pairs=np.array(withdrawn))
    assert report.clean and report.scanned >= 1, report.findings

    # SuperLink (and everything else) restarted; the ServerApp resumes from its checkpoint
    assert fed.sh("stop", timeout=60).returncode == 0
    fed.pids.clear()
    restarted = fed.start()
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr + fed.logs()
    again = fed.sh("run", f"num-rounds=4 {common}", timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + fed.logs()
    second = json.loads(result_file.read_text())
    assert [r["round"] for r in second["rounds"]] == [1, 2, 3, 4]
    assert second["rounds"][:3] == first["rounds"]
    assert second["rounds"][-1]["phases"]["train"]["ok"] == 3
    assert second["final"]["recall@20"] > 0
    assert fed.sh("stop", timeout=60).returncode == 0
    assert fed.leftovers() == []
