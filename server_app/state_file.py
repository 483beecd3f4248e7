"""The server state file of a run (``<state-dir>/server/<run>/state.pt``) as stored data.

:class:`server_app.state.ServerState` saves and loads its own file through these functions;
the ones below it also reach the *other* runs' files under the same server root, because a
withdrawal applies to every run that holds the user's pairs: in an idle run's file the pairs
are erased, and its server model, optimizer, snapshots, unlearning task and FRU update log
(all trained with them) are dropped and marked ``owed_retrain``: when that run is resumed it
starts a new model generation from what is still shared.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch

from common.atomic import atomic_write_bytes, remove_temp_files

log = logging.getLogger("flwr.fedshare")
STATE_FILE = "state.pt"


def write_state(state_dir: Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(Path(state_dir) / STATE_FILE, buffer.getvalue())


def read_state(state_dir: Path) -> dict | None:
    path = Path(state_dir) / STATE_FILE
    return torch.load(path, weights_only=False) if path.exists() else None


def other_runs(state_dir: Path) -> list[Path]:
    """State directories of the other runs under the same server root."""
    own = Path(state_dir).resolve()
    root = own.parent
    return sorted(p.parent for p in root.glob(f"*/{STATE_FILE}") if p.parent.resolve() != own)


def clean_start(state_dir: Path) -> None:
    """Remove temporary files left by a crash during a write, in every run's directory."""
    for directory in {Path(state_dir).parent, Path(state_dir)}:
        if directory.exists():
            for path in remove_temp_files(directory):
                log.warning("removed leftover temporary file %s", path)


def erase_in_payload(payload: dict, pairs: np.ndarray) -> int:
    """Erase ``pairs`` from a saved state; returns how many it held (0: left unchanged)."""
    edges = payload["edges"]
    num_items = payload["catalog"]["num_items"]
    stored = edges["user"].numpy() * num_items + edges["item"].numpy()
    hit = np.isin(stored, pairs[:, 0].astype(np.int64) * num_items + pairs[:, 1])
    if not hit.any():
        return 0
    keep = torch.from_numpy(~hit)
    payload["edges"] = {key: value[keep] for key, value in edges.items()}
    users = set(payload["edges"]["user"].tolist())
    payload["registry"]["owner"] = {u: n for u, n in payload["registry"]["owner"].items()
                                    if int(u) in users}
    payload.update(model=None, snapshots={}, unlearning=None, updates=None, owed_retrain=True)
    return int(hit.sum())


def erase_in_other_runs(state_dir: Path, fingerprint: str, pairs: np.ndarray) -> list[Path]:
    """Erase ``pairs`` from every other run's state file over the same data (catalog
    ``fingerprint``: ids mean the same users and items) that holds any; returns those runs."""
    touched = []
    for directory in other_runs(state_dir):
        payload = read_state(directory)
        same_data = payload is not None and payload["catalog"]["fingerprint"] == fingerprint
        if same_data and erase_in_payload(payload, pairs):
            write_state(directory, payload)
            touched.append(directory)
            log.info("withdrawn pairs erased from run %s too (its model is retrained on resume)",
                     directory.name)
    return touched
