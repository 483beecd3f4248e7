"""Withdrawals: judge unshare requests, erase the edges, persist, then unlearn.

The order is fixed here and nowhere else: judge the requests riding on a phase's replies ->
remove the accepted pairs from the edge store (the graph follows, being a pure function of
it) -> drop the snapshots and reset the optimizer rows that postdate them -> start the
unlearning method (its task, or a retrain, is part of the saved state) -> erase the pairs
from the other runs' state files -> save -> queue the answers (sent with the next message)
-> let the method settle (long work it owes, e.g. RecEraser's retraining, saved again).
A crash before the save leaves the request unanswered (the node sends it again); after it,
everything owed is on disk and resumes.

Methods are pluggable (:class:`UnlearningMethod`): ``naive`` (delete and go on),
``retrain`` (a new model generation trained from scratch on what is still shared),
``contrastive`` (docs/method.md §4; the math is in :mod:`server_app.unlearning`) and
``receraser`` (exact: the affected shards of the ensemble in :mod:`server_app.receraser_model`
are deleted before the save and retrained from scratch after it, in :meth:`settle`) and
``fru`` (FRU's rollback and calibrated replay of the logged rounds, :mod:`server_app.fru`, in
:meth:`settle`; a restart in between replays at its next graph step, :meth:`resume`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable, Protocol

import numpy as np
import torch

from common.config import RunConfig
from common.graph import Graph
from common.protocol import UnshareAnswer
from server_app.fru import rollback_and_replay
from server_app.state import ServerState
from server_app.unlearning import (UnlearningTask, isolated_nodes, snapshot_view, start_task,
                                   unlearning_loss)

log = logging.getLogger("flwr.fedshare")
LossTerm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Requests = dict[int, tuple[int, np.ndarray]]  # request id -> (user, items)


class UnlearningMethod(Protocol):
    def start(self, state: ServerState, old_graph: Graph, pairs: np.ndarray, entered: int) -> None: ...
    def loss_term(self, state: ServerState) -> LossTerm | None: ...
    def advance(self, state: ServerState) -> None: ...
    def settle(self, state: ServerState) -> None: ...
    def resume(self, state: ServerState) -> None: ...


class Naive:
    """Delete and go on: the remaining rounds train on what is still shared."""

    def start(self, state, old_graph, pairs, entered) -> None:
        pass

    def settle(self, state) -> None:
        """After the erasure was saved and answered: work that may take long (none here)."""

    def resume(self, state) -> None:
        """Before a graph step: work a restart left owed after the erasure (none here)."""

    def loss_term(self, state) -> LossTerm | None:
        return None

    def advance(self, state) -> None:
        pass


class Retrain(Naive):
    """A new model generation from scratch on the remaining shared data."""

    def start(self, state, old_graph, pairs, entered) -> None:
        state.new_generation()
        log.info("retrain: new model generation %d from the remaining shared data",
                 state.generation)


class Receraser(Naive):
    """Exact unlearning by shards (RecEraser): the sub-models of the shards that held the pairs,
    and the aggregator, are deleted with the erasure (so the saved state never holds a
    parameter trained on them) and retrained from scratch, same seeds, once that is saved. A
    restart in between finds them missing and retrains them at its next graph step."""

    def start(self, state, old_graph, pairs, entered) -> None:
        affected = state.model.forget(pairs)
        state.views = None
        log.info("receraser: shards %s and the aggregator deleted; retrained from scratch",
                 affected)

    def settle(self, state) -> None:
        if state.graph is not None:
            state.train_graph()
            state.refresh_views()
        state.save()


class Fru(Naive):
    """FRU (Yuan et al., WSDM 2023) on the server graph model (docs/design.md "FRU in
    FedShare"): the erasure's save records the replay owed (from the round the earliest pair
    entered); :meth:`settle` rolls back and replays the later rounds with calibration. A log
    that cannot roll back that far (the run switched to ``fru`` later) retrains instead."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def start(self, state, old_graph, pairs, entered) -> None:
        updates = state.updates
        if updates is None or entered <= updates.origin or updates.origin not in state.snapshots:
            log.warning("fru: the update log does not reach back to round %d; retraining from "
                        "scratch instead", entered)
            Retrain().start(state, old_graph, pairs, entered)
            return
        updates.owe_replay(entered)

    def settle(self, state) -> None:
        if state.updates is None or state.updates.replay_from is None:
            return
        rounds = rollback_and_replay(state, self.cfg.fru_calibration)
        log.info("fru: rolled back and replayed rounds %s", rounds)
        if state.graph is not None:
            state.refresh_views()
        state.save()

    def resume(self, state) -> None:
        self.settle(state)


