"""Bring your own data: every format read from a tiny file, format detection, file:line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import delimited
from common.formats import detect_format, read_interactions, read_selfrec
from common.parsing import DataFormatError
from common.sources import source_files


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def rows(inter) -> list[tuple]:
    cols = [inter.user.tolist(), inter.item.tolist()]
    cols += [c.tolist() for c in (inter.rating, inter.time) if c is not None]
    return list(zip(*cols))


# (file name, content, format, expected rows (user, item[, rating][, time]))
GOOD = [
    ("train.txt", "0 3 1\n1\n2 5\n", "lightgcn", [(0, 3), (0, 1), (2, 5)]),
    ("train.txt", "1:3 4 5\n2:4\n\n3:\n", "selfrec", [(1, 3), (1, 4), (1, 5), (2, 4)]),
    ("x.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                "u1\tB00A\t5\t100\nu2\tB00B\t3.5\t50\n", "recbole",
     [("u1", "B00A", 5.0, 100.0), ("u2", "B00B", 3.5, 50.0)]),
    ("y.inter", "business_id:token\tuser_id:token\tstars:float\tuseful:float\n7\t1\t4\t0\n",
     "recbole", [(1, 7, 4.0)]),
    ("r.csv", "userId,movieId,rating,timestamp\r\n1,31,2.5,1260759144\r\n1,1029,3.0,1260759179\r\n",
     "delimited", [(1, 31, 2.5, 1260759144.0), (1, 1029, 3.0, 1260759179.0)]),
    ("r.tsv", "10\t20\t1\n11\t21\t0\n", "delimited", [(10, 20, 1.0), (11, 21, 0.0)]),
    ("r.tsv", "10\t20\n", "delimited", [(10, 20)]),
    ("ratings.dat", "1::1193::5::978300760\n2::661::3::978302109\n", "delimited",
     [(1, 1193, 5.0, 978300760.0), (2, 661, 3.0, 978302109.0)]),
    ("r.txt", "user item time\nA X 2020-01-02\nB X 1970-01-01T00:01:00\n", "delimited",
     [("A", "X", 1577923200.0), ("B", "X", 60.0)]),
    ("r.csv", 'item,user\n"I,1",u\n', "delimited", [("u", "I,1")]),
]


@pytest.mark.parametrize("name,content,fmt,expected", GOOD)
def test_formats_read_and_detected(tmp_path: Path, name: str, content: str, fmt: str, expected) -> None:
    path = write(tmp_path / name, content)
    assert detect_format(path) == fmt
    inter = read_interactions(path)
    assert rows(inter) == expected


def test_selfrec_fast_and_slow_paths_agree(tmp_path: Path) -> None:
    from common.formats import _parse_selfrec_slow

    text = "1:3 4 5\n2:4\n10:7 7 1\n"
    fast = read_selfrec(write(tmp_path / "a.txt", text))
    slow = _parse_selfrec_slow(tmp_path / "a.txt", text)
    assert rows(fast) == [tuple(pair) for pair in slow.tolist()]
    assert rows(fast) == [(1, 3), (1, 4), (1, 5), (2, 4), (10, 7), (10, 7), (10, 1)]


def test_delimited_fast_and_slow_paths_agree(tmp_path: Path) -> None:
    text = "user,item,rating,ts\n3,a,4,10\n1, b ,5,11\n\n2,a,1,12\n"
    path = write(tmp_path / "r.csv", text)
    columns = {"user": 0, "item": 1, "rating": 2, "time": 3}
    fast = delimited.parse(path, text, ",", columns, skip_through=1)
    slow = delimited._parse_slow(path, text, ",", columns, 2)
    assert rows(fast) == rows(slow) == [(3, "a", 4.0, 10.0), (1, "b", 5.0, 11.0), (2, "a", 1.0, 12.0)]


# (file name, content, 1-based bad line, words expected in the message)
MALFORMED = [
    ("train.txt", "1:3 4\n2 5\n", 2, "no ':' after the user id"),
    ("train.txt", "1:3 4\n2:5 x\n", 2, "non-integer item id 'x'"),
    ("train.txt", "1:3 4\n2:5\n-3:1\n", 3, "negative user id"),
    ("x.inter", "user_id:token\titem_id:int\n1\t2\n", 1, "not name:type"),
    ("x.inter", "user_id:token\tprice:float\n1\t2\n", 1, "names no item column"),
    ("x.inter", "user_id:token\titem_id:token\trating:float\n1\t2\t3\n\n1\t3\tgood\n", 4,
     "non-numeric rating 'good'"),
    ("x.inter", "user_id:token\titem_id:token\n1\t2\n3\n", 3, "expected at least 2 fields"),
    ("r.csv", "u,i,r\n1,2,3\n", 1, "names no user column"),
    ("r.csv", "1,2,3\n1,2\n", 2, "expected at least 3 fields separated by ','"),
    ("r.csv", "1,2,3,4,5\n", 1, "expected 2 to 4 fields"),
    ("r.csv", "user,item\n1,2\n1,\n", 3, "empty item id"),
    ("r.csv", "user,item,rating\n1,2,inf\n", 2, "non-finite rating"),
    ("r.csv", "user,item,time\n1,2,3\n1,2,yesterday\n", 3, "neither a number nor an ISO date"),
    ("r.tsv", "", 1, "empty"),
    ("r.tsv", "user\titem\n", 2, "no data lines"),
    # index formats: ids are row numbers, so one of 10^8 or more is corrupt (a catalog of 10^11)
    ("train.txt", "0 1 2\n1 100000000000 3\n", 2, "item id '100000000000' is implausibly large"),
    ("train.txt", "1:3 4\n100000000:5\n", 2, "user id '100000000' is implausibly large"),
]


@pytest.mark.parametrize("name,content", [
    ("train.txt", "0 1 2\n1 " + "7x" * 500_000 + "\n"),
    ("r.csv", "user,item,rating\n1,2," + "9e" * 500_000 + "\n"),
    ("x.inter", "user_id:token\titem_id:token\t" + "h" * 10**6 + "\n1\t2\t3\n"),
])
def test_errors_quote_a_short_excerpt_of_a_huge_field(tmp_path: Path, name: str,
                                                      content: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataFormatError) as info:
        read_interactions(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: " if name != "x.inter" else f"{path}:1: ")
    assert len(message) < len(str(path)) + 200 and "characters)" in message, message


@pytest.mark.parametrize("name,content,line,what", MALFORMED)
def test_malformed_names_file_and_line(tmp_path: Path, name: str, content: str, line: int,
                                       what: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataFormatError) as info:
        read_interactions(path)
    assert str(info.value).startswith(f"{path}:{line}: "), str(info.value)
    assert what in str(info.value)


def test_explicit_format_and_unknown_format(tmp_path: Path) -> None:
    path = write(tmp_path / "r.txt", "1 2 5\n1 3 4\n")
    assert detect_format(path) == "lightgcn"                     # documented: digits and spaces
    assert rows(read_interactions(path)) == [(1, 2), (1, 5), (1, 3), (1, 4)]
    assert rows(read_interactions(path, "delimited")) == [(1, 2, 5.0), (1, 3, 4.0)]
    with pytest.raises(ValueError, match="unknown data format 'parquet'"):
        read_interactions(path, "parquet")


# --------------------------------------------------------------------------- folders


def test_source_files_roles(tmp_path: Path) -> None:
    for name in ("yelp.train.rating", "yelp.val.rating", "yelp.test.rating", "yelp.links",
                 "PROVENANCE.md"):
        write(tmp_path / "y" / name, "0\t1\t1\n")
    assert {r: p.name for r, p in source_files(tmp_path / "y").items()} == {
        "train": "yelp.train.rating", "valid": "yelp.val.rating", "test": "yelp.test.rating"}
    write(tmp_path / "one" / "ml.inter", "user_id:token\titem_id:token\n1\t2\n")
    write(tmp_path / "one" / "ml.item", "item_id:token\n2\n")
    assert source_files(tmp_path / "one") == {"all": tmp_path / "one" / "ml.inter"}
    assert source_files(tmp_path / "one" / "ml.item") == {"all": tmp_path / "one" / "ml.item"}


@pytest.mark.parametrize("files,what", [
    (("u1.test", "u2.test", "u1.base"), "several test files (u1.test, u2.test)"),
    (("train.txt",), "needs a train and a test file"),
    (("a.csv", "b.csv"), "cannot tell which file holds the interactions (found a.csv, b.csv)"),
])
def test_source_files_errors(tmp_path: Path, files: tuple, what: str) -> None:
    for name in files:
        write(tmp_path / name, "1 2\n")
    with pytest.raises(ValueError) as info:
        source_files(tmp_path)
    assert what in str(info.value)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset path not found"):
        source_files(tmp_path / "nope")
