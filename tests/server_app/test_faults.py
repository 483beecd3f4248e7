"""Faults and hostile input against the real strategy and ClientApp (in one process): every bad
reply is rejected with the node id and a reason, the round completes with the other replies,
lost nodes are reported, and a restarted ServerApp resumes from its checkpoint."""

import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord

from harness.hostile import ATTACKS, TRAIN_ATTACKS
from harness.inprocess import InProcessGrid
from harness.session import new_session, restart
from client_app.cli import main as cli
from client_app.ledger import read_ledger
from common.config import load_config
from common.datasets import default_data_root
from common.protocol import to_record
from server_app import validation
from server_app.app import run_fedshare
from server_app.state import ServerState
from server_app.strategy import FedShareStrategy

pytestmark = pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(),
                                reason="ML-100K not available")


def _cfg(tmp_path, **overrides):
    """Nodes upload item rows (``upload-mode = rows``): the train attacks tamper with them."""
    return load_config({"max-users": 60, "num-rounds": 3, "eval-every": 0, "fraction-train": 1.0,
                        "upload-mode": "rows",
                        "round-timeout": 1.0, "state-dir": str(tmp_path / "state"),
                        "out-dir": str(tmp_path / "out"), **overrides})


class TamperingGrid(InProcessGrid):
    """One node's replies of one message type pass through ``tamper`` before the server sees them."""

    def __init__(self, cfg, kind, tamper, delay_node=None, delay=0.0, tamper_node=1):
        super().__init__(cfg.as_dict(), 3)
        self.kind, self.tamper, self.tamper_node = kind, tamper, tamper_node
        self.delay_node, self.delay, self.release = delay_node, delay, {}

    def push_messages(self, messages):
        messages = list(messages)
        ids = list(super().push_messages(messages))
        for message_id, message in zip(ids, messages):
            node = message.metadata.dst_node_id
            if node == self.tamper_node and message.metadata.message_type == self.kind and message_id in self._replies:
                self.tamper(self._replies[message_id])
            if node == self.delay_node:
                self.release[message_id] = time.monotonic() + self.delay
        return ids

    def pull_messages(self, message_ids):
        now = time.monotonic()
        ready = [m for m in message_ids if self.release.get(m, 0) <= now]
        return super().pull_messages(ready)


def _run_round(cfg, grid, rounds=2):
    state = ServerState(cfg, cfg.state_dir + "/server")
    strategy = FedShareStrategy(cfg, state)
    return strategy.run(grid, range(1, rounds + 1)), state


# Each train attack of the soak's catalogue (harness/hostile.py), with the reason it must be
# rejected for. Attacks see the federation's catalog (users, items): ML-100K's 1682 items.
TRAIN_REASONS = {
    "nan-values": "NaN or Inf", "inf-counts": "NaN or Inf", "float64-values": "must be float32",
    "wrong-shape": "shapes disagree", "item-out-of-range": "out of range",
    "duplicate-rows": "duplicate item rows", "huge-values": "beyond the bound",
    "float32-overflow-counts": "counts exceed what num-examples",
    # weight bought by claiming more samples than the node's users can have (within the old cap)
    "inflated-num-examples": "num-examples 100000000 outside",
    "num-users-lie": "num-users 1000000000 outside", "metric-as-list": "must be a number, got list",
    "metrics-missing": "metrics keys",
}


def _attack(kind, name, catalog=(60, 1682)):
    return lambda reply: ATTACKS[kind][name](reply.content, catalog)


def test_every_train_attack_of_the_soak_has_a_reason_here():
    assert set(TRAIN_REASONS) == set(TRAIN_ATTACKS)


@pytest.mark.parametrize("case", sorted(TRAIN_REASONS))
def test_bad_train_reply_is_rejected_and_round_goes_on(tmp_path, case):
    reason = TRAIN_REASONS[case]
    cfg = _cfg(tmp_path)
    records, state = _run_round(cfg, TamperingGrid(cfg, "train", _attack("train", case)))
    train = records[-1].phases["train"]
    assert train.ok == 2 and train.rejected
    assert all(r.startswith("node 1:") and reason in r for r in train.rejected), train.rejected
    assert np.isfinite(state.item_emb).all() and np.abs(state.item_emb).max() < 10
    honest, = FedShareStrategy(cfg, state).run(InProcessGrid(cfg.as_dict(), 3), [3])
    assert honest.phases["train"].ok == 3 and np.isfinite(honest.train_loss)  # nothing poisoned


