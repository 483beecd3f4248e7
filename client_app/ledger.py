"""The node's durable sharing ledger: what each hosted user shares, and their unshare requests.

Flower's ``context.state`` lives for one run only; a user's sharing decision outlives runs,
so it is kept in ``<state-dir>/ledger.json`` on the node and written atomically. The
ledger is created from the sharing policy on first use and records the policy fingerprint
it came from: a later run with another sharing policy must use another state directory.

An unshare request is recorded here *before anything else happens* (the items leave the
user's shared set at once, so they are never uploaded again); it stays ``pending`` until
the server acknowledges that it has persisted the deletion (``done``) or refuses it
(``refused``, with the server's reason).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from common.atomic import atomic_write_json

LEDGER_FILE = "ledger.json"
LEDGER_VERSION = 2
PENDING, DONE, REFUSED = "pending", "done", "refused"


class LedgerError(ValueError):
    """The ledger is unreadable, belongs to another policy, or a request is invalid."""


@dataclass(frozen=True)
class UnshareRequest:
    request_id: int          # random 62-bit id: unique across nodes, carried in messages
    user: int
    items: np.ndarray        # sorted int64
    status: str = PENDING
    reason: str = ""


@dataclass(frozen=True)
class Ledger:
    """Per-user shared items (sorted int64 arrays) under one sharing policy, plus requests."""

    policy: str
    shared: dict[int, np.ndarray] = field(default_factory=dict)
    requests: tuple[UnshareRequest, ...] = ()
    schedules_applied: tuple[str, ...] = ()

    def shared_pairs(self) -> np.ndarray:
        """All currently shared ``(m, 2)`` [user, item] pairs, sorted."""
        blocks = [np.stack([np.full(len(items), user), items], axis=1)
                  for user, items in sorted(self.shared.items()) if len(items)]
        return np.concatenate(blocks).astype(np.int64) if blocks else np.zeros((0, 2), np.int64)

    def counts(self) -> dict[int, int]:
        """Number of shared interactions per user (users sharing nothing omitted)."""
        return {user: len(items) for user, items in self.shared.items() if len(items)}

    def pending(self) -> list[UnshareRequest]:
        return [r for r in self.requests if r.status == PENDING]

    def unshare(self, user: int, items: np.ndarray | None) -> tuple["Ledger", UnshareRequest]:
        """Ledger with a new pending request withdrawing ``items`` (None = all) of ``user``."""
        if user not in self.shared or not len(self.shared[user]):
            raise LedgerError(f"user {user} shares nothing on this node (not hosted here, "
                              "or nothing shared)")
        current = self.shared[user]
        items = current if items is None else np.unique(np.asarray(items, dtype=np.int64))
        never = np.setdiff1d(items, current)
        if len(never):
            raise LedgerError(f"user {user} never shared items {never[:10].tolist()} "
                              "(or already withdrew them)")
        if not len(items):
            raise LedgerError("an unshare request needs at least one item")
        request = UnshareRequest(secrets.randbits(62), int(user), items)
        shared = {**self.shared, user: np.setdiff1d(current, items)}
        return replace(self, shared=shared, requests=self.requests + (request,)), request

    def resolve(self, request_id: int, status: str, reason: str = "") -> "Ledger":
        """Mark a pending request done or refused (idempotent; unknown ids are ignored).

        A refused request does not give its items back: the user asked for them to be
        withdrawn, and the server not holding them is no reason to share them again."""
        requests = tuple(replace(r, status=status, reason=reason)
                         if r.request_id == request_id and r.status == PENDING else r
                         for r in self.requests)
        return replace(self, requests=requests)


def ledger_from_pairs(policy: str, pairs: np.ndarray) -> Ledger:
    users = np.unique(pairs[:, 0])
    order = np.argsort(pairs[:, 0], kind="stable")
    groups = np.split(pairs[order, 1], np.searchsorted(pairs[order, 0], users)[1:])
    return Ledger(policy=policy, shared={int(u): np.unique(g) for u, g in zip(users, groups)})


def _request_json(request: UnshareRequest) -> dict:
    return {"id": str(request.request_id), "user": request.user, "items": request.items.tolist(),
            "status": request.status, "reason": request.reason}


def save_ledger(state_dir: Path, ledger: Ledger) -> None:
    atomic_write_json(Path(state_dir) / LEDGER_FILE, {
        "version": LEDGER_VERSION,
        "policy": ledger.policy,
        "users": {str(u): {"shared": items.tolist()} for u, items in sorted(ledger.shared.items())},
        "requests": [_request_json(r) for r in ledger.requests],
        "schedules_applied": list(ledger.schedules_applied),
    })


def read_ledger(state_dir: Path) -> Ledger:
    path = Path(state_dir) / LEDGER_FILE
    try:
        raw = json.loads(path.read_text())
        shared = {int(u): np.asarray(entry["shared"], dtype=np.int64)
                  for u, entry in raw["users"].items()}
        requests = tuple(UnshareRequest(int(r["id"]), int(r["user"]),
                                        np.asarray(r["items"], dtype=np.int64), str(r["status"]),
                                        str(r.get("reason", "")))
                         for r in raw.get("requests", []))
        return Ledger(str(raw["policy"]), shared, requests,
                      tuple(raw.get("schedules_applied", [])))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"sharing ledger {path} is unreadable: {exc}") from None


def load_or_create_ledger(state_dir: Path, policy: str,
                          initial_pairs: Callable[[], np.ndarray]) -> Ledger:
    """The node's ledger, created from ``initial_pairs()`` when there is none yet."""
    with _locked(state_dir):
        if not (Path(state_dir) / LEDGER_FILE).exists():
            ledger = ledger_from_pairs(policy, initial_pairs())
            save_ledger(state_dir, ledger)
            return ledger
        ledger = read_ledger(state_dir)
    if ledger.policy != policy:
        raise LedgerError(
            f"sharing ledger in {state_dir} was made under sharing policy {ledger.policy}, "
            f"this run uses {policy}; use another state-dir for a different sharing setup")
    return ledger


@contextlib.contextmanager
def _locked(state_dir: Path):
    """Exclusive lock: the ClientApp and the CLI may update the same ledger concurrently."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(state_dir) / ".ledger.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_ledger(state_dir: Path, change: Callable[[Ledger], Ledger]) -> Ledger:
    """Read, change and durably write the ledger under the lock; returns the new ledger."""
    with _locked(state_dir):
        before = read_ledger(state_dir)
        after = change(before)
        if after is not before:
            save_ledger(state_dir, after)
        return after
