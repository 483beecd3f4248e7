"""Command line for a node's users: change what they share, in both directions, at any time.

    python -m client_app.cli share     --state-dir D --user U (--items I [I ...] | --ratio R)
    python -m client_app.cli unshare   --state-dir D --user U (--items I [I ...] | --all | --ratio R)
    python -m client_app.cli set-ratio --state-dir D --user U --ratio R
    python -m client_app.cli status    --state-dir D [--user U]

Every change is written durably to the node's ledger at once (the ledger is the source of
truth) and is idempotent: repeating a command changes nothing. ``share --ratio`` only adds,
``unshare --ratio`` only withdraws, ``set-ratio`` does whichever is needed; ratios follow the
sharing policy's order and never re-share an item the user withdrew (``share --items``
does, explicitly). New shares are uploaded in the node's next round; a withdrawal reaches the
server with the node's next reply or poll and stays pending until the server confirms the
erasure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client_app.ledger import Ledger, LedgerError, UnshareRequest, read_ledger, update_ledger


def _change(args: argparse.Namespace, ledger: Ledger) -> tuple[Ledger, UnshareRequest | None]:
    """The ledger after the command (and the withdrawal it created, if any)."""
    user, ratio = args.user, getattr(args, "ratio", None)
    if args.command == "share":
        return (ledger.share(user, args.items) if args.items is not None
                else ledger.raise_ratio(user, ratio)), None
    if args.command == "set-ratio":
        return ledger.set_ratio(user, ratio)
    if ratio is not None:
        return ledger.lower_ratio(user, ratio)
    return ledger.unshare(user, None if args.all else args.items)


def _apply(args: argparse.Namespace) -> int:
    created: list[UnshareRequest | None] = []
    before: list[int] = []

    def change(ledger: Ledger) -> Ledger:
        before.append(len(ledger.shared.get(args.user, ())))
        new, request = _change(args, ledger)
        created.append(request)
        return new if new is ledger else new.chosen_by(args.user)

    ledger = update_ledger(Path(args.state_dir), change)
    now = len(ledger.shared.get(args.user, ()))
    print(f"user {args.user}: shares {now} item(s) (was {before[0]})"
          + ("" if now != before[0] or created[0] else "; nothing to change"))
    if created[0] is not None:
        print(f"unshare request {created[0].request_id} recorded: {len(created[0].items)} "
              "item(s); pending until the server confirms the deletion")
    return 0


def _status(args: argparse.Namespace) -> int:
    ledger = read_ledger(Path(args.state_dir))
    for user in sorted(set(ledger.shared) | set(ledger.withdrawn)):
        if args.user is None or user == args.user:
            print(f"user {user}: shares {len(ledger.shared.get(user, ()))} of "
                  f"{len(ledger.order.get(user, ()))} item(s), withdrew "
                  f"{len(ledger.withdrawn.get(user, ()))}")
    for request in ledger.requests:
        if args.user is None or request.user == args.user:
            reason = f" ({request.reason})" if request.reason else ""
            print(f"request {request.request_id}: user {request.user}, {len(request.items)} "
                  f"item(s), {request.status}{reason}")
    return 0


def _id(text: str) -> int:
    """A user or item id: a non-negative integer that fits the ledger's int64 arrays."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer id: {text[:40]!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"id {text[:40]} outside [0, 2^63)")
    return value


STATE_DIR_HELP = "the node's state folder, where its ledger.json is (node config state-dir)"
EPILOG = "exit code: 0 done (or nothing to change), 2 bad arguments, or a user, item or folder " \
         "they name is unknown (the message says which; nothing was changed)"


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                     epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {"share": "share more (items, or raise the ratio)",
             "unshare": "withdraw shared interactions (items, all, or lower the ratio)",
             "set-ratio": "share exactly this fraction of the user's interactions"}
    for name, text in helps.items():
        command = sub.add_parser(name, help=text, description=text, epilog=EPILOG)
        command.add_argument("--state-dir", required=True, help=STATE_DIR_HELP)
        command.add_argument("--user", type=_id, required=True, help="the user's id")
        which = command.add_mutually_exclusive_group(required=True)
        if name != "set-ratio":
            which.add_argument("--items", type=_id, nargs="+", help="item ids of the user's "
                               "training interactions")
        if name == "unshare":
            which.add_argument("--all", action="store_true", help="everything the user shares")
        which.add_argument("--ratio", type=float, help="a fraction in [0, 1] of the user's "
                           "training interactions, in the sharing policy's order")
    status = sub.add_parser("status", help="show shared counts and requests",
                            description="shared counts and withdrawal requests", epilog=EPILOG)
    status.add_argument("--state-dir", required=True, help=STATE_DIR_HELP)
    status.add_argument("--user", type=_id, help="only this user (default: every user)")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m client_app.cli") -> int:
    """Run one command; 0 done, 2 a bad argument or ledger (the message names it)."""
    args = _parser(prog).parse_args(argv)
    try:
        return _status(args) if args.command == "status" else _apply(args)
    except LedgerError as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # e.g. a full disk: the atomic write left the old ledger in place
        print(f"{prog} {args.command}: error: could not update the ledger in {args.state_dir}: "
              f"{exc.strerror or exc} (nothing was changed)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
