"""A node's view of the world: its users, their data, its state directory, its ledger.

Flower-free so it can be used by the CLI and tests. The dataset is parsed once per
process (``RunConfig.load_data`` is cached); only the hosted users' rows are kept here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from client_app.ledger import Ledger, new_ledger, update_ledger
from common.config import RunConfig
from common.datasets import partition_users
from common.sharing import load_sharing_file, policy_order, shared_pairs


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
    """``<state-dir>/nodes-<data fingerprint>/node-<p>-of-<n>``: one ledger per data setup,
    whatever the sharing policy (a policy change is applied to the ledger, see ledger.py)."""
    return Path(cfg.state_dir) / f"nodes-{cfg.data_fingerprint()}" / \
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


def policy_targets(cfg: RunConfig, node: NodeData) -> np.ndarray:
    """The ``(m, 2)`` pairs the run config's sharing policy shares for the node's users."""
    explicit = load_sharing_file(cfg.sharing_file) if cfg.sharing_file else None
    return shared_pairs(node.train, cfg.sharing_ratio, cfg.sharing_distribution, cfg.seed,
                        explicit)


def node_ledger(cfg: RunConfig, node: NodeData, state_dir: Path) -> Ledger:
    """The node's durable ledger: created from the sharing policy on first use; a changed
    policy (ratio, distribution, sharing file or its contents) is applied to it, never
    re-sharing what a user withdrew and leaving users who chose themselves alone."""
    policy = cfg.sharing_fingerprint()

    def create() -> Ledger:
        return new_ledger(policy, policy_targets(cfg, node), policy_order(node.train, cfg.seed))

    def change(ledger: Ledger) -> Ledger:
        if not ledger.order:  # made by an older version: learn the order now
            ledger = replace(ledger, order=create().order)
        if ledger.policy == policy:
            return ledger
        targets = new_ledger(policy, policy_targets(cfg, node), np.zeros((0, 2), np.int64))
        return ledger.adopt_policy(policy, targets.shared)

    return update_ledger(state_dir, change, create)
