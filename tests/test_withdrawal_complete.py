"""A withdrawal is complete and crash-safe (real strategy + ClientApp handlers in one
process): no snapshot newer than a withdrawn edge survives or is taken, the optimizer rows
are reset, the unlearning owed resumes after a kill at each point between erasure and
completion, other runs' state files are cleaned too, and the audit catches every kind of
residue when it is planted."""

import numpy as np
import pytest

from client_app import cli
from client_app.ledger import DONE, read_ledger
from common.config import load_config
from common.datasets import default_data_root
from harness.session import Session, clone, new_session, restart
from server_app.audit import audit_live, audit_state_dir
from server_app.state import ServerState

pytestmark = pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(),
                                reason="ML-100K not available: withdrawal tests skipped")


def _cfg(tmp_path, **overrides):
    return load_config({"max-users": 60, "num-rounds": 20, "eval-every": 0, "fraction-train": 1.0,
                        "sharing-ratio": 0.5, "snapshot-rounds": "0,1,2,3,4,5,6,7,8",
                        "unlearn-rounds": 2, "state-dir": str(tmp_path / "x"),
                        "out-dir": str(tmp_path / "out"), **overrides})


def _withdraw_all(session: Session, node: int = 0) -> np.ndarray:
    """User ``min`` of the node withdraws everything (CLI); returns the withdrawn pairs."""
    node_dir = session.node_dirs()[node]
    ledger = read_ledger(node_dir)
    user = min(ledger.counts())
    assert cli.main(["unshare", "--state-dir", str(node_dir), "--user", str(user), "--all"]) == 0
    return np.stack([np.full(len(ledger.shared[user]), user), ledger.shared[user]], 1)


def test_no_snapshot_newer_than_a_withdrawn_edge_survives_or_is_taken(tmp_path):
    session = new_session(_cfg(tmp_path), 3, tmp_path / "fed")
    session.run_rounds(2)
    node_dir = session.node_dirs()[0]
    ledger = read_ledger(node_dir)
    user = min(ledger.counts())
    extra = np.setdiff1d(ledger.order[user], ledger.shared[user])[:3]
    assert cli.main(["share", "--state-dir", str(node_dir), "--user", str(user),
                     "--items", *map(str, extra)]) == 0
    session.run_rounds(2)                                   # shared late: enter in round 4
    entered = int(session.state.edges.rounds_of(np.full(3, user), extra).min())
    assert entered > 2 and set(session.state.snapshots) == set(range(5))
    assert cli.main(["unshare", "--state-dir", str(node_dir), "--user", str(user),
                     "--items", *map(str, extra)]) == 0
    session.run_rounds(1)
    assert set(session.state.snapshots) == set(range(entered))
    assert session.state.unlearning.snapshot_round == entered - 1   # a clean target
    session.run_rounds(3)                                   # none is taken while tainted
    assert set(session.state.snapshots) == set(range(entered))
    assert set(ServerState.load(session.strategy.cfg, session.state.state_dir).snapshots) == \
        set(range(entered))
    pairs = np.stack([np.full(3, user), extra], 1)
    assert audit_live(session.state, pairs).clean
    assert audit_state_dir(session.state.state_dir, pairs=pairs).clean


def test_optimizer_moments_of_the_affected_rows_are_reset(tmp_path):
    session = new_session(_cfg(tmp_path, **{"unlearning-method": "naive"}), 3, tmp_path / "fed")
    session.run_rounds(3)
    pairs = _withdraw_all(session)
    user, model = int(pairs[0, 0]), session.state.model
    moments = lambda param: model.optimizer.state[param]  # noqa: E731
    assert moments(model.user_weight)["exp_avg"][user].abs().sum() > 0
    session.run_rounds(2)       # erased in round 4; the user has no edge left to train on
    for key in ("exp_avg", "exp_avg_sq"):
        assert moments(model.user_weight)[key][user].abs().sum() == 0
    assert model.moments_since["user"][user] == 4
    assert (model.moments_since["item"][pairs[:, 1]] == 4).all()
    assert audit_live(session.state, pairs).clean


class Killed(Exception):
    """The ServerApp process dies here."""


