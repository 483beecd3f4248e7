"""FedShare ClientApp: translates Flower messages into calls on the node's local code.

One handler per protocol phase (see :mod:`common.wire`): ``query.unshare``,
``query.share``, ``train``, ``evaluate``. The sharing ledger and the private user
embeddings are on the node's disk (state directory); ``context.state`` only holds the
server's last acknowledgement of shared counts.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.ledger import DONE, REFUSED, Ledger, update_ledger
from client_app.local_training import GlobalView, LocalHyper, evaluate_local, train_local
from client_app.node import NodeData, default_state_dir, load_node, node_ledger
from common.atomic import atomic_write_npz
from common.config import RunConfig, load_config
from common.sharing import scheduled_withdrawals
from common.wire import from_record, to_record

app = ClientApp()


def _setup(context: Context) -> tuple[RunConfig, NodeData, Path]:
    cfg = load_config(context.run_config)
    torch.set_num_threads(cfg.torch_threads)
    pid = int(context.node_config["partition-id"])
    num = int(context.node_config["num-partitions"])
    node = load_node(cfg, pid, num)
    state_dir = Path(str(context.node_config.get("state-dir", "")) or
                     default_state_dir(cfg, pid, num))
    return cfg, node, state_dir


def _acked_counts(context: Context, msg: Message) -> dict[int, int]:
    """The server's stored edge count per user; refreshed from ``msg`` when it carries one."""
    if "ack" in msg.content.array_records:
        context.state["acked"] = msg.content.array_records["ack"]
    if "acked" not in context.state.array_records:
        return {}
    ack = from_record(context.state.array_records["acked"])
    return dict(zip(ack["user"].tolist(), ack["count"].tolist()))


def _unsynced_users(ledger: Ledger, acked: dict[int, int]) -> list[int]:
    """Users whose shared set the server does not (yet) hold in full.

    Users with a pending unshare request are left to ``query.unshare``."""
    counts = ledger.counts()
    waiting = {r.user for r in ledger.pending()}
    return sorted(u for u in counts.keys() | acked.keys()
                  if counts.get(u, 0) != acked.get(u, 0) and u not in waiting)


def _apply_unshare_acks(ledger: Ledger, msg: Message) -> Ledger:
    """Resolve pending requests the server has acknowledged (done) or refused."""
    if "unshare-ack" not in msg.content.array_records:
        return ledger
    ack = from_record(msg.content.array_records["unshare-ack"])
    reasons = msg.content.config_records.get("unshare-reasons", {})
    for request_id, refused in zip(ack["request"].tolist(), ack["refused"].tolist()):
        ledger = ledger.resolve(int(request_id), REFUSED if refused else DONE,
                                str(reasons.get(str(request_id), "")))
    return ledger


def _apply_schedule(ledger: Ledger, cfg: RunConfig, server_round: int) -> Ledger:
    """Create the run config's scheduled unshare requests once, from ``unshare-round`` on."""
    key = f"round-{cfg.unshare_round}"
    if not cfg.unshare_round or server_round < cfg.unshare_round or key in ledger.schedules_applied:
        return ledger
    pairs = scheduled_withdrawals(ledger.shared_pairs(), cfg.unshare_user_fraction,
                                  cfg.unshare_item_fraction, cfg.seed)
    for user in np.unique(pairs[:, 0]).tolist():
        ledger, _ = ledger.unshare(user, pairs[pairs[:, 0] == user, 1])
    return replace(ledger, schedules_applied=ledger.schedules_applied + (key,))


def _ledger(cfg: RunConfig, node: NodeData, state_dir: Path, msg: Message) -> Ledger:
    """The node's ledger after this message's acknowledgements and due schedules."""
    node_ledger(cfg, node, state_dir)  # created from the sharing policy on first use
    server_round = int(msg.content.config_records["config"]["server-round"])
    return update_ledger(state_dir, lambda ledger: _apply_schedule(
        _apply_unshare_acks(ledger, msg), cfg, server_round))


def _user_table_path(cfg: RunConfig, context: Context, state_dir: Path) -> Path:
    """Private user rows of this run, on the node's disk (they survive node restarts)."""
    return state_dir / f"user-emb-{cfg.run_name or f'run-{context.run_id}'}.npz"


def _user_table(context: Context, cfg: RunConfig, node: NodeData, msg: Message,
                state_dir: Path) -> torch.Tensor:
    """Private user embeddings: the saved ones of this run and model generation, else a
    seeded initialisation (first message of a run, or a ``retrain`` unlearning began)."""
    generation = int(msg.content.config_records["config"].get("generation", 0))
    path = _user_table_path(cfg, context, state_dir)
    if path.exists():
        with np.load(path) as saved:
            if int(saved["generation"]) == generation:
                return torch.from_numpy(saved["weight"])
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + node.partition_id)
    return 0.1 * torch.randn(len(node.users), cfg.embedding_dim, generator=generator)


