"""Model selection on validation: early stopping with a patience, pure and Flower-free.

Every method (centralized epochs, federated rounds) is read the same way: evaluate on the
validation split every so often, keep the round whose validation metric is best, report the
*test* metrics of that round, and stop once ``patience`` evaluations in a row did not improve.

The state is an immutable value, so a server can keep it in its records and a benchmark can
replay a learning curve::

    state = Selection(metric="ndcg@20", patience=5)
    for step in ...:
        state = state.observe(step, valid_metrics, test_metrics)   # test may be None
        if state.should_stop:
            break
    state.best_step, state.best_valid, state.best_test
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

DEFAULT_METRIC = "ndcg@20"


@dataclass(frozen=True)
class Selection:
    """Best-so-far on validation plus the patience counter.

    Attributes:
        metric: validation metric to maximise (a key of the metric dicts).
        patience: evaluations without improvement before :attr:`should_stop` (0: never stop).
        min_delta: an improvement must exceed the best value by more than this.
        best_step: step (epoch / round) of the best validation value; ``None`` before any.
        best_value: that value (``-inf`` before any).
        best_valid, best_test: the metric dicts recorded at ``best_step`` (test may be ``None``).
        last_step: the last observed step; ``evaluations``: how many were observed.
        bad_evaluations: evaluations since the last improvement.
    """

    metric: str = DEFAULT_METRIC
    patience: int = 0
    min_delta: float = 0.0
    best_step: int | None = None
    best_value: float = -math.inf
    best_valid: Mapping[str, float] | None = None
    best_test: Mapping[str, float] | None = None
    last_step: int | None = None
    evaluations: int = 0
    bad_evaluations: int = 0
    history: tuple[tuple[int, float], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")

    def observe(self, step: int, valid: Mapping[str, float],
                test: Mapping[str, float] | None = None) -> Selection:
        """The state after validation metrics ``valid`` (and optionally ``test``) at ``step``.

        Raises ``KeyError`` naming the metric when ``valid`` lacks it, ``ValueError`` when steps
        do not increase or the value is NaN.
        """
        if self.metric not in valid:
            raise KeyError(f"validation metrics lack {self.metric!r} (have {sorted(valid)})")
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"steps must increase: {step} after {self.last_step}")
        value = float(valid[self.metric])
        if math.isnan(value):
            raise ValueError(f"validation {self.metric} is NaN at step {step}")
        common = dict(last_step=step, evaluations=self.evaluations + 1,
                      history=self.history + ((step, value),))
        if value > self.best_value + self.min_delta:
            return replace(self, best_step=step, best_value=value, best_valid=dict(valid),
                           best_test=None if test is None else dict(test), bad_evaluations=0,
                           **common)
        return replace(self, bad_evaluations=self.bad_evaluations + 1, **common)

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` (> 0) evaluations in a row did not improve on the best."""
        return self.patience > 0 and self.bad_evaluations >= self.patience

    @property
    def improved(self) -> bool:
        """True if the last observation became the best (e.g. to checkpoint the model)."""
        return self.best_step is not None and self.best_step == self.last_step

    def summary(self) -> dict[str, Any]:
        """JSON-ready record: metric, patience, best step and value, evaluations, stopped early."""
        return {"metric": self.metric, "patience": self.patience, "best_step": self.best_step,
                "best_value": None if self.best_step is None else self.best_value,
                "last_step": self.last_step, "evaluations": self.evaluations,
                "stopped_early": self.should_stop}


def select_best(values: list[float], patience: int = 0, min_delta: float = 0.0) -> tuple[int, int]:
    """Replay a validation curve: ``(best index, last index read)`` with early stopping.

    ``values[t]`` is the validation metric of evaluation ``t``; reading stops after ``patience``
    evaluations without improvement (0: read everything).
    """
    state = Selection(metric="v", patience=patience, min_delta=min_delta)
    for step, value in enumerate(values):
        state = state.observe(step, {"v": value})
        if state.should_stop:
            break
    if state.best_step is None:
        raise ValueError("no validation values to select from")
    return state.best_step, int(state.last_step)
