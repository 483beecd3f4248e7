"""The Fleet gateway of `deploy/federation.sh --fleet-host`: the SuperLink listens on
127.0.0.1 only (Fleet, Control and Runtime API: operator-only), and SuperNodes connect through
deploy/fleet_gateway.py on another address, which forwards the Fleet API and nothing else.

127.0.0.1 is the operator's loopback; 127.0.0.2 (also loopback on Linux, all of 127/8) stands
in for the public interface. Real processes, started and stopped by PID through the script
(the machinery of tests/deploy/test_federation.py).
"""

from __future__ import annotations

import json
import shlex
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from common.datasets import default_data_root
from tests.deploy.test_federation import ROOT, Federation, _alive, federation, reaper  # noqa: F401

PUBLIC = "127.0.0.2"
MAX_BODY = 1 << 20


def _port_free_on(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _with_gateway(fed: Federation) -> Federation:
    """Point the federation's SuperNodes at a gateway on PUBLIC (given as environment
    variables, so a script without the option ignores them rather than failing to parse)."""
    fleet_port = fed.node_port_base + fed.nodes
    assert _port_free_on(PUBLIC, fleet_port) and _port_free_on("127.0.0.1", fleet_port)
    fed.fleet_port = fleet_port
    fed.env.update(FLEET_HOST=PUBLIC, FLEET_PORT=str(fleet_port), FLEET_MAX_BODY=str(MAX_BODY))
    return fed


def _cli_env(fed: Federation) -> dict[str, str]:
    return {**fed.env, "PATH": f"{ROOT / '.venv' / 'bin'}:{fed.env['PATH']}",
            "FLWR_DISABLE_UPDATE_CHECK": "1"}


def _supernode_address(fed: Federation) -> str:
    """Where the script's SuperNodes connect: the address a remote SuperNode would be given."""
    argv = shlex.split(Path(f"/proc/{fed.pids['supernode-0']}/cmdline").read_bytes()
                       .replace(b"\0", b" ").decode())
    return argv[argv.index("--superlink") + 1]


def _add_connection(fed: Federation, name: str, address: str) -> None:
    config = fed.tmp / "flwr-home" / "config.toml"
    config.write_text(config.read_text() + f'\n[superlink.{name}]\naddress = "{address}"\n'
                      f'root-certificates = "{fed.tmp / "certs" / "ca.crt"}"\n')


def _flwr(fed: Federation, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["flwr", *args], env=_cli_env(fed), capture_output=True, text=True,
                          timeout=60)


def _node_ids(fed: Federation) -> set[str]:
    listed = _flwr(fed, "supernode", "list", "fedshare", "--format", "json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return {str(n["node-id"]) for n in json.loads(listed.stdout)["nodes"]}


def _new_key(fed: Federation, name: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f",
                    str(fed.tmp / name)], check=True, timeout=30)
    return fed.tmp / f"{name}.pub"


def _curl_status(fed: Federation, method: str, url: str, *extra: str) -> str:
    out = subprocess.run(["curl", "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
                          "--cacert", str(fed.tmp / "certs" / "ca.crt"), "-X", method, *extra,
                          url], capture_output=True, text=True, timeout=30)
    return out.stdout


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_registration_with_only_the_ca_certificate_is_refused(federation):
    """Issue 10: whoever reaches the SuperNodes' address with the public CA certificate must not
    be able to register a key (Control API); the operator on loopback still can."""
    fed = _with_gateway(federation("tls-auth", nodes=1))
    started = fed.start()
    assert started.returncode == 0, started.stdout + started.stderr + fed.logs()
    public = _supernode_address(fed)
    before = _node_ids(fed)
    assert len(before) == 1

    _add_connection(fed, "public", public)
    attempt = _flwr(fed, "supernode", "register", str(_new_key(fed, "rogue")), "public")
    assert attempt.returncode != 0, attempt.stdout
    assert "403" in attempt.stdout + attempt.stderr
    assert public == f"{PUBLIC}:{fed.fleet_port}" and "fleet-gateway" in fed.pids
    for other in (("ls", "public"), ("stop", "1", "public")):
        assert _flwr(fed, *other).returncode != 0, other
    assert _node_ids(fed) == before

    # the raw SuperLink port is not on the public address at all
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((PUBLIC, fed.superlink_port), timeout=5).close()

    # the operator, on loopback, registers the same kind of key
    own = _flwr(fed, "supernode", "register", str(_new_key(fed, "operator")), "fedshare")
    assert own.returncode == 0, own.stdout + own.stderr
    assert len(_node_ids(fed)) == 2

    # what the gateway forwards and what it answers itself
    base = f"https://{public}"
    assert _curl_status(fed, "GET", f"{base}/health") == "200"
    for path in ("/v1/control/list-runs", "/v1/runtime/get-run",
                 "/v1/fleet/../control/register-node", "/v1/fleet/%2e%2e/control/list-nodes"):
        assert _curl_status(fed, "POST", base + path) == "403", path
    assert _curl_status(fed, "GET", f"{base}/docs") == "404"
    assert _curl_status(fed, "GET", f"{base}/v1/fleet/get-run") == "405"
    big = fed.tmp / "big.bin"
    big.write_bytes(b"\0" * (MAX_BODY + 1))
    assert _curl_status(fed, "POST", f"{base}/v1/fleet/push-object",
                        "--data-binary", f"@{big}") == "413"
    status = fed.sh("status")
    assert f"Fleet gateway {public}" in status.stdout and "healthy" in status.stdout, status.stdout

    stopped = fed.sh("stop", timeout=60)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopping fleet-gateway" in stopped.stdout
    assert fed.leftovers() == []


def test_keys_certificates_and_state_are_private(federation):
    fed = _with_gateway(federation("tls-auth", nodes=1))
    started = fed.start()
    assert started.returncode == 0, started.stdout + started.stderr + fed.logs()
    run, certs = fed.run_dir, fed.tmp / "certs"
    private_dirs = [run, run / "logs", run / "state", run / "state" / "node-0", run / "keys",
                    run / "pids", fed.tmp / "flwr-home", certs]
    private_files = [certs / "server.key", certs / "ca.key", run / "keys" / "node-0",
                     run / "superlink.db", run / "federation.env",
                     *sorted((run / "logs").glob("*.log"))]
    assert len(private_files) > 6
    assert {str(d): _mode(d) for d in private_dirs} == {str(d): 0o700 for d in private_dirs}
    assert {str(f): _mode(f) for f in private_files} == {str(f): 0o600 for f in private_files}
    assert _mode(certs / "ca.crt") == 0o644   # public: SuperNodes need it
    assert fed.sh("stop", timeout=60).returncode == 0
    assert fed.leftovers() == []


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="no ML-100K")
def test_registered_supernodes_run_fedshare_through_the_gateway(federation):
    fed = _with_gateway(federation("tls-auth", nodes=2))
    started = fed.start()
    assert started.returncode == 0, started.stdout + started.stderr + fed.logs()
    assert _supernode_address(fed) == f"{PUBLIC}:{fed.fleet_port}"
    run = fed.sh("run", "num-rounds=1 max-users=100 eval-every=1 fraction-train=1.0 "
                 "sharing-ratio=0.5", timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:] + fed.logs()
    files = list((fed.tmp / "out").glob("fedshare-ml-100k-*.json"))
    assert len(files) == 1, run.stdout[-3000:]
    result = json.loads(files[0].read_text())
    assert [r["round"] for r in result["rounds"]] == [1]
    assert result["rounds"][0]["nodes_sampled"] == 2
    assert result["final"]["recall@20"] > 0
    # the nodes' traffic went through the gateway: pulls and pushes in its access log
    log = (fed.run_dir / "logs" / "fleet-gateway.log").read_text()
    for route in ("activate-node", "pull-messages", "push-messages", "push-object"):
        assert f'"POST /v1/fleet/{route} HTTP/1.1" 200' in log, route
    assert "/v1/control" not in log
    stopped = fed.sh("stop", timeout=60)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert fed.leftovers() == []
    assert not any(_alive(pid) for pid in fed.pids.values())
