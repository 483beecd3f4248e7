"""Command line for a node's users: withdraw shared interactions, inspect the ledger.

    python -m client_app.cli unshare --state-dir D --user U (--items I [I ...] | --all)
    python -m client_app.cli status  --state-dir D [--user U]

The request is written durably to the node's ledger at once (the items stop being shared
immediately) and is sent to the server in the next round the node takes part in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client_app.ledger import LedgerError, read_ledger, update_ledger


def _unshare(args: argparse.Namespace) -> int:
    created = []

    def change(ledger):
        new, request = ledger.unshare(args.user, None if args.all else args.items)
        created.append(request)
        return new

    update_ledger(Path(args.state_dir), change)
    request = created[0]
    print(f"unshare request {request.request_id} recorded: user {request.user}, "
          f"{len(request.items)} item(s); pending until the server confirms the deletion")
    return 0


def _status(args: argparse.Namespace) -> int:
    ledger = read_ledger(Path(args.state_dir))
    for user, items in sorted(ledger.shared.items()):
        if args.user is None or user == args.user:
            print(f"user {user}: shares {len(items)} item(s)")
    for request in ledger.requests:
        if args.user is None or request.user == args.user:
            reason = f" ({request.reason})" if request.reason else ""
            print(f"request {request.request_id}: user {request.user}, {len(request.items)} "
                  f"item(s), {request.status}{reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client_app.cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    unshare = sub.add_parser("unshare", help="withdraw shared interactions of a user")
    unshare.add_argument("--state-dir", required=True)
    unshare.add_argument("--user", type=int, required=True)
    which = unshare.add_mutually_exclusive_group(required=True)
    which.add_argument("--items", type=int, nargs="+")
    which.add_argument("--all", action="store_true")
    status = sub.add_parser("status", help="show shared counts and requests")
    status.add_argument("--state-dir", required=True)
    status.add_argument("--user", type=int)
    args = parser.parse_args(argv)
    try:
        return _unshare(args) if args.command == "unshare" else _status(args)
    except LedgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
