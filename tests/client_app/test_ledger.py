import json

import numpy as np
import pytest

from client_app.ledger import LEDGER_FILE, LedgerError, load_or_create_ledger, read_ledger


PAIRS = np.array([[3, 10], [3, 12], [5, 1]], dtype=np.int64)


def test_created_once_then_read_back(tmp_path):
    calls = []
    make = lambda: calls.append(1) or PAIRS
    first = load_or_create_ledger(tmp_path, "p1", make)
    second = load_or_create_ledger(tmp_path, "p1", make)
    assert calls == [1]
    assert np.array_equal(second.shared_pairs(), PAIRS)
    assert second.counts() == {3: 2, 5: 1} == first.counts()


def test_other_policy_is_refused(tmp_path):
    load_or_create_ledger(tmp_path, "p1", lambda: PAIRS)
    with pytest.raises(LedgerError, match="another state-dir"):
        load_or_create_ledger(tmp_path, "p2", lambda: PAIRS)


def test_corrupt_ledger_is_named(tmp_path):
    (tmp_path / LEDGER_FILE).write_text("{\"users\": ")
    with pytest.raises(LedgerError, match=LEDGER_FILE):
        read_ledger(tmp_path)


def test_written_atomically_without_temp_leftovers(tmp_path):
    load_or_create_ledger(tmp_path, "p1", lambda: PAIRS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ledger.lock", LEDGER_FILE]
    assert json.loads((tmp_path / LEDGER_FILE).read_text())["policy"] == "p1"
