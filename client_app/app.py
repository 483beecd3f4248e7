"""FedShare ClientApp: translates Flower messages into calls on the node's local code.

One handler per protocol phase (payloads in :mod:`common.protocol`): ``query.unshare``,
``query.share``, ``train``, ``evaluate``. Every reply carries the node's pending unshare
requests (the ledger is read, and this message's answers applied, before replying). The sharing ledger and the private user
embeddings are on the node's disk (state directory); ``context.state`` only holds the
server's last acknowledgement of shared counts.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client_app.ledger import DONE, PENDING, REFUSED, Ledger, ledger_exists, update_ledger
from client_app.local_training import (GlobalView, LocalHyper, ego_user_views, evaluate_local,
                                      train_local)
from client_app.node import NodeData, default_state_dir, load_node, node_ledger
from client_app.secure_upload import masked_upload, secagg_step
from client_app.timing import timed
from common.atomic import atomic_write_npz
from common.config import RunConfig, load_config
from common.metrics import SPLITS, split_pairs
from common.protocol import (MAX_UNSHARE_REQUESTS, EvaluateReply, Header, ModelPayload, ShareReply,
                             TrainReply, UnshareReply, to_record)
from common.protocol_secagg import (SecAggInbox, SecAggRequest, secrets_from_record,
                                    secrets_to_record)
from common.sharing import scheduled_withdrawals
from common.upload_privacy import (initial_item_table, most_row_count, reported_examples,
                                   prepare_upload, pseudo_pairs)

app = ClientApp()
ACKED = "acked"  # context.state key: the server's last per-user edge counts
SECRETS = "secagg"  # context.state key: this round's secure-aggregation secrets (memory only)
_IMPORTED = [0.0]   # when this module finished importing (set at its end)


def _timed(handler):
    """Per-message timings when ``FEDSHARE_TIMINGS=1`` (client_app/timing.py)."""
    return timed(handler, lambda context: _config(context)[3], lambda: _IMPORTED[0])


def _config(context: Context) -> tuple[RunConfig, int, int, Path]:
    """Run config, partition and the node's state directory (no data loaded)."""
    cfg = load_config(context.run_config)
    pid = int(context.node_config["partition-id"])
    num = int(context.node_config["num-partitions"])
    state_dir = Path(str(context.node_config.get("state-dir", "")) or
                     default_state_dir(cfg, pid, num))
    return cfg, pid, num, state_dir


def _setup(context: Context) -> tuple[RunConfig, NodeData, Path]:
    cfg, pid, num, state_dir = _config(context)
    torch.set_num_threads(cfg.torch_threads)
    return cfg, load_node(cfg, pid, num), state_dir


def _acked_counts(context: Context, header: Header) -> dict[int, int]:
    """The server's stored edge count per user; refreshed from ``header`` when it carries one."""
    if header.acked_users is not None:
        context.state[ACKED] = to_record(user=header.acked_users, count=header.acked_counts)
    if ACKED not in context.state.array_records:
        return {}
    ack = context.state.array_records[ACKED]
    return dict(zip(ack["user"].numpy().tolist(), ack["count"].numpy().tolist()))


def _unsynced_users(ledger: Ledger, acked: dict[int, int]) -> list[int]:
    """Users whose shared set the server does not (yet) hold in full.

    Users with a pending unshare request are left until it is answered."""
    counts = ledger.counts()
    waiting = {r.user for r in ledger.pending()}
    return sorted(u for u in counts.keys() | acked.keys()
                  if counts.get(u, 0) != acked.get(u, 0) and u not in waiting)


def _apply_unshare_answers(ledger: Ledger, header: Header) -> Ledger:
    """Resolve pending requests the server has acknowledged (done) or refused; a temporary
    refusal (retry) keeps the request pending with the server's reason."""
    for answer in header.answers:
        status = PENDING if answer.retry else REFUSED if answer.refused else DONE
        ledger = ledger.resolve(answer.request_id, status, answer.reason)
    return ledger


