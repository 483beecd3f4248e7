"""Unsharing end to end (real ServerApp strategy + ClientApp handlers, serialised messages, in
one process): durable requests, acknowledgement after persistence, idempotency, refusals,
the audit, the graph after erasure, and contrastive unlearning against naive and Retrain."""

import json

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from client_app import cli
from client_app.ledger import DONE, PENDING, REFUSED, read_ledger, save_ledger
from common.config import load_config
from common.datasets import default_data_root
from common.forgetting import pair_ranks
from common.graph import build_graph
from harness.session import Session, clone, new_session, withdraw, withdraw_pairs
from server_app.audit import audit_live, audit_state_dir

pytestmark = pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(),
                                reason="ML-100K not available")



def _session(tmp_path, **overrides) -> Session:
    cfg = load_config({"max-users": 90, "num-rounds": 10, "eval-every": 0, "fraction-train": 1.0,
                       "sharing-ratio": 0.5, "snapshot-rounds": "0", "state-dir": str(tmp_path / "x"),
                       "out-dir": str(tmp_path / "out"), **overrides})
    session = new_session(cfg, 3, tmp_path / "fed")
    session.run_rounds(2)
    return session


def _acks_sent(session: Session, request_id: int) -> int:
    """How often the server acknowledged ``request_id`` (counted on the wire)."""
    return session.acks.count(request_id)


def _record_acks(session: Session) -> None:
    session.acks = []
    push = session.grid.push_messages

    def recording_push(messages):
        messages = list(messages)
        for message in messages:
            if "unshare-ack" in message.content.array_records:
                record = message.content.array_records["unshare-ack"]
                session.acks += record["request"].numpy().tolist()
        return push(messages)

    session.grid.push_messages = recording_push


def test_request_survives_node_restart_and_is_acknowledged_once(tmp_path, capsys):
    session = _session(tmp_path)
    _record_acks(session)
    node_dir = session.node_dirs()[0]
    user = min(read_ledger(node_dir).counts())
    items = read_ledger(node_dir).shared[user][:3]
    assert cli.main(["unshare", "--state-dir", str(node_dir), "--user", str(user),
                     "--items", *map(str, items)]) == 0
    request_id = read_ledger(node_dir).requests[0].request_id
    # restart the node: its per-run memory (context.state) is gone, the ledger is on disk
    old = session.grid.contexts[1]
    session.grid.contexts[1] = Context(run_id=old.run_id, node_id=1, node_config=old.node_config,
                                       state=RecordDict(), run_config=old.run_config)
    assert session.state.edges.contains(np.full(3, user), items).all()
    session.run_rounds(3)
    ledger = read_ledger(node_dir)
    assert [(r.request_id, r.status) for r in ledger.requests] == [(request_id, DONE)]
    assert not session.state.edges.contains(np.full(3, user), items).any()
    assert _acks_sent(session, request_id) == 1
    assert "pending until the server confirms" in capsys.readouterr().out


def test_resent_request_gets_the_same_answer_and_changes_nothing(tmp_path):
    session = _session(tmp_path)
    node_dir = session.node_dirs()[1]
    ledger = read_ledger(node_dir)
    user = max(ledger.counts())
    ledger, request = ledger.unshare(user, ledger.shared[user][:2])
    save_ledger(node_dir, ledger)
    session.state.registry.flag_unshare([2])
    session.run_rounds(1)
    edges_after_first = session.state.edges.pairs().copy()
    # the acknowledgement was lost: the node still believes the request is pending
    save_ledger(node_dir, ledger)
    session.state.registry.flag_unshare([2])
    session.run_rounds(1)
    assert np.array_equal(session.state.edges.pairs(), edges_after_first)
    assert read_ledger(node_dir).requests[0].status == DONE
    assert not session.state.outcomes[request.request_id].refused


def test_never_shared_requests_are_refused_foreign_ones_deferred_and_the_round_goes_on(tmp_path):
    session = _session(tmp_path)
    dir0, dir1 = session.node_dirs()[:2]
    ledger0, ledger1 = read_ledger(dir0), read_ledger(dir1)
    foreign_user = min(ledger1.counts())           # hosted by node 2, claimed by node 1
    own_user = min(ledger0.counts())
    shared_items = set(ledger0.shared[own_user].tolist())
    never = np.array([i for i in range(2000) if i not in shared_items][:2])
    raw = json.loads((dir0 / "ledger.json").read_text())
    raw["requests"] = [
        {"id": "11", "user": foreign_user, "items": ledger1.shared[foreign_user][:2].tolist(),
         "status": PENDING, "reason": ""},
        {"id": "12", "user": own_user, "items": never.tolist(), "status": PENDING, "reason": ""},
        {"id": "13", "user": own_user, "items": ledger0.shared[own_user][:1].tolist(),
         "status": PENDING, "reason": ""}]
    (dir0 / "ledger.json").write_text(json.dumps(raw))
    edges_before = len(session.state.edges)
    session.state.registry.flag_unshare([1])
    record = session.run_rounds(1)[0]
    status = {r.request_id: (r.status, r.reason) for r in read_ledger(dir0).requests}
    # another connected node shares for that user: a temporary refusal, never a final one
    assert status[11][0] == PENDING and "shared by another node" in status[11][1]
    assert status[12][0] == REFUSED and "never shared" in status[12][1]
    assert status[13][0] == DONE
    assert len(session.state.edges) == edges_before - 1
    assert record.phases["train"].ok == 3          # the rest of the round is undisturbed
    # the CLI refuses a never-shared item before anything is written
    assert cli.main(["unshare", "--state-dir", str(dir0), "--user", str(own_user),
                     "--items", str(int(never[0]))]) == 2