def _set_share(user=None, item=None):
    def tamper(reply):
        share = {k: v.numpy() for k, v in reply.content.array_records["share"].items()}
        share["user"] = user(share) if user else share["user"]
        share["item"] = item(share) if item else share["item"]
        metrics = dict(reply.content.metric_records["metrics"])
        metrics["num-pairs"] = len(share["user"])
        reply.content["share"] = to_record(**share)
        reply.content["metrics"] = MetricRecord(metrics)
    return tamper


def test_oversized_share_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "MAX_SHARE_PAIRS", 10)
    cfg = _cfg(tmp_path)
    records, state = _run_round(cfg, TamperingGrid(cfg, "query.share", lambda r: None))
    share = records[0].phases["share"]
    assert share.ok == 0 and len(share.rejected) == 3
    assert all("oversized share" in r for r in share.rejected)


def test_share_for_users_of_another_node_is_rejected(tmp_path):
    cfg = _cfg(tmp_path)
    # node 1 replaces its users by node 2's (users 20..39 live on partition 1)
    grid = TamperingGrid(cfg, "query.share", _set_share(user=lambda s: s["user"] + 20))
    records, state = _run_round(cfg, grid, rounds=1)
    share = records[0].phases["share"]
    rejected = [r for r in share.rejected if "another node shares for" in r]
    # whichever of node 1 / node 2 is judged second is refused; no user gets two owners
    assert share.ok == 2 and len(rejected) == 1
    owned = [state.registry.users_of(n).tolist() for n in (1, 2, 3)]
    assert sum(map(len, owned)) == len(set().union(*owned)) > 0


def test_out_of_range_and_catalog_mismatch_shares_are_rejected(tmp_path):
    cfg = _cfg(tmp_path)
    grid = TamperingGrid(cfg, "query.share", _set_share(item=lambda s: s["item"] + 100_000))
    records, _ = _run_round(cfg, grid, rounds=1)
    assert any(r.startswith("node 1:") and "item id out of range" in r
               for r in records[0].phases["share"].rejected)

    def other_data(reply):
        reply.content["catalog"] = ConfigRecord({"fingerprint": "someone-else"})
    cfg2 = _cfg(tmp_path / "b")
    # (the first node to answer fixes the federation's catalog; node 3 answers last)
    grid = TamperingGrid(cfg2, "query.share", other_data, tamper_node=3)
    records, _ = _run_round(cfg2, grid, rounds=1)
    share = records[0].phases["share"]
    assert share.ok == 2
    assert any(r.startswith("node 3:") and "differs from the federation" in r
               for r in share.rejected)


def test_dead_node_and_straggler_do_not_stop_the_round(tmp_path):
    cfg = _cfg(tmp_path)
    grid = TamperingGrid(cfg, "train", lambda r: None, delay_node=3, delay=5.0)
    state = ServerState(cfg, tmp_path / "server")
    strategy = FedShareStrategy(cfg, state)
    strategy.run(grid, [1])
    grid.dead.add(2)                      # node 2 dies; node 3 answers after the timeout
    grid.get_node_ids = lambda: [1, 2, 3]  # not yet noticed as gone: it is still asked
    record, = strategy.run(grid, [2])
    assert record.phases["train"].ok == 1
    lost = {entry.node: entry.users for entry in record.lost_nodes}
    assert set(lost) == {2, 3}
    assert lost[2] == state.registry.users_of(2).tolist() and len(lost[2]) > 0


