"""A real federation on loopback for soaks and deployment tests, driven through
``deploy/federation.sh`` (which builds every command line): a SuperLink, N SuperNodes and
their SuperExecs as separate processes on 127.0.0.1, with a private run folder, FLWR_HOME,
certificates and free ports, so it cannot collide with another federation on the machine.
Processes are stopped by PID (``stop``), a SuperNode can be killed and started again, and
the running ServerApp process can be killed the way a crash would.

:func:`stage_app` copies the Flower app with another ClientApp component (e.g.
``harness.hostile_app:app``): one FAB serves every SuperNode, and node config
(``node_extra``) selects each node's behaviour.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "federation.sh"
APP_PACKAGES = ("common", "client_app", "server_app", "harness")
CLEARED_ENV = ("MODE", "NODES", "NODE_CONFIG_EXTRA", "ISOLATION", "SUPERLINK_PORT",
               "NODE_PORT_BASE", "FED_CONN", "KEYS_DIR", "FLEET_HOST", "FLEET_PORT",
               "FLEET_MAX_BODY", "FED_APP_DIR", "FEDSHARE_STATE_DIR")


def stage_app(dest: Path, clientapp: str) -> Path:
    """A copy of the Flower app in ``dest`` whose ClientApp component is ``clientapp``."""
    dest.mkdir(parents=True, exist_ok=True)
    for package in APP_PACKAGES:
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in (".gitignore", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    text = (ROOT / "pyproject.toml").read_text()
    text, count = re.subn(r'(?m)^clientapp = ".*"$', f'clientapp = "{clientapp}"', text)
    if count != 1:
        raise RuntimeError("pyproject.toml: no single `clientapp = ...` component line")
    (dest / "pyproject.toml").write_text(text)
    return dest


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(nodes: int) -> tuple[int, int]:
    """A free SuperLink port and a base with ``nodes`` consecutive free ports after it."""
    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(200):
        base = rng.randrange(20000, 60000)
        if all(_port_free(p) for p in range(base, base + nodes + 1)):
            return base, base + 1
    raise RuntimeError("no free ports")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def tail_logs(run_dir: Path, lines: int = 30) -> str:
    """The last ``lines`` of every component log under ``run_dir/logs`` (for failure messages)."""
    text = []
    for log in sorted((run_dir / "logs").glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        text.append(f"==== {log.name}\n" + "\n".join(tail))
    return "\n".join(text)


class Federation:
    """``deploy/federation.sh`` on the run folder ``workdir/run``."""

    def __init__(self, workdir: Path, nodes: int, mode: str = "insecure",
                 node_extra: dict[int, str] | None = None, app_dir: Path = ROOT,
                 data_dir: Path | None = None):
        self.workdir, self.nodes, self.mode = workdir, nodes, mode
        self.run_dir, self.out_dir = workdir / "run", workdir / "out"
        self.superlink_port, self.node_port_base = free_ports(nodes)
        self.node_extra = dict(node_extra or {})
        self.env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
        self.env.update(FLWR_HOME=str(workdir / "flwr-home"), CERTS_DIR=str(workdir / "certs"),
                        FED_RUN_DIR=str(self.run_dir), FEDSHARE_OUT_DIR=str(self.out_dir),
                        FED_APP_DIR=str(app_dir))
        if data_dir is not None:
            self.env["FEDSHARE_DATA_DIR"] = str(data_dir)

    def sh(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def start(self) -> None:
        extras = [a for i, extra in sorted(self.node_extra.items())
                  for a in ("--node-config-extra", f"{i}:{extra}")]
        proc = self.sh("--mode", self.mode, "--nodes", str(self.nodes),
                       "--superlink-port", str(self.superlink_port),
                       "--node-port-base", str(self.node_port_base), *extras, "start",
                       timeout=240)
        if proc.returncode:
            raise RuntimeError(f"federation.sh start failed:\n{proc.stdout}\n{proc.stderr}\n"
                               + self.logs())

    def run(self, overrides: str) -> subprocess.Popen:
        """``federation.sh run OVERRIDES`` in the background (output to a log file)."""
        log = open(self.workdir / f"run-{time.time_ns()}.log", "w")
        return subprocess.Popen([str(SCRIPT), "run", overrides], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, text=True)

    def stop(self) -> subprocess.CompletedProcess:
        return self.sh("stop", timeout=120)

    def pids(self) -> dict[str, int]:
        return {f.stem: int(f.read_text().split()[0])
                for f in (self.run_dir / "pids").glob("*.pid")}

    def kill_node(self, index: int) -> int:
        """SIGKILL SuperNode ``index`` (a crash); returns its pid."""
        pid = self.pids()[f"supernode-{index}"]
        os.kill(pid, signal.SIGKILL)
        return pid

    def start_node(self, index: int, patience: float = 180) -> float:
        """Start SuperNode ``index`` again; returns the seconds it took. With SuperNode
        authentication the SuperLink refuses the node's key until it has missed its
        heartbeats (~60 s after a SIGKILL), so this retries until ``patience`` runs out."""
        started = time.monotonic()
        while True:
            proc = self.sh("start-node", str(index), timeout=240)
            if proc.returncode == 0:
                return time.monotonic() - started
            if time.monotonic() - started > patience:
                raise RuntimeError(f"start-node {index} failed:\n{proc.stdout}\n{proc.stderr}")
            time.sleep(10)

    def serverapp_pids(self) -> list[int]:
        """The running ``flwr-serverapp`` processes (children of the ServerApp SuperExec)."""
        executor = self.pids().get("superexec-serverapp")
        return [k for k in children(executor) if "flwr-serverapp" in cmdline(k)] \
            if executor else []

    def run_log_tail(self, lines: int = 15) -> str:
        logs = sorted(self.workdir.glob("run-*.log"))
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:]) if logs else ""

    def logs(self, lines: int = 30) -> str:
        return tail_logs(self.run_dir, lines)