def test_audit_finds_the_edge_before_and_nothing_after(tmp_path):
    session = _session(tmp_path)
    node_dir = session.node_dirs()[2]
    ledger = read_ledger(node_dir)
    user = max(ledger.counts())
    pairs = np.stack([np.full(len(ledger.shared[user]), user), ledger.shared[user]], 1)
    report = audit_state_dir(session.state.state_dir, pairs=pairs)
    assert report.kinds() == {"pair"} and report.scanned >= 1
    assert audit_live(session.state, pairs).kinds() == {"pair"}
    assert cli.main(["unshare", "--state-dir", str(node_dir), "--user", str(user), "--all"]) == 0
    session.state.registry.flag_unshare([3])
    session.run_rounds(1)
    report = audit_state_dir(session.state.state_dir, pairs=pairs)
    assert report.clean and audit_live(session.state, pairs).clean, report.findings
    # the graph after unsharing equals a graph built from scratch without those edges
    remaining = session.state.edges.pairs()
    assert not (remaining[:, 0] == user).any()
    scratch = build_graph(torch.from_numpy(remaining[:, 0]), torch.from_numpy(remaining[:, 1]),
                          session.state.catalog.num_users, session.state.catalog.num_items)
    assert torch.equal(session.state.graph.edge_index, scratch.edge_index)
    assert torch.equal(session.state.graph.adj.to_dense(), scratch.adj.to_dense())
    assert session.state.edges.round.min() >= 1  # remaining edges keep their entry rounds


def _withdrawn_mean_rank(learned: Session, cfg, method: str, workdir) -> tuple[float, int]:
    """Mean rank (under the server model) of the pairs a scenario withdraws, after 3 rounds
    of ``method`` (Retrain: 5 rounds from scratch) on a copy of ``learned``."""
    session = clone(learned, workdir / method, cfg.model_copy(update={"unlearning_method": method}))
    withdrawn = withdraw(session, 0.1, 1.0, seed=0)
    session.run_rounds(5 if method == "retrain" else 3)
    users, items = session.state.model.propagated(session.state.graph)
    return float(pair_ranks(users, items, withdrawn, session.state.edges.pairs()).mean()), len(withdrawn)


def test_contrastive_moves_withdrawn_ranks_closer_to_retrain_than_naive(tmp_path):
    cfg = load_config({"max-users": 150, "num-rounds": 8, "eval-every": 0, "fraction-train": 1.0,
                       "snapshot-rounds": "0", "state-dir": str(tmp_path / "x"),
                       "out-dir": str(tmp_path / "out")})
    learned = new_session(cfg, 3, tmp_path / "learned")
    learned.run_rounds(5)
    ranks = {m: _withdrawn_mean_rank(learned, cfg, m, tmp_path)
             for m in ("retrain", "naive", "contrastive")}
    gap = {m: abs(ranks[m][0] - ranks["retrain"][0]) for m in ("naive", "contrastive")}
    assert ranks["naive"][1] > 0
    assert gap["contrastive"] < gap["naive"], ranks


def test_a_user_who_withdraws_everything_gets_a_fresh_row_that_nothing_trains(tmp_path):
    """Contrastive unlearning: a user left with no shared edge has no evidence to keep, so its
    server row is re-initialised at once (not pulled back over rounds: the items trained with
    it would still score its old row up) and stays as drawn, since nothing trains an isolated
    row; a user who keeps edges is not re-initialised."""
    session = _session(tmp_path, **{"unlearning-method": "contrastive", "snapshot-rounds": "0"})
    ledger = read_ledger(session.node_dirs()[0])
    leaving, staying = sorted(ledger.counts(), key=ledger.counts().get)[-2:]
    shared = ledger.shared_pairs()
    trained = session.state.model.user_weight.detach().clone()
    withdraw_pairs(session, np.concatenate([shared[shared[:, 0] == leaving],
                                            shared[shared[:, 0] == staying][:1]]))
    session.run_rounds(1)
    fresh = session.state.model.user_weight[leaving].detach().clone()
    assert not session.state.edges.count_by_user(np.array([leaving]))[0]
    assert torch.norm(fresh - trained[leaving]) > 0.5 * torch.norm(trained[leaving])
    assert torch.norm(fresh - session.state.snapshots[0]["user"][leaving]) > 0.1
    session.run_rounds(2)
    torch.testing.assert_close(session.state.model.user_weight[leaving].detach(), fresh, rtol=0, atol=0)
    assert session.state.edges.count_by_user(np.array([staying]))[0]