def _apply_schedules(ledger: Ledger, cfg: RunConfig, server_round: int) -> Ledger:
    """The run config's experiment schedules, each applied once: scheduled withdrawals from
    ``unshare-round`` on, and every hosted user's ``set-ratio`` of ``ratio-schedule``."""
    key = f"round-{cfg.unshare_round}"
    if cfg.unshare_round and server_round >= cfg.unshare_round and key not in ledger.schedules_applied:
        pairs = scheduled_withdrawals(ledger.shared_pairs(), cfg.unshare_user_fraction,
                                      cfg.unshare_item_fraction, cfg.seed)
        for user in np.unique(pairs[:, 0]).tolist():
            ledger, _ = ledger.unshare(user, pairs[pairs[:, 0] == user, 1])
        ledger = replace(ledger, schedules_applied=ledger.schedules_applied + (key,))
    for step_round, ratio in cfg.ratio_steps:
        key = f"ratio-{step_round}:{ratio:g}"
        if server_round >= step_round and key not in ledger.schedules_applied:
            for user in sorted(ledger.order):
                ledger, _ = ledger.set_ratio(user, ratio)
            ledger = replace(ledger, schedules_applied=ledger.schedules_applied + (key,))
    return ledger


def _answered(state_dir: Path, cfg: RunConfig, header: Header) -> Ledger:
    """The existing ledger after this message's answers and due schedules (durable)."""
    return update_ledger(state_dir, lambda ledger: _apply_schedules(
        _apply_unshare_answers(ledger, header), cfg, header.server_round))


def _ledger(cfg: RunConfig, node: NodeData, state_dir: Path, header: Header) -> Ledger:
    """The node's ledger (created or brought to the run's sharing policy first)."""
    node_ledger(cfg, node, state_dir)
    return _answered(state_dir, cfg, header)


def _withdrawals(ledger: Ledger) -> UnshareReply | None:
    """Every pending unshare request, one row per withdrawn pair (None when there are none)."""
    pending = ledger.pending()[:MAX_UNSHARE_REQUESTS]   # oldest first; the rest ride later
    if not pending:
        return None
    return UnshareReply(
        request=np.concatenate([np.full(len(r.items), r.request_id) for r in pending]),
        user=np.concatenate([np.full(len(r.items), r.user) for r in pending]),
        item=np.concatenate([r.items for r in pending]), num_requests=len(pending))


def _user_table_path(cfg: RunConfig, context: Context, state_dir: Path) -> Path:
    """Private user rows of this run, on the node's disk (they survive node restarts)."""
    return state_dir / f"user-emb-{cfg.run_name or f'run-{context.run_id}'}.npz"


def _user_table(context: Context, cfg: RunConfig, node: NodeData, header: Header,
                state_dir: Path) -> torch.Tensor:
    """Private user embeddings: the saved ones of this run and model generation, else a
    seeded initialisation (first message of a run, or a ``retrain`` unlearning began)."""
    path = _user_table_path(cfg, context, state_dir)
    if path.exists():
        with np.load(path) as saved:
            if int(saved["generation"]) == header.generation:
                return torch.from_numpy(saved["weight"])
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + node.partition_id)
    return 0.1 * torch.randn(len(node.users), cfg.embedding_dim, generator=generator)


def _save_user_table(context: Context, cfg: RunConfig, header: Header, state_dir: Path,
                     weight: torch.Tensor) -> None:
    atomic_write_npz(_user_table_path(cfg, context, state_dir), weight=weight.numpy(),
                     generation=np.int64(header.generation))


def _hosted(users: np.ndarray, node: NodeData) -> tuple[np.ndarray, torch.Tensor]:
    """Which of the global ``users`` this node hosts (mask) and their node-local rows."""
    hosted = np.isin(users, node.users)
    return hosted, torch.from_numpy(node.to_local(users[hosted]))


def _item_table(payload: ModelPayload, node: NodeData, cfg: RunConfig) -> np.ndarray:
    """The FedAvg item table: sent, or (withheld uploads) its seeded start, rebuilt here."""
    if payload.items is not None:
        return payload.items
    if cfg.upload_privacy.mode != "none":
        raise ValueError("the model message has no item table although uploads are not withheld")
    return _seeded_table(cfg.seed, node.num_items, cfg.embedding_dim)


@lru_cache(maxsize=2)
def _seeded_table(seed: int, num_items: int, dim: int) -> np.ndarray:
    return initial_item_table(seed, num_items, dim)   # nobody writes to it (copied per use)


