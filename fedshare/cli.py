"""``fedshare``: one command line for what an operator and a node's users do.

Each subcommand is the project's existing tool, run with its own arguments and its own
``--help`` (this module only dispatches, so every option has one home):

    fedshare simulate ...            deploy/simulate.sh        Flower's local simulation
    fedshare federation ACTION ...   deploy/federation.sh      a real federation on 127.0.0.1
    fedshare share|unshare|set-ratio|status ...   client_app/cli.py   a node's users' sharing
    fedshare audit ...               server_app/audit.py       traces of withdrawn pairs
    fedshare centralized ...         common/centralized.py     the centralized reference
    fedshare report ...              bench/report.py           benchmark tables and plots
    fedshare fingerprint ...         fedshare/fingerprint.py   a run's data fingerprint
    fedshare download ...            common/download.py        MovieLens archives

The shell scripts replace this process (``exec``), so their output, signals and exit codes
are theirs. ``simulate``, ``federation`` and ``report`` need the source checkout the package
was installed from (``deploy/install.sh`` installs it in editable mode).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PROG = "fedshare"
ROOT = Path(__file__).resolve().parents[1]   # the checkout (an editable install points here)
EXIT_CODES = """exit codes:
  0  done
  1  the work failed or found something: a run that did not complete, an audit
     finding, a failed download (the message or the log above says why)
  2  bad arguments, or a file, folder, dataset or user they name is unusable
     (the message says which)
  3  'federation status' only: not every process of the federation is running"""


@dataclass(frozen=True)
class Command:
    summary: str
    run: Callable[[str, list[str]], "int | None"]


def _ledger(name: str, argv: list[str]) -> int:
    from client_app import cli

    return cli.main([name, *argv], prog=PROG)


def _audit(name: str, argv: list[str]) -> int:
    from server_app import audit

    return audit.main(argv, prog=f"{PROG} {name}")


def _centralized(name: str, argv: list[str]) -> int:
    from common import centralized

    return centralized.main(argv, prog=f"{PROG} {name}")


def _download(name: str, argv: list[str]) -> int:
    from common import download

    return download.main(argv, prog=f"{PROG} {name}")


def _fingerprint(name: str, argv: list[str]) -> int:
    from fedshare import fingerprint

    return fingerprint.main(argv, prog=f"{PROG} {name}")


def _report(name: str, argv: list[str]) -> int:
    try:
        from bench import report
    except ImportError as exc:   # an install without the checkout, or without matplotlib
        return _fail(name, f"needs the source checkout and its benchmark dependencies "
                           f"(deploy/install.sh installs both): {exc}")
    return report.main(argv, prog=f"{PROG} {name}")


def _script(relative: str) -> Callable[[str, list[str]], int]:
    """A command that replaces this process with the checkout's shell script."""
    def run(name: str, argv: list[str]) -> int:
        script = ROOT / relative
        if not os.access(script, os.X_OK):
            return _fail(name, f"{relative} not found (or not executable) under {ROOT}: this "
                               "command runs the script of a FedShare source checkout")
        env = {**os.environ, "FEDSHARE_PROG": f"{PROG} {name}"}
        if sys.prefix != sys.base_prefix:   # the scripts use the venv this CLI runs in
            env.setdefault("VENV", sys.prefix)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(script, [str(script), *argv], env)
    return run


def _fail(name: str, message: str) -> int:
    print(f"{PROG} {name}: error: {message}", file=sys.stderr)
    return 1


COMMANDS = {
    "simulate": Command("run FedShare in Flower's local simulation", _script("deploy/simulate.sh")),
    "federation": Command("a real federation on 127.0.0.1: start | run | stop | status",
                          _script("deploy/federation.sh")),
    "share": Command("a user shares more: items, or a higher ratio (on their node)", _ledger),
    "unshare": Command("a user withdraws shared items: some, all, or down to a ratio", _ledger),
    "set-ratio": Command("a user shares exactly this fraction of their interactions", _ledger),
    "status": Command("what a node's users share, and their withdrawal requests", _ledger),
    "audit": Command("look for any trace of withdrawn pairs in server state, results, logs",
                     _audit),
    "centralized": Command("train the centralized reference (upper bound)", _centralized),
    "report": Command("benchmark JSON -> markdown tables and plots", _report),
    "fingerprint": Command("the data fingerprint a run's nodes must report (set it in deployments)",
                           _fingerprint),
    "download": Command("fetch a MovieLens archive into the data root (md5-checked)", _download),
}


def _parser() -> argparse.ArgumentParser:
    table = "\n".join(f"  {name:<12} {command.summary}" for name, command in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES,
        description=f"FedShare on Flower: one command line.\n\ncommands:\n{table}\n\n"
                    f"'{PROG} COMMAND --help' shows a command's arguments.")
    parser.add_argument("command", metavar="COMMAND", choices=list(COMMANDS),
                        help="one of the commands above")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv[:1])   # --help, or an error saying what is missing (exit 2)
        parser.error("give the command first")
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        parser.error(f"unknown command {name!r}" + (f" (did you mean {close[0]!r}?)" if close
                                                   else "") + f"; commands: {', '.join(COMMANDS)}")
    code = COMMANDS[name].run(name, rest)
    return 0 if code is None else int(code)
