"""FRU as an unlearning method (``unlearning-method = "fru"``, docs/design.md "FRU in FedShare"):
the update log keeps only the top-alpha rows of each round's server-model update; with
alpha = 1 the rollback rebuilds any logged round's model; a replay moves the model by the
stored lengths in the calibration's directions; a real withdrawal replaces every replayed
log entry, leaves no withdrawn pair on disk, and a restart between the erasure and the replay
still replays (to the same result as an uninterrupted run); the two config keys are checked."""

import numpy as np
import pytest
import torch

from client_app import cli
from client_app.ledger import read_ledger
from common.config import ConfigError, load_config
from common.datasets import default_data_root
from harness.session import Session, clone, new_session, restart
from server_app.audit import audit_live, audit_state_dir
from server_app.fru import rollback_and_replay
from server_app.records import Catalog
from server_app.state import ServerState
from server_app.state_file import erase_in_payload, read_state
from server_app.update_log import UpdateLog, top_rows

NUM_USERS, NUM_ITEMS = 6, 8


def _cfg(tmp_path, **overrides):
    return load_config({"unlearning-method": "fru", "embedding-dim": 4, "num-layers": 1,
                        "server-batch-size": 4, "server-epochs": 1.0, "state-dir": str(tmp_path),
                        "out-dir": str(tmp_path / "out"), **overrides})


def _tiny_state(tmp_path, rounds: int = 4, **overrides) -> tuple[ServerState, list[dict]]:
    """A server state on 6 users x 8 items, new edges entering in every round, trained
    ``rounds`` rounds; returns it and the model's tables after each round (index 0: start)."""
    state = ServerState(_cfg(tmp_path, **overrides), tmp_path / "server")
    state.initialize(Catalog(NUM_USERS, NUM_ITEMS, "tiny"))
    rng = np.random.default_rng(0)
    models = [state.model.tables()]
    for rnd in range(1, rounds + 1):
        users = rng.integers(0, NUM_USERS, 5)
        state.add_edges(np.stack([users, rng.integers(0, NUM_ITEMS, 5)], 1), rnd)
        state.train_graph(rnd=rnd)
        models.append(state.model.tables())
    return state, models


def test_top_rows_keeps_the_largest_half_of_the_changed_rows_by_hand():
    delta = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, -2.0], [0.0, 0.0]])
    kept = top_rows(delta, 0.5)                     # 3 rows changed: ceil(1.5) = 2 kept
    assert kept.rows.tolist() == [1, 3]
    assert torch.equal(kept.values, delta[[1, 3]])
    assert top_rows(delta, 1.0).rows.tolist() == [1, 2, 3]   # unchanged rows are never kept
    assert top_rows(delta, 0.1).rows.tolist() == [1]


