"""Progress bars of long work (centralized training, downloads): drawn on request or on a
terminal only, never into captured output; and the helpers of the time-left estimates."""

import zipfile

import pytest

from common import download, progress
from common.centralized import train_centralized
from tests.common.test_centralized import _clustered_dataset


def test_format_seconds():
    assert [progress.format_seconds(s) for s in (0, 44.6, 185, 7620)] == \
        ["0s", "45s", "3m05s", "2h07m"]


def test_median_of_last():
    assert progress.median_of_last([]) is None
    assert progress.median_of_last([100.0, 1.0, 2.0, 3.0], most=3) == 2.0
    assert progress.median_of_last([30.0, 1.0, 2.0]) == 2.0    # a slow first round: ignored


@pytest.mark.parametrize("forced, drawn", [("1", True), ("", False), ("0", False)])
def test_centralized_training_draws_a_bar_of_epochs(forced, drawn, capsys, monkeypatch):
    monkeypatch.setenv(progress.ENV, forced)     # "": captured stderr is not a terminal
    lines = []
    train_centralized(_clustered_dataset(), "bprmf", 3, embedding_dim=8, patience=0,
                      log=lines.append, show_progress=True)
    err = capsys.readouterr().err
    assert len(lines) == 4                       # the per-epoch lines stay
    assert ("bprmf epochs" in err and "3/3" in err and "loss" in err) == drawn, err
    if not drawn:
        assert err == ""


def test_download_shows_the_bytes_received(tmp_path, capsys, monkeypatch):
    """A real fetch through urllib (a file:// URL: no network) with the bar forced on."""
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t1\t5\t0\n2\t1\t4\t0\n" * 5000)
    _, _, marker = download.ARCHIVES["ml-100k"]
    monkeypatch.setitem(download.ARCHIVES, "ml-100k",
                        (archive.as_uri(), download.md5_file(archive), marker))
    monkeypatch.setenv(progress.ENV, "1")
    assert download.main(["ml-100k", "--root", str(tmp_path / "root")]) == 0
    assert (tmp_path / "root" / marker).read_bytes() == zipfile.ZipFile(archive).read(marker)
    err = capsys.readouterr().err
    assert "download ml-100k.zip" in err and "100%" in err, err
