"""The ``fedshare`` command line: every subcommand answers ``--help``; bad arguments exit 2 with
a message naming the problem; and a user's share / unshare / set-ratio / status and the
operator's audit work on the state of a real (in-process) 2-round run that is then resumed."""

import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from client_app.ledger import DONE, PENDING, read_ledger
from common.datasets import default_data_root, load_dataset
from fedshare.cli import COMMANDS, ROOT, main
from harness.inprocess import run_inprocess

SUBPROCESS = {"simulate", "federation", "report"}   # scripts (exec) and the benchmark tool
needs_ml100k = pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(),
                                  reason="ML-100K not available: the CLI run test is skipped")


def _cli(capsys, *argv) -> tuple[int, str, str]:
    """``fedshare argv`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:   # argparse: --help (0) and usage errors (2)
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _cli_process(*argv, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedshare", *argv], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, env={**os.environ, **(env or {})})


def test_the_console_script_is_this_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["fedshare"].split(":")
    assert (module, function) == ("fedshare.cli", "main")
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    assert "fedshare" in packages["targets"]["wheel"]["packages"]


def test_top_level_help_lists_every_command():
    done = _cli_process("--help")
    assert done.returncode == 0, done.stderr
    for name in COMMANDS:
        assert f"\n  {name} " in done.stdout, name
    assert "exit codes" in done.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name, capsys):
    if name in SUBPROCESS:
        done = _cli_process(name, "--help")
        code, out = done.returncode, done.stdout + done.stderr
    else:
        code, out, _ = _cli(capsys, name, "--help")
    assert code == 0, out
    assert f"fedshare {name}" in out, out[:500]     # usage names the command as typed


@pytest.mark.parametrize("argv, needle", [
    ([], "required: COMMAND"),
    (["unshar"], "did you mean 'unshare'"),
    (["share", "--state-dir", "x"], "--user"),
    (["share", "--state-dir", "x", "--user", "1", "--ratio", "0.5", "--all"],
     "unrecognized arguments: --all"),
    (["unshare", "--state-dir", "x", "--user", "-3", "--all"], "argument --user"),
    (["set-ratio", "--state-dir", "/no/such/node", "--user", "1", "--ratio", "0.5"],
     "no node state folder /no/such/node"),
    (["audit", "--state-dir", "/no/such/server", "--user", "1", "--items", "2"],
     "no such directory: /no/such/server"),
    (["audit", "--state-dir", "."], "give --pairs FILE or --user U --items"),
    (["centralized", "--dataset", "no-such-data"], "unknown dataset 'no-such-data'"),
    (["download", "ml-10m"], "invalid choice: 'ml-10m'"),
    (["download", "ml-100k", "--zip", "/no/such.zip"], "--zip /no/such.zip: no such file"),
])
def test_bad_arguments_exit_2_naming_the_problem(argv, needle, capsys):
    code, out, err = _cli(capsys, *argv)
    assert code == 2, (out, err)
    assert needle in err, err


@pytest.mark.parametrize("argv, needle", [
    (["simulate", "--nodes", "0"], "--nodes must be a positive integer (got '0')"),
    (["simulate", "--bogus"], "unknown option '--bogus'"),
    (["federation"], "no command: give start, run, stop, status"),
    (["federation", "--mode", "plain", "status"], "--mode must be insecure, tls or tls-auth"),
    (["federation", "--clientapp-exec", "cold", "status"], "--clientapp-exec must be warm or flower"),
    (["federation", "--supernode-loop", "slow", "status"], "--supernode-loop must be quick or flower"),
    (["report", "no-such.json", "--name", "x"], "no-such.json: not a readable benchmark JSON"),
])
def test_bad_arguments_of_the_scripts_exit_2(argv, needle, tmp_path):
    done = _cli_process(*argv, env={"FED_RUN_DIR": str(tmp_path / "fed")})
    assert done.returncode == 2, done.stdout + done.stderr
    assert needle in done.stderr and f"fedshare {argv[0]}" in done.stderr, done.stderr


def test_federation_actions_run_the_script(tmp_path):
    env = {"FED_RUN_DIR": str(tmp_path / "fed")}
    status = _cli_process("federation", "status", env=env)
    assert status.returncode == 3 and "no federation recorded" in status.stdout, status
    plan = _cli_process("federation", "--nodes", "2", "--superlink-port", "18000",
                        "print-commands", env=env)
    assert plan.returncode == 0, plan.stderr
    assert "flower-superlink --insecure" in plan.stdout and "--port 18000" in plan.stdout
    assert plan.stdout.count("deploy/quick_supernode.py ") == 2


def _run(tmp_path, rounds: int) -> dict:
    """A FedShare run named 'cli' (resumed when started again) of 3 in-process nodes."""
    return run_inprocess({"max-users": 60, "num-rounds": rounds, "eval-every": 0,
                          "fraction-train": 1.0, "sharing-ratio": 0.5, "snapshot-rounds": "0",
                          "unlearn-rounds": 1, "run-name": "cli", "state-dir": str(tmp_path / "state"),
                          "out-dir": str(tmp_path / "results")}, 3)


def _request_status(node_dir: Path, user: int) -> list[str]:
    return [r.status for r in read_ledger(node_dir).requests if r.user == user]


@needs_ml100k
def test_users_and_the_operator_on_a_real_run(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="flwr.fedshare"):
        _run(tmp_path, 2)
    assert any("round 1/2" in m and "left" in m for m in caplog.messages), caplog.messages
    node_dir = sorted((tmp_path / "state").glob("nodes-*/node-0-of-3"))[0]
    server = tmp_path / "state" / "server"
    ledger = read_ledger(node_dir)
    user = min(u for u in ledger.shared if len(ledger.shared[u]) >= 3)
    items = [str(i) for i in ledger.shared[user][:2]]
    shared = len(ledger.shared[user])

    code, out, _ = _cli(capsys, "status", "--state-dir", str(node_dir), "--user", str(user))
    assert code == 0 and f"user {user}: shares {shared} of" in out, out
    code, out, _ = _cli(capsys, "unshare", "--state-dir", str(node_dir), "--user", str(user),
                        "--items", *items)
    assert code == 0 and f"shares {shared - 2} item(s) (was {shared})" in out, out
    assert _request_status(node_dir, user) == [PENDING]
    code, out, _ = _cli(capsys, "audit", "--state-dir", str(server), "--user", str(user),
                        "--items", *items)
    assert code == 1 and "FOUND" in out, out        # not erased yet: no round ran since

    _run(tmp_path, 3)                                  # the run resumes: round 3 erases them
    assert _request_status(node_dir, user) == [DONE]
    status = _cli_process("status", "--state-dir", str(node_dir), "--user", str(user))
    assert status.returncode == 0 and "2 item(s), done" in status.stdout, status.stdout + status.stderr
    code, out, _ = _cli(capsys, "audit", "--state-dir", str(server), str(tmp_path / "results"),
                        "--user", str(user), "--items", *items)
    assert code == 0 and out.startswith("clean: 2 pair(s)"), out

    code, out, _ = _cli(capsys, "share", "--state-dir", str(node_dir), "--user", str(user),
                        "--items", items[0])
    assert code == 0 and f"shares {shared - 1} item(s)" in out, out
    code, out, _ = _cli(capsys, "set-ratio", "--state-dir", str(node_dir), "--user",
                        str(user), "--ratio", "0")
    assert code == 0 and read_ledger(node_dir).shared.get(user, np.array([])).size == 0, out
    code, _, err = _cli(capsys, "unshare", "--state-dir", str(node_dir), "--user", "59999",
                        "--all")
    assert code == 2 and "user 59999 is not hosted on this node" in err, err


@needs_ml100k
def test_fingerprint_is_the_datasets_and_bad_overrides_exit_2(capsys):
    assert main(["fingerprint", "max-users=150"]) == 0
    assert capsys.readouterr().out.strip() == load_dataset("ml-100k", max_users=150).fingerprint
    assert main(["fingerprint", 'dataset="nope"']) == 2
    assert "dataset" in capsys.readouterr().err