def test_the_log_of_a_real_graph_step_holds_only_the_top_alpha_rows(tmp_path):
    state, models = _tiny_state(tmp_path, rounds=3)
    assert sorted(state.updates.rounds) == [1, 2, 3]
    for rnd, entry in state.updates.rounds.items():
        for kind in ("user", "item"):
            delta = models[rnd][kind] - models[rnd - 1][kind]
            norms = delta.norm(dim=1)
            changed = int((norms > 0).sum())
            rows = entry.tables[kind].rows
            assert len(rows) == -(-changed // 2)                  # ceil(alpha * changed)
            assert norms[rows].min() >= norms[np.setdiff1d(np.arange(len(norms)), rows)].max()
            assert torch.equal(entry.tables[kind].values, delta[rows])
    expected = sum(8 * len(t.rows) + 4 * t.values.numel()
                   for e in state.updates.rounds.values() for t in e.tables.values())
    assert state.updates.storage_bytes() == expected > 0


def test_with_alpha_one_the_rollback_rebuilds_every_logged_round(tmp_path):
    state, models = _tiny_state(tmp_path, rounds=4, **{"fru-alpha": 1.0})
    for rnd in range(0, 5):
        rebuilt = state.updates.rollback(state.snapshots[0], rnd + 1)
        for kind in ("user", "item"):
            torch.testing.assert_close(rebuilt[kind], models[rnd][kind], rtol=0, atol=1e-6)


def _replay_with_known_calibration(state: ServerState, known: dict[int, dict]) -> None:
    """The replay with each round's calibration replaced by the known update ``known[rnd]``."""
    def calibrate(rnd, epochs):
        moved = {k: state.model.tables()[k] + known[rnd][k] for k in known[rnd]}
        state.model.set_tables(moved)
    state.calibrate = calibrate
    rollback_and_replay(state, 0.1)


def test_a_replay_moves_the_model_by_the_stored_lengths_in_the_calibrated_directions(tmp_path):
    state, _ = _tiny_state(tmp_path, rounds=4)
    stored = dict(state.updates.rounds)
    generator = torch.Generator().manual_seed(1)
    known = {r: {k: torch.randn(n, 4, generator=generator) for k, n in
                 (("user", NUM_USERS), ("item", NUM_ITEMS))} for r in (3, 4)}
    known[3]["item"][stored[3].tables["item"].rows[0]] = 0.0   # a row the calibration left
    state.updates.owe_replay(3)
    _replay_with_known_calibration(state, known)
    expected = state.updates.rollback(state.snapshots[0], 3)
    for rnd in (3, 4):
        for kind, table in expected.items():
            rows = stored[rnd].tables[kind].rows
            direction = known[rnd][kind][rows]
            moved = direction.norm(dim=1) > 0
            length = stored[rnd].tables[kind].values.norm(dim=1, keepdim=True)
            table[rows[moved]] += (length * direction / direction.norm(dim=1, keepdim=True))[moved]
            assert state.updates.rounds[rnd].tables[kind].rows.tolist() == rows[moved].tolist()
    assert stored[3].tables["item"].rows[0] not in state.updates.rounds[3].tables["item"].rows
    for kind, table in expected.items():
        torch.testing.assert_close(state.model.tables()[kind], table, rtol=0, atol=1e-5)
    assert all(state.updates.rounds[r] is stored[r] for r in (1, 2))   # before: untouched


def test_after_a_real_replay_with_nothing_withdrawn_the_log_reproduces_the_model(tmp_path):
    state, _ = _tiny_state(tmp_path, rounds=4)
    stored = dict(state.updates.rounds)
    state.updates.owe_replay(2)
    assert rollback_and_replay(state, 0.5) == [2, 3, 4]
    rebuilt = state.updates.rollback(state.snapshots[0], 5)
    for kind in ("user", "item"):
        torch.testing.assert_close(state.model.tables()[kind], rebuilt[kind], rtol=0, atol=1e-5)
        for rnd in (2, 3, 4):
            new, old = state.updates.rounds[rnd].tables[kind], stored[rnd].tables[kind]
            keep = np.isin(old.rows, new.rows)
            torch.testing.assert_close(new.lengths(), old.lengths()[keep])
    assert state.updates.replay_from is None
    assert not state.model.optimizer.state                      # fresh after the replay


def test_another_run_that_held_withdrawn_pairs_loses_its_log_with_its_model(tmp_path):
    state, _ = _tiny_state(tmp_path, rounds=2)
    state.save()
    payload = read_state(state.state_dir)
    assert payload["updates"]["rounds"]
    assert erase_in_payload(payload, state.edges.pairs()[:1]) == 1
    assert payload["updates"] is None and payload["model"] is None and payload["owed_retrain"]
    revived = ServerState(state.cfg, tmp_path / "revived")
    revived._restore(payload)                       # resumed: a new generation, a new log
    assert revived.generation == 1 and revived.updates.rounds == {}


@pytest.mark.parametrize("overrides,message", [
    ({"fru-alpha": 0.0}, "fru-alpha: Input should be greater than 0"),
    ({"fru-alpha": 1.5}, "fru-alpha: Input should be less than or equal to 1"),
    ({"fru-calibration": 0.0}, "fru-calibration: Input should be greater than 0"),
    ({"fru-calibration": 2.0}, "fru-calibration: Input should be less than or equal to 1"),
    ({"fru-alpha": "half"}, "fru-alpha: Input should be a valid number"),
    ({"unlearning-method": "fru", "snapshot-rounds": "5"},
     "snapshot-rounds must include 0 for unlearning-method 'fru'"),
])
def test_the_fru_keys_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)
    assert load_config({"unlearning-method": "fru", "fru-alpha": 1.0, "fru-calibration": 1.0})


