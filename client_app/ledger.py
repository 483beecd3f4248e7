"""The node's durable sharing ledger: what each hosted user has agreed to share.

Flower's ``context.state`` lives for one run only; a user's sharing decision
outlives runs, so it is kept in ``<state-dir>/ledger.json`` on the node and
written atomically. The ledger is created from the sharing policy on first use
and records the policy fingerprint it came from: a later run with a different
sharing policy must use another state directory (the default layout does this).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from common.atomic import atomic_write_json

LEDGER_FILE = "ledger.json"
LEDGER_VERSION = 1


class LedgerError(ValueError):
    """The ledger file is unreadable or belongs to another sharing policy."""


@dataclass(frozen=True)
class Ledger:
    """Per-user shared items (sorted int64 arrays) under one sharing policy."""

    policy: str
    shared: dict[int, np.ndarray] = field(default_factory=dict)

    def shared_pairs(self) -> np.ndarray:
        """All currently shared ``(m, 2)`` [user, item] pairs, sorted."""
        if not self.shared:
            return np.zeros((0, 2), dtype=np.int64)
        blocks = [np.stack([np.full(len(items), user), items], axis=1)
                  for user, items in sorted(self.shared.items()) if len(items)]
        return np.concatenate(blocks).astype(np.int64) if blocks else np.zeros((0, 2), np.int64)

    def counts(self) -> dict[int, int]:
        """Number of shared interactions per user (users sharing nothing omitted)."""
        return {user: len(items) for user, items in self.shared.items() if len(items)}


def ledger_from_pairs(policy: str, pairs: np.ndarray) -> Ledger:
    shared = {int(u): np.unique(pairs[pairs[:, 0] == u, 1]) for u in np.unique(pairs[:, 0])}
    return Ledger(policy=policy, shared=shared)


def save_ledger(state_dir: Path, ledger: Ledger) -> None:
    atomic_write_json(Path(state_dir) / LEDGER_FILE, {
        "version": LEDGER_VERSION,
        "policy": ledger.policy,
        "users": {str(u): {"shared": items.tolist()} for u, items in sorted(ledger.shared.items())},
    })


def read_ledger(state_dir: Path) -> Ledger:
    path = Path(state_dir) / LEDGER_FILE
    try:
        raw = json.loads(path.read_text())
        users = raw["users"]
        shared = {int(u): np.asarray(entry["shared"], dtype=np.int64) for u, entry in users.items()}
        return Ledger(policy=str(raw["policy"]), shared=shared)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"sharing ledger {path} is unreadable: {exc}") from None


def load_or_create_ledger(state_dir: Path, policy: str,
                          initial_pairs: Callable[[], np.ndarray]) -> Ledger:
    """The node's ledger, created from ``initial_pairs()`` when there is none yet."""
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
