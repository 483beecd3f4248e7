"""A SuperExec for a SuperNode that forks each ClientApp task from a warm process.

    python deploy/warm_superexec.py --insecure --runtime-api-address 127.0.0.1:9094

Flower 1.41's ``flower-superexec`` starts a fresh ``flwr-clientapp`` interpreter for every
message a node receives, and each one imports Flower, torch and numpy again before our handler
runs, and then ``torch._dynamo`` at its first optimizer: ~3 s of CPU per message, more when a
node's messages start together on a small machine (docs/benchmarks.md, "Deployment latency").
This process is the same SuperExec (Flower's own loop, ``run_superexec``, asking the
SuperNode's Runtime API for tasks) with one executor swapped: the heavy modules are imported
once, here, and each task runs in a child forked from this process, which executes exactly
what ``flwr-clientapp`` executes.

What stays as Flower ships it: one process per message (a crash or a leak stays in that
message); the FAB's own code (the app is imported once to find its third-party modules, then
its own modules are dropped from ``sys.modules``, so the child imports them from the FAB); the
task token and TLS arguments. The parent never runs a torch or numpy operation, so no thread
pool of theirs is running when it forks. Tasks of other types (none on a SuperNode) go to
Flower's subprocess executor.

Arguments are ``flower-superexec``'s, as far as a ClientApp needs them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

# What every ClientApp process imports besides the app's module tree: Flower's ClientApp
# runtime, and torch._dynamo, which torch.optim imports lazily at the first optimizer (~1.5 s
# of the first handler in a fresh process; tests/deploy/test_warm_superexec.py checks that a
# handler's training imports nothing new).
FLOWER_MODULES = ("flwr.clientapp", "flwr.app", "flwr.supernode.cli.flwr_clientapp")
LAZY_MODULES = ("torch._dynamo", "torch.profiler._cupti_monitor")
# The app's third-party packages, warmed when its code exists only in FABs (the compose image
# has the dependencies but not the app).
APP_DEPENDENCIES = ("numpy", "torch", "pydantic", "cryptography.hazmat.primitives.ciphers")


def warm_up(app_module: str = "client_app.app") -> None:
    """Import once what every ClientApp process would import again: Flower's ClientApp
    runtime and every third-party module ``app_module`` pulls in (torch, numpy, pydantic,
    cryptography, ...). The app's own modules are then forgotten, so a task imports them
    from its FAB, as Flower's loader expects (it reuses whatever ``sys.modules`` holds)."""
    for name in FLOWER_MODULES:
        importlib.import_module(name)
    for name in LAZY_MODULES:  # private torch modules: a torch without them just loses time
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    try:
        app = importlib.import_module(app_module)
    except ImportError as err:  # the app's code may live only in FABs here
        print(f"warm_superexec: {app_module} not importable ({err}); warming its "
              f"dependencies {', '.join(APP_DEPENDENCIES)}", file=sys.stderr)
        for name in APP_DEPENDENCIES:
            importlib.import_module(name)
        return
    forget_modules_under(Path(app.__file__).resolve().parents[1])


def forget_modules_under(root: Path) -> None:
    """Drop from ``sys.modules`` every module of a package that sits directly in ``root``
    (``root/<package>/...``; a virtualenv inside ``root`` is not a package of the app)."""
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        top = name.split(".")[0]
        if file and Path(file).resolve().is_relative_to(root / top):
            del sys.modules[name]


def clientapp_argv(spec) -> list[str]:
    """``flwr-clientapp``'s command line for one task, as Flower's subprocess executor
    builds it."""
    argv = ["flwr-clientapp", "--runtime-api-address", spec.runtime_api_address,
            "--token", spec.token]
    if spec.insecure:
        argv.append("--insecure")
    elif spec.root_certificates_path is not None:
        argv += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        argv += ["--parent-pid", str(spec.parent_pid)]
    if spec.runtime_dependency_install:
        argv.append("--allow-runtime-dependency-installation")
    return argv


