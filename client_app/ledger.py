"""The node's durable sharing ledger: each hosted user's choice, and their unshare requests.

The ledger (``<state-dir>/ledger.json``, written atomically under a lock) is the source of
truth for what a user shares. Per user it keeps

* ``shared``: the items the server may see;
* ``withdrawn``: items the user withdrew; they stay private until the user shares them
  again *explicitly* (:meth:`Ledger.share`): no ratio change and no config change re-shares
  them;
* ``order``: the user's interactions in the sharing policy's order (a ratio ρ shares the
  first ``round(ρ·n)`` of them, as :func:`common.sharing.select_shared` does);
* ``own``: whether the user changed their sharing themselves (the CLI); a changed sharing
  policy in the run config then leaves them alone.

Every change is applied to the ledger and written *before anything else happens*, and is
idempotent (repeating it changes nothing). Withdrawing creates an :class:`UnshareRequest`
that stays ``pending`` until the server acknowledges the erasure (``done``) or refuses it
(``refused``, with the reason); a temporary refusal keeps it pending (the reason is shown).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.atomic import atomic_write_json

LEDGER_FILE = "ledger.json"
LEDGER_VERSION = 3
PENDING, DONE, REFUSED = "pending", "done", "refused"
EMPTY = np.zeros(0, np.int64)


class LedgerError(ValueError):
    """The ledger is unreadable, or a requested change is invalid (the text says why)."""


@dataclass(frozen=True)
class UnshareRequest:
    request_id: int          # random 62-bit id: unique across nodes, carried in messages
    user: int
    items: np.ndarray        # sorted int64
    status: str = PENDING
    reason: str = ""


def _items(values) -> np.ndarray:
    return np.unique(np.asarray(values, dtype=np.int64).reshape(-1))


@dataclass(frozen=True)
class Ledger:
    """Per-user shared / withdrawn items and policy order (sorted int64 arrays), requests."""

    policy: str
    shared: dict[int, np.ndarray] = field(default_factory=dict)
    requests: tuple[UnshareRequest, ...] = ()
    schedules_applied: tuple[str, ...] = ()
    withdrawn: dict[int, np.ndarray] = field(default_factory=dict)
    order: dict[int, np.ndarray] = field(default_factory=dict)
    own: frozenset[int] = frozenset()

    # ------------------------------------------------------------------ reading
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

    def hosts(self, user: int) -> bool:
        return user in self.order or user in self.shared or user in self.withdrawn

    def _get(self, table: dict[int, np.ndarray], user: int) -> np.ndarray:
        return table.get(user, EMPTY)

    def _check_hosted(self, user: int) -> None:
        if not self.hosts(user):
            raise LedgerError(f"user {user} is not hosted on this node")

    # ------------------------------------------------------------------ explicit choices
    def share(self, user: int, items) -> "Ledger":
        """``items`` of ``user`` become shared (withdrawn ones too: this is explicit)."""
        self._check_hosted(user)
        items = _items(items)
        known = self._get(self.order, user)
        if user in self.order and len(unknown := np.setdiff1d(items, known)):
            raise LedgerError(f"items {unknown[:10].tolist()} are not interactions of user "
                              f"{user} on this node")
        shared = np.union1d(self._get(self.shared, user), items)
        withdrawn = np.setdiff1d(self._get(self.withdrawn, user), items)
        return self._set(user, shared, withdrawn)

    def unshare(self, user: int, items) -> tuple["Ledger", UnshareRequest | None]:
        """Withdraw ``items`` (None = everything shared) of ``user``: a new pending request
        for those still shared, or ``(self, None)`` when they are all withdrawn already."""
        self._check_hosted(user)
        current = self._get(self.shared, user)
        items = current if items is None else _items(items)
        never = np.setdiff1d(items, np.union1d(current, self._get(self.withdrawn, user)))
        if len(never):
            raise LedgerError(f"user {user} never shared items {never[:10].tolist()}")
        return self._withdraw(user, np.intersect1d(items, current))

    def _withdraw(self, user: int, items: np.ndarray) -> tuple["Ledger", UnshareRequest | None]:
        if not len(items):
            return self, None
        request = UnshareRequest(secrets.randbits(62), int(user), items)
        ledger = self._set(user, np.setdiff1d(self._get(self.shared, user), items),
                           np.union1d(self._get(self.withdrawn, user), items))
        return replace(ledger, requests=ledger.requests + (request,)), request

    def _set(self, user: int, shared: np.ndarray, withdrawn: np.ndarray) -> "Ledger":
        return replace(self, shared={**self.shared, int(user): shared.astype(np.int64)},
                       withdrawn={**self.withdrawn, int(user): withdrawn.astype(np.int64)})

    # ------------------------------------------------------------------ ratios
    def _quota(self, user: int, ratio: float) -> int:
        if not 0.0 <= ratio <= 1.0:
            raise LedgerError(f"ratio must be in [0, 1], got {ratio}")
        self._check_hosted(user)
        if user not in self.order:
            raise LedgerError(f"user {user}: the ledger has no interaction order (made by an "
                              "older version); run one round first")
        return int(np.rint(ratio * len(self.order[user])))

    def raise_ratio(self, user: int, ratio: float) -> "Ledger":
        """Share more, in the policy's order, until ``ratio`` of the user's interactions are
        shared; withdrawn items are skipped. Never shares less."""
        missing = self._quota(user, ratio) - len(self._get(self.shared, user))
        if missing <= 0:
            return self
        taken = np.union1d(self._get(self.shared, user), self._get(self.withdrawn, user))
        order = self.order[user]
        fresh = order[~np.isin(order, taken)][:missing]
        return self.share(user, fresh) if len(fresh) else self

    def lower_ratio(self, user: int, ratio: float) -> tuple["Ledger", UnshareRequest | None]:
        """Withdraw the shared items last in the policy's order until at most ``ratio`` of
        the user's interactions are shared. Never shares more."""
        quota, current = self._quota(user, ratio), self._get(self.shared, user)
        if len(current) <= quota:
            return self, None
        position = {int(item): p for p, item in enumerate(self.order[user].tolist())}
        ranked = sorted(current.tolist(), key=lambda item: position.get(item, -1))
        return self._withdraw(user, _items(ranked[quota:]))

    def set_ratio(self, user: int, ratio: float) -> tuple["Ledger", UnshareRequest | None]:
        """Share exactly ``ratio`` of the user's interactions (up or down, as above)."""
        return self.raise_ratio(user, ratio).lower_ratio(user, ratio)

    # ------------------------------------------------------------------ policy (run config)
    def conform(self, user: int, target: np.ndarray) -> tuple["Ledger", UnshareRequest | None]:
        """Share the policy's ``target`` items minus withdrawn ones; withdraw the rest."""
        target = _items(target)
        fresh = np.setdiff1d(target, self._get(self.withdrawn, user))
        ledger = self.share(user, fresh) if len(fresh) else self
        return ledger._withdraw(user, np.setdiff1d(ledger._get(ledger.shared, user), target))

    def adopt_policy(self, policy: str, targets: dict[int, np.ndarray]) -> "Ledger":
        """A changed sharing policy for every user who has not chosen themselves."""
        ledger = self
        for user in sorted(set(self.order) | set(self.shared)):
            if user not in self.own:
                ledger, _ = ledger.conform(user, targets.get(user, EMPTY))
        return replace(ledger, policy=policy)

    def chosen_by(self, user: int) -> "Ledger":
        """Mark ``user`` as having made their own choice (a policy change skips them)."""
        return self if user in self.own else replace(self, own=self.own | {int(user)})

    def resolve(self, request_id: int, status: str, reason: str = "") -> "Ledger":
        """Answer a pending request: ``done``/``refused`` close it; ``pending`` with a reason
        records a temporary refusal. Idempotent; unknown ids are ignored.

        A refused request does not give its items back: the user asked for them to be
        withdrawn, and the server not holding them is no reason to share them again."""
        requests = tuple(replace(r, status=status, reason=reason)
                         if r.request_id == request_id and r.status == PENDING else r
                         for r in self.requests)
        return self if requests == self.requests else replace(self, requests=requests)


