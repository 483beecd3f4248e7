"""The federated RecEraser mode end to end (real strategy + ClientApp handlers in one process):
an unshare request is answered by exact retraining -- the affected shard bit-identical to a
from-scratch training on its remaining edges, the other shards untouched, the served views those
of an ensemble that never saw the pairs -- the audit is clean, and a server that dies between the
erasure and the retraining holds no parameter trained on the pairs and retrains after a restart."""

import numpy as np
import pytest
import torch

from client_app import cli
from client_app.ledger import DONE, read_ledger
from common.config import load_config
from common.datasets import default_data_root
from common.receraser import shard_seed, train_submodel
from harness.session import Session, new_session, restart
from server_app.audit import audit_live, audit_state_dir
from server_app.receraser_model import ReceraserGraphModel
from server_app.state_file import read_state

pytestmark = pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(),
                                reason="ML-100K not available: federated RecEraser tests skipped")


def _session(tmp_path) -> Session:
    cfg = load_config({"max-users": 60, "num-rounds": 10, "eval-every": 0, "fraction-train": 1.0,
                       "unlearning-method": "receraser", "receraser-shards": 4,
                       "receraser-epochs": 5, "receraser-aggregator-epochs": 2,
                       "state-dir": str(tmp_path / "x"), "out-dir": str(tmp_path / "out")})
    session = new_session(cfg, 3, tmp_path / "fed")
    session.run_rounds(2)
    return session


def _withdraw_all(session: Session) -> np.ndarray:
    node_dir = session.node_dirs()[0]
    ledger = read_ledger(node_dir)
    user = min(ledger.counts())
    assert cli.main(["unshare", "--state-dir", str(node_dir), "--user", str(user), "--all"]) == 0
    session.state.registry.flag_unshare([1])
    return np.stack([np.full(len(ledger.shared[user]), user), ledger.shared[user]], 1)


def _assert_exact(session: Session, pairs: np.ndarray, before: list[dict]) -> None:
    """Affected shards = from-scratch training on their remaining edges; the others untouched;
    the views = those of a fresh ensemble trained on the remaining edges only."""
    state, cfg = session.state, session.strategy.cfg
    model, remaining = state.model, state.edges.pairs()
    affected = set(model.shard_of(pairs).tolist())
    for k, shard in enumerate(model.shards):
        if k in affected:
            scratch = train_submodel(model.shard_pairs(remaining, k), *_catalog_shape(state),
                                     model.train_config, shard_seed(cfg.seed + 2, k))
            assert torch.equal(shard["user"], scratch.state["user_emb.weight"])
            assert torch.equal(shard["item"], scratch.state["item_emb.weight"])
        else:
            assert torch.equal(shard["user"], before[k]["user"])
    fresh = ReceraserGraphModel(*_catalog_shape(state), cfg, seed=cfg.seed + 2)
    fresh.train(state.graph, torch.from_numpy(remaining))
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(state.views, fresh.views(state.graph)))


def _catalog_shape(state) -> tuple[int, int]:
    return state.catalog.num_users, state.catalog.num_items


def test_an_unshare_request_is_answered_by_exact_retraining_and_the_audit_is_clean(tmp_path):
    session = _session(tmp_path)
    before = [dict(shard) for shard in session.state.model.shards]
    pairs = _withdraw_all(session)
    assert audit_live(session.state, pairs).kinds() == {"pair"}
    session.run_rounds(2)
    assert [r.status for r in read_ledger(session.node_dirs()[0]).requests] == [DONE]
    assert not session.state.edges.contains(pairs[:, 0], pairs[:, 1]).any()
    assert len(set(session.state.model.shard_of(pairs).tolist())) == 1   # by user: one shard
    _assert_exact(session, pairs, before)
    assert audit_live(session.state, pairs).clean
    assert audit_state_dir(session.workdir, pairs=pairs).clean
    assert session.state.generation == 0 and not session.state.snapshots


class Killed(Exception):
    """The ServerApp process dies here."""


def test_a_server_killed_before_the_retraining_holds_nothing_of_the_pairs_and_retrains(tmp_path):
    session = _session(tmp_path)
    before = [dict(shard) for shard in session.state.model.shards]
    pairs = _withdraw_all(session)
    affected = sorted(set(session.state.model.shard_of(pairs).tolist()))

    def die(state):
        raise Killed
    session.strategy.withdrawal.method.settle = die          # dies after the erasure's save
    with pytest.raises(Killed):
        session.run_rounds(1)
    saved = read_state(session.state.state_dir)["model"]
    assert [k for k, shard in enumerate(saved["shards"]) if shard is None] == affected
    assert saved["aggregator"] is None
    resumed = restart(session)
    assert resumed.state.views is None                        # nothing stale is served
    resumed.run_rounds(2)
    assert [r.status for r in read_ledger(resumed.node_dirs()[0]).requests] == [DONE]
    _assert_exact(resumed, pairs, before)
    assert audit_state_dir(resumed.workdir, pairs=pairs).clean
