"""Equal budgets for unlearning methods (harness/unlearning_runs.py): every method is measured
after the same number of training rounds, Retrain's catch-up rounds are counted as its cost,
and the others' cost is the work the request caused."""

import numpy as np
import pytest

from common.config import load_config
from common.datasets import default_data_root
from common.forgetting import forget_set
from harness.session import new_session, shared_pairs
from harness.unlearning_runs import Budget, extra_seconds, run_unlearning
from server_app.records import PhaseStats, RoundRecord


def _record(rnd: int, seconds: float, withdraw: float = 0.0, unlearn: float = 0.0) -> RoundRecord:
    record = RoundRecord(rnd, seconds=seconds)
    record.phases["unshare"] = PhaseStats(withdraw_seconds=withdraw)
    record.phases["graph"] = PhaseStats(unlearn_seconds=unlearn)
    return record


def test_extra_seconds_hand_computed():
    records = [_record(5, 2.0, withdraw=0.5, unlearn=0.25), _record(6, 3.0, unlearn=0.25),
               _record(7, 4.0), _record(8, 8.0)]
    assert extra_seconds(records, "contrastive", after_rounds=2) == 1.0   # 0.5 + 0.25 + 0.25
    assert extra_seconds(records, "naive", after_rounds=2) == 1.0
    assert extra_seconds(records, "retrain", after_rounds=2) == 5.0       # rounds 5 and 6


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="ML-100K not available")
@pytest.mark.parametrize("requests", [1, 2])
def test_every_method_is_measured_after_the_same_number_of_training_rounds(tmp_path, requests):
    cfg = load_config({"max-users": 60, "num-rounds": 20, "eval-every": 0, "fraction-train": 1.0,
                       "sharing-ratio": 0.5, "snapshot-rounds": "0,1", "unlearn-rounds": 2,
                       "server-epochs": 1, "state-dir": str(tmp_path / "x"),
                       "out-dir": str(tmp_path / "out")})
    learned = new_session(cfg, 3, tmp_path / "learned")
    learned.run_rounds(2)
    shared = shared_pairs(learned)
    sets = [forget_set(shared, "random", 0.05, seed=k) for k in range(requests)]
    budget = Budget(learn_rounds=2, after_rounds=2)
    runs = {m: run_unlearning(learned, cfg, m, sets, budget, tmp_path / m)
            for m in ("naive", "contrastive", "retrain")}
    trained = 2 + requests - 1 + 2
    assert {m: r.trained_rounds for m, r in runs.items()} == dict.fromkeys(runs, trained)
    assert runs["naive"].rounds == runs["contrastive"].rounds == requests + 1
    assert runs["retrain"].rounds == requests + 1 + 2 + requests - 1
    assert runs["retrain"].session.state.generation == requests
    for run in runs.values():
        assert run.extra_seconds > 0.0
        assert len(run.withdrawn) == sum(len(s) for s in sets)
        assert not run.session.state.edges.contains(run.withdrawn[:, 0], run.withdrawn[:, 1]).any()


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="ML-100K not available")
def test_forget_sets_under_sampling_skip_nodes_never_contacted(tmp_path):
    """Cross-user with sampling: a node never sampled has no ledger yet and shares nothing."""
    cfg = load_config({"max-users": 40, "num-rounds": 20, "eval-every": 0, "fraction-train": 0.25,
                       "sharing-ratio": 0.5, "snapshot-rounds": "0,1", "unlearn-rounds": 1,
                       "server-epochs": 1, "state-dir": str(tmp_path / "x"),
                       "out-dir": str(tmp_path / "out")})
    learned = new_session(cfg, 8, tmp_path / "learned")
    learned.run_rounds(1)                                   # 2 of 8 nodes contacted
    shared = shared_pairs(learned)
    assert len(shared) == len(learned.state.edges) > 0
    run = run_unlearning(learned, cfg, "naive", [forget_set(shared, "random", 0.2, seed=0)],
                         Budget(learn_rounds=1, after_rounds=1), tmp_path / "naive")
    assert len(run.withdrawn) > 0
    assert not run.session.state.edges.contains(run.withdrawn[:, 0], run.withdrawn[:, 1]).any()
