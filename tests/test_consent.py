"""Dynamic consent end to end (real strategy + ClientApp handlers in one process): sharing
more or less at any round from the CLI or the run config, never re-sharing a withdrawn
item; a withdrawal reaches the server within the stated bound under sampling; a node that
came back with a new node id can still withdraw."""

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from client_app import cli
from client_app.ledger import DONE, read_ledger
from common.config import load_config
from common.datasets import default_data_root
from harness.session import Session, new_session, restart

pytestmark = pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(),
                                reason="ML-100K not available: consent tests skipped")


def _cfg(tmp_path, **overrides):
    return load_config({"max-users": 60, "num-rounds": 20, "eval-every": 0, "fraction-train": 1.0,
                        "sharing-ratio": 0.5, "snapshot-rounds": "0", "unlearn-rounds": 1,
                        "round-timeout": 30.0, "state-dir": str(tmp_path / "x"),
                        "out-dir": str(tmp_path / "out"), **overrides})


def _ledger_pairs(session: Session) -> set:
    return {tuple(p) for d in session.node_dirs() for p in read_ledger(d).shared_pairs().tolist()}


def _server_pairs(session: Session) -> set:
    return {tuple(p) for p in session.state.edges.pairs().tolist()}


def test_config_ratio_changes_are_applied_without_resharing_withdrawn_items(tmp_path):
    session = new_session(_cfg(tmp_path), 3, tmp_path / "fed")
    session.run_rounds(2)
    node_dir = session.node_dirs()[0]
    user = min(read_ledger(node_dir).counts())
    withdrawn = read_ledger(node_dir).shared[user][:2]
    assert cli.main(["unshare", "--state-dir", str(node_dir), "--user", str(user),
                     "--items", *map(str, withdrawn)]) == 0
    session.run_rounds(1)
    before = len(session.state.edges)
    for ratio, grows in ((0.8, True), (0.25, False)):
        session = restart(session, _cfg(tmp_path, **{"sharing-ratio": ratio}))
        session.run_rounds(2)        # a withdrawal rides on the first reply; shares sync next
        assert (len(session.state.edges) > before) == grows
        assert _server_pairs(session) == _ledger_pairs(session)     # the ledger is the truth
        ledger = read_ledger(node_dir)
        assert not np.isin(withdrawn, ledger.shared[user]).any()   # never re-shared
        assert not session.state.edges.contains(np.full(2, user), withdrawn).any()
        assert all(r.status == DONE for d in session.node_dirs() for r in read_ledger(d).requests)
        before = len(session.state.edges)
    text = (node_dir / "ledger.json").read_text()
    session = restart(session, _cfg(tmp_path, **{"sharing-ratio": 0.25}))
    session.run_rounds(1)
    assert (node_dir / "ledger.json").read_text() == text and len(session.state.edges) == before


def test_users_share_more_from_the_cli_at_any_round(tmp_path):
    session = new_session(_cfg(tmp_path, **{"sharing-ratio": 0.25}), 3, tmp_path / "fed")
    session.run_rounds(3)
    node_dir = session.node_dirs()[1]
    ledger = read_ledger(node_dir)
    user, other = max(ledger.counts()), min(ledger.counts())
    extra = np.setdiff1d(ledger.order[user], ledger.shared[user])[:3]
    assert cli.main(["share", "--state-dir", str(node_dir), "--user", str(user),
                     "--items", *map(str, extra)]) == 0
    assert cli.main(["share", "--state-dir", str(node_dir), "--user", str(other),
                     "--ratio", "0.9"]) == 0
    session.run_rounds(2)
    assert session.state.edges.contains(np.full(3, user), extra).all()
    assert session.state.edges.rounds_of(np.full(3, user), extra).min() >= 4  # entered late
    assert _server_pairs(session) == _ledger_pairs(session)
    assert session.state.edges.count_by_user(np.array([other]))[0] == \
        int(np.rint(0.9 * len(read_ledger(node_dir).order[other])))


def test_ratio_schedule_from_the_run_config(tmp_path):
    session = new_session(_cfg(tmp_path, **{"ratio-schedule": "3:0.2,5:0.4"}), 3, tmp_path / "fed")
    sizes = [len(session.run_rounds(1)[0] and session.state.edges) for _ in range(6)]
    assert sizes[1] > sizes[3] < sizes[5], sizes      # down at round 3, up again at round 5
    assert _server_pairs(session) == _ledger_pairs(session)
    for node_dir in session.node_dirs():    # lowered items are withdrawn: round 5 took others
        ledger = read_ledger(node_dir)
        for user, items in ledger.shared.items():
            assert not np.isin(items, ledger.withdrawn.get(user, [])).any()


