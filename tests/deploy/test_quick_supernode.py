"""deploy/quick_supernode.py: Flower's SuperNode with its fixed waits shortened.

The end-to-end run through it is tests/deploy/test_federation.py (the SuperNodes of every
federation there run this launcher by default); these tests pin what it changes.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "quick_supernode.py"


def _module():
    spec = importlib.util.spec_from_file_location("quick_supernode", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "FEDSHARE_SUPERNODE_IDLE_POLL"}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=_clean_env())


def test_flower_has_the_waits_the_launcher_was_written_for():
    """flwr 1.41.0's SuperNode loop: 3 s after an empty pull, 0.5 s local polls, and a first
    object retry after 1 s. A Flower upgrade that changes them fails here (and the launcher
    then runs the loop unchanged, below)."""
    from flwr.supernode import start_client_internal as loop

    module = _module()
    assert module.flower_sleeps(loop) == {3.0, 0.5}
    assert loop.pull_objects.__kwdefaults__["initial_backoff"] == 1.0


def test_the_loop_sleeps_shorter_and_retries_sooner():
    """In a fresh process (the change is process-wide): the loop's 3 s wait takes the idle
    poll, its 0.5 s waits 0.05 s, other sleeps are left as they are, and a message's object
    that reaches the SuperLink late is downloaded within ~0.6 s of its arrival (Flower's
    1-2-4 s retries: an object there at 2.2 s is read at 3 s or 7 s; the retry jitter is
    seeded)."""
    code = (
        "import random, sys, time; sys.path.insert(0, 'deploy'); import quick_supernode as q\n"
        "from flwr.supernode import start_client_internal as loop\n"
        "from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError\n"
        "assert q.shorten_waits(0.2)\n"
        "def took(s):\n"
        "    t = time.perf_counter(); loop.time.sleep(s); return time.perf_counter() - t\n"
        "random.seed(0); arrives = time.monotonic() + 2.2\n"
        "def pull(oid):\n"
        "    if time.monotonic() < arrives: raise ObjectUnavailableError(oid)\n"
        "    return b'x'\n"
        "loop.pull_objects(['a'], pull); late = time.monotonic() - arrives\n"
        "print(took(3), took(0.5), took(0.3), loop.time.monotonic() > 0, late,\n"
        "      loop.pull_objects.__kwdefaults__['max_tries_per_object'])\n")
    done = _run(code)
    assert done.returncode == 0, done.stderr
    idle, local, other, delegates, late, tries = done.stdout.split()
    assert 0.19 < float(idle) < 1.0 and float(local) < 0.3 and float(other) >= 0.29
    assert delegates == "True" and float(late) < 0.6 and tries == "None"


def test_a_changed_flower_loop_is_left_unchanged(tmp_path, caplog):
    """A loop whose waits are not flwr 1.41.0's is not guessed at: nothing is replaced."""
    source = tmp_path / "changed_loop.py"
    source.write_text("import time\n\ndef pull_objects(*, initial_backoff=1.0):\n    pass\n\n"
                      "def loop():\n    time.sleep(5)\n    time.sleep(0.5)\n")
    spec = importlib.util.spec_from_file_location("changed_loop", source)
    loop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loop)
    assert _module().shorten_waits(0.2, loop) is False
    assert loop.time is time and loop.pull_objects.__kwdefaults__["initial_backoff"] == 1.0
    assert "running it unchanged" in caplog.text


@pytest.mark.parametrize("value, message", [
    ("soon", "FEDSHARE_SUPERNODE_IDLE_POLL='soon' is not a number of seconds"),
    ("0", "FEDSHARE_SUPERNODE_IDLE_POLL='0' must be > 0 and <= 3"),
    ("10", "FEDSHARE_SUPERNODE_IDLE_POLL='10' must be > 0 and <= 3"),
])
def test_a_bad_idle_poll_is_refused_with_a_message(value, message):
    done = subprocess.run([sys.executable, str(SCRIPT), "--insecure", "--superlink",
                           "127.0.0.1:1"], capture_output=True, text=True, timeout=120,
                          env={**_clean_env(), "FEDSHARE_SUPERNODE_IDLE_POLL": value})
    assert done.returncode == 1 and message in done.stderr, done.stderr


def test_idle_poll_defaults_and_reads_the_environment():
    module = _module()
    assert module.idle_poll_seconds({}) == 0.25
    assert module.idle_poll_seconds({"FEDSHARE_SUPERNODE_IDLE_POLL": " 1.5 "}) == 1.5


def test_flower_supernode_arguments_pass_through():
    """The launcher is flower-supernode: its own argument errors come back unchanged."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--isolation", "sideways"],
                          capture_output=True, text=True, timeout=120, env=_clean_env())
    assert done.returncode == 2 and "flower-supernode" in done.stderr
    assert "--isolation" in done.stderr and "sideways" in done.stderr
