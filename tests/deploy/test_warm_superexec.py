"""deploy/warm_superexec.py: a SuperNode's ClientApp tasks forked from a warm process.

That it runs real rounds is tested by tests/deploy/test_federation.py (federation.sh uses it by
default); here: it pre-imports everything heavy the ClientApp imports, and launches each task
with exactly the command line Flower's own subprocess executor would use.
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import subprocess_executor
from flwr.supercore.superexec.executor.types import ExecutionSpec

ROOT = Path(__file__).resolve().parents[2]
OURS = ("client_app", "common", "server_app", "harness", "bench", "tests", "deploy",
        "warm_superexec")


def _module():
    spec = importlib.util.spec_from_file_location("warm_superexec",
                                                  ROOT / "deploy" / "warm_superexec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_WARMED = "import sys; sys.path.insert(0, 'deploy'); import warm_superexec\n"
_NEW_THIRD_PARTY = ("new = {m for m in set(sys.modules) - before if m.split('.')[0] not in "
                    f"set(sys.stdlib_module_names) | set({OURS!r})}}; print(sorted(new)[:20])")

# A handler's first work: train and evaluate a tiny local model with the app's own functions.
_TINY_ROUND = """
import torch
from client_app.local_training import GlobalView, LocalHyper, evaluate_local, train_local
pairs = torch.tensor([[u, (u + k) % 12] for u in range(6) for k in range(4)])
view = GlobalView(torch.randn(12, 4), None, torch.zeros(6, 4), torch.zeros(6, dtype=torch.bool), None)
hp = LocalHyper(epochs=1, lr=0.05, batch_size=8, reg=0.0, cl_weight=0.0, cl_temperature=0.5)
update = train_local(0.1 * torch.randn(6, 4), pairs, view, hp, seed=0)
evaluate_local(update.user_emb, view, pairs[:12], pairs[12:])
"""


def _last_line(code: str) -> tuple[str, str]:
    """Run ``code`` in a fresh interpreter at the repository root: its last output line, and
    its standard error."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1], proc.stderr


def test_warm_up_covers_every_third_party_module_the_clientapp_imports():
    code = (_WARMED + "warm_superexec.warm_up(); before = set(sys.modules)\n"
            "import client_app.app\n" + _NEW_THIRD_PARTY)
    assert _last_line(code)[0] == "[]"


def test_warm_up_covers_what_a_handler_imports_lazily_while_it_trains():
    code = (_WARMED + "warm_superexec.warm_up(); import client_app.app\n"
            "before = set(sys.modules)\n" + _TINY_ROUND + _NEW_THIRD_PARTY)
    assert _last_line(code)[0] == "[]"


def test_our_modules_are_not_preimported_so_the_fab_code_runs():
    code = (_WARMED + "warm_superexec.warm_up()\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {OURS[:3]!r}))")
    assert _last_line(code)[0] == "[]"


def test_without_the_app_its_dependencies_are_warmed():
    """The compose image has the dependencies but not the app (it comes in FABs)."""
    code = (_WARMED + "warm_superexec.warm_up('not_an_app.module')\n"
            "print(all(m in sys.modules for m in ('torch', 'numpy', 'pydantic', 'torch._dynamo')))")
    last, stderr = _last_line(code)
    assert last == "True" and "not_an_app.module not importable" in stderr


@pytest.mark.parametrize("insecure, certs, parent, deps", [
    (True, None, None, False), (False, "/etc/ca.pem", 4242, True), (False, None, None, False)])
def test_a_task_gets_the_command_line_flowers_subprocess_executor_uses(
        monkeypatch, insecure, certs, parent, deps):
    spec = ExecutionSpec(task_type=TaskType.CLIENT_APP, runtime_api_address="127.0.0.1:9094",
                         token="tok-1", insecure=insecure, root_certificates_path=certs,
                         runtime_dependency_install=deps, parent_pid=parent,
                         suppress_output=False, task_id=7)
    launched = []
    monkeypatch.setattr(subprocess_executor.subprocess, "Popen",
                        lambda args, **_: launched.append(args))
    subprocess_executor.SubprocessExecutor().launch(spec)
    assert _module().clientapp_argv(spec) == launched[0]


def test_a_task_gets_a_late_object_soon_after_it_arrives(monkeypatch):
    """The SuperNode starts a task before the message's objects arrived. Flower retries after
    1 s, 2 s, 4 s (an object there at 0.9 s is read at 1 s; one there at 1.1 s at 3 s); the
    child retries every 0.05 s doubling to 0.2 s, so it reads the object within ~0.25 s of its
    arrival, and keeps trying for Flower's whole time limit, not a count of tries."""
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    defaults = inflatable_utils.pull_and_inflate_object_from_tree.__kwdefaults__
    for key, flower in (("initial_backoff", 1), ("backoff_cap", 10), ("max_tries_per_object", 500)):
        monkeypatch.setitem(defaults, key, flower)
    _module().shorten_object_pull_backoff()
    assert defaults["max_tries_per_object"] is None and defaults["max_time"] == 7200
    random.seed(0)   # Flower's retry jitter
    arrives = time.monotonic() + 1.1

    def pull(object_id):
        if time.monotonic() < arrives:
            raise ObjectUnavailableError(object_id)
        return b"content"

    # pull_and_inflate_object_from_tree hands its retry defaults to pull_objects
    inflatable_utils.pull_objects(["a"], pull, **{k: defaults[k] for k in (
        "initial_backoff", "backoff_cap", "max_tries_per_object", "max_time")})
    assert time.monotonic() - arrives < 0.35   # Flower's schedule: read at 3 s, 1.9 s late


def test_bad_arguments_are_refused_with_a_message():
    script = str(ROOT / "deploy" / "warm_superexec.py")
    missing = subprocess.run([sys.executable, script, "--insecure"], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and "--runtime-api-address" in missing.stderr
    no_ca = subprocess.run([sys.executable, script, "--runtime-api-address", "127.0.0.1:1",
                            "--root-certificates", "/nonexistent/ca.pem"],
                           capture_output=True, text=True, timeout=60)
    assert no_ca.returncode != 0 and "/nonexistent/ca.pem: no such file" in no_ca.stderr
