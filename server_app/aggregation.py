"""Per-row weighted FedAvg of sparse item-table updates (McMahan et al., 2017, per row).

For item row ``i`` touched by nodes ``n`` with sample counts ``c_{n,i}`` and values
``v_{n,i}``:   ``E_i <- sum_n c_{n,i} v_{n,i} / sum_n c_{n,i}``;   untouched rows keep
their value. This equals dense FedAvg where every node reports every row with weight 0
for the rows it did not touch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RowUpdate:
    index: np.ndarray   # (r,) int64, unique
    values: np.ndarray  # (r, d) float32
    counts: np.ndarray  # (r,) float32 > 0


class NonFiniteTable(ArithmeticError):
    """Aggregation produced NaN/Inf rows; the table is not replaced."""


def aggregate_rows(table: np.ndarray, updates: list[RowUpdate]) -> np.ndarray:
    """New ``(I, d)`` table after per-row weighted averaging of ``updates``.

    Sums are in float64 (a float32 ``count * value`` overflows long before its average does);
    a result that is not finite is refused (:class:`NonFiniteTable`), never kept. Updates that
    touch no row (withheld uploads, secure aggregation) leave ``table`` itself, unallocated."""
    updates = [update for update in updates if len(update.index)]
    if not updates:
        return table
    numerator = np.zeros(table.shape, dtype=np.float64)
    weight = np.zeros(table.shape[0], dtype=np.float64)
    for update in updates:
        counts = update.counts.astype(np.float64)
        numerator[update.index] += counts[:, None] * update.values
        weight[update.index] += counts
    touched = weight > 0
    result = table.copy()
    result[touched] = (numerator[touched] / weight[touched, None]).astype(table.dtype)
    if not np.isfinite(result).all():
        raise NonFiniteTable("aggregated item table has non-finite rows")
    return result


def apply_sums(table: np.ndarray, weighted: np.ndarray, counts: np.ndarray,
               max_change: float) -> np.ndarray:
    """New ``(I, d)`` table from a round's sums under secure aggregation: ``weighted`` (I, d)
    = sum_n c_{n,i} (v_{n,i} - E_i) and ``counts`` (I,) = sum_n c_{n,i}, so
    ``E_i + weighted_i / counts_i`` is the per-row average above. The server cannot bound
    one node's rows, only the average: a row whose average change exceeds ``max_change``
    (what an honest node can produce) refuses the round's update."""
    touched = counts > 0
    change = np.zeros(table.shape, np.float64)
    change[touched] = weighted[touched] / counts[touched, None]
    norms = np.linalg.norm(change, axis=1)
    if not np.isfinite(change).all():
        raise NonFiniteTable("the round's summed update has non-finite rows")
    if len(norms) and norms.max() > max_change:
        raise NonFiniteTable(f"the round's average row change {norms.max():.3g} is beyond the "
                             f"bound {max_change:.3g}")
    return (table + change).astype(table.dtype)
