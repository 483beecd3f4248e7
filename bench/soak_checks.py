"""What the soak benchmark checks after a run (bench/soak.py in process, bench/soak_loopback.py
on a real SuperLink and SuperNodes): honest churn of sharing, poisoned server state, which
attacks were refused naming the node, rejection reasons, and that acknowledged withdrawals
are erased."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from client_app.ledger import DONE, read_ledger, update_ledger
from server_app.state import ServerState

PHASE_OF = {"train": "train", "evaluate": "evaluate", "query.share": "share",
            "query.unshare": "unshare"}
POISON_BOUND = 1e3   # |entry| of an item table or server model that no honest round reaches


def churn(node_dirs: list[Path], honest: list[int], rng: np.random.Generator, rate: float) -> int:
    """Honest users change their sharing (share more / withdraw some), as with the CLI."""
    changes = 0
    for pid in honest:
        node_dir = node_dirs[pid]
        if rng.random() >= rate:
            continue
        ledger = read_ledger(node_dir)
        users = sorted(ledger.order)
        user = users[int(rng.integers(len(users)))]
        shared = ledger.shared.get(user, np.zeros(0, np.int64))
        if len(shared) and rng.random() < 0.5:
            items = shared[rng.random(len(shared)) < 0.3][:20]
            update_ledger(node_dir, lambda led: led.unshare(user, items)[0] if len(items) else led)
        else:
            update_ledger(node_dir, lambda led: led.raise_ratio(user, min(1.0, 0.2 + rng.random())))
        changes += 1
    return changes


def poisoned(state: ServerState) -> bool:
    tables = [torch.from_numpy(state.item_emb)]
    if state.model is not None:
        tables += list(state.model.tables().values())
    return any(not torch.isfinite(t).all() or t.abs().max() > POISON_BOUND for t in tables)


def attack_table(applied, history) -> list[dict]:
    """Per attack: how often applied, how often the reply was rejected naming the node."""
    records = {r.round: r for r in history}
    rows: dict[str, dict] = {}
    for a in applied:
        row = rows.setdefault(f"{PHASE_OF[a.kind]}:{a.attack}",
                              {"attack": f"{PHASE_OF[a.kind]}:{a.attack}", "applied": 0,
                               "rejected": 0, "example": ""})
        row["applied"] += 1
        record = records.get(a.round)
        phase = record.phases.get(PHASE_OF[a.kind]) if record else None
        named = [m for m in (phase.rejected if phase else []) if m.startswith(f"node {a.node}:")]
        row["rejected"] += bool(named)
        row["example"] = row["example"] or (named[0][:160] if named else "")
    return sorted(rows.values(), key=lambda r: r["attack"])


def reasons(history) -> dict[str, int]:
    """Rejections by reason (numbers blanked), over every phase of every round."""
    counts: Counter = Counter()
    for record in history:
        for phase in record.phases.values():
            for message in phase.rejected:
                text = message.split(": ", 1)[-1]
                counts[re.sub(r"[-+]?\d[\d.e+-]*", "N", text)[:120]] += 1
    return dict(counts.most_common())


def consent_check(state: ServerState, node_dirs: list[Path]) -> dict:
    """Acknowledged withdrawals are erased; nothing acknowledged is lost."""
    edges = state.edges
    done = pending = still_held = 0
    for node_dir in node_dirs:
        for request in read_ledger(node_dir).requests:
            if request.status == DONE:
                done += 1
                held = edges is not None and edges.contains(
                    np.full(len(request.items), request.user), request.items).any()
                still_held += bool(held)
            pending += request.status == "pending"
    return {"acknowledged": done, "pending_at_end": pending, "acknowledged_but_held": still_held}