def _erasure_rounds(tmp_path, poll_every: int) -> tuple[dict[int, int], int]:
    """Sampling 2 of 8 nodes per round: every node withdraws a user's pairs before round 3;
    returns the round each node's withdrawal was erased in, and the rounds run."""
    every = {"max-users": 80, "unshare-poll-every": poll_every}
    session = new_session(_cfg(tmp_path, **every), 8, tmp_path / f"fed-{poll_every}")
    session.run_rounds(2)                     # everyone shares, then sampling starts
    session = restart(session, _cfg(tmp_path, **every, **{"fraction-train": 0.25}))
    pending = {}
    for node, node_dir in enumerate(session.node_dirs()):
        ledger = read_ledger(node_dir)
        if ledger.counts():
            user = min(ledger.counts())
            pending[node] = np.stack([np.full(len(ledger.shared[user]), user), ledger.shared[user]], 1)
            assert cli.main(["unshare", "--state-dir", str(node_dir), "--user", str(user), "--all"]) == 0
    erased = {}
    for rnd in range(3, 8):
        session.run_rounds(1)
        for node, pairs in pending.items():
            if node not in erased and not session.state.edges.contains(pairs[:, 0], pairs[:, 1]).any():
                erased[node] = rnd
    return erased, len(pending)


def test_withdrawal_is_erased_within_the_poll_bound_under_sampling(tmp_path):
    erased, requests = _erasure_rounds(tmp_path, poll_every=3)
    # recorded before round 3 -> erased in round 3 + N - 1 at the latest (README's guarantee)
    assert len(erased) == requests and max(erased.values()) <= 3 + 3 - 1, erased
    # without the polls a node waits until it is sampled: the bound is what the polls give
    slow, _ = _erasure_rounds(tmp_path, poll_every=1000)
    assert len(slow) < requests or max(slow.values()) > 5, slow


def test_a_node_back_with_a_new_id_can_withdraw_while_its_old_id_is_listed(tmp_path):
    session = new_session(_cfg(tmp_path, **{"round-timeout": 0.5}), 3, tmp_path / "fed")
    session.run_rounds(2)
    grid, node_dir = session.grid, session.node_dirs()[0]
    old = grid.contexts[1]                          # the SuperNode of partition 0 restarts ...
    grid.contexts[4] = Context(run_id=old.run_id, node_id=4, node_config=dict(old.node_config),
                               state=RecordDict(), run_config=old.run_config)
    grid.dead.add(1)                                # ... its old id answers nothing
    grid.get_node_ids = lambda: [1, 2, 3, 4]        # but is still listed
    user = min(read_ledger(node_dir).counts())
    assert cli.main(["unshare", "--state-dir", str(node_dir), "--user", str(user), "--all"]) == 0
    session.run_rounds(2)
    assert [r.status for r in read_ledger(node_dir).requests] == [DONE]
    assert session.state.edges.count_by_user(np.array([user]))[0] == 0


def test_editing_the_sharing_file_is_a_policy_change(tmp_path):
    sharing_file = tmp_path / "sharing.json"
    cfg = _cfg(tmp_path, **{"sharing-file": str(sharing_file)})
    sharing_file.write_text("{}")
    session = new_session(cfg, 3, tmp_path / "fed")
    session.run_rounds(1)
    node_dir = session.node_dirs()[0]
    user = min(read_ledger(node_dir).counts())
    items = read_ledger(node_dir).order[user][:3]
    sharing_file.write_text(f'{{"{user}": {items.tolist()}}}')     # same path, new contents
    session = restart(session, cfg)
    session.run_rounds(2)
    assert sorted(p[1] for p in _server_pairs(session) if p[0] == user) == sorted(items.tolist())
    sharing_file.write_text(f'{{"{user}": {items[:1].tolist()}}}')
    session = restart(session, cfg)
    session.run_rounds(2)
    assert [p[1] for p in _server_pairs(session) if p[0] == user] == [int(items[0])]
    assert _server_pairs(session) == _ledger_pairs(session)
