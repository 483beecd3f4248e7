"""The time-left estimate at the end of the server's per-round log line: the rounds left at the
recent round time without evaluation, plus the evaluations still due at their recent time."""

from common.config import load_config
from server_app.app import _progress, _time_left
from server_app.records import PhaseStats, RoundRecord

CFG = load_config({"num-rounds": 10, "eval-every": 5})


def _round(rnd: int, seconds: float, evaluate: float | None = None) -> RoundRecord:
    record = RoundRecord(rnd, seconds=seconds)
    if evaluate is not None:
        record.phases["evaluate"] = PhaseStats(seconds=evaluate)
    return record


def test_evaluations_are_estimated_apart_from_training():
    history = [_round(r, 2.0) for r in range(1, 5)] + [_round(5, 32.0, evaluate=30.0)]
    # rounds 6..10 at 2 s, and the evaluation of round 10 at 30 s
    assert _time_left(5, CFG, history) == " | ~40s left"
    assert _time_left(5, CFG, history) in _progress(history[-1], CFG, history)


def test_a_lower_bound_until_an_evaluation_was_timed():
    history = [_round(r, 20.0) for r in range(1, 4)]
    assert _time_left(3, CFG, history) == " | ≥2m20s left"      # 7 rounds, 2 evaluations due


def test_a_slow_first_round_does_not_sway_it_and_the_last_round_says_nothing():
    history = [_round(1, 600.0)] + [_round(r, 1.0) for r in range(2, 4)]
    assert _time_left(3, load_config({"num-rounds": 10, "eval-every": 0}), history) == " | ~7s left"
    history += [_round(r, 1.0) for r in range(4, 7)]
    assert _time_left(6, load_config({"num-rounds": 10, "eval-every": 0}), history) == " | ~4s left"
    assert _time_left(10, CFG, history) == ""
    assert _time_left(1, CFG, [RoundRecord(1, skipped=True)]) == ""