def _kill_at_push(session: Session, count: int) -> None:
    """The server dies when it is about to send its ``count``-th batch of messages."""
    push, sent = session.grid.push_messages, []

    def dying_push(messages):
        sent.append(1)
        if len(sent) == count:
            raise Killed
        return push(messages)

    session.grid.push_messages = dying_push


@pytest.mark.parametrize("method", ["contrastive", "retrain", "receraser"])
def test_owed_unlearning_resumes_after_a_kill_at_each_point(tmp_path, method):
    cfg = _cfg(tmp_path, **{"unlearning-method": method, "receraser-epochs": 5,
                            "receraser-aggregator-epochs": 2})
    base = new_session(cfg, 3, tmp_path / "base")
    base.run_rounds(2)
    # the node is polled at the start of round 3; the server dies as it sends: 1 = that poll
    # (nothing received yet), 2 = round 3's train messages (erased and saved, acknowledgement
    # not delivered), 3 = round 4's (acknowledged, the last unlearning round trained, not
    # saved), 4 = round 5's (done)
    for point in (1, 2, 3, 4):
        session = clone(base, tmp_path / f"{method}-{point}", cfg)
        pairs = _withdraw_all(session)
        session.state.registry.flag_unshare([1])
        _kill_at_push(session, point)
        with pytest.raises(Killed):
            session.run_rounds(6)
        resumed = restart(session)                          # state read back from disk
        resumed.run_rounds(7 - resumed.state.round)
        state, ledger = resumed.state, read_ledger(resumed.node_dirs()[0])
        assert [r.status for r in ledger.requests] == [DONE], point
        assert not state.edges.contains(pairs[:, 0], pairs[:, 1]).any()
        assert state.unlearning is None
        if method == "contrastive":     # every owed unlearning round ran, exactly once
            assert sum(r.unlearning for r in state.history) == cfg.unlearn_rounds, point
        elif method == "retrain":       # the retrain happened, exactly once
            assert state.generation == 1, point
        else:                           # every shard trained on exactly the remaining edges
            assert state.model.ready(state.graph) and state.views is not None, point
        assert audit_state_dir(resumed.workdir, pairs=pairs).clean


def test_other_runs_are_cleaned_and_the_audit_catches_planted_residue(tmp_path):
    cfg, root = _cfg(tmp_path), tmp_path / "state" / "server"
    older = new_session(cfg, 3, tmp_path / "older", server_dir=root / "run-1")
    older.run_rounds(2)
    current = new_session(cfg, 3, tmp_path / "current", server_dir=root / "run-2")
    current.run_rounds(2)
    before = (root / "run-2" / "state.pt").read_bytes()
    pairs = _withdraw_all(current)
    report = audit_state_dir(root, pairs=pairs)
    assert report.kinds() == {"pair"}
    assert all(any(run in f.where for f in report.findings) for run in ("run-1", "run-2"))
    current.run_rounds(1)
    assert audit_state_dir(root, pairs=pairs).clean                  # both runs, on disk
    assert audit_live(current.state, pairs).clean
    resumed = restart(older)                         # the idle run retrains when resumed
    assert resumed.state.generation == 1
    assert not resumed.state.edges.contains(pairs[:, 0], pairs[:, 1]).any()
    # plant each kind of residue; the audit must name it
    state, user = current.state, int(pairs[0, 0])
    state.snapshots[9] = state.model.tables()
    state.model.moments_since["user"][user] = 0
    assert audit_live(state, pairs).kinds() == {"snapshot", "optimizer"}
    state.save()
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "server.log").write_text(f"withdrawn ({user}, {int(pairs[0, 1])})\n")
    leftover = root / "run-2" / ".state.pt.x1y2z3.tmp"
    leftover.write_bytes(before)                     # a crash during an earlier write
    report = audit_state_dir(root, logs, pairs=pairs)
    assert report.kinds() == {"pair", "snapshot", "optimizer", "temp-file"}
    assert any(f.kind == "pair" and "server.log" in f.where for f in report.findings)
    assert any(f.kind == "pair" and ".tmp" in f.where for f in report.findings)
    ServerState.load(cfg, root / "run-1")            # a start removes leftover temp files
    assert not leftover.exists()
    assert "temp-file" not in audit_state_dir(root, pairs=pairs).kinds()
