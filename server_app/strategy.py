"""The FedShare strategy: per phase a configure step (messages to send) and an aggregate
step (apply the replies), and one run loop.

A round (docs/method.md §3): sample nodes -> ``query.unshare`` polls the nodes not heard
from for ``unshare-poll-every`` rounds -> ``query.share`` to nodes with unsynced sharing (new
edges; the graph follows the edge store) -> train the server LightGCN (plus the unlearning
term while it runs) -> ``train`` (sparse item rows back) -> per-row FedAvg -> ``evaluate``
when due. Every reply of every phase may carry the node's pending unshare requests: they
are judged and carried out (erase, persist, start unlearning) before anything else of that
phase's replies is used. With ``sharing-ratio = 0`` no edge ever arrives, so there is no graph, no global
view and no alignment: the loop is exactly federated BPR-MF with FedAvg.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Callable, Iterable

import numpy as np
from flwr.app import Message

from common.config import RunConfig
from common.metrics import SPLITS, finalize
from common.selection import DEFAULT_METRIC
from common.protocol import (EVALUATE, SHARE, TRAIN, UNSHARE, EvaluateReply, Header,
                             ModelPayload, ShareReply, TrainReply, content_bytes)
from common.upload_privacy import most_row_count
from server_app.aggregation import NonFiniteTable, RowUpdate
from server_app.records import Catalog, LostNode, PhaseStats, RoundRecord
from server_app.secure_aggregation import SecureRound
from server_app.secure_phases import SecurePhases
from server_app.exchange import (at_most, evaluated_subset, excerpt, guarded, pull_all,
                                 selection, share_of)
from server_app.state import ServerState
from server_app.validation import (MAX_CATALOG, ReplyError, TrainBounds, check_evaluate, check_share,
                                   check_train, check_unshare, decode, decode_withdrawals)
from server_app.withdrawal import Withdrawal

log = logging.getLogger("flwr.fedshare")
Tap = Callable[[str, Message], None]
Replies = list[tuple[int, Message]]


class FedShareStrategy(SecurePhases):
    """Runs FedShare rounds on a Grid; all state is explicit in ``self.state``."""

    def __init__(self, cfg: RunConfig, state: ServerState, tap: Tap | None = None,
                 rng: np.random.Generator | None = None):
        self.cfg = cfg
        self.state = state
        self.tap = tap
        self.rng = rng if rng is not None else np.random.default_rng(cfg.seed)
        self.withdrawal = Withdrawal(cfg, state)
        privacy = cfg.upload_privacy
        self.train_bounds = TrainBounds(cfg.local_epochs, cfg.local_lr, cfg.batch_size,
                                        cfg.max_row_change, privacy.dp_clip, privacy.noise_sigma,
                                        rows_allowed=privacy.mode == "rows"
                                        and not cfg.secure_aggregation)

    # ---------------------------------------------------------------- messages
    def _header(self, node: int, rnd: int) -> Header:
        """Round config, the server's edge counts for the node's users, and the answers the
        server owes the node (all persisted before this message is built)."""
        state = self.state
        users = state.registry.users_of(node)
        counts = state.edges.count_by_user(users) if state.edges is not None \
            else np.zeros(len(users), np.int64)
        return Header(rnd, state.generation, users, counts, state.registry.take_answers(node))

    def _message(self, node: int, kind: str, content, rnd: int) -> Message:
        return Message(content, dst_node_id=node, message_type=kind, group_id=str(rnd))

    def _model_messages(self, nodes: list[int], kind: str, rnd: int, negatives: bool,
                        evaluate: frozenset[int] = frozenset()) -> list[Message]:
        """One model message per node (those in ``evaluate`` asked to evaluate the model first);
        the item tables are serialised once for all of them."""
        payloads = [self._model_payload(n, rnd, negatives, n in evaluate) for n in nodes]
        shared = payloads[0].shared_records(self.cfg.download_precision) if payloads else None
        return [self._message(n, kind, p.to_content(shared), rnd) for n, p in zip(nodes, payloads)]

    def _model_payload(self, node: int, rnd: int, negatives: bool,
                       evaluate: bool = False) -> ModelPayload:
        state, header = self.state, replace(self._header(node, rnd), evaluate=evaluate)
        # under withheld uploads the FedAvg table is its seeded start: nodes rebuild it
        items = None if self.cfg.upload_privacy.mode == "none" else state.item_emb
        if state.views is None:
            return ModelPayload(header, items)
        user_views, item_views = state.views
        users = header.acked_users[header.acked_counts > 0]
        pooled = None
        if negatives and self.cfg.cl_weight > 0:
            pooled = state.pooled_negatives(self.rng, self.cfg.cl_negatives,
                                            self.cfg.cl_negative_pool)
        ego = state.ego
        return ModelPayload(header, items, item_views,
                            users if len(users) else None,
                            user_views[users] if len(users) else None, pooled,
                            None if ego is None else ego.items.numpy(),
                            None if ego is None else ego.degree.numpy(),
                            None if ego is None or not len(users) else ego.users[users].numpy())

    def _exchange(self, grid, messages: list[Message], phase: str, stats: PhaseStats,
                  rnd: int) -> Replies:
        """Send, wait (bounded by the round timeout), and return the content replies in the
        order the messages were sent (results must not depend on who answered first), with
        their pending withdrawals carried out; nodes whose withdrawals are malformed are
        dropped from the replies."""
        stats.sent += len(messages)
        stats.bytes_down += sum(content_bytes(m.content) for m in messages)
        if not messages:
            return []
        ids = list(grid.push_messages(messages))
        dst = {msg_id: msg.metadata.dst_node_id for msg_id, msg in zip(ids, messages)}
        order = {msg_id: index for index, msg_id in enumerate(ids)}
        replies = sorted(pull_all(grid, ids, self.cfg.round_timeout, self.cfg.poll_interval),
                         key=lambda r: order.get(r.metadata.reply_to_message_id, len(order)))
        good = []
        for reply in replies:
            node = dst.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if reply.has_error():
                stats.rejected.append(f"node {node}: error {reply.error.code}: "
                                      f"{excerpt(reply.error.reason)}")
                stats.lost.append(node)
                continue
            stats.bytes_up += content_bytes(reply.content)
            if self.tap is not None:
                self.tap(phase, reply)
            self.state.registry.note_reply(node, rnd)
            good.append((node, reply))
        replied = {dst.get(r.metadata.reply_to_message_id) for r in replies}
        missing = sorted(set(dst.values()) - replied)
        stats.rejected += [f"node {n}: no reply within {self.cfg.round_timeout}s" for n in missing]
        stats.lost += missing
        for node in stats.lost:
            self.state.registry.note_lost(node)
        return self._withdraw(good, stats)

    # ---------------------------------------------------------------- withdrawals (any phase)
    def _withdraw(self, replies: Replies, stats: PhaseStats) -> Replies:
        """Judge the unshare requests riding on ``replies`` and carry them out (erased and
        durable before the rest of any reply is used); returns the replies still usable."""
        catalog = self.state.catalog   # None before anything was shared: ids checked loosely
        users, items = (catalog.num_users, catalog.num_items) if catalog else (MAX_CATALOG,) * 2

        def receive(node: int, reply: Message) -> bool:
            rider = decode_withdrawals(reply.content)
            if rider is not None:
                requests = check_unshare(rider, users, items)
                stats.rejected += at_most(self.withdrawal.receive(node, requests), node)
            return True

        usable = [(node, reply) for node, reply in replies
                  if guarded(stats, node, "unshare requests", lambda: receive(node, reply))]
        start = time.perf_counter()
        erased = self.withdrawal.carry_out()
        if erased:
            stats.withdrawn += erased
            stats.withdraw_seconds += time.perf_counter() - start
        return usable

    # ---------------------------------------------------------------- unshare phase (polls)
    def configure_unshare(self, nodes: list[int], rnd: int) -> list[Message]:
        if self.state.catalog is None:
            return []  # nothing can have been shared yet
        self.state.registry.polled(nodes)
        return [self._message(n, UNSHARE, self._header(n, rnd).to_content(), rnd) for n in nodes]

    def aggregate_unshare(self, replies: Replies, stats: PhaseStats) -> None:
        """The requests were carried out on arrival (:meth:`_withdraw`)."""
        stats.ok += len(replies)

    # ---------------------------------------------------------------- share phase
    def configure_share(self, nodes: list[int], rnd: int) -> list[Message]:
        return [self._message(n, SHARE, self._header(n, rnd).to_content(), rnd)
                for n in nodes if self.state.registry.needs_share_query(n)]

    def aggregate_share(self, replies: Replies, stats: PhaseStats, rnd: int) -> None:
        for node, reply in replies:
            stats.ok += guarded(stats, node, "share", lambda: self._apply_share(
                node, decode(ShareReply, reply.content), rnd)) is not None
        self.state.persist_edges()  # durable before the counts are acknowledged

    def _apply_share(self, node: int, reply: ShareReply, rnd: int) -> np.ndarray:
        """Add the shared pairs; returns the users the node now shares for."""
        state = self.state
        catalog = state.catalog
        pairs = check_share(reply, catalog and catalog.num_users, catalog and catalog.num_items)
        state.check_catalog(Catalog(reply.num_users, reply.num_items, reply.fingerprint))
        users = np.unique(pairs[:, 0])
        foreign = [int(u) for u in users if not state.registry.may_act_for(node, int(u))]
        if foreign:
            raise ReplyError(f"claims users {foreign[:5]} that another node shares for")
        state.add_edges(pairs, rnd)
        state.registry.claim(node, users)
        return users

    # ---------------------------------------------------------------- server graph
    def train_graph(self, rnd: int) -> tuple[float, float, float]:
        """Train the server model on the current graph (and unlearn, while a method asks
        for it); returns (loss, seconds, seconds spent on dedicated unlearning steps)."""
        start, state = time.perf_counter(), self.state
        self.withdrawal.resume()
        if state.graph is None:
            return 0.0, 0.0, 0.0
        loss = state.train_graph(rnd=rnd)
        unlearning, unlearn_start = self.withdrawal.loss_term(), time.perf_counter()
        if unlearning is not None:  # dedicated steps: BPR on the remaining edges + unlearning
            state.train_graph(unlearning, steps=self.cfg.unlearn_steps)
        unlearn_seconds = time.perf_counter() - unlearn_start if unlearning is not None else 0.0
        state.refresh_views()
        return loss, time.perf_counter() - start, unlearn_seconds

    # ---------------------------------------------------------------- train phase
    def configure_train(self, nodes: list[int], rnd: int,
                        evaluate: frozenset[int] = frozenset()) -> list[Message]:
        """Train messages; nodes in ``evaluate`` first evaluate the model they receive."""
        return self._model_messages(nodes, TRAIN, rnd, negatives=True, evaluate=evaluate)

    def aggregate_train(self, replies: Replies, stats: PhaseStats,
                        evaluations: list[tuple[int, EvaluateReply]] | None = None,
                        secure: SecureRound | None = None) -> float:
        """Per-row FedAvg of the valid updates (under secure aggregation: the masked vectors
        are collected for :meth:`finish_secure`); returns the example-weighted loss.
        Evaluations riding on the replies (``eval-in-train``) go to ``evaluations``."""
        updates, losses, weights = [], [], []
        for node, reply in replies:
            checked = guarded(stats, node, "train", lambda: self._check_train(node, reply, secure))
            if checked is None:
                continue
            train, update = checked
            if train.evaluation is not None and evaluations is not None:
                evaluations.append((node, train.evaluation))
            updates.append(update)
            stats.rows_up += len(update.index)
            losses.append(train.loss)
            weights.append(train.num_examples)
            self.state.registry.note_train_reply(node, train.pending_sharing)
            stats.ok += 1
        try:
            self.state.apply_row_updates(updates)
        except NonFiniteTable as exc:   # the validated replies still overflowed: keep the table
            stats.rejected.append(f"round's updates not applied: {exc}")
        return float(np.average(losses, weights=weights)) if sum(weights) else float("nan")

    def _check_train(self, node: int, reply: Message,
                     secure: SecureRound | None = None) -> tuple[TrainReply, RowUpdate]:
        train = decode(TrainReply, reply.content)
        state = self.state
        update = check_train(train, state.item_emb, self.train_bounds, state.catalog.num_users,
                             len(state.registry.users_of(node)))
        if secure is not None:
            num_items, dim = state.item_emb.shape
            secure.receive_masked(node, train.masked, num_items * (dim + 1), train.num_examples,
                                  most_row_count(self.cfg.local_epochs, train.num_users))
        elif train.masked is not None:
            raise ReplyError("a masked vector although secure aggregation is off")
        return train, update

    def _train_messages(self, nodes: list[int], all_nodes: list[int], rnd: int,
                        fold: bool, secure: SecureRound | None = None) -> list[Message]:
        """The round's train messages; with ``fold`` (``eval-in-train``) those to nodes that
        are also evaluated this round ask them to evaluate the received model first; under
        secure aggregation each carries the node's inbox of encrypted shares."""
        evaluated = frozenset(self.eval_nodes(all_nodes)) if fold else frozenset()
        messages = self.configure_train(nodes, rnd, evaluate=evaluated)
        for message in messages if secure is not None else ():
            secure.train_inbox(message.metadata.dst_node_id).write(message.content)
        return messages

    # ---------------------------------------------------------------- evaluate phase
    def configure_evaluate(self, nodes: list[int], rnd: int) -> list[Message]:
        return self._model_messages(nodes, EVALUATE, rnd, negatives=False)

    def aggregate_evaluate(self, replies: Replies, stats: PhaseStats,
                           folded: list[tuple[int, EvaluateReply]] = ()) -> dict[str, dict[str, float]]:
        """Metrics per split (``valid``, ``test``) over every valid reply, and over the
        evaluations that rode on train replies (``folded``)."""
        decoded = [(node, lambda reply=reply: decode(EvaluateReply, reply.content))
                   for node, reply in replies]
        decoded += [(node, lambda evaluation=evaluation: evaluation) for node, evaluation in folded]
        total: dict[str, dict[str, float]] = {split: {} for split in SPLITS}
        for node, reply in decoded:
            sums = guarded(stats, node, "evaluate", lambda: check_evaluate(
                reply(), self.state.catalog.num_users))
            if sums is None:
                continue
            for split, values in sums.items():
                for key, value in values.items():
                    total[split][key] = total[split].get(key, 0.0) + value
            stats.ok += 1
        return {split: finalize(sums) for split, sums in total.items() if sums}

    def evaluate(self, grid, nodes: list[int], rnd: int,
                 folded: list[tuple[int, EvaluateReply]] = ()):
        """One evaluation of the current models on ``nodes`` (plus the ``folded`` evaluations
        already received): ``(stats, metrics per split)``."""
        stats, start = PhaseStats(), time.perf_counter()
        replies = self._exchange(grid, self.configure_evaluate(nodes, rnd), "evaluate", stats, rnd)
        metrics = self.aggregate_evaluate(replies, stats, folded)
        stats.seconds = time.perf_counter() - start
        return stats, metrics

    # ---------------------------------------------------------------- the loop
    def sample(self, node_ids: Iterable[int]) -> list[int]:
        """``fraction-train`` of the nodes, seeded. Indices are drawn, not ids: Flower's node
        ids are 64-bit and numpy would turn a mix of them into floats."""
        nodes = sorted(node_ids)
        count = share_of(self.cfg.fraction_train, len(nodes))
        if count >= len(nodes):
            return nodes
        picked = self.rng.choice(len(nodes), size=count, replace=False)
        return sorted(nodes[int(i)] for i in picked)

    def eval_nodes(self, node_ids: Iterable[int]) -> list[int]:
        """The nodes evaluated: all, or a fixed ``eval-fraction`` of them (the same nodes at
        every evaluation of the run: a permutation seeded by the run's seed, not by the round)."""
        return evaluated_subset(node_ids, self.cfg.eval_fraction, self.cfg.seed)

    def _phase(self, grid, record: RoundRecord, name: str, messages, aggregate):
        stats, start = record.phase(name), time.perf_counter()
        result = aggregate(self._exchange(grid, messages, name, stats, record.round), stats)
        stats.seconds = time.perf_counter() - start
        return result

    def run_round(self, grid, rnd: int) -> RoundRecord:
        """One round; its record (the caller closes it with ``state.finish_round``)."""
        state = self.state
        infos = list(grid.get_nodes())
        all_nodes = sorted(int(info.node_id) for info in infos)
        state.registry.connect(all_nodes, {int(i.node_id): bytes(i.public_key) for i in infos})
        nodes = self.sample(all_nodes)
        record, edges_before = RoundRecord(rnd), state.edges
        self._phase(grid, record, "unshare",
                    self.configure_unshare(state.registry.poll_targets(
                        all_nodes, nodes, rnd, self.cfg.unshare_poll_every), rnd),
                    self.aggregate_unshare)
        self._phase(grid, record, "share", self.configure_share(nodes, rnd),
                    lambda replies, stats: self.aggregate_share(replies, stats, rnd))
        if state.catalog is None:
            log.warning("round %d: no node reported its catalog yet; skipping", rnd)
            record.skipped = True
            return record
        record.unlearning = state.unlearning is not None
        record.server_loss, graph_seconds, unlearn_seconds = self.train_graph(rnd)
        record.phases["graph"] = PhaseStats(seconds=graph_seconds, unlearn_seconds=unlearn_seconds)
        self.withdrawal.advance()
        folded = [] if self.cfg.evaluates(rnd) and self.cfg.eval_in_train else None
        secure = self.start_secure(grid, record, nodes) if self.cfg.secure_aggregation else None
        trained = nodes if secure is None else sorted(secure.sharers)
        messages = self._train_messages(trained, all_nodes, rnd, folded is not None, secure)
        record.train_loss = self._phase(
            grid, record, "train", messages,
            lambda replies, stats: self.aggregate_train(replies, stats, folded, secure))
        if secure is not None:
            self.finish_secure(grid, record, secure)
        record.nodes_sampled, record.shared_edges = len(nodes), len(state.edges)
        record.graph_changed = state.edges is not edges_before
        record.generation = state.generation
        record.lost_nodes = self._lost_nodes(record.phase("train").lost)
        if self.cfg.evaluates(rnd):
            done = set() if folded is None else \
                {node for node, _ in folded} | set(record.phase("train").lost)
            rest = [n for n in self.eval_nodes(all_nodes) if n not in done]
            record.phases["evaluate"], metrics = self.evaluate(grid, rest, rnd, folded or ())
            record.metrics, record.valid_metrics = metrics.get("test", {}), metrics.get("valid", {})
        return record

    def _lost_nodes(self, nodes: list[int]) -> list[LostNode]:
        """Nodes that failed this round's training, with the (sharing) users the server knows
        they host: those users' private data did not train this round."""
        lost = [LostNode(n, self.state.registry.users_of(n).tolist()) for n in sorted(set(nodes))]
        for entry in lost:
            log.warning("node %s lost this round; its known users %s did not train",
                        entry.node, entry.users[:20])
        return lost

    def run(self, grid, rounds: Iterable[int],
            on_round: Callable[[RoundRecord], None] | None = None) -> list[RoundRecord]:
        """Run ``rounds`` in order; each is timed, closed in the state (saved) and passed to
        ``on_round``. Stops early once validation NDCG@20 has not improved for ``patience``
        evaluations (``patience`` 0: never)."""
        records = []
        for rnd in rounds:
            if selection(self.state.history, self.cfg.patience).should_stop:
                log.info("validation %s did not improve for %d evaluations: stopping",
                         DEFAULT_METRIC, self.cfg.patience)
                break
            start = time.perf_counter()
            record = self.run_round(grid, rnd)
            record.seconds = time.perf_counter() - start
            self.state.finish_round(record)
            records.append(record)
            if on_round is not None:
                on_round(record)
        return records