def _global_view(payload: ModelPayload, node: NodeData, cfg: RunConfig,
                 ledger: Ledger) -> GlobalView:
    item_emb = torch.from_numpy(_item_table(payload, node, cfg))
    item_graph = None if payload.graph_items is None else torch.from_numpy(payload.graph_items)
    user_graph = torch.zeros(len(node.users), item_emb.shape[1])
    user_base = torch.zeros(len(node.users), item_emb.shape[1])
    shares = torch.zeros(len(node.users), dtype=torch.bool)
    if payload.user_index is not None:
        hosted, local = _hosted(payload.user_index, node)  # views of other users are ignored
        user_graph[local] = torch.from_numpy(payload.user_views[hosted])
        if payload.user_base is not None:
            user_base[local] = torch.from_numpy(payload.user_base[hosted])
        shares[local] = True
    negatives = None if payload.negatives is None else torch.from_numpy(payload.negatives)
    weight = _held_share(payload.header, node)
    if cfg.fusion == "ego" and payload.graph_ego is not None:
        user_graph = ego_user_views(node.train_local, _in_graph(node, ledger), len(node.users),
                                    torch.from_numpy(payload.graph_ego),
                                    torch.from_numpy(payload.graph_degree), user_base,
                                    cfg.num_layers)
        shares, weight = torch.ones_like(shares), torch.full_like(weight, cfg.ego_weight)
    return GlobalView(item_emb, item_graph, user_graph, shares, negatives, weight)


def _in_graph(node: NodeData, ledger: Ledger) -> torch.Tensor:
    """``(n,)`` which of the node's training pairs its users share (the server's graph holds
    exactly these once they are acknowledged)."""
    shared = ledger.shared_pairs()
    key = node.train[:, 0] * node.num_items + node.train[:, 1]
    return torch.from_numpy(np.isin(key, shared[:, 0] * node.num_items + shared[:, 1]))


def _held_share(header: Header, node: NodeData) -> torch.Tensor:
    """``(n_u,)`` the fraction of each hosted user's training interactions the server holds
    (its acknowledged edge count over the user's training count; 0 when unknown)."""
    held = torch.zeros(len(node.users))
    if header.acked_users is not None:
        hosted, local = _hosted(header.acked_users, node)
        held[local] = torch.from_numpy(header.acked_counts[hosted].astype(np.float32))
    train_counts = torch.bincount(node.train_local[:, 0], minlength=len(node.users)).float()
    return (held / train_counts.clamp(min=1)).clamp(0.0, 1.0)


@app.query("unshare")
@_timed
def unshare(msg: Message, context: Context) -> Message:
    """The cheap poll: pending unshare requests only (the node's data is not loaded)."""
    cfg, _, _, state_dir = _config(context)
    header = Header.from_content(msg.content)
    ledger = _answered(state_dir, cfg, header) if ledger_exists(state_dir) else None
    empty = np.zeros(0, np.int64)
    reply = (ledger and _withdrawals(ledger)) or UnshareReply(empty, empty, empty, 0)
    return Message(reply.to_content(), reply_to=msg)


@app.query("share")
@_timed
def share(msg: Message, context: Context) -> Message:
    """Upload the shared pairs of every user the server does not hold in full."""
    cfg, node, state_dir = _setup(context)
    header = Header.from_content(msg.content)
    ledger = _ledger(cfg, node, state_dir, header)
    users = _unsynced_users(ledger, _acked_counts(context, header))
    pairs = ledger.shared_pairs()
    pairs = pairs[np.isin(pairs[:, 0], users)]
    reply = ShareReply(pairs[:, 0], pairs[:, 1], node.num_users, node.num_items, node.fingerprint,
                       _withdrawals(ledger))
    return Message(reply.to_content(), reply_to=msg)


@app.train()
@_timed
def train(msg: Message, context: Context) -> Message:
    """Local epochs over all the node's users; reply with the changed item rows."""
    cfg, node, state_dir = _setup(context)
    payload = ModelPayload.from_content(msg.content)
    header = payload.header
    ledger = _ledger(cfg, node, state_dir, header)
    pending = bool(_unsynced_users(ledger, _acked_counts(context, header)))
    hp = LocalHyper(cfg.local_epochs, cfg.local_lr, cfg.batch_size, cfg.reg, cfg.cl_weight,
                    cfg.cl_temperature, cfg.fusion, cfg.cl_side)
    seed, rng = _randomness(cfg, header, node)
    user_table, view = _user_table(context, cfg, node, header, state_dir), \
        _global_view(payload, node, cfg, ledger)
    evaluation = EvaluateReply(_metric_sums(cfg, node, user_table, view)) if header.evaluate else None
    update = train_local(user_table, node.train_local, view, hp, seed=seed,
                         pseudo=_pseudo_positives(cfg, node, rng))
    _save_user_table(context, cfg, header, state_dir, update.user_emb)
    num_users = int(node.train_local[:, 0].unique().numel())
    index, values, counts, examples, masked = _upload(context, msg, cfg, node, payload, update,
                                                      rng, num_users)
    reply = TrainReply(index, values, counts, update.loss, examples, pending,
                       _withdrawals(ledger), num_users=num_users, evaluation=evaluation,
                       masked=masked)
    return Message(reply.to_content(), reply_to=msg)


