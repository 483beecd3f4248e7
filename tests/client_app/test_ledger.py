"""The sharing ledger: both directions, durable, idempotent, and a withdrawn interaction stays
private until the user shares it again explicitly."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from client_app import cli
from client_app.ledger import (LEDGER_FILE, PENDING, LedgerError, new_ledger, read_ledger,
                               save_ledger, update_ledger)

PAIRS = np.array([[3, 10], [3, 12], [5, 1]], dtype=np.int64)
ORDER = np.array([[3, 12], [3, 10], [3, 14], [3, 11], [5, 1], [5, 2]], dtype=np.int64)


def _made(tmp_path):
    return update_ledger(tmp_path, lambda ledger: ledger, lambda: new_ledger("p1", PAIRS, ORDER))


def test_created_once_then_read_back(tmp_path):
    calls = []
    make = lambda: calls.append(1) or new_ledger("p1", PAIRS, ORDER)  # noqa: E731
    first = update_ledger(tmp_path, lambda ledger: ledger, make)
    second = update_ledger(tmp_path, lambda ledger: ledger, make)
    assert calls == [1]
    assert np.array_equal(second.shared_pairs(), PAIRS)
    assert second.counts() == {3: 2, 5: 1} == first.counts()
    assert read_ledger(tmp_path).order[3].tolist() == [12, 10, 14, 11]   # policy order kept


def test_missing_and_corrupt_ledgers_are_named(tmp_path):
    with pytest.raises(LedgerError, match="no sharing ledger"):
        update_ledger(tmp_path, lambda ledger: ledger)
    (tmp_path / LEDGER_FILE).write_text("{\"users\": ")
    with pytest.raises(LedgerError, match=LEDGER_FILE):
        read_ledger(tmp_path)


def test_written_atomically_without_temp_leftovers(tmp_path):
    _made(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ledger.lock", LEDGER_FILE]
    assert json.loads((tmp_path / LEDGER_FILE).read_text())["policy"] == "p1"


def test_ratio_changes_follow_the_order_and_skip_withdrawn_items(tmp_path):
    ledger = _made(tmp_path)
    ledger, request = ledger.unshare(3, [12])
    assert request.items.tolist() == [12] and ledger.withdrawn[3].tolist() == [12]
    raised = ledger.raise_ratio(3, 0.75)                 # 3 of 4: 12 is withdrawn, so 10, 14, 11
    assert raised.shared[3].tolist() == [10, 11, 14] and raised.withdrawn[3].tolist() == [12]
    lowered, request = raised.lower_ratio(3, 0.25)       # keep the first in order: 10
    assert lowered.shared[3].tolist() == [10] and request.items.tolist() == [11, 14]
    assert lowered.set_ratio(3, 0.25) == (lowered, None)   # idempotent
    assert lowered.raise_ratio(3, 0.1) is lowered
    again = lowered.set_ratio(3, 1.0)[0]                 # a ratio never re-shares withdrawn items
    assert again.shared[3].tolist() == [10] and again.withdrawn[3].tolist() == [11, 12, 14]
    assert again.share(3, [12]).shared[3].tolist() == [10, 12]   # an explicit share does
    with pytest.raises(LedgerError, match="not interactions"):
        ledger.share(3, [99])
    with pytest.raises(LedgerError, match="not hosted"):
        ledger.share(8, [1])


def test_unshare_is_idempotent_and_refuses_never_shared_items(tmp_path):
    ledger, request = _made(tmp_path).unshare(3, None)
    assert request.items.tolist() == [10, 12] and ledger.counts() == {5: 1}
    assert ledger.unshare(3, None) == (ledger, None)
    assert ledger.unshare(3, [10]) == (ledger, None)
    with pytest.raises(LedgerError, match=r"never shared items \[14\]"):
        ledger.unshare(3, [14])


def test_policy_change_never_reshares_and_spares_own_choices(tmp_path):
    ledger, _ = _made(tmp_path).unshare(3, [10])
    ledger = ledger.share(5, [2]).chosen_by(5)
    targets = {3: np.array([10, 14]), 5: np.array([1])}
    adopted = ledger.adopt_policy("p2", targets)
    assert adopted.policy == "p2"
    assert adopted.shared[3].tolist() == [14]            # 10 stays withdrawn, 12 withdrawn now
    assert adopted.pending()[-1].items.tolist() == [12]
    assert adopted.shared[5].tolist() == [1, 2]          # user 5 chose themselves


def test_cli_changes_are_durable_idempotent_and_marked_as_own(tmp_path, capsys):
    _made(tmp_path)
    base = ["--state-dir", str(tmp_path), "--user", "3"]
    assert cli.main(["share", *base, "--ratio", "1.0"]) == 0
    assert read_ledger(tmp_path).shared[3].tolist() == [10, 11, 12, 14]
    assert cli.main(["set-ratio", *base, "--ratio", "0.5"]) == 0
    after, text = read_ledger(tmp_path), (tmp_path / LEDGER_FILE).read_text()
    assert after.shared[3].tolist() == [10, 12] and 3 in after.own
    assert [r.items.tolist() for r in after.pending()] == [[11, 14]]
    assert cli.main(["set-ratio", *base, "--ratio", "0.5"]) == 0
    assert "nothing to change" in capsys.readouterr().out
    assert (tmp_path / LEDGER_FILE).read_text() == text          # repeating changed nothing
    assert cli.main(["unshare", *base, "--ratio", "0.25"]) == 0
    assert read_ledger(tmp_path).shared[3].tolist() == [12]
    assert cli.main(["unshare", *base, "--items", "7"]) == 2
    assert cli.main(["status", *base]) == 0
    assert "shares 1 of 4 item(s), withdrew 3" in capsys.readouterr().out


def test_version_2_ledgers_keep_their_withdrawals(tmp_path):
    raw = {"version": 2, "policy": "p1", "users": {"3": {"shared": [12]}},
           "requests": [{"id": "9", "user": 3, "items": [10], "status": "done"}]}
    (tmp_path / LEDGER_FILE).write_text(json.dumps(raw))
    ledger = read_ledger(tmp_path)
    assert ledger.withdrawn[3].tolist() == [10] and ledger.requests[0].status != PENDING
    save_ledger(tmp_path, ledger)
    assert read_ledger(tmp_path).withdrawn[3].tolist() == [10]


@pytest.mark.parametrize("users,where", [
    ([1, 2], "malformed at users: Input should be a valid dictionary"),
    ({"3": {"shared": [[10]]}}, "malformed at users.3.shared.0"),
    ({"3": {"shared": [10], "order": [-1]}}, "malformed at users.3.order.0"),
    ({"x": {"shared": [10]}}, "malformed at users.x"),
])
def test_a_malformed_ledger_is_refused_naming_the_field(tmp_path, capsys, users, where):
    (tmp_path / LEDGER_FILE).write_text(json.dumps({"version": 3, "policy": "p", "users": users}))
    with pytest.raises(LedgerError, match=where):
        read_ledger(tmp_path)
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == 2
    assert where in capsys.readouterr().err


def test_cli_refuses_ids_beyond_int64_and_a_mistyped_state_dir(tmp_path, capsys):
    _made(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["share", "--state-dir", str(tmp_path), "--user", "3",
                  "--items", str(2**64)])
    assert exit_info.value.code == 2 and "outside [0, 2^63)" in capsys.readouterr().err
    typo = tmp_path / "no-such-node"
    assert cli.main(["unshare", "--state-dir", str(typo), "--user", "3", "--all"]) == 2
    assert "no node state folder" in capsys.readouterr().err and not typo.exists()


def test_cli_on_a_full_disk_reports_it_and_keeps_the_ledger(tmp_path):
    """A write that cannot complete (here: a file-size limit of 64 bytes, which fails the
    write like a full disk) is an error message, and the old ledger stays as it was."""
    _made(tmp_path)
    before = (tmp_path / LEDGER_FILE).read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
        from client_app import cli
        sys.exit(cli.main(["share", "--state-dir", {str(tmp_path)!r}, "--user", "3",
                           "--items", "14"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "could not update the ledger" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / LEDGER_FILE).read_bytes() == before


def test_a_backlog_of_withdrawals_rides_oldest_first_in_capped_replies(tmp_path):
    from dataclasses import replace

    from client_app.app import _withdrawals
    from client_app.ledger import UnshareRequest
    from common.protocol import MAX_UNSHARE_REQUESTS
    backlog = tuple(UnshareRequest(k, 3, np.array([k % 7], np.int64))
                    for k in range(MAX_UNSHARE_REQUESTS + 5))
    ledger = replace(_made(tmp_path), requests=backlog)
    reply = _withdrawals(ledger)
    assert reply.num_requests == MAX_UNSHARE_REQUESTS
    assert reply.request.min() == 0 and reply.request.max() == MAX_UNSHARE_REQUESTS - 1