def new_ledger(policy: str, pairs: np.ndarray, order: np.ndarray) -> Ledger:
    """A ledger sharing ``pairs``; ``order`` holds every interaction in the policy's order."""
    return Ledger(policy=policy, shared=_grouped(pairs, sort=True), order=_grouped(order))


def _grouped(pairs: np.ndarray, sort: bool = False) -> dict[int, np.ndarray]:
    """``{user: items}`` of ``(m, 2)`` pairs; items keep their order unless ``sort``."""
    users = np.unique(pairs[:, 0])
    order = np.argsort(pairs[:, 0], kind="stable")
    groups = np.split(pairs[order, 1], np.searchsorted(pairs[order, 0], users)[1:])
    return {int(u): (np.unique(g) if sort else g.astype(np.int64)) for u, g in zip(users, groups)}


# ---------------------------------------------------------------------- the file
def _user_json(ledger: Ledger, user: int) -> dict:
    return {"shared": ledger._get(ledger.shared, user).tolist(),
            "withdrawn": ledger._get(ledger.withdrawn, user).tolist(),
            "order": ledger._get(ledger.order, user).tolist(), "own": user in ledger.own}


def _request_json(request: UnshareRequest) -> dict:
    return {"id": str(request.request_id), "user": request.user, "items": request.items.tolist(),
            "status": request.status, "reason": request.reason}


