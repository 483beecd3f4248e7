"""Atomic checkpoints of the server state (one file, rewritten whole each time).

Holds: round, model generation, catalog, item table, shared edges with their round stamps,
server model and optimizer, snapshots, user ownership, node bookkeeping and unshare
outcomes (request ids only: no withdrawn pair is ever written).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from common.atomic import atomic_write_bytes
from server_app.edge_store import EdgeStore
from server_app.records import Catalog, UnshareOutcome

if TYPE_CHECKING:
    from server_app.state import ServerState

CHECKPOINT_FILE = "checkpoint.pt"


def save(state: "ServerState", path: Path) -> None:
    payload = {
        "round": state.round, "generation": state.generation,
        "catalog": (state.catalog.num_users, state.catalog.num_items, state.catalog.fingerprint),
        "item_emb": torch.from_numpy(state.item_emb),
        "edges": {"user": torch.from_numpy(state.edges.user), "item": torch.from_numpy(state.edges.item),
                  "round": torch.from_numpy(state.edges.round)},
        "model": state.model.state_dict(),
        "snapshots": state.snapshots,
        "owner": dict(state.owner),
        "node_users": {n: torch.from_numpy(u) for n, u in state.node_users.items()},
        "outcomes": {k: (v.refused, v.reason) for k, v in state.outcomes.items()},
        "history": state.history,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load(state: "ServerState", path: Path) -> None:
    """Restore ``state`` in place from ``path`` (see :func:`save`)."""
    payload = torch.load(path, weights_only=False)
    state.initialize(Catalog(*payload["catalog"]))
    state.round, state.generation = payload["round"], payload["generation"]
    state.item_emb = payload["item_emb"].numpy()
    edges = payload["edges"]
    state.edges = EdgeStore(state.catalog.num_users, state.catalog.num_items,
                            edges["user"].numpy(), edges["item"].numpy(), edges["round"].numpy())
    state.edges_version += 1
    state.model.load_state_dict(payload["model"])
    state.snapshots = payload["snapshots"]
    state.owner = dict(payload["owner"])
    state.node_users = {n: u.numpy().astype(np.int64) for n, u in payload["node_users"].items()}
    state.outcomes = {k: UnshareOutcome(k, *v) for k, v in payload["outcomes"].items()}
    state.history = list(payload["history"])
