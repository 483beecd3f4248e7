"""Value types of the server: the catalog the nodes agreed on, and what a round did.

A :class:`RoundRecord` is what the strategy returns per round, what the server state keeps
as history and (``to_dict``) what the result file holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class Catalog:
    """Id spaces and data fingerprint, as reported (and agreed on) by the nodes."""

    num_users: int
    num_items: int
    fingerprint: str


@dataclass
class PhaseStats:
    """One phase of a round: time, traffic, replies and what was refused."""

    seconds: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    sent: int = 0
    ok: int = 0
    rows_up: int = 0
    withdrawn: int = 0
    unlearn_seconds: float = 0.0
    withdraw_seconds: float = 0.0   # carrying out accepted unshare requests (erase .. settle)
    lost: list[int] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 4)}

    @classmethod
    def from_dict(cls, saved: dict) -> "PhaseStats":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})


@dataclass
class LostNode:
    """A node that failed a round, with the (sharing) users the server knows it hosts."""

    node: int
    users: list[int]


@dataclass
class RoundRecord:
    """Everything a round did; ``skipped`` rounds (no catalog yet) carry only their phases."""

    round: int
    skipped: bool = False
    nodes_sampled: int = 0
    train_loss: float = float("nan")
    server_loss: float = 0.0
    shared_edges: int = 0
    graph_changed: bool = False
    generation: int = 0
    unlearning: bool = False
    lost_nodes: list[LostNode] = field(default_factory=list)
    phases: dict[str, PhaseStats] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)         # test split
    valid_metrics: dict[str, float] = field(default_factory=dict)   # validation split
    seconds: float = 0.0

    def phase(self, name: str) -> PhaseStats:
        return self.phases.setdefault(name, PhaseStats())

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["lost_nodes"] = [asdict(lost) for lost in self.lost_nodes]
        out["phases"] = {name: stats.to_dict() for name, stats in self.phases.items()}
        return out

    @classmethod
    def from_dict(cls, saved: dict) -> "RoundRecord":
        record = cls(**{k: v for k, v in saved.items() if k not in ("phases", "lost_nodes")})
        record.phases = {n: PhaseStats.from_dict(p) for n, p in saved.get("phases", {}).items()}
        record.lost_nodes = [LostNode(**lost) for lost in saved.get("lost_nodes", [])]
        return record
