"""Small value types of the server state (shared by the state and its checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Catalog:
    """Id spaces and data fingerprint, as reported (and agreed on) by the nodes."""

    num_users: int
    num_items: int
    fingerprint: str


@dataclass(frozen=True)
class UnshareOutcome:
    """The server's answer to one unshare request (kept by request id; no pairs)."""

    request_id: int
    refused: bool
    reason: str = ""
