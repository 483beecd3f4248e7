"""The FedShare strategy: the server's round loop on Flower's Grid.

Per round (METHOD.md §3): sample nodes -> ``query.share`` to nodes with unsynced sharing
-> update the shared-edge store and rebuild the graph -> train the server LightGCN with
item-side alignment -> ``train`` (sparse item rows back) -> per-row FedAvg -> optionally
``evaluate``. With ``sharing-ratio = 0`` no edge ever arrives, so there is no graph, no
global view and no alignment: the loop is exactly federated BPR-MF with FedAvg.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from common.config import RunConfig
from common.graph import build_graph
from common.metrics import finalize
from common.wire import EVALUATE, SHARE, TRAIN, UNSHARE, content_bytes, to_record
from server_app.aggregation import aggregate_rows
from server_app.state import ServerState
from server_app.unlearning import unlearning_loss
from server_app.validation import ReplyError, parse_evaluate, parse_train, parse_unshare

log = logging.getLogger("flwr.fedshare")
Tap = Callable[[str, Message], None]


@dataclass
class PhaseStats:
    seconds: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    sent: int = 0
    ok: int = 0
    rows_up: int = 0
    withdrawn: int = 0
    lost: list[int] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


class FedShareStrategy:
    """Runs ``cfg.num_rounds`` FedShare rounds on a Grid; state is explicit in ``self.state``."""

    def __init__(self, cfg: RunConfig, state: ServerState, tap: Tap | None = None):
        self.cfg = cfg
        self.state = state
        self.tap = tap
        self.rng = np.random.default_rng(cfg.seed)

    # ---------------------------------------------------------------- messaging
    def _exchange(self, grid, messages: list[Message], phase: str, stats: PhaseStats):
        """Send, wait (bounded by the round timeout), and return the content replies."""
        stats.sent += len(messages)
        stats.bytes_down += sum(content_bytes(m.content) for m in messages)
        if not messages:
            return []
        dst = {}
        ids = grid.push_messages(messages)
        for msg_id, msg in zip(ids, messages):
            dst[msg_id] = msg.metadata.dst_node_id
        order = {msg_id: index for index, msg_id in enumerate(dst)}
        # handle replies in the order the messages were sent: results must not depend on
        # which node happened to answer first
        replies = sorted(_pull_all(grid, list(dst), self.cfg.round_timeout),
                         key=lambda r: order.get(r.metadata.reply_to_message_id, len(order)))
        good = []
        for reply in replies:
            node = dst.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if reply.has_error():
                stats.rejected.append(f"node {node}: error {reply.error.code} {reply.error.reason}")
                stats.lost.append(node)
                continue
            stats.bytes_up += content_bytes(reply.content)
            if self.tap is not None:
                self.tap(phase, reply)
            good.append((node, reply))
        replied = {dst.get(r.metadata.reply_to_message_id) for r in replies}
        missing = sorted(set(dst.values()) - replied)
        stats.rejected += [f"node {n}: no reply within {self.cfg.round_timeout}s" for n in missing]
        stats.lost += missing
        return good

    def _message(self, node: int, kind: str, content: RecordDict, rnd: int) -> Message:
        content["config"] = ConfigRecord({"server-round": rnd, "generation": self.state.generation})
        acks = self.state.take_acks(node)
        if acks:
            content["unshare-ack"] = to_record(
                request=np.array([a.request_id for a in acks], np.int64),
                refused=np.array([int(a.refused) for a in acks], np.int64))
            content["unshare-reasons"] = ConfigRecord({str(a.request_id): a.reason
                                                       for a in acks if a.refused})
        return Message(content, dst_node_id=node, message_type=kind, group_id=str(rnd))

    # ---------------------------------------------------------------- phases
    def unshare_phase(self, grid, nodes: list[int], rnd: int) -> PhaseStats:
        """Collect pending unshare requests; erase at once; start unlearning."""
        stats, start = PhaseStats(), time.perf_counter()
        state = self.state
        targets = [n for n in nodes if n in state.unshare_nodes or n not in state.seen_nodes]
        if state.catalog is None:
            targets = []  # nothing can have been shared yet
        messages = [self._message(n, UNSHARE, RecordDict(), rnd) for n in targets]
        removed = []
        for node, reply in self._exchange(grid, messages, "unshare", stats):
            try:
                requests = parse_unshare(reply, state.catalog.num_users, state.catalog.num_items)
            except ReplyError as exc:
                stats.rejected.append(f"node {node}: unshare rejected: {exc}")
                continue
            removed.append(state.apply_unshares(node, requests))
            for outcome in state.pending_acks.get(node, []):
                if outcome.refused:
                    stats.rejected.append(f"node {node}: unshare request {outcome.request_id} "
                                          f"refused: {outcome.reason}")
            stats.ok += 1
        pairs = np.concatenate(removed) if removed else np.zeros((0, 2), np.int64)
        if len(pairs):
            state.rebuild_graph_if_changed()
            old_graph = state.graph
            entered = state.remove_edges(pairs)
            state.persist_edges()                # durable before any acknowledgement
            state.start_unlearning(old_graph, pairs, entered)
            stats.withdrawn = len(pairs)
            del pairs, removed                   # no withdrawn pair is kept
        stats.seconds = time.perf_counter() - start
        return stats

    def share_phase(self, grid, nodes: list[int], rnd: int) -> PhaseStats:
        stats, start = PhaseStats(), time.perf_counter()
        targets = [n for n in nodes if n not in self.state.synced_nodes]
        messages = [self._message(n, SHARE, self._ack_content(n), rnd) for n in targets]
        for node, reply in self._exchange(grid, messages, "share", stats):
            try:
                self.state.apply_share(node, reply, rnd)
                stats.ok += 1
            except ReplyError as exc:
                stats.rejected.append(f"node {node}: share rejected: {exc}")
        self.state.persist_edges()
        stats.seconds = time.perf_counter() - start
        return stats

    def graph_phase(self) -> tuple[float, float, float]:
        """Train the server model on the current graph (and unlearn, while a task runs);
        returns (loss, seconds, seconds spent on unlearning steps)."""
        start = time.perf_counter()
        state = self.state
        if state.graph is None or len(state.edges) == 0:
            return 0.0, 0.0, 0.0
        targets = torch.from_numpy(state.item_emb) if self.cfg.cl_weight > 0 else None
        pairs = torch.from_numpy(state.edges.pairs())
        loss = state.model.train(state.graph, pairs, targets)
        unlearning, unlearn_start = self._unlearning_term(), time.perf_counter()
        if unlearning is not None:  # dedicated steps: BPR on the remaining edges + unlearning
            state.model.train(state.graph, pairs, targets, unlearning, steps=self.cfg.unlearn_steps)
        unlearn_seconds = time.perf_counter() - unlearn_start if unlearning is not None else 0.0
        state.refresh_views()
        return loss, time.perf_counter() - start, unlearn_seconds

    def _lost_nodes(self, nodes: list[int]) -> list[dict]:
        """Nodes that failed this round's training, with the (sharing) users the server knows
        they host: those users' private data did not train this round."""
        lost = [{"node": n, "users": self.state.node_users.get(n, np.zeros(0)).tolist()}
                for n in sorted(set(nodes))]
        for entry in lost:
            log.warning("node %s lost this round; its known users %s did not train",
                        entry["node"], entry["users"][:20])
        return lost

    def _unlearning_term(self):
        """The contrastive unlearning loss while a task is running (METHOD.md §4), else None."""
        task = self.state.unlearning
        if task is None or task.rounds_left <= 0:
            return None
        cfg, generator = self.cfg, self.state.model.generator
        return lambda users, items: cfg.unlearn_weight * unlearning_loss(
            task, users, items, cfg.unlearn_temperature, generator, cfg.server_batch_size)

    def _advance_unlearning(self) -> None:
        task = self.state.unlearning
        if task is not None:
            task = replace(task, rounds_left=task.rounds_left - 1)
            self.state.unlearning = task if task.rounds_left > 0 else None

    def train_phase(self, grid, nodes: list[int], rnd: int) -> tuple[PhaseStats, float]:
        stats, start = PhaseStats(), time.perf_counter()
        messages = [self._message(n, TRAIN, self._model_content(n, negatives=True), rnd)
                    for n in nodes]
        updates, losses, weights = [], [], []
        for node, reply in self._exchange(grid, messages, "train", stats):
            try:
                update, metrics = parse_train(reply, self.state.catalog.num_items,
                                              self.cfg.embedding_dim)
            except ReplyError as exc:
                stats.rejected.append(f"node {node}: train rejected: {exc}")
                continue
            updates.append(update)
            stats.rows_up += len(update.index)
            losses.append(metrics.loss)
            weights.append(metrics.num_examples)
            self.state.mark_pending(node, bool(metrics.pending_sharing),
                                    bool(metrics.pending_unshare))
            stats.ok += 1
        if updates:
            self.state.item_emb = aggregate_rows(self.state.item_emb, updates)
        loss = float(np.average(losses, weights=weights)) if sum(weights) else float("nan")
        stats.seconds = time.perf_counter() - start
        return stats, loss

    def evaluate_phase(self, grid, nodes: list[int], rnd: int, split: str = "test"):
        stats, start = PhaseStats(), time.perf_counter()
        messages = []
        for n in nodes:
            content = self._model_content(n, negatives=False)
            message = self._message(n, EVALUATE, content, rnd)
            message.content["config"]["split"] = split
            messages.append(message)
        total: dict[str, float] = {}
        for node, reply in self._exchange(grid, messages, "evaluate", stats):
            try:
                sums = parse_evaluate(reply)
            except ReplyError as exc:
                stats.rejected.append(f"node {node}: evaluate rejected: {exc}")
                continue
            for key, value in sums.items():
                total[key] = total.get(key, 0.0) + value
            stats.ok += 1
        stats.seconds = time.perf_counter() - start
        return stats, (finalize(total) if total else {})

    # ---------------------------------------------------------------- contents
    def _ack_content(self, node: int) -> RecordDict:
        users = self.state.node_users.get(node, np.zeros(0, np.int64))
        counts = self.state.edges.count_by_user(users) if self.state.edges is not None \
            else np.zeros(len(users), np.int64)
        return RecordDict({"ack": to_record(user=users, count=counts.astype(np.int64))})

    def _model_content(self, node: int, negatives: bool) -> RecordDict:
        content = self._ack_content(node)
        state = self.state
        content["items"] = to_record(weight=state.item_emb)
        if state.views is not None:
            user_views, item_views = state.views
            content["graph"] = to_record(items=item_views)
            users = state.node_users.get(node, np.zeros(0, np.int64))
            users = users[state.edges.count_by_user(users) > 0]
            if len(users):
                content["users"] = to_record(index=users, values=user_views[users])
            if negatives and self.cfg.cl_weight > 0:
                pooled = state.pooled_negatives(self.rng, self.cfg.cl_negatives,
                                                self.cfg.cl_negative_pool)
                if pooled is not None:
                    content["negatives"] = to_record(values=pooled)
        return content

    # ---------------------------------------------------------------- loop
    def sample(self, node_ids: Iterable[int]) -> list[int]:
        """``fraction-train`` of the nodes, seeded. Indices are drawn, not ids: Flower's node
        ids are 64-bit and numpy would turn a mix of them into floats."""
        nodes = sorted(node_ids)
        count = max(1, int(round(self.cfg.fraction_train * len(nodes))))
        if count >= len(nodes):
            return nodes
        picked = self.rng.choice(len(nodes), size=count, replace=False)
        return sorted(nodes[int(i)] for i in picked)

    def run_round(self, grid, rnd: int) -> dict:
        """One round; returns its record (also appended to ``state.history``)."""
        all_nodes = sorted(grid.get_node_ids())
        self.state.online = set(all_nodes)
        nodes = self.sample(all_nodes)
        unshare = self.unshare_phase(grid, nodes, rnd)
        share = self.share_phase(grid, nodes, rnd)
        if self.state.catalog is None:
            log.warning("round %d: no node reported its catalog yet; skipping", rnd)
            return {"round": rnd, "skipped": True,
                    "phases": {"unshare": _phase_dict(unshare), "share": _phase_dict(share)}}
        edges_before = self.state.edges_version
        self.state.rebuild_graph_if_changed()
        unlearning = self.state.unlearning is not None
        server_loss, server_seconds, unlearn_seconds = self.graph_phase()
        self._advance_unlearning()
        train, train_loss = self.train_phase(grid, nodes, rnd)
        record = {
            "round": rnd, "nodes_sampled": len(nodes), "train_loss": train_loss,
            "server_loss": server_loss, "shared_edges": len(self.state.edges),
            "graph_changed": self.state.edges_version != edges_before,
            "generation": self.state.generation, "unlearning": unlearning,
            "lost_nodes": self._lost_nodes(train.lost),
            "phases": {"unshare": _phase_dict(unshare), "share": _phase_dict(share),
                       "train": _phase_dict(train),
                       "graph": {"seconds": server_seconds, "unlearn_seconds": unlearn_seconds}},
        }
        if self.cfg.eval_every and (rnd % self.cfg.eval_every == 0 or rnd == self.cfg.num_rounds):
            evaluation, metrics = self.evaluate_phase(grid, all_nodes, rnd)
            record["phases"]["evaluate"] = _phase_dict(evaluation)
            record["metrics"] = metrics
        self.state.maybe_snapshot(rnd, self.cfg.snapshot_round_list)
        self.state.round = rnd  # the last completed round (what a checkpoint resumes after)
        return record


def _phase_dict(stats: PhaseStats) -> dict:
    return {"seconds": round(stats.seconds, 4), "bytes_down": stats.bytes_down,
            "bytes_up": stats.bytes_up, "sent": stats.sent, "ok": stats.ok,
            "rows_up": stats.rows_up, "withdrawn": stats.withdrawn, "lost": stats.lost,
            "rejected": stats.rejected}


def _pull_all(grid, message_ids: list[str], timeout: float) -> list[Message]:
    """Poll for replies until all arrived or ``timeout`` passed (partial list then)."""
    pending, replies = set(message_ids), []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            replies.append(reply)
            pending.discard(reply.metadata.reply_to_message_id)
        if pending:
            time.sleep(0.05 if _is_in_memory(grid) else 0.5)
    return replies


def _is_in_memory(grid) -> bool:
    return type(grid).__name__ == "InMemoryGrid"
