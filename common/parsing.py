"""Low-level parsing of interaction files: numbers, MovieLens ratings and LightGCN lines.

Every parser has a vectorised fast path (numpy) and an authoritative line-by-line slow path that
runs only when the fast path refuses the input, so a malformed file is reported as
``"<path>:<line>: <what is wrong>"`` (:class:`DataFormatError`). numpy and the standard library only.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_ENV = "FEDSHARE_DATA_DIR"
_UINT_RE = re.compile(r"[0-9]+")
_INT_RE = re.compile(r"[+-]?[0-9]+")
_NEG_RE = re.compile(r"-[0-9]+")
_MAX_ID = 2**53  # larger ids are certainly corrupt, and float64 rating tables could not hold them exactly
# Users or items a dataset or a federation may hold. Formats whose ids are 0-based row
# indices (LightGCN, SELFRec) must stay below it: a larger id there is corrupt, not a name.
MAX_CATALOG = 100_000_000
_EXCERPT = 40  # characters of a bad field quoted in an error
_RATING_DTYPE = np.dtype([("user", "i8"), ("item", "i8"), ("rating", "f8"), ("ts", "i8")])


class DataFormatError(ValueError):
    """A data file does not have the expected format; the message is ``"<path>:<line>: <what>"``."""

    def __init__(self, path: Path | str, line: int, what: str) -> None:
        what = what if len(what) <= 300 else what[:300] + "..."   # never a whole field
        super().__init__(f"{path}:{line}: {what}")
        self.path = str(path)
        self.line = line
        self.what = what



def _check_file(path: Path) -> Path:
    """``path`` if it is a file; else an error saying how to point the loader at the data."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset file not found: {path} (set the {DATA_ENV} environment variable to the folder "
            f"holding the datasets, or fetch MovieLens with `python -m common.download NAME --root DIR`)")
    return path


def _read_bytes(path: Path) -> bytes:
    """Whole file content (see :func:`_check_file` for a missing file)."""
    return _check_file(path).read_bytes()


def _read_head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of a file."""
    with open(_check_file(path), "rb") as handle:
        return handle.read(size)


@dataclass(frozen=True)
class Interactions:
    """Raw interactions of one file, in file order.

    ``user``, ``item``: ``(n,)`` raw ids (int64, or str tokens); ``rating``, ``time``: ``(n,)``
    float64 or ``None`` when the file has no such column.
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray | None = None
    time: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, keep: np.ndarray) -> Interactions:
        """The rows where the ``(n,)`` bool mask ``keep`` is True."""
        pick = lambda col: None if col is None else col[keep]  # noqa: E731
        return Interactions(self.user[keep], self.item[keep], pick(self.rating), pick(self.time))



# --------------------------------------------------------------------------- MovieLens parsing


def _empty_file_error(path: Path) -> DataFormatError:
    return DataFormatError(path, 1, "empty file (no data lines)")


def excerpt(token: str) -> str:
    """``token`` quoted for an error message, cut to a short excerpt (a corrupt file can
    hold a field of megabytes, and errors end up in logs and result files)."""
    token = str(token)
    if len(token) <= _EXCERPT:
        return repr(token)
    return f"{token[:_EXCERPT]!r}... ({len(token)} characters)"


def _check_uint(path: Path, lineno: int, field: str, what: str, limit: int = _MAX_ID) -> int:
    """Parse a non-negative decimal id below ``limit``, or raise naming the line."""
    token = field.strip()
    if _UINT_RE.fullmatch(token):
        if int(token) >= limit:
            raise DataFormatError(path, lineno, f"{what} {excerpt(token)} is implausibly large "
                                                f"(ids must be below {limit:,})")
        return int(token)
    if _NEG_RE.fullmatch(token):
        raise DataFormatError(path, lineno, f"negative {what} {excerpt(token)}")
    raise DataFormatError(path, lineno, f"non-integer {what} {excerpt(token)}")


def _check_rating(path: Path, lineno: int, field: str) -> float:
    """Parse a finite numeric rating, or raise naming the line."""
    token = field.strip()
    try:
        value = float(token)
    except ValueError:
        raise DataFormatError(path, lineno, f"non-numeric rating {excerpt(token)}") from None
    if not np.isfinite(value):
        raise DataFormatError(path, lineno, f"non-finite rating {excerpt(token)}")
    return value


def _parse_ratings_slow(path: Path, text: str, sep: str) -> np.ndarray:
    """Line-by-line parser: authoritative, and names the first malformed line."""
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank lines (e.g. a trailing newline) carry no data
        fields = line.rstrip("\r").split(sep)
        if len(fields) != 4:
            raise DataFormatError(path, lineno, f"expected 4 fields separated by {sep!r}, found {len(fields)}")
        user = _check_uint(path, lineno, fields[0], "user id")
        item = _check_uint(path, lineno, fields[1], "item id")
        rating = _check_rating(path, lineno, fields[2])
        if not _INT_RE.fullmatch(fields[3].strip()):
            raise DataFormatError(path, lineno, f"non-integer timestamp {excerpt(fields[3].strip())}")
        rows.append((user, item, rating))
    if not rows:
        raise _empty_file_error(path)
    return np.array(rows, dtype=np.float64)