def _save_user_table(context: Context, cfg: RunConfig, msg: Message, state_dir: Path,
                     weight: torch.Tensor) -> None:
    generation = int(msg.content.config_records["config"].get("generation", 0))
    atomic_write_npz(_user_table_path(cfg, context, state_dir), weight=weight.numpy(),
                     generation=np.int64(generation))


def _global_view(msg: Message, node: NodeData) -> GlobalView:
    records = msg.content.array_records
    item_emb = torch.from_numpy(from_record(records["items"])["weight"])
    item_graph = None
    if "graph" in records:
        item_graph = torch.from_numpy(from_record(records["graph"])["items"])
    user_graph = torch.zeros(len(node.users), item_emb.shape[1])
    shares = torch.zeros(len(node.users), dtype=torch.bool)
    if "users" in records:
        views = from_record(records["users"])
        hosted = np.isin(views["index"], node.users)  # ignore views of users not hosted here
        local = torch.from_numpy(node.to_local(views["index"][hosted]))
        user_graph[local] = torch.from_numpy(views["values"][hosted])
        shares[local] = True
    negatives = None
    if "negatives" in records:
        negatives = torch.from_numpy(from_record(records["negatives"])["values"])
    return GlobalView(item_emb, item_graph, user_graph, shares, negatives)


@app.query("unshare")
def unshare(msg: Message, context: Context) -> Message:
    """Send every pending unshare request (one row per withdrawn pair)."""
    cfg, node, state_dir = _setup(context)
    pending = _ledger(cfg, node, state_dir, msg).pending()
    request = np.concatenate([np.full(len(r.items), r.request_id) for r in pending] or [[]])
    user = np.concatenate([np.full(len(r.items), r.user) for r in pending] or [[]])
    item = np.concatenate([r.items for r in pending] or [[]])
    content = RecordDict({
        "unshare": to_record(request=request.astype(np.int64), user=user.astype(np.int64),
                             item=item.astype(np.int64)),
        "metrics": MetricRecord({"num-requests": len(pending), "num-pairs": len(item)}),
    })
    return Message(content, reply_to=msg)


@app.query("share")
def share(msg: Message, context: Context) -> Message:
    """Upload the shared pairs of every user the server does not hold in full."""
    cfg, node, state_dir = _setup(context)
    ledger = _ledger(cfg, node, state_dir, msg)
    users = _unsynced_users(ledger, _acked_counts(context, msg))
    pairs = ledger.shared_pairs()
    pairs = pairs[np.isin(pairs[:, 0], users)]
    content = RecordDict({
        "share": to_record(user=pairs[:, 0].copy(), item=pairs[:, 1].copy()),
        "metrics": MetricRecord({"num-pairs": len(pairs), "num-users": node.num_users,
                                 "num-items": node.num_items}),
        "catalog": ConfigRecord({"fingerprint": node.fingerprint}),
    })
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local epochs over all the node's users; reply with the changed item rows."""
    cfg, node, state_dir = _setup(context)
    ledger = _ledger(cfg, node, state_dir, msg)
    pending = bool(_unsynced_users(ledger, _acked_counts(context, msg)))
    server_round = int(msg.content.config_records["config"]["server-round"])
    hp = LocalHyper(cfg.local_epochs, cfg.local_lr, cfg.batch_size, cfg.reg, cfg.cl_weight,
                    cfg.cl_temperature, cfg.fusion)
    update = train_local(_user_table(context, cfg, node, msg, state_dir), node.train_local,
                         _global_view(msg, node), hp,
                         seed=cfg.seed * 1_000_003 + server_round * 7919 + node.partition_id)
    _save_user_table(context, cfg, msg, state_dir, update.user_emb)
    content = RecordDict({
        "update": to_record(index=update.index, values=update.values, counts=update.counts),
        "metrics": MetricRecord({"loss": update.loss, "num-examples": update.num_examples,
                                 "pending-sharing": int(pending),
                                 "pending-unshare": int(bool(ledger.pending()))}),
    })
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Rank all items for every hosted user; reply with metric sums (test split)."""
    cfg, node, state_dir = _setup(context)
    _acked_counts(context, msg)
    _ledger(cfg, node, state_dir, msg)
    split = str(msg.content.config_records["config"].get("split", "test"))
    known = node.train_local if split == "valid" else \
        torch.cat([node.train_local, node.valid_local])
    truth = node.valid_local if split == "valid" else node.test_local
    sums = evaluate_local(_user_table(context, cfg, node, msg, state_dir), _global_view(msg, node), known, truth,
                          cfg.fusion)
    return Message(RecordDict({"metrics": MetricRecord(sums)}), reply_to=msg)