def _upload(context: Context, msg: Message, cfg: RunConfig, node: NodeData,
            payload: ModelPayload, update, rng: np.random.Generator, num_users: int):
    """``(index, values, counts, num-examples, masked)`` of the train reply: rows under the
    upload defences (common/upload_privacy.py), or, under secure aggregation, no rows and the
    masked vector. ``num-examples`` is bounded by what the server accepts."""
    most = cfg.local_epochs * num_users * node.num_items
    if not cfg.secure_aggregation:
        return (*prepare_upload(_item_table(payload, node, cfg), update.index, update.values,
                                update.counts, update.num_examples, most, cfg.upload_privacy, rng),
                None)
    masked = _masked(context, msg, _item_table(payload, node, cfg), update,
                     most_row_count(cfg.local_epochs, num_users))
    examples = reported_examples(update.num_examples, most, cfg.upload_privacy)
    return update.index[:0], update.values[:0], update.counts[:0], examples, masked


def _secrets(context: Context):
    held = context.state.config_records.get(SECRETS)
    return None if held is None else secrets_from_record(held)


def _masked(context: Context, msg: Message, table: np.ndarray, update,
            most_count: int) -> np.ndarray:
    """The update as secure aggregation's masked vector (the round's inbox rides on ``msg``);
    row counts capped as the server caps plain ones (validation.check_train)."""
    inbox = SecAggInbox.read(msg.content)
    if inbox is None:
        raise ValueError("secure-aggregation is on but the train message has no secagg inbox")
    secrets = _secrets(context)
    vector = masked_upload(secrets, inbox, table, update.index, update.values,
                           np.minimum(update.counts, most_count))
    context.state[SECRETS] = secrets_to_record(secrets)   # the shares it now holds
    return vector


@app.query("secagg")
@_timed
def secure_aggregation(msg: Message, context: Context) -> Message:
    """One stage of secure aggregation (keys, shares, unmask; client_app/secure_upload.py)."""
    secrets, reply = secagg_step(_secrets(context), int(msg.metadata.dst_node_id),
                                 SecAggRequest.from_content(msg.content))
    if secrets is None:
        context.state.config_records.pop(SECRETS, None)
    else:
        context.state[SECRETS] = secrets_to_record(secrets)
    return Message(reply.to_content(), reply_to=msg)


def _randomness(cfg: RunConfig, header: Header, node: NodeData) -> tuple[int, np.random.Generator]:
    """The local-training seed and a generator for the upload defences: from the run's seed
    (reproducible), or from fresh OS entropy when an upload defence is on (the server knows
    the run's seed and could replay which rows were sampled negatives)."""
    if cfg.upload_privacy.fresh_entropy:
        rng = np.random.default_rng()
        return int(rng.integers(2**62)), rng
    seed = cfg.seed * 1_000_003 + header.server_round * 7919 + node.partition_id
    return seed, np.random.default_rng(seed)


def _pseudo_positives(cfg: RunConfig, node: NodeData, rng: np.random.Generator) -> torch.Tensor | None:
    if not cfg.upload_privacy.padding:
        return None
    return torch.from_numpy(pseudo_pairs(node.train_local.numpy(), len(node.users), node.num_items,
                                         cfg.upload_privacy.padding, rng))


@app.evaluate()
@_timed
def evaluate(msg: Message, context: Context) -> Message:
    """Rank all items for every hosted user; reply with metric sums of both splits."""
    cfg, node, state_dir = _setup(context)
    payload = ModelPayload.from_content(msg.content)
    header = payload.header
    _acked_counts(context, header)
    ledger = _ledger(cfg, node, state_dir, header)
    sums = _metric_sums(cfg, node, _user_table(context, cfg, node, header, state_dir),
                        _global_view(payload, node, cfg, ledger))
    return Message(EvaluateReply(sums, _withdrawals(ledger)).to_content(), reply_to=msg)


def _metric_sums(cfg: RunConfig, node: NodeData, user_emb, view) -> dict[str, dict[str, float]]:
    """The one evaluator's metric sums over the node's users, per split."""
    sums = {}
    for split in SPLITS:
        known, truth = split_pairs(split, node.train_local, node.valid_local, node.test_local)
        sums[split] = evaluate_local(user_emb, view, known, truth, cfg.fusion)
    return sums


_IMPORTED[0] = time.time()