# The SuperNode hands a task to its SuperExec before the message's objects have arrived from
# the SuperLink, so a task started at once finds them missing, and Flower 1.41 then retries
# after 1 s, 2 s, 4 s ... (``PULL_INITIAL_BACKOFF`` 1 s doubling to ``PULL_BACKOFF_CAP`` 10 s):
# objects that arrive just after a retry wait up to as long again. Between a ClientApp and its
# own SuperNode a retry is a local lookup, so the child retries every 0.05 s doubling to 0.2 s,
# for as long as Flower lets a pull take in all (``PULL_MAX_TIME``, 2 h; no per-object count,
# which at 0.2 s would give up after 100 s on a large download).
CHILD_PULL_BACKOFF = {"initial_backoff": 0.05, "backoff_cap": 0.2, "max_tries_per_object": None}


def shorten_object_pull_backoff() -> None:
    """The ClientApp's object-pull retries: ``CHILD_PULL_BACKOFF`` instead of Flower's."""
    from flwr.supercore.inflatable import inflatable_utils

    inflatable_utils.pull_and_inflate_object_from_tree.__kwdefaults__.update(CHILD_PULL_BACKOFF)


def run_forked_clientapp(argv: list[str]) -> int:
    """In the forked child: run ``flwr-clientapp`` with ``argv`` and return its exit code."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    shorten_object_pull_backoff()
    # The FAB's modules are installed once per run (FLWR_HOME/apps/...) and imported by every
    # task: let the first task leave their bytecode there, so the others do not compile them
    # again (~0.1-0.2 s of CPU per message), even where PYTHONDONTWRITEBYTECODE=1 (Flower's
    # images set it; Python skips the write where the folder is read-only).
    sys.dont_write_bytecode = False
    sys.argv = argv
    try:
        flwr_clientapp()
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not return
        import traceback

        traceback.print_exc()
        return 1
    return 0


class ForkExecutor:
    """Flower's executor protocol (``flwr.supercore.superexec.executor.types.Executor``):
    ClientApp tasks run in a child forked from this warm process, others as subprocesses."""

    def __init__(self) -> None:
        from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

        self._fallback = SubprocessExecutor()
        self.children: set[int] = set()

    def get_eligible_capacity(self, supported_task_types, *, insecure=False,
                              root_certificates_path=None):
        return supported_task_types, set()

    def wait_for_capacity(self, task_type=None, *, fab_hash=None, insecure=False,
                          root_certificates_path=None) -> None:
        """No capacity gate, as with Flower's subprocess executor."""

    def launch(self, spec):
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor.types import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return self._fallback.launch(spec)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child never returns into the SuperExec loop
            os._exit(run_forked_clientapp(clientapp_argv(spec)))
        self.children.add(pid)
        from flwr.supercore import log

        log(logging.INFO, "ClientApp task %d: forked warm process %d", spec.task_id, pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished children, so none is left a zombie."""
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)

    def close(self) -> None:
        """Children finish their task on their own (each reports to the SuperNode)."""
        self.reconcile()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="warm_superexec.py",
        description="A SuperExec for a SuperNode: each ClientApp task in a child forked "
                    "from a process that imported Flower, torch and numpy once.")
    parser.add_argument("--runtime-api-address", required=True,
                        help="the SuperNode's Runtime API, host:port")
    security = parser.add_mutually_exclusive_group(required=True)
    security.add_argument("--insecure", action="store_true",
                          help="plain connection to the Runtime API")
    security.add_argument("--root-certificates", metavar="PEM",
                          help="CA certificate of the Runtime API's TLS")
    parser.add_argument("--parent-pid", type=int,
                        help="stop when this process exits (as flower-superexec)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.root_certificates and not os.path.isfile(args.root_certificates):
        sys.exit(f"warm_superexec: --root-certificates {args.root_certificates}: no such file")
    warm_up()
    from flwr.supercore import log

    # The line deploy/federation.sh (and flower-superexec) take as "ready".
    log(logging.INFO, "Starting Flower SuperExec (warm ClientApp executor, pid %d)", os.getpid())
    loop = importlib.import_module("flwr.supercore.superexec.run_superexec")

    # Flower's loop builds its executor through this module-level factory; ours replaces it.
    loop.get_executor = lambda *_args, **_kwargs: ForkExecutor()
    loop.run_superexec(runtime_api_address=args.runtime_api_address, insecure=args.insecure,
                       root_certificates_path=args.root_certificates,
                       parent_pid=args.parent_pid)


if __name__ == "__main__":
    main()
