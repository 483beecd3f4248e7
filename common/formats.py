"""Interaction files in any supported format, with format detection (bring your own data).

Formats (:data:`FORMATS`):

* ``lightgcn``  — ``uid iid iid ...``: whitespace-separated non-negative integers, one user a line.
* ``selfrec``   — ``uid:iid iid ...`` (SELFRec): as LightGCN with a colon after the user id.
* ``recbole``   — RecBole atomic ``.inter``: tab-separated with a typed header such as
  ``user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float``.
* ``delimited`` — TSV / CSV / ``::`` / ``;`` / whitespace text. A header names the columns
  (:data:`COLUMN_NAMES`); a headerless file is read as ``user item [rating [timestamp]]``.

Ids are kept raw here (integers, or string tokens where the format allows them); mapping them to
dense ids is :mod:`common.datasets`' job. Every malformed line is reported as
``"<path>:<line>: <what>"`` (:class:`DataFormatError`); the vectorised fast paths only ever
accept input the line-by-line parsers would accept with the same result.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from common import delimited
from common.parsing import (MAX_CATALOG, DataFormatError, Interactions, _check_uint,
                            _empty_file_error, _parse_lightgcn_fast, _parse_lightgcn_slow,
                            _read_bytes, _read_head, excerpt)

FORMATS = ("lightgcn", "selfrec", "recbole", "delimited")
COLUMN_NAMES = delimited.COLUMN_NAMES
_RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
_RECBOLE_FIELD = re.compile(r"[^:\s]+:(token|token_seq|float|float_seq)")
_SELFREC_LINE_START = re.compile(rb"(?m)^[ \t]*[0-9]+:")
_HEAD_BYTES = 1 << 16


# --------------------------------------------------------------------------- per format


def read_lightgcn_file(path: Path) -> Interactions:
    """A LightGCN file (``uid iid iid ...``) as interactions in file order."""
    data = _read_bytes(path)
    fast = _parse_lightgcn_fast(data)
    pairs, _ = fast if fast is not None else _parse_lightgcn_slow(path, data.decode("latin-1"))
    return Interactions(pairs[:, 0], pairs[:, 1])


def _parse_selfrec_slow(path: Path, text: str) -> np.ndarray:
    """Line-by-line SELFRec parser naming the first malformed line; ``(n, 2)`` pairs."""
    users: list[int] = []
    items: list[int] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        head, colon, rest = line.partition(":")
        if not colon:
            raise DataFormatError(path, lineno, "expected 'user:item item ...' (no ':' after the user id)")
        user = _check_uint(path, lineno, head, "user id", MAX_CATALOG)
        line_items = [_check_uint(path, lineno, tok, "item id", MAX_CATALOG) for tok in rest.split()]
        users.extend([user] * len(line_items))
        items.extend(line_items)
    if not users and not text.strip():
        raise _empty_file_error(path)
    return np.column_stack([np.array(users, np.int64), np.array(items, np.int64)]).reshape(-1, 2)


def read_selfrec(path: Path) -> Interactions:
    """A SELFRec file (``uid:iid iid ...``, items in file order, e.g. chronological)."""
    path = Path(path)
    data = _read_bytes(path)
    lines = sum(1 for line in data.split(b"\n") if line.strip())
    if lines and data.count(b":") == lines == len(_SELFREC_LINE_START.findall(data)):
        fast = _parse_lightgcn_fast(data.replace(b":", b" "))
        if fast is not None:
            return Interactions(fast[0][:, 0], fast[0][:, 1])
    pairs = _parse_selfrec_slow(path, data.decode("latin-1"))
    return Interactions(pairs[:, 0], pairs[:, 1])


def read_recbole(path: Path) -> Interactions:
    """A RecBole atomic ``.inter`` file: the typed header names the user/item/rating/time columns."""
    path = Path(path)
    text = delimited.decode(_read_bytes(path))
    lineno, header = delimited.first_line(text)
    if header is None:
        raise _empty_file_error(path)
    names = []
    for field in header.split("\t"):
        if not _RECBOLE_FIELD.fullmatch(field.strip()):
            raise DataFormatError(path, lineno, f"RecBole header field {excerpt(field.strip())} is not "
                                  f"name:type with a type in {', '.join(_RECBOLE_TYPES)}")
        names.append(field.strip().rsplit(":", 1)[0])
    columns = delimited.columns_from_names(path, lineno, names)
    return delimited.parse(path, text, "\t", columns, skip_through=lineno)


def read_delimited(path: Path, sep: str | None = None) -> Interactions:
    """A delimited text file; ``sep`` is detected from the first line when not given."""
    path = Path(path)
    text = delimited.decode(_read_bytes(path))
    lineno, first = delimited.first_line(text)
    if first is None:
        raise _empty_file_error(path)
    sep = delimited.detect_separator(first) if sep is None else sep
    columns, has_header = delimited.columns_of(path, text, lineno, sep)
    return delimited.parse(path, text, sep, columns, skip_through=lineno if has_header else 0)


# --------------------------------------------------------------------------- detection


def detect_format(path: Path) -> str:
    """The format of ``path`` from its name and first line (see the module docstring).

    A first line of whitespace-separated integers is LightGCN; write a header (or use tabs or
    commas) for a headerless ``user item rating ...`` table, or pass the format explicitly.
    """
    path = Path(path)
    if path.suffix == ".inter":
        return "recbole"
    head = _read_head(path, _HEAD_BYTES).decode("latin-1")
    _, first = delimited.first_line(head)
    if first is None:
        raise _empty_file_error(path)
    if all(_RECBOLE_FIELD.fullmatch(f.strip()) for f in first.split("\t")):
        return "recbole"
    if re.match(r"\s*[0-9]+:(?!:)", first):
        return "selfrec"
    if delimited.detect_separator(first) is None and re.fullmatch(r"[0-9 ]+", first.strip()):
        return "lightgcn"
    return "delimited"


def read_interactions(path: Path, fmt: str = "auto") -> Interactions:
    """Read ``path`` in format ``fmt`` (one of :data:`FORMATS`, or ``"auto"`` to detect it)."""
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    readers = {"lightgcn": read_lightgcn_file, "selfrec": read_selfrec, "recbole": read_recbole,
               "delimited": read_delimited}
    if fmt not in readers:
        raise ValueError(f"unknown data format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    return readers[fmt](path)
