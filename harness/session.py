"""A federation in one process that a test or benchmark can step through round by round,
copy, and send withdrawals into (exactly as the CLI writes them)."""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client_app.ledger import ledger_exists, read_ledger, update_ledger
from common.config import RunConfig
from common.forgetting import pairs_in
from common.sharing import scheduled_withdrawals
from harness.inprocess import InProcessGrid
from server_app.records import RoundRecord
from server_app.state import ServerState
from server_app.strategy import FedShareStrategy


@dataclass
class Session:
    """Server state + strategy + in-process nodes (each with its own state directory)."""

    workdir: Path
    grid: InProcessGrid
    state: ServerState
    strategy: FedShareStrategy
    history: list[RoundRecord] = field(default_factory=list)
    next_round: int = 1

    def run_rounds(self, count: int) -> list[RoundRecord]:
        rounds = range(self.next_round, self.next_round + count)
        records = self.strategy.run(self.grid, rounds)
        self.next_round += count
        self.history += records
        return records

    def node_dirs(self) -> list[Path]:
        return [Path(c.node_config["state-dir"]) for c in self.grid.contexts.values()]

    def evaluate(self) -> dict[str, float]:
        """Test metrics of the current models over every node."""
        _, metrics = self.strategy.evaluate(self.grid, list(self.grid.get_node_ids()),
                                            self.next_round - 1)
        return metrics["test"]


def new_session(cfg: RunConfig, nodes: int, workdir: Path, server_dir: Path | None = None,
                grid_type: type[InProcessGrid] = InProcessGrid) -> Session:
    """``nodes`` in-process nodes (state under ``workdir/nodes``) and a fresh server saving
    to ``server_dir`` (default ``workdir/server``)."""
    dirs = [str(workdir / "nodes" / f"node-{p}") for p in range(nodes)]
    grid = grid_type(cfg.as_dict(), nodes, node_state_dirs=dirs)
    state = ServerState(cfg, server_dir or workdir / "server")
    return Session(workdir, grid, state, FedShareStrategy(cfg, state))


def restart(session: Session, cfg: RunConfig | None = None,
            grid_type: type[InProcessGrid] = InProcessGrid) -> Session:
    """The same federation after its ServerApp (and the nodes' per-run memory) restarted:
    the server state is read back from disk, optionally under another run config."""
    cfg = cfg or session.strategy.cfg
    dirs = [str(d) for d in session.node_dirs()]
    grid = grid_type(cfg.as_dict(), len(dirs), node_state_dirs=dirs)
    state = ServerState.load(cfg, session.state.state_dir)
    return Session(session.workdir, grid, state, FedShareStrategy(cfg, state),
                   list(state.history), state.round + 1)


def clone(session: Session, workdir: Path, cfg: RunConfig) -> Session:
    """An independent copy (memory and state directories) running under ``cfg``."""
    shutil.copytree(session.workdir, workdir)
    grid = copy.deepcopy(session.grid)
    for pid, context in enumerate(grid.contexts.values()):
        context.node_config["state-dir"] = str(workdir / "nodes" / f"node-{pid}")
    state = session.state.clone(cfg, workdir / "server")
    strategy = FedShareStrategy(cfg, state, rng=copy.deepcopy(session.strategy.rng))
    return Session(workdir, grid, state, strategy, list(session.history), session.next_round)


def sharing_nodes(session: Session) -> list[Path]:
    """State folders of the nodes that have a sharing ledger: a node the server never
    contacted (not sampled yet, under ``fraction-train`` < 1) has none and shares nothing."""
    return [node_dir for node_dir in session.node_dirs() if ledger_exists(node_dir)]


def node_shared_pairs(node_dir: Path) -> np.ndarray:
    """``(n, 2)`` pairs one node's ledger holds as shared."""
    return read_ledger(node_dir).shared_pairs().reshape(-1, 2)


def shared_pairs(session: Session) -> np.ndarray:
    """Every ``(user, item)`` pair the nodes' ledgers hold as shared, all nodes together."""
    pairs = [node_shared_pairs(node_dir) for node_dir in sharing_nodes(session)]
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def withdraw_pairs(session: Session, pairs: np.ndarray) -> np.ndarray:
    """Write unshare requests for ``pairs`` ((m, 2) [user, item]) into the ledgers of the nodes
    that share them (as the CLI does); returns the pairs written (those some node shares)."""
    written = []
    for node_dir in sharing_nodes(session):
        mine = node_shared_pairs(node_dir)
        mine = mine[pairs_in(mine, pairs)]
        for user in np.unique(mine[:, 0]).tolist():
            update_ledger(node_dir, lambda ledger: ledger.unshare(user, mine[mine[:, 0] == user, 1])[0])
        written.append(mine.reshape(-1, 2))
    session.state.registry.flag_unshare(session.grid.get_node_ids())
    return np.concatenate(written) if written else np.zeros((0, 2), np.int64)


def withdraw(session: Session, user_fraction: float, item_fraction: float, seed: int,
             max_users: int | None = None) -> np.ndarray:
    """Write unshare requests into every node's ledger (as the CLI does): a seeded
    ``user_fraction`` of sharing users withdraw ``item_fraction`` of their shared items
    (at most ``max_users`` of them, the first nodes' first). Returns the withdrawn ``(m, 2)`` pairs."""
    chosen, room = [], max_users
    for node_dir in sharing_nodes(session):
        pairs = scheduled_withdrawals(node_shared_pairs(node_dir), user_fraction,
                                      item_fraction, seed)
        if room is not None:
            users = np.unique(pairs[:, 0])[:room]
            pairs, room = pairs[np.isin(pairs[:, 0], users)], room - len(users)
        chosen.append(pairs)
    return withdraw_pairs(session, np.concatenate(chosen))