def test_restarted_server_resumes_from_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, **{"run-name": "resume-me", "num-rounds": 2, "round-timeout": 60.0})
    dirs = [str(tmp_path / f"node-{p}") for p in range(3)]
    first = run_fedshare(InProcessGrid(cfg.as_dict(), 3, dirs), cfg)
    assert [r["round"] for r in first["rounds"]] == [1, 2]
    cfg4 = cfg.model_copy(update={"num_rounds": 4})
    ledger = read_ledger(dirs[0])
    user = min(ledger.counts())
    assert cli(["unshare", "--state-dir", dirs[0], "--user", str(user), "--all"]) == 0
    # the ServerApp is started again (fresh process state, same run-name, same nodes)
    second = run_fedshare(InProcessGrid(cfg4.as_dict(), 3, dirs), cfg4)
    assert [r["round"] for r in second["rounds"]] == [1, 2, 3, 4]
    assert second["rounds"][1] == first["rounds"][1]
    state = ServerState.load(cfg4, tmp_path / "state" / "server" / "resume-me")
    assert state.round == 4 and not (state.edges.user == user).any()
    assert read_ledger(dirs[0]).requests[0].status == "done"
    assert any(not o.refused for o in state.outcomes.values())


def test_sampling_keeps_64_bit_node_ids_exact(tmp_path):
    cfg = _cfg(tmp_path, **{"fraction-train": 0.5})
    strategy = FedShareStrategy(cfg, ServerState(cfg, tmp_path / "s"))
    ids = [2**63 + 5, 3, 2**62 + 1, 2**64 - 1]
    picked = strategy.sample(ids)
    assert len(picked) == 2 and set(picked) <= set(ids)
    assert all(type(n) is int for n in picked)


def test_a_run_whose_nodes_cannot_read_their_data_fails_with_the_reason(tmp_path):
    cfg = _cfg(tmp_path, **{"data-dir": str(tmp_path / "no-such-folder"), "num-rounds": 2})
    with pytest.raises(RuntimeError, match="every round was skipped.*no-such-folder"):
        run_fedshare(InProcessGrid(cfg.as_dict(), 2), cfg)


def test_a_restarted_server_serves_the_models_it_saved(tmp_path):
    """Evaluating right after a restart scores as before it (the graph views are derived
    from the saved model, not left empty until the next round trains it)."""
    cfg = _cfg(tmp_path, **{"sharing-ratio": 0.5})
    session = new_session(cfg, 3, tmp_path / "fed")
    session.run_rounds(2)
    before = session.evaluate()
    after = restart(session).evaluate()
    assert after["ndcg@20"] == pytest.approx(before["ndcg@20"], abs=1e-6)


def test_with_the_expected_fingerprint_even_the_first_node_cannot_forge_the_catalog(tmp_path):
    def forged(reply):
        reply.content["catalog"] = ConfigRecord({"fingerprint": "forged"})
    expected = load_config({"max-users": 60}).load_data().fingerprint
    cfg = _cfg(tmp_path, **{"data-fingerprint": expected})
    # node 1 answers first: without the key its forged catalog would become the federation's
    records, state = _run_round(cfg, TamperingGrid(cfg, "query.share", forged), rounds=1)
    share = records[0].phases["share"]
    assert share.ok == 2 and state.catalog.fingerprint == expected
    assert [r for r in share.rejected if r.startswith("node 1:")] == [
        "node 1: share rejected: node data fingerprint 'forged' is not the run's "
        f"data-fingerprint {expected!r}"]


def test_a_run_whose_sharing_file_is_bad_fails_with_the_reason(tmp_path):
    (tmp_path / "sharing.json").write_text("garbage line")
    cfg = _cfg(tmp_path, **{"sharing-file": str(tmp_path / "sharing.json"), "num-rounds": 2})
    with pytest.raises(RuntimeError, match="every round was skipped.*sharing-file .*cannot read JSON"):
        run_fedshare(InProcessGrid(cfg.as_dict(), 2), cfg)


@pytest.mark.parametrize("attack, reason", [("unshare-flood", "unshare requests in one reply"),
                                            ("unshare-mixed-users", "names several users")])
def test_unshare_riders_are_checked_before_anything_was_shared(tmp_path, attack, reason):
    cfg = _cfg(tmp_path)
    # round 1: no catalog yet, so ids can only be bounded loosely, but the reply is still judged
    grid = TamperingGrid(cfg, "query.share", _attack("query.share", attack))
    records, _ = _run_round(cfg, grid, rounds=1)
    share = records[0].phases["share"]
    assert any(r.startswith("node 1:") and reason in r for r in share.rejected), share.rejected
