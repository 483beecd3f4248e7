"""FRU's rollback and replay of the server graph model after a withdrawal (Yuan et al., WSDM
2023; FedEraser's calibration; docs/design.md "FRU in FedShare").

The withdrawn edges entered in round ``e`` at the earliest. Rollback: ``Z = Z_0 + sum of the
logged updates of rounds < e`` (:meth:`UpdateLog.rollback`). Replay, for each logged round
``t >= e`` in order: train the model from ``Z`` for ``calibration x`` that round's server
epochs on the edges stored by round ``t`` (the withdrawn ones are gone from the store), and
for each row of round ``t``'s log take the calibration's direction with the stored update's
length; ``Z`` moves by that, and the calibrated rows replace the round's log entry (the old
one carried the withdrawn edges' influence). Rows the calibration did not move (e.g. a user
who withdrew everything) are dropped from the entry.
"""

from __future__ import annotations

import torch

from server_app.update_log import TABLES, RoundUpdate, RowUpdates, apply


def calibrated(stored: RowUpdates, calibration: torch.Tensor) -> RowUpdates:
    """``stored``'s rows with ``calibration``'s direction (rows of the whole table's
    calibration update) and the stored length; rows whose calibration is zero are dropped."""
    direction = calibration[stored.rows]
    norms = direction.norm(dim=1)
    moved = norms > 0
    scale = stored.lengths()[moved] / norms[moved]
    return RowUpdates(stored.rows[moved], (direction[moved] * scale[:, None]).to(torch.float32))


def replayed(entry: RoundUpdate, before: dict[str, torch.Tensor],
             after: dict[str, torch.Tensor]) -> RoundUpdate:
    """Round ``entry`` calibrated: the model went from ``before`` to ``after`` in calibration."""
    return RoundUpdate(entry.round, entry.epochs,
                       {k: calibrated(entry.tables[k], after[k] - before[k]) for k in TABLES})


def rollback_and_replay(state, calibration: float) -> list[int]:
    """Carry out the replay ``state.updates`` owes (from its ``replay_from`` round) on
    ``state.model``; returns the rounds replayed. The optimizer is fresh for the calibration
    and again afterwards (its moments carried the withdrawn edges)."""
    log, model = state.updates, state.model
    entered = log.replay_from
    tables = log.rollback(state.snapshots[log.origin], entered)
    model.reset_optimizer(state.round + 1)
    replay = sorted(r for r in log.rounds if r >= entered)
    for rnd in replay:
        entry = log.rounds[rnd]
        model.set_tables(tables)
        state.calibrate(rnd, calibration * entry.epochs)
        entry = replayed(entry, tables, model.tables())
        log.replace(entry)
        apply(tables, entry)
    model.set_tables(tables)
    model.reset_optimizer(state.round + 1)
    log.replay_from = None
    return replay