# ------------------------------------------------------------- in a federation (ML-100K)
federated = pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(),
                               reason="ML-100K not available: federated FRU tests skipped")


def _session(tmp_path) -> Session:
    """3 nodes of 60 users; sharing 25 % from round 1 and 50 % from round 2 (noticed in round
    2's train replies, so the new edges enter in round 3), 4 rounds trained."""
    cfg = load_config({"max-users": 60, "num-rounds": 10, "eval-every": 0, "fraction-train": 1.0,
                       "sharing-ratio": 0.25, "ratio-schedule": "2:0.5",
                       "unlearning-method": "fru", "state-dir": str(tmp_path / "x"),
                       "out-dir": str(tmp_path / "out")})
    session = new_session(cfg, 3, tmp_path / "fed")
    session.run_rounds(4)
    return session


def _withdraw_late_pairs(session: Session) -> np.ndarray:
    """The user with most edges entered in round 3 withdraws those (CLI): rollback to round 2."""
    edges = session.state.edges
    late = edges.round == 3
    user = int(np.bincount(edges.user[late]).argmax())
    items = edges.item[late & (edges.user == user)]
    node_dir = next(d for d in session.node_dirs() if user in read_ledger(d).shared)
    assert cli.main(["unshare", "--state-dir", str(node_dir), "--user", str(user),
                     "--items", *map(str, items)]) == 0
    session.state.registry.flag_unshare(session.grid.get_node_ids())
    return np.stack([np.full(len(items), user), items], 1)


def _log(session: Session) -> dict:
    return {r: {k: (t.rows.clone(), t.values.clone()) for k, t in e.tables.items()}
            for r, e in session.state.updates.rounds.items()}


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@federated
def test_a_withdrawal_replaces_every_replayed_log_entry_and_leaves_no_pair_on_disk(tmp_path):
    session = _session(tmp_path)
    pairs = _withdraw_late_pairs(session)
    before = _log(session)
    session.run_rounds(1)
    state, after = session.state, _log(session)
    assert not state.edges.contains(pairs[:, 0], pairs[:, 1]).any()
    assert state.updates.replay_from is None
    for rnd in (1, 2):                                     # before the pairs entered
        assert all(_same(after[rnd][k], before[rnd][k]) for k in ("user", "item"))
    for rnd in (3, 4):
        assert not any(_same(after[rnd][k], before[rnd][k]) for k in ("user", "item"))
    saved = read_state(state.state_dir)["updates"]
    assert saved["replay_from"] is None
    for rnd in (3, 4):
        assert torch.equal(saved["rounds"][rnd]["item_values"], after[rnd]["item"][1])
    assert audit_live(state, pairs).clean
    assert audit_state_dir(session.workdir, pairs=pairs).clean


class Killed(Exception):
    """The ServerApp process dies here."""


@federated
def test_a_restart_between_the_erasure_and_the_replay_still_replays(tmp_path):
    session = _session(tmp_path)
    pairs = _withdraw_late_pairs(session)
    before = _log(session)
    twin = clone(session, tmp_path / "twin", session.strategy.cfg)
    twin.run_rounds(1)                                   # uninterrupted

    def die(state):
        raise Killed
    session.strategy.withdrawal.method.settle = die      # dies right after the erasure's save
    with pytest.raises(Killed):
        session.run_rounds(1)
    saved = read_state(session.state.state_dir)
    assert saved["updates"]["replay_from"] == 3          # the replay is owed on disk
    resumed = restart(session)
    resumed.run_rounds(1)
    after = _log(resumed)
    assert resumed.state.updates.replay_from is None
    for rnd in (3, 4):
        assert not any(_same(after[rnd][k], before[rnd][k]) for k in ("user", "item"))
        assert all(_same(after[rnd][k], _log(twin)[rnd][k]) for k in ("user", "item"))
    assert audit_state_dir(resumed.workdir, pairs=pairs).clean
