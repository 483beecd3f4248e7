"""A node's view of the world: its users, their data, its state directory, its ledger.

Flower-free so it can be used by the CLI and tests. The dataset is parsed once per
process (``RunConfig.load_data`` is cached); only the hosted users' rows are kept here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from client_app.ledger import Ledger, load_or_create_ledger
from common.config import RunConfig
from common.datasets import partition_users
from common.sharing import load_sharing_file, shared_pairs


@dataclass(frozen=True)
class NodeData:
    """The hosted users (global ids, sorted) and their interactions in node-local user ids."""

    partition_id: int
    users: np.ndarray            # (n_u,) global user ids
    train: np.ndarray            # (n, 2) [global user, item]
    train_local: torch.Tensor    # (n, 2) [local user, item]
    valid_local: torch.Tensor
    test_local: torch.Tensor
    num_users: int               # catalog sizes of the whole dataset
    num_items: int
    fingerprint: str             # of the whole dataset the node loaded

    def to_local(self, user: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.users, user)


def default_state_dir(cfg: RunConfig, partition_id: int, num_partitions: int) -> Path:
    """``<state-dir>/<sharing fingerprint>/node-<p>-of-<n>``: one ledger per sharing setup."""
    return Path(cfg.state_dir) / f"sharing-{cfg.sharing_fingerprint()}" / \
        f"node-{partition_id}-of-{num_partitions}"


@lru_cache(maxsize=1 << 16)  # a simulation actor hosts many nodes (one per user, cross-user)
def load_node(cfg: RunConfig, partition_id: int, num_partitions: int) -> NodeData:
    """The data of partition ``partition_id`` (cached per process)."""
    ds = cfg.load_data()
    users = partition_users(ds.num_users, partition_id, num_partitions)
    part = ds.users_slice(users)

    def local(pairs: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.searchsorted(users, pairs[:, 0]), pairs[:, 1]], 1))

    return NodeData(partition_id=partition_id, users=users, train=part.train,
                    train_local=local(part.train), valid_local=local(part.valid),
                    test_local=local(part.test), num_users=ds.num_users,
                    num_items=ds.num_items, fingerprint=ds.fingerprint)


def node_ledger(cfg: RunConfig, node: NodeData, state_dir: Path) -> Ledger:
    """The node's durable ledger, created from the sharing policy on first use."""
    def initial() -> np.ndarray:
        explicit = load_sharing_file(cfg.sharing_file) if cfg.sharing_file else None
        return shared_pairs(node.train, cfg.sharing_ratio, cfg.sharing_distribution, cfg.seed,
                            explicit)
    return load_or_create_ledger(state_dir, cfg.sharing_fingerprint(), initial)