class Contrastive:
    """Contrastive unlearning from a snapshot for ``unlearn-rounds`` rounds (docs/method.md §4)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def start(self, state, old_graph, pairs, entered) -> None:
        cfg = self.cfg
        if cfg.unlearn_rounds == 0:
            return
        isolated = self._reinitialize_isolated(state, old_graph)
        task = start_task(state.model.tables(), state.snapshots, old_graph, state.graph, pairs,
                          entered, cfg.num_layers, cfg.unlearn_hops, cfg.unlearn_rounds)
        if state.unlearning is not None:
            task = _merged(state.unlearning, task, state, cfg.num_layers)
        task = _without(task, isolated)
        if not len(task.nodes):       # every affected row started afresh
            state.set_unlearning(None)
            return
        state.set_unlearning(task)
        log.info("contrastive unlearning: %d affected nodes, snapshot of round %d, %d rounds",
                 len(task.nodes), task.snapshot_round, task.rounds_left)

    @staticmethod
    def _reinitialize_isolated(state, old_graph) -> torch.Tensor:
        """Rows left without any edge start afresh at once
        (:func:`server_app.unlearning.isolated_nodes`); returns their node ids."""
        isolated = isolated_nodes(old_graph, state.graph)
        users = old_graph.num_users
        state.model.reinitialize_rows(isolated[isolated < users], isolated[isolated >= users] - users)
        return isolated

    def loss_term(self, state) -> LossTerm | None:
        task, cfg = state.unlearning, self.cfg
        if task is None or task.rounds_left <= 0:
            return None
        generator = state.model.generator
        return lambda users, items: cfg.unlearn_weight * unlearning_loss(
            task, users, items, cfg.unlearn_temperature, generator, cfg.server_batch_size)

    def advance(self, state) -> None:
        task = state.unlearning
        if task is not None:
            task = replace(task, rounds_left=task.rounds_left - 1)
            state.set_unlearning(task if task.rounds_left > 0 else None)

    def settle(self, state) -> None:
        """The task runs in the next rounds' graph steps."""

    def resume(self, state) -> None:
        pass


def _without(task: UnlearningTask, nodes: torch.Tensor) -> UnlearningTask:
    """``task`` without the anchors in ``nodes``."""
    keep = ~torch.isin(task.nodes, nodes)
    return replace(task, nodes=task.nodes[keep], positive=task.positive[keep],
                   negative=task.negative[keep], weight=task.weight[keep])


def _merged(previous: UnlearningTask, task: UnlearningTask, state: ServerState,
            num_layers: int) -> UnlearningTask:
    """A running task extended by a new one: both sets of affected nodes are kept. If the
    running task's snapshot was dropped (it postdates the new withdrawal), its positives
    are recomputed from the new task's (clean) snapshot on the current graph."""
    keep = ~torch.isin(previous.nodes, task.nodes)
    positive = previous.positive[keep]
    if previous.snapshot_round not in state.snapshots:
        clean = snapshot_view(state.snapshots[task.snapshot_round], state.graph, num_layers)
        positive = clean[previous.nodes[keep]]
    return replace(task, nodes=torch.cat([previous.nodes[keep], task.nodes]),
                   positive=torch.cat([positive, task.positive]),
                   negative=torch.cat([previous.negative[keep], task.negative]),
                   weight=torch.cat([previous.weight[keep], task.weight]))


METHODS: dict[str, Callable[[RunConfig], UnlearningMethod]] = {
    "naive": lambda cfg: Naive(), "retrain": lambda cfg: Retrain(), "contrastive": Contrastive,
    "receraser": lambda cfg: Receraser(), "fru": Fru}


