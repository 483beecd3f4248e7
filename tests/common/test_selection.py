"""Model selection on validation: early stopping on hand-made metric sequences."""

import math

import pytest

from common.selection import Selection, select_best

# Validation NDCG per evaluation: best at index 3 (0.31); then 2 worse ones, a new best at
# index 6 (0.33), then 4 worse ones.
CURVE = [0.10, 0.20, 0.25, 0.31, 0.30, 0.305, 0.33, 0.32, 0.329, 0.2, 0.1]


@pytest.mark.parametrize("patience,best,last", [
    (0, 6, 10),    # read everything: the global best
    (1, 3, 4),     # stops at the first non-improvement after 0.31
    (2, 3, 5),     # 0.30 and 0.305 do not beat 0.31: stops before reaching 0.33
    (3, 6, 9),     # survives the dip, finds 0.33, then 3 worse ones
    (10, 6, 10),
])
def test_select_best_on_hand_made_curve(patience, best, last):
    assert select_best(CURVE, patience) == (best, last)


def test_min_delta_requires_a_real_improvement():
    assert select_best([0.30, 0.305, 0.309, 0.2], patience=0, min_delta=0.01) == (0, 3)
    assert select_best([0.30, 0.305, 0.311, 0.2], patience=0, min_delta=0.01) == (2, 3)


def test_selection_keeps_the_metrics_of_the_best_round():
    state = Selection(metric="ndcg@20", patience=2)
    rounds = [(5, 0.2, 0.18), (10, 0.3, 0.27), (15, 0.25, 0.29), (20, 0.28, 0.30)]
    for step, valid, test in rounds:
        state = state.observe(step, {"ndcg@20": valid, "recall@20": 1.0}, {"ndcg@20": test})
        assert state.improved == (step in (5, 10))
    assert state.should_stop and state.best_step == 10 and state.last_step == 20
    assert state.best_test == {"ndcg@20": 0.27}          # the test value at round 10, not 0.30
    assert state.best_valid["recall@20"] == 1.0
    assert state.summary() == {"metric": "ndcg@20", "patience": 2, "best_step": 10,
                               "best_value": 0.3, "last_step": 20, "evaluations": 4,
                               "stopped_early": True}


def test_state_is_immutable_and_inputs_are_checked():
    empty = Selection()
    after = empty.observe(1, {"ndcg@20": 0.1})
    assert empty.best_step is None and empty.best_value == -math.inf and after.best_step == 1
    with pytest.raises(KeyError, match="ndcg@20"):
        empty.observe(1, {"recall@20": 0.1})
    with pytest.raises(ValueError, match="steps must increase"):
        after.observe(1, {"ndcg@20": 0.2})
    with pytest.raises(ValueError, match="NaN"):
        empty.observe(1, {"ndcg@20": float("nan")})
    with pytest.raises(ValueError, match="patience"):
        Selection(patience=-1)
    with pytest.raises(ValueError, match="no validation values"):
        select_best([])