def _parse_ratings_fast(text: str) -> np.ndarray | None:
    """Vectorised parse of tab-separated ``user item rating ts``; ``None`` if anything looks wrong."""
    try:
        table = np.loadtxt(io.StringIO(text), delimiter="\t", dtype=_RATING_DTYPE, comments=None, ndmin=1)
    except ValueError:
        return None
    ids = (table["user"], table["item"])
    ok = (len(table) > 0 and all(((col >= 0) & (col < _MAX_ID)).all() for col in ids)
          and np.isfinite(table["rating"]).all())
    if not ok:
        return None
    return np.column_stack([table["user"], table["item"], table["rating"]]).astype(np.float64)


def _read_ratings(path: Path, sep: str) -> np.ndarray:
    """Parse a 4-field ratings file (``sep``-separated, latin-1) into ``(n, 3)`` float64."""
    text = _read_bytes(path).decode("latin-1")
    fast = None
    # A literal tab inside a '::' file would be mistaken for a separator by the fast path.
    if text.strip() and (sep == "\t" or "\t" not in text):
        fast = _parse_ratings_fast(text if sep == "\t" else text.replace(sep, "\t"))
    return fast if fast is not None else _parse_ratings_slow(path, text, sep)


def read_ml100k(path: Path) -> np.ndarray:
    """Parse MovieLens-100K ``u.data`` (``user \\t item \\t rating \\t ts``).

    Returns an ``(n, 3)`` float64 array of raw ``[user, item, rating]`` in file order (ids exact:
    they are far below 2**53). Malformed lines raise :class:`DataFormatError`.
    """
    return _read_ratings(Path(path), "\t")


def read_ml1m(path: Path) -> np.ndarray:
    """Parse MovieLens-1M ``ratings.dat`` (``U::M::R::T``, latin-1); same result as :func:`read_ml100k`."""
    return _read_ratings(Path(path), "::")


# --------------------------------------------------------------------------- LightGCN parsing


def _parse_lightgcn_slow(path: Path, text: str) -> tuple[np.ndarray, int]:
    """Line-by-line LightGCN parser naming the first malformed line; returns (pairs, max user id)."""
    users, items, max_user = [], [], -1
    for lineno, line in enumerate(text.split("\n"), start=1):
        tokens = line.split()
        if not tokens:
            continue
        ids = [_check_uint(path, lineno, tok, "user id" if k == 0 else "item id", MAX_CATALOG)
               for k, tok in enumerate(tokens)]
        max_user = max(max_user, ids[0])
        users.extend([ids[0]] * (len(ids) - 1))
        items.extend(ids[1:])
    if max_user < 0:
        raise _empty_file_error(path)
    return np.column_stack([np.array(users, np.int64), np.array(items, np.int64)]).reshape(-1, 2), max_user


def _parse_lightgcn_fast(data: bytes) -> tuple[np.ndarray, int] | None:
    """Vectorised LightGCN parse; ``None`` unless the file is only digits and whitespace."""
    if data.translate(None, b"0123456789 \t\r\n") or not data.strip():
        return None
    buf = np.frombuffer(data, dtype=np.uint8)
    digit = (buf >= ord("0")) & (buf <= ord("9"))
    prev = np.concatenate([[False], digit[:-1]])
    nxt = np.concatenate([digit[1:], [False]])
    starts, ends = np.flatnonzero(digit & ~prev), np.flatnonzero(digit & ~nxt) + 1
    if (ends - starts).max() > 18:
        return None  # would overflow int64: let the slow path report it
    values = np.fromstring(data.decode("ascii"), dtype=np.int64, sep=" ")
    if len(values) != len(starts) or values.max() >= MAX_CATALOG:
        return None  # the slow path names the line
    line = np.searchsorted(np.flatnonzero(buf == ord("\n")), starts)
    first = np.concatenate([[True], line[1:] != line[:-1]])  # first token of a line is the user
    owner = values[first][np.cumsum(first) - 1]
    pairs = np.column_stack([owner[~first], values[~first]])
    return pairs, int(values[first].max())


def _read_lightgcn(path: Path) -> tuple[np.ndarray, int]:
    """Pairs of a LightGCN file and its largest user id (a user line may list no items)."""
    data = _read_bytes(path)
    fast = _parse_lightgcn_fast(data)
    return fast if fast is not None else _parse_lightgcn_slow(path, data.decode("latin-1"))


def read_lightgcn(path: Path) -> np.ndarray:
    """Parse a LightGCN-format file (``uid iid iid ...`` per line) into ``(n, 2)`` int64 pairs in file order."""
    return _read_lightgcn(Path(path))[0]

