import numpy as np

from server_app.aggregation import RowUpdate, aggregate_rows


def _dense_fedavg(table, updates):
    """Independent dense computation: every node reports every row, weight 0 if untouched."""
    num = np.zeros_like(table, dtype=np.float64)
    den = np.zeros(len(table))
    for update in updates:
        full = np.zeros_like(table)
        weight = np.zeros(len(table))
        full[update.index] = update.values
        weight[update.index] = update.counts
        num += weight[:, None] * full
        den += weight
    out = table.copy()
    mask = den > 0
    out[mask] = num[mask] / den[mask, None]
    return out


def test_sparse_per_row_fedavg_equals_dense():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 8)).astype(np.float32)
    updates = []
    for _ in range(4):
        index = np.sort(rng.choice(50, 20, replace=False))
        updates.append(RowUpdate(index, rng.normal(size=(20, 8)).astype(np.float32),
                                 rng.integers(1, 9, 20).astype(np.float32)))
    np.testing.assert_allclose(aggregate_rows(table, updates), _dense_fedavg(table, updates),
                               rtol=1e-6, atol=1e-6)


def test_hand_computed_rows_and_untouched_rows_kept():
    table = np.zeros((3, 1), np.float32)
    a = RowUpdate(np.array([0, 1]), np.array([[1.0], [2.0]], np.float32), np.array([1.0, 3.0], np.float32))
    b = RowUpdate(np.array([1]), np.array([[6.0]], np.float32), np.array([1.0], np.float32))
    out = aggregate_rows(table, [a, b])
    assert out[:, 0].tolist() == [1.0, 3.0, 0.0]  # row 1: (3*2 + 1*6) / 4