def save_ledger(state_dir: Path, ledger: Ledger) -> None:
    users = sorted(set(ledger.shared) | set(ledger.withdrawn) | set(ledger.order))
    atomic_write_json(Path(state_dir) / LEDGER_FILE, {
        "version": LEDGER_VERSION, "policy": ledger.policy,
        "users": {str(u): _user_json(ledger, u) for u in users},
        "requests": [_request_json(r) for r in ledger.requests],
        "schedules_applied": list(ledger.schedules_applied)})


Id = Annotated[int, Field(ge=0, lt=2**63)]


class _UserEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    shared: list[Id] = []
    withdrawn: list[Id] | None = None        # None: version 2 (withdrawn items in requests)
    order: list[Id] = []
    own: bool = False


class _RequestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, Field(pattern=r"^[0-9]{1,19}$")]
    user: Id
    items: list[Id]
    status: Literal["pending", "done", "refused"]
    reason: Annotated[str, Field(max_length=10_000)] = ""


class _LedgerFile(BaseModel):
    """The ledger file's schema: a file that does not follow it is refused, naming the field."""
    model_config = ConfigDict(extra="forbid")
    version: int = LEDGER_VERSION
    policy: str
    users: dict[Annotated[str, Field(pattern=r"^[0-9]{1,19}$")], _UserEntry]
    requests: list[_RequestEntry] = []
    schedules_applied: list[str] = []


def _parse(raw: dict) -> Ledger:
    file = _LedgerFile.model_validate(raw)
    users = {int(u): entry for u, entry in file.users.items()}
    requests = tuple(UnshareRequest(int(r.id), r.user, np.asarray(r.items, dtype=np.int64),
                                    r.status, r.reason) for r in file.requests)
    table = lambda key: {u: np.asarray(getattr(e, key), dtype=np.int64)
                         for u, e in users.items() if getattr(e, key) is not None}
    withdrawn = table("withdrawn")
    for request in requests:  # version 2 kept withdrawn items only in the requests
        entry = users.get(request.user)
        if entry is None or entry.withdrawn is None:
            withdrawn[request.user] = np.union1d(withdrawn.get(request.user, EMPTY), request.items)
    return Ledger(file.policy, table("shared"), requests, tuple(file.schedules_applied),
                  withdrawn, table("order"), frozenset(u for u, e in users.items() if e.own))


def read_ledger(state_dir: Path) -> Ledger:
    path = Path(state_dir) / LEDGER_FILE
    try:
        return _parse(json.loads(path.read_text()))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        raise LedgerError(f"sharing ledger {path} is malformed at {where}: {first['msg']}"
                          + (f" (and {exc.error_count() - 1} more problems)"
                             if exc.error_count() > 1 else "")) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise LedgerError(f"sharing ledger {path} is unreadable: {exc}") from None


def ledger_exists(state_dir: Path) -> bool:
    return (Path(state_dir) / LEDGER_FILE).exists()


@contextlib.contextmanager
def _locked(state_dir: Path, create: bool):
    """Exclusive lock: the ClientApp and the CLI may update the same ledger concurrently.
    Only the node creates its state folder (a mistyped ``--state-dir`` must not)."""
    if create:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
    elif not Path(state_dir).is_dir():
        raise LedgerError(f"no node state folder {state_dir} (check --state-dir)")
    with open(Path(state_dir) / ".ledger.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_ledger(state_dir: Path, change: Callable[[Ledger], Ledger],
                  create: Callable[[], Ledger] | None = None) -> Ledger:
    """Read, change and durably write the ledger under the lock; returns the new ledger.

    Without a ledger on disk, ``create()`` makes the first one (else :class:`LedgerError`)."""
    with _locked(state_dir, create is not None):
        if ledger_exists(state_dir):
            before = read_ledger(state_dir)
        elif create is not None:
            before = create()
            save_ledger(state_dir, before)
        else:
            raise LedgerError(f"no sharing ledger in {state_dir} (the node creates it in its "
                              "first round)")
        after = change(before)
        if after is not before:
            save_ledger(state_dir, after)
        return after
