"""Unlearning experiments under one budget for every method (docs/benchmarks.md, "Unlearning
accounting").

Every method starts from a copy of the same learned federation (``learn_rounds`` rounds), gets
its withdrawal requests in successive rounds (one request: a forget-set cell; several: the
sequential case) and is measured at the same point: every model has then been trained
``learn_rounds + requests - 1 + after_rounds`` rounds. Naive, contrastive, FRU and RecEraser
continue the learned model for the requests' rounds plus ``after_rounds - 1``; Retrain starts a
new generation at each request and trains it from scratch for the same total, i.e. it catches
up ``learn_rounds + requests - 1`` rounds and then continues ``after_rounds`` like the others.

Time is the work a request causes beyond the rounds the federation runs anyway, server and
client alike (nodes run in process, so a round's seconds include theirs): for Retrain every
round after the first request except its continuing ``after_rounds``; for the others the
erasure and whatever the method does then (judge, erase, rollback/replay, shard retraining:
``withdraw_seconds``) plus their dedicated unlearning steps (``unlearn_seconds``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from client_app.local_training import ego_user_views
from common.config import RunConfig
from harness.session import Session, clone, withdraw_pairs
from server_app.records import RoundRecord
from server_app.strategy import Tap


@dataclass(frozen=True)
class Budget:
    learn_rounds: int   # rounds of the learned federation every method starts from
    after_rounds: int   # rounds after the last request, the one carrying it included


@dataclass
class UnlearningRun:
    method: str
    session: Session
    withdrawn: np.ndarray   # (m, 2) pairs written as unshare requests, all requests together
    rounds: int             # rounds run after the first request
    trained_rounds: int     # rounds the measured model was trained (the same for every method)
    extra_seconds: float    # work the requests caused (module docstring)


def catch_up_rounds(method: str, budget: Budget, requests: int) -> int:
    """Rounds a method runs beyond the others' because of the requests (Retrain only)."""
    return budget.learn_rounds + requests - 1 if method == "retrain" else 0


def run_unlearning(learned: Session, cfg: RunConfig, method: str, requests: list[np.ndarray],
                   budget: Budget, workdir: Path,
                   tap: Callable[[Session], Tap] | None = None) -> UnlearningRun:
    """A copy of ``learned`` under ``method`` receiving ``requests`` (each ``(m, 2)`` pairs) in
    successive rounds, run to the common measuring point; ``tap(session)``, when given, makes
    the tap that sees the copy's replies from the first request on."""
    if not requests or budget.after_rounds < 1:
        raise ValueError("an unlearning run needs at least one request and one round after it")
    session = clone(learned, workdir, cfg.model_copy(update={"unlearning_method": method}))
    if tap is not None:
        session.strategy.tap = tap(session)
    withdrawn, records = [], []
    for pairs in requests:
        withdrawn.append(withdraw_pairs(session, pairs))
        records += session.run_rounds(1)
    catch_up = catch_up_rounds(method, budget, len(requests))
    records += session.run_rounds(budget.after_rounds - 1 + catch_up)
    trained = sum(1 for r in session.history if r.generation == session.state.generation)
    return UnlearningRun(method, session, np.concatenate(withdrawn), len(records), trained,
                         extra_seconds(records, method, budget.after_rounds))


def extra_seconds(records: list[RoundRecord], method: str, after_rounds: int) -> float:
    """The accounting of the module docstring over the rounds after the first request."""
    if method == "retrain":
        return sum(r.seconds for r in records[: len(records) - after_rounds])
    return sum(p.withdraw_seconds + p.unlearn_seconds for r in records for p in r.phases.values())


def served_views(session: Session, train: np.ndarray) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(U, d)`` user and ``(I, d)`` item vectors whose products are the scores users get, or
    None where the nodes' scores cannot be rebuilt centrally (fusion other than ``ego``, or a
    model without ego tables). Under ego views a user's vector is computed, as on the node, over
    their whole training history ``train`` ((n, 2), sorted by user), withdrawn pairs included:
    they stay on the device."""
    state = session.state
    if state.ego is None or state.views is None:
        return None
    in_graph = state.edges.contains(train[:, 0], train[:, 1])
    users = ego_user_views(torch.from_numpy(train), torch.from_numpy(in_graph), len(state.ego.users),
                           state.ego.items, state.ego.degree, state.ego.users,
                           session.strategy.cfg.num_layers)
    return users, torch.from_numpy(state.views[1])
