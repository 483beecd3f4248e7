"""Delimited interaction tables (TSV, CSV, ``::``, ``;``, whitespace): columns, fast and slow parsing.

A header names the columns (matched against :data:`COLUMN_NAMES` after lower-casing and dropping
``_``, ``-``, spaces and a RecBole ``:type`` suffix); without a header the columns are
``user item [rating [timestamp]]``. Ids are string tokens, turned into int64 when every token is a
non-negative integer. Ratings are numbers; timestamps are numbers or ISO dates (seconds).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
import warnings

import numpy as np

from common.parsing import DataFormatError, Interactions, _check_rating, excerpt

COLUMN_NAMES = {
    "user": ("user", "userid", "uid", "users", "reviewerid", "customerid", "visitorid"),
    "item": ("item", "itemid", "iid", "items", "movieid", "businessid", "asin", "productid",
             "bookid", "isbn", "songid", "trackid", "artistid", "poiid", "locationid", "venueid"),
    "rating": ("rating", "ratings", "stars", "score", "rate", "overall", "weight", "count"),
    "time": ("timestamp", "time", "ts", "date", "datetime", "unixreviewtime", "unixtime"),
}
ROLES = ("user", "item", "rating", "time")
_SEPARATORS = ("::", "\t", ",", ";")
_DIGITS = re.compile(r"[0-9]+")


def decode(data: bytes) -> str:
    """UTF-8 text (latin-1 if not UTF-8) with ``\\r\\n`` line ends made ``\\n``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n")


def first_line(text: str) -> tuple[int, str | None]:
    """``(1-based line number, content)`` of the first non-blank line; ``(1, None)`` if none."""
    start = 0
    for lineno in range(1, text.count("\n") + 2):
        end = text.find("\n", start)
        line = text[start:] if end < 0 else text[start:end]
        if line.strip():
            return lineno, line
        start = end + 1
    return 1, None


def detect_separator(line: str) -> str | None:
    """The first of ``::``, tab, comma, semicolon found in ``line``; ``None`` for whitespace."""
    return next((sep for sep in _SEPARATORS if sep in line), None)


def _fields(line: str, sep: str | None) -> list[str]:
    return [f.strip().strip('"') for f in (line.split(sep) if sep else line.split())]


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.split(":")[0].lower())


def columns_from_names(path: Path, lineno: int, names: list[str]) -> dict[str, int]:
    """``{role: column index}`` from header names; the user and item columns are required."""
    columns: dict[str, int] = {}
    for index, name in enumerate(names):
        role = next((r for r in ROLES if _normalise(name) in COLUMN_NAMES[r]), None)
        if role is not None and role not in columns:
            columns[role] = index
    for role in ("user", "item"):
        if role not in columns:
            raise DataFormatError(path, lineno, f"header {names} names no {role} column "
                                  f"(expected one of {', '.join(COLUMN_NAMES[role])})")
    return columns


