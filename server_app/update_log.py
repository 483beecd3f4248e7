"""FRU's update log (Yuan et al., WSDM 2023), kept for the server graph model (docs/design.md
"FRU in FedShare").

After each round's graph step the server keeps that round's update ``Delta_t = Z_t - Z_{t-1}``
of the user and item tables, but only the top-``alpha`` of the rows that changed, by L2 norm,
per table (row ids and float32 values). ``Z_0`` (the round-0 snapshot) plus the logged updates
of the rounds before ``r`` is the rollback to the end of round ``r - 1`` (exact for
``alpha = 1``). Only row ids and update values are kept, never a (user, item) pair: the keys
are ``user_rows``/``item_rows`` so no reader mistakes them for pair columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TABLES = ("user", "item")


@dataclass(frozen=True)
class RowUpdates:
    """The kept rows of one table's update in one round."""

    rows: torch.Tensor     # (k,) int64 row ids
    values: torch.Tensor   # (k, d) float32

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.rows, self.values))

    def lengths(self) -> torch.Tensor:
        return self.values.norm(dim=1)


@dataclass(frozen=True)
class RoundUpdate:
    """One logged round: its server epochs (what a replay calibrates a fraction of) and the
    kept rows of each table's update."""

    round: int
    epochs: float
    tables: dict[str, RowUpdates]


def top_rows(delta: torch.Tensor, alpha: float) -> RowUpdates:
    """The ``ceil(alpha * changed)`` rows of ``delta`` with the largest L2 norm, among the rows
    that changed at all (sorted by row id)."""
    norms = delta.norm(dim=1)
    changed = int((norms > 0).sum())
    keep = torch.topk(norms, math.ceil(alpha * changed)).indices.sort().values
    return RowUpdates(keep.to(torch.int64), delta[keep].to(torch.float32).clone())


class UpdateLog:
    """Per-round top-alpha row updates of the server model since ``origin`` (the round whose
    model the rollback starts from: 0 = the round-0 snapshot, for a log kept since the model
    generation began). ``replay_from``: a withdrawal's rollback and replay still owed."""

    def __init__(self, alpha: float, origin: int = 0):
        self.alpha = alpha
        self.origin = origin
        self.rounds: dict[int, RoundUpdate] = {}
        self.replay_from: int | None = None

    def record(self, rnd: int, epochs: float, before: dict[str, torch.Tensor],
               after: dict[str, torch.Tensor]) -> RoundUpdate:
        entry = RoundUpdate(rnd, epochs, {k: top_rows(after[k] - before[k], self.alpha)
                                          for k in TABLES})
        self.rounds[rnd] = entry
        return entry

    def replace(self, entry: RoundUpdate) -> None:
        self.rounds[entry.round] = entry

    def owe_replay(self, entered: int) -> None:
        self.replay_from = entered if self.replay_from is None else min(entered, self.replay_from)

    def rollback(self, base: dict[str, torch.Tensor], before: int) -> dict[str, torch.Tensor]:
        """``base`` (the model at ``origin``) plus the logged updates of rounds ``< before``."""
        tables = {k: base[k].clone() for k in TABLES}
        for rnd in sorted(r for r in self.rounds if r < before):
            apply(tables, self.rounds[rnd])
        return tables

    def storage_bytes(self) -> int:
        """Bytes of what the log stores: row ids (int64) and values (float32) of every round."""
        return sum(t.nbytes for entry in self.rounds.values() for t in entry.tables.values())

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "origin": self.origin, "replay_from": self.replay_from,
                "rounds": {r: _entry_dict(e) for r, e in self.rounds.items()}}

    @classmethod
    def from_dict(cls, saved: dict) -> "UpdateLog":
        log = cls(saved["alpha"], saved["origin"])
        log.replay_from = saved["replay_from"]
        log.rounds = {int(r): RoundUpdate(int(r), e["epochs"], {
            k: RowUpdates(e[f"{k}_rows"], e[f"{k}_values"]) for k in TABLES})
            for r, e in saved["rounds"].items()}
        return log


def _entry_dict(entry: RoundUpdate) -> dict:
    saved = {"epochs": entry.epochs}
    for k, update in entry.tables.items():
        saved[f"{k}_rows"], saved[f"{k}_values"] = update.rows, update.values
    return saved


def apply(tables: dict[str, torch.Tensor], entry: RoundUpdate) -> None:
    """Add a logged round's kept rows to ``tables`` in place."""
    for k, update in entry.tables.items():
        tables[k].index_add_(0, update.rows, update.values.to(tables[k].dtype))