class Withdrawal:
    """Judges unshare requests and carries out the accepted ones (any phase, any reply)."""

    def __init__(self, cfg: RunConfig, state: ServerState):
        self.cfg = cfg
        self.state = state
        self.method = METHODS[cfg.unlearning_method](cfg)
        self._accepted: list[np.ndarray] = []
        self._answers: list[tuple[int, UnshareAnswer]] = []

    def judge(self, node: int, requests: Requests) -> list[UnshareAnswer]:
        """Answer each request of ``node``; accepted pairs wait for :meth:`carry_out`.

        A re-sent request gets its earlier answer again and changes nothing; a temporary
        refusal (``retry``) is not recorded, so the request is judged again next time. The
        store is searched once for all requests (linear in the reply, not reply x store)."""
        answers, held = [], self._held(requests)
        for request_id, (user, items) in requests.items():
            known = self.state.outcomes.get(request_id)
            answer = known or self._answer(node, request_id, user, items, held[request_id])
            if known is None and not answer.refused and not answer.retry:
                self.state.registry.claim(node, [user])
                self._accepted.append(np.stack([np.full(len(held[request_id]), user),
                                                held[request_id]], axis=1))
            if not answer.retry:
                self.state.record_outcome(answer)
            self._answers.append((node, answer))
            answers.append(answer)
        return answers

    def _held(self, requests: Requests) -> dict[int, np.ndarray]:
        """Per request, the requested items the edge store holds (one batched lookup)."""
        edges, ids = self.state.edges, list(requests)
        sizes = [len(items) for _, items in requests.values()]
        if edges is None or not ids:
            return {r: np.zeros(0, np.int64) for r in ids}
        users = np.repeat([user for user, _ in requests.values()], sizes).astype(np.int64)
        items = np.concatenate([items for _, items in requests.values()]).astype(np.int64)
        found = edges.contains(users, items)
        bounds = np.cumsum(sizes)[:-1]
        return {r: i[f] for r, i, f in zip(ids, np.split(items, bounds), np.split(found, bounds))}

    def receive(self, node: int, requests: Requests) -> list[str]:
        """:meth:`judge`, returning what to report: refused and deferred requests."""
        return [f"node {node}: unshare request {answer.request_id} "
                f"{'deferred' if answer.retry else 'refused'}: {answer.reason}"
                for answer in self.judge(node, requests) if answer.refused or answer.retry]

    def _answer(self, node: int, request_id: int, user: int, items: np.ndarray,
                held: np.ndarray) -> UnshareAnswer:
        registry = self.state.registry
        if not registry.is_owned(user):
            return UnshareAnswer(request_id, True, f"user {user} shares nothing with the server")
        if not registry.may_act_for(node, user) and registry.is_bound(user):
            return UnshareAnswer(request_id, True, f"user {user} is bound to another "
                                 "SuperNode's key; only that node can withdraw for them")
        if not registry.may_act_for(node, user):
            return UnshareAnswer(request_id, False, f"user {user} is shared by another node "
                                 f"({registry.owner[user]}) that is still connected; the "
                                 "request is retried until one of the two is gone", retry=True)
        if not len(held):
            return UnshareAnswer(request_id, True, f"user {user} never shared any of the "
                                 f"{len(items)} requested items")
        return UnshareAnswer(request_id, False)

    def carry_out(self) -> int:
        """Erase every accepted pair (here and in the run's other state directories), drop
        what postdates them, start the unlearning owed, save -- and only then queue the
        answers. Returns how many pairs were erased; the pairs are dropped afterwards."""
        if not self._answers:
            return 0
        pairs = np.concatenate(self._accepted) if self._accepted else np.zeros((0, 2), np.int64)
        self._accepted, answers, self._answers = [], self._answers, []
        if len(pairs):
            state = self.state
            old_graph, entered = state.remove_edges(pairs)
            state.forget(old_graph, pairs, entered, self.cfg.unlearn_hops)
            self.method.start(state, old_graph, pairs, entered)
            state.erase_elsewhere(pairs)
        self.state.save()                       # the whole effect is durable: now answer
        for node, answer in answers:
            self.state.registry.queue_answer(node, answer)
        if len(pairs):
            self.method.settle(self.state)      # answers go out with the next message
        return len(pairs)

    def loss_term(self) -> LossTerm | None:
        return self.method.loss_term(self.state)

    def advance(self) -> None:
        self.method.advance(self.state)

    def resume(self) -> None:
        """Finish what a restart left owed (e.g. FRU's replay) before the graph step."""
        self.method.resume(self.state)
