"""Withdrawals: judge unshare requests, erase the edges, persist, then unlearn.

The order is fixed here and nowhere else: judge every request of the round -> remove the
accepted pairs from the edge store (the graph follows, being a pure function of it) ->
save the state (an answer is sent only after this) -> start the unlearning method, which
then contributes a loss term while it runs and advances once per round.

Methods are pluggable (:class:`UnlearningMethod`): ``naive`` (delete and go on),
``retrain`` (a new model generation trained from scratch on what is still shared) and
``contrastive`` (docs/method.md §4; the math is in :mod:`server_app.unlearning`).
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
from server_app.state import ServerState
from server_app.unlearning import UnlearningTask, start_task, unlearning_loss

log = logging.getLogger("flwr.fedshare")
LossTerm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Requests = dict[int, tuple[int, np.ndarray]]  # request id -> (user, items)


class UnlearningMethod(Protocol):
    def start(self, state: ServerState, old_graph: Graph, pairs: np.ndarray, entered: int) -> None: ...
    def loss_term(self, state: ServerState) -> LossTerm | None: ...
    def advance(self, state: ServerState) -> None: ...


class Naive:
    """Delete and go on: the remaining rounds train on what is still shared."""

    def start(self, state, old_graph, pairs, entered) -> None:
        pass

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


class Contrastive:
    """Contrastive unlearning from a snapshot for ``unlearn-rounds`` rounds (docs/method.md §4)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def start(self, state, old_graph, pairs, entered) -> None:
        cfg = self.cfg
        if cfg.unlearn_rounds == 0:
            return
        task = start_task(state.model.tables(), state.snapshots, old_graph, state.graph, pairs,
                          entered, cfg.num_layers, cfg.unlearn_hops, cfg.unlearn_rounds)
        if state.unlearning is not None:
            task = _merged(state.unlearning, task)
        state.set_unlearning(task)
        log.info("contrastive unlearning: %d affected nodes, snapshot of round %d, %d rounds",
                 len(task.nodes), task.snapshot_round, task.rounds_left)

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


def _merged(previous: UnlearningTask, task: UnlearningTask) -> UnlearningTask:
    """A running task extended by a new one: both sets of affected nodes are kept."""
    keep = ~torch.isin(previous.nodes, task.nodes)
    return replace(task, nodes=torch.cat([previous.nodes[keep], task.nodes]),
                   positive=torch.cat([previous.positive[keep], task.positive]),
                   negative=torch.cat([previous.negative[keep], task.negative]),
                   weight=torch.cat([previous.weight[keep], task.weight]))


METHODS: dict[str, Callable[[RunConfig], UnlearningMethod]] = {
    "naive": lambda cfg: Naive(), "retrain": lambda cfg: Retrain(), "contrastive": Contrastive}


class Withdrawal:
    """Judges a round's unshare requests and carries out the accepted ones."""

    def __init__(self, cfg: RunConfig, state: ServerState):
        self.state = state
        self.method = METHODS[cfg.unlearning_method](cfg)
        self._accepted: list[np.ndarray] = []

    def judge(self, node: int, requests: Requests) -> list[UnshareAnswer]:
        """Answer each request of ``node``; accepted pairs wait for :meth:`carry_out`.

        A re-sent request gets its earlier answer again and changes nothing."""
        answers = []
        for request_id, (user, items) in requests.items():
            known = self.state.outcomes.get(request_id)
            answer = known or self._answer(node, request_id, user, items)
            if known is None and not answer.refused:
                self.state.registry.claim(node, [user])
                self._accepted.append(np.stack([np.full(len(items), user), items], axis=1))
            self.state.record_outcome(answer)
            self.state.registry.queue_answer(node, answer)
            answers.append(answer)
        return answers

    def _answer(self, node: int, request_id: int, user: int, items: np.ndarray) -> UnshareAnswer:
        registry, edges = self.state.registry, self.state.edges
        if not registry.is_owned(user) or not registry.may_act_for(node, user):
            return UnshareAnswer(request_id, True, f"user {user} is not shared by this node")
        held = edges.contains(np.full(len(items), user), items)
        if not held.all():
            return UnshareAnswer(request_id, True, f"user {user} never shared "
                                 f"{int((~held).sum())} of the {len(items)} requested items")
        return UnshareAnswer(request_id, False)

    def carry_out(self) -> int:
        """Erase every accepted pair, persist, start unlearning; returns how many pairs.

        The pairs are dropped afterwards: no withdrawn pair is kept anywhere."""
        if not self._accepted:
            return 0
        pairs, self._accepted = np.concatenate(self._accepted), []
        old_graph, entered = self.state.remove_edges(pairs)
        self.state.save()                       # durable before any answer is sent
        self.method.start(self.state, old_graph, pairs, entered)
        return len(pairs)

    def loss_term(self) -> LossTerm | None:
        return self.method.loss_term(self.state)

    def advance(self) -> None:
        self.method.advance(self.state)
