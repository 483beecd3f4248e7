"""FedShare ClientApp: translates Flower messages into calls on the node's local code.

One handler per protocol phase (see :mod:`common.wire`): ``query.share``, ``train``,
``evaluate``. Per-run memory (private user embeddings, the server's last
acknowledgement) is kept in ``context.state``; the sharing ledger is on disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.ledger import Ledger
from client_app.local_training import GlobalView, LocalHyper, evaluate_local, train_local
from client_app.node import NodeData, default_state_dir, load_node, node_ledger
from common.config import RunConfig, load_config
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
    """Users whose shared set the server does not (yet) hold in full."""
    counts = ledger.counts()
    return sorted(u for u in counts.keys() | acked.keys() if counts.get(u, 0) != acked.get(u, 0))


def _user_table(context: Context, cfg: RunConfig, node: NodeData) -> torch.Tensor:
    """Private user embeddings, initialised (seeded) on the node's first message of the run."""
    if "user-emb" in context.state.array_records:
        return torch.from_numpy(from_record(context.state.array_records["user-emb"])["weight"])
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + node.partition_id)
    return 0.1 * torch.randn(len(node.users), cfg.embedding_dim, generator=generator)


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
        local = torch.from_numpy(node.to_local(views["index"]))
        user_graph[local] = torch.from_numpy(views["values"])
        shares[local] = True
    negatives = None
    if "negatives" in records:
        negatives = torch.from_numpy(from_record(records["negatives"])["values"])
    return GlobalView(item_emb, item_graph, user_graph, shares, negatives)


@app.query("share")
def share(msg: Message, context: Context) -> Message:
    """Upload the shared pairs of every user the server does not hold in full."""
    cfg, node, state_dir = _setup(context)
    ledger = node_ledger(cfg, node, state_dir)
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
    acked = _acked_counts(context, msg)
    pending = bool(_unsynced_users(node_ledger(cfg, node, state_dir), acked))
    server_round = int(msg.content.config_records["config"]["server-round"])
    hp = LocalHyper(cfg.local_epochs, cfg.local_lr, cfg.batch_size, cfg.reg, cfg.cl_weight,
                    cfg.cl_temperature, cfg.fusion)
    update = train_local(_user_table(context, cfg, node), node.train_local,
                         _global_view(msg, node), hp,
                         seed=cfg.seed * 1_000_003 + server_round * 7919 + node.partition_id)
    context.state["user-emb"] = to_record(weight=update.user_emb.numpy())
    content = RecordDict({
        "update": to_record(index=update.index, values=update.values, counts=update.counts),
        "metrics": MetricRecord({"loss": update.loss, "num-examples": update.num_examples,
                                 "pending-sharing": int(pending)}),
    })
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Rank all items for every hosted user; reply with metric sums (test split)."""
    cfg, node, _ = _setup(context)
    _acked_counts(context, msg)
    split = str(msg.content.config_records["config"].get("split", "test"))
    known = node.train_local if split == "valid" else \
        torch.cat([node.train_local, node.valid_local])
    truth = node.valid_local if split == "valid" else node.test_local
    sums = evaluate_local(_user_table(context, cfg, node), _global_view(msg, node), known, truth,
                          cfg.fusion)
    return Message(RecordDict({"metrics": MetricRecord(sums)}), reply_to=msg)