def _numeric(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def columns_of(path: Path, text: str, lineno: int, sep: str | None) -> tuple[dict[str, int], bool]:
    """Columns of a delimited file and whether line ``lineno`` is a header.

    A first line is a header when it names a user and an item column, or when it has a
    non-numeric field where the next line has a number (a header with unknown names: error).
    """
    head = text[:1 << 16].split("\n")
    names = _fields(head[lineno - 1], sep)
    known = {r for r in ROLES for n in names if _normalise(n) in COLUMN_NAMES[r]}
    if {"user", "item"} <= known:
        return columns_from_names(path, lineno, names), True
    following = next((line for line in head[lineno:] if line.strip()), None)
    nxt = _fields(following, sep) if following is not None else []
    if any(not _numeric(a) and _numeric(b) for a, b in zip(names, nxt)):
        columns_from_names(path, lineno, names)  # raises: a header without user/item names
    if not 2 <= len(names) <= 4:
        raise DataFormatError(path, lineno, f"expected 2 to 4 fields (user item [rating [timestamp]]) "
                              f"separated by {sep or 'whitespace'!r} in a file without header, "
                              f"found {len(names)}")
    return dict(zip(ROLES, range(len(names)))), False


# --------------------------------------------------------------------------- parsing


def _ids(tokens: np.ndarray) -> np.ndarray:
    """``(n,)`` int64 when every token is a non-negative integer below 2**53, else str tokens."""
    tokens = np.char.strip(np.asarray(tokens, dtype=str))
    if len(tokens) and np.char.isdigit(tokens).all() and np.char.str_len(tokens).max() <= 15:
        return tokens.astype(np.int64)
    return tokens


def _numeric_table(load, columns: dict[str, int]) -> Interactions | None:
    """One float64 pass over every column (the common all-numeric case); ``None`` if ids are not
    non-negative integers below 2**53 or a rating is not finite (the general path then decides)."""
    roles = [role for role in ROLES if role in columns]
    try:
        table = load(roles, np.float64).reshape(-1, len(roles))
    except ValueError:
        return None
    ids = table[:, :2]
    if len(table) == 0 or not ((ids >= 0) & (ids < 2**53) & (ids == np.floor(ids))).all():
        return None
    col = {role: table[:, k] for k, role in enumerate(roles)}
    if "rating" in col and not np.isfinite(col["rating"]).all():
        return None
    return Interactions(col["user"].astype(np.int64), col["item"].astype(np.int64),
                        col.get("rating"), col.get("time"))


def _parse_fast(text: str, sep: str | None, columns: dict[str, int]) -> Interactions | None:
    """np.loadtxt over the body; ``None`` (slow path decides) on any irregularity."""
    if sep == "::":
        if "\t" in text:
            return None  # a literal tab would be taken for a separator
        text, sep = text.replace("::", "\t"), "\t"

    def load(roles: str | list[str], dtype) -> np.ndarray:
        usecols = columns[roles] if isinstance(roles, str) else [columns[r] for r in roles]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input line contained no data"
            return np.loadtxt(io.StringIO(text), delimiter=sep, usecols=usecols, dtype=dtype,
                              comments=None, ndmin=1, quotechar='"')

    try:
        numeric = _numeric_table(load, columns)
        if numeric is not None:
            return numeric
        user, item = _ids(load("user", str)), _ids(load("item", str))
        rating = load("rating", np.float64) if "rating" in columns else None
        time = load("time", np.float64) if "time" in columns else None
    except ValueError:
        return None
    empty = any(col.dtype.kind == "U" and (np.char.str_len(col) == 0).any() for col in (user, item))
    if len(user) == 0 or empty or (rating is not None and not np.isfinite(rating).all()):
        return None
    return Interactions(user, item, rating, time)


def _time_value(path: Path, lineno: int, token: str) -> float:
    """A numeric timestamp, or an ISO date/time in seconds since the epoch."""
    try:
        return float(token)
    except ValueError:
        pass
    try:
        return float(np.datetime64(token, "s").astype(np.int64))
    except ValueError:
        raise DataFormatError(path, lineno, f"timestamp {excerpt(token)} is neither a number nor an ISO date") from None


def _parse_slow(path: Path, text: str, sep: str | None, columns: dict[str, int],
                first: int) -> Interactions:
    """Line-by-line parse of lines ``first..`` (1-based), naming the first malformed line."""
    rows: dict[str, list] = {role: [] for role in columns}
    need = max(columns.values()) + 1
    for lineno, line in enumerate(text.split("\n")[first - 1:], start=first):
        if not line.strip():
            continue
        fields = _fields(line, sep)
        if len(fields) < need:
            raise DataFormatError(path, lineno, f"expected at least {need} fields separated by "
                                  f"{sep or 'whitespace'!r}, found {len(fields)}")
        for role in ("user", "item"):
            if not fields[columns[role]]:
                raise DataFormatError(path, lineno, f"empty {role} id")
            rows[role].append(fields[columns[role]])
        if "rating" in columns:
            rows["rating"].append(_check_rating(path, lineno, fields[columns["rating"]]))
        if "time" in columns:
            rows["time"].append(_time_value(path, lineno, fields[columns["time"]]))
    if not rows["user"]:
        raise DataFormatError(path, first, "no data lines")
    floats = {role: np.array(rows[role], np.float64) if role in columns else None for role in ("rating", "time")}
    return Interactions(_ids(np.array(rows["user"])), _ids(np.array(rows["item"])), **floats)


def parse(path: Path, text: str, sep: str | None, columns: dict[str, int],
          skip_through: int = 0) -> Interactions:
    """Interactions of ``text``'s lines after line ``skip_through`` (the header, 0: none)."""
    pieces = text.split("\n", skip_through)
    body = pieces[skip_through] if len(pieces) > skip_through else ""
    fast = _parse_fast(body, sep, columns) if body.strip() else None
    return fast if fast is not None else _parse_slow(path, text, sep, columns, skip_through + 1)
