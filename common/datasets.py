"""Recommendation datasets as implicit-feedback interaction arrays.

Supported: MovieLens 100K / 1M (explicit ratings turned into implicit feedback and split per user
here) and two LightGCN-format datasets with a given train/test split (Gowalla, the RecEraser ML-1M).
Every array is an ``(n, 2)`` int64 ``[user, item]`` table with 0-based contiguous ids, sorted by
``(user, item)`` without duplicates.

The raw files are research-use-only and are never stored in the repository: they are read from
``$FEDSHARE_DATA_DIR`` (default ``<repo>/../shared/data``), or fetched with ``python -m common.download``.
This module has no ``flwr`` dependency (numpy and the standard library only).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_ENV = "FEDSHARE_DATA_DIR"
DATASETS = ("ml-100k", "ml-1m", "gowalla", "ml-1m-receraser")

# Files each dataset is read from, relative to the data root.
_FILES = {
    "ml-100k": ("ml-100k/u.data",),
    "ml-1m": ("ml-1m/ratings.dat",),
    "gowalla": ("gowalla/train.txt", "gowalla/test.txt"),
    "ml-1m-receraser": ("ml-1m-receraser/train.txt", "ml-1m-receraser/test.txt"),
}

_UINT_RE = re.compile(r"[0-9]+")
_INT_RE = re.compile(r"[+-]?[0-9]+")
_NEG_RE = re.compile(r"-[0-9]+")
_MAX_ID = 2**53  # larger ids are certainly corrupt, and float64 rating tables could not hold them exactly
_RATING_DTYPE = np.dtype([("user", "i8"), ("item", "i8"), ("rating", "f8"), ("ts", "i8")])
_EMPTY_PAIRS = np.empty((0, 2), dtype=np.int64)
_MASK64 = (1 << 64) - 1


class DataFormatError(ValueError):
    """A data file does not have the expected format; the message is ``"<path>:<line>: <what>"``."""

    def __init__(self, path: Path | str, line: int, what: str) -> None:
        super().__init__(f"{path}:{line}: {what}")
        self.path = str(path)
        self.line = line
        self.what = what


# --------------------------------------------------------------------------- locations


def default_data_root() -> Path:
    """``$FEDSHARE_DATA_DIR`` if set, else ``<repo root>/../shared/data``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parent.parent
    return repo_root.parent / "shared" / "data"


def _read_bytes(path: Path) -> bytes:
    """Whole file content; a missing file says how to point the loader at the data."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset file not found: {path} (set the {DATA_ENV} environment variable to the folder "
            f"holding the datasets, or fetch MovieLens with `python -m common.download NAME --root DIR`)")
    return path.read_bytes()


# --------------------------------------------------------------------------- MovieLens parsing


def _empty_file_error(path: Path) -> DataFormatError:
    return DataFormatError(path, 1, "empty file (no data lines)")


def _check_uint(path: Path, lineno: int, field: str, what: str) -> int:
    """Parse a non-negative decimal id, or raise naming the line."""
    token = field.strip()
    if _UINT_RE.fullmatch(token):
        if int(token) >= _MAX_ID:
            raise DataFormatError(path, lineno, f"{what} {token!r} is too large")
        return int(token)
    if _NEG_RE.fullmatch(token):
        raise DataFormatError(path, lineno, f"negative {what} {token!r}")
    raise DataFormatError(path, lineno, f"non-integer {what} {token!r}")


def _check_rating(path: Path, lineno: int, field: str) -> float:
    """Parse a finite numeric rating, or raise naming the line."""
    token = field.strip()
    try:
        value = float(token)
    except ValueError:
        raise DataFormatError(path, lineno, f"non-numeric rating {token!r}") from None
    if not np.isfinite(value):
        raise DataFormatError(path, lineno, f"non-finite rating {token!r}")
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
            raise DataFormatError(path, lineno, f"non-integer timestamp {fields[3].strip()!r}")
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
        ids = [_check_uint(path, lineno, tok, "user id" if k == 0 else "item id") for k, tok in enumerate(tokens)]
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
    if len(values) != len(starts):
        return None
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


# --------------------------------------------------------------------------- array helpers


def _canonical(pairs: np.ndarray) -> np.ndarray:
    """Sort ``(n, 2)`` non-negative pairs by (user, item) and drop duplicates."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return _EMPTY_PAIRS.copy()
    width = int(pairs[:, 1].max()) + 1
    if int(pairs[:, 0].max()) < (2**63 - 1) // width and pairs.min() >= 0:
        # One int64 key per pair: a single 1-D sort instead of a two-key lexsort.
        keys = np.sort(pairs[:, 0] * width + pairs[:, 1])
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]  # np.unique is slow on numpy 2.4
        return np.column_stack([keys // width, keys % width])
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    pairs = pairs[order]
    keep = np.ones(len(pairs), dtype=bool)
    keep[1:] = (pairs[1:] != pairs[:-1]).any(axis=1)
    return np.ascontiguousarray(pairs[keep])


def _dense_ids(raw_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Map raw ids to 0-based ids in sorted raw-id order; returns (ids, number of distinct ids)."""
    top = int(raw_ids.max())
    if top <= 4 * len(raw_ids) + 1_000_000:
        # Small id range (the MovieLens case): an O(n) lookup table beats np.unique's sort.
        present = np.zeros(top + 1, dtype=bool)
        present[raw_ids] = True
        lookup = np.cumsum(present) - 1
        return lookup[raw_ids], int(lookup[-1]) + 1
    uniq, inverse = np.unique(raw_ids, return_inverse=True)
    return inverse.reshape(-1), len(uniq)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wraps modulo 2**64 by design)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _pair_keys(pairs: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 per (user, item): depends on nothing else, so on no row order."""
    seed_word = np.uint64((seed * 0x9E3779B97F4A7C15) & _MASK64)
    users = pairs[:, 0].astype(np.uint64)
    items = pairs[:, 1].astype(np.uint64)
    return _mix64(_mix64(users ^ seed_word) ^ items)


def _shuffle_within_users(users: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Permutation sorting rows by (user, key); ties keep input order (inputs are canonical)."""
    if len(users) == 0 or users.max() < 2**24:
        # One uint64 sort key (user in the top 24 bits, key's top 40 bits below) beats lexsort.
        composite = (users.astype(np.uint64) << np.uint64(40)) | (keys >> np.uint64(24))
        return np.argsort(composite, kind="stable")
    return np.lexsort((keys, users))


def _split_sizes(counts: np.ndarray, ratio: float) -> np.ndarray:
    """``max(1, round(ratio * n))`` for users with ``n >= 3`` (0 for a ratio of 0), else 0."""
    if ratio == 0:
        return np.zeros_like(counts)
    sizes = np.maximum(1, np.rint(ratio * counts).astype(np.int64))
    return np.where(counts >= 3, sizes, 0)


def split_per_user(pairs: np.ndarray, num_users: int, *, seed: int, valid_ratio: float,
                   test_ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded per-user split of interactions into (train, valid, test).

    A user with ``n >= 3`` interactions gets ``max(1, round(test_ratio * n))`` test and
    ``max(1, round(valid_ratio * n))`` valid interactions (a ratio of 0 gives 0; for extreme ratios
    both are capped so at least one interaction stays in train); smaller users keep everything in train. Which interactions go
    where is decided by a seeded hash of ``(seed, user, item)``: identical across calls and
    processes, independent of row order and of the other users. Duplicates are dropped; each output
    is sorted by (user, item).
    """
    if not (0 <= valid_ratio < 1 and 0 <= test_ratio < 1 and valid_ratio + test_ratio < 1):
        raise ValueError(f"need 0 <= valid_ratio, test_ratio and valid_ratio + test_ratio < 1, "
                         f"got valid_ratio={valid_ratio}, test_ratio={test_ratio}")
    pairs = _canonical(pairs)
    if len(pairs) and (pairs.min() < 0 or pairs[:, 0].max() >= num_users):
        raise ValueError(f"pairs hold ids outside [0, num_users={num_users})")
    users = pairs[:, 0]
    order = _shuffle_within_users(users, _pair_keys(pairs, seed))
    counts = np.bincount(users, minlength=num_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(pairs), dtype=np.int64)
    rank[order] = np.arange(len(pairs)) - starts[users[order]]
    n_test = np.minimum(_split_sizes(counts, test_ratio), np.maximum(counts - 1, 0))
    n_valid = np.minimum(_split_sizes(counts, valid_ratio), np.maximum(counts - n_test - 1, 0))
    in_test = rank < n_test[users]
    in_valid = ~in_test & (rank < (n_test + n_valid)[users])
    # Boolean masks keep the canonical (user, item) order of `pairs`.
    return pairs[~in_test & ~in_valid], pairs[in_valid], pairs[in_test]


def partition_users(num_users: int, partition_id: int, num_partitions: int) -> np.ndarray:
    """Users of one partition: contiguous blocks of ``np.array_split(np.arange(num_users), num_partitions)``."""
    if num_partitions < 1 or not 0 <= partition_id < num_partitions:
        raise ValueError(f"need 0 <= partition_id < num_partitions, "
                         f"got partition_id={partition_id}, num_partitions={num_partitions}")
    return np.array_split(np.arange(num_users, dtype=np.int64), num_partitions)[partition_id]


# --------------------------------------------------------------------------- Dataset


def _fingerprint(name: str, num_users: int, num_items: int, arrays: tuple[np.ndarray, ...]) -> str:
    """sha256 over the name, sizes and every interaction (array lengths delimit the arrays)."""
    h = hashlib.sha256()
    h.update(f"{name}|{num_users}|{num_items}|{'|'.join(str(len(a)) for a in arrays)}".encode())
    for arr in arrays:
        h.update(np.ascontiguousarray(arr, dtype="<i8").tobytes())
    return h.hexdigest()


def _frozen_pairs(arr: np.ndarray) -> np.ndarray:
    """A read-only ``(n, 2)`` int64 view: cached datasets are shared, so nobody may edit them."""
    arr = np.ascontiguousarray(np.asarray(arr, dtype=np.int64).reshape(-1, 2)).view()
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Dataset:
    """Implicit interactions split into train/valid/test; ids are 0-based and contiguous.

    Arrays are read-only ``(n, 2)`` int64 ``[user, item]`` sorted by (user, item). ``fingerprint``
    is computed when left empty; a given one must match. Equality and hashing use the fingerprint.
    """

    name: str
    num_users: int
    num_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    fingerprint: str = ""

    def __post_init__(self) -> None:
        for field in ("train", "valid", "test"):
            object.__setattr__(self, field, _frozen_pairs(getattr(self, field)))
        actual = _fingerprint(self.name, self.num_users, self.num_items, (self.train, self.valid, self.test))
        if self.fingerprint and self.fingerprint != actual:
            raise ValueError(f"fingerprint {self.fingerprint} does not match the data ({actual})")
        object.__setattr__(self, "fingerprint", actual)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dataset) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def users_slice(self, users: np.ndarray) -> Dataset:
        """Rows of train/valid/test whose user is in ``users``; ids and sizes unchanged."""
        users = np.asarray(users, dtype=np.int64).ravel()

        def pick(arr: np.ndarray) -> np.ndarray:
            return arr[np.isin(arr[:, 0], users)]

        return Dataset(self.name, self.num_users, self.num_items,
                       pick(self.train), pick(self.valid), pick(self.test))


# --------------------------------------------------------------------------- loading


def _implicit_movielens(raw: np.ndarray, rating_threshold: float) -> tuple[np.ndarray, int, int]:
    """Raw ratings -> deduplicated 0-based pairs; ids remapped over ALL ratings (stable catalog)."""
    users, num_users = _dense_ids(raw[:, 0].astype(np.int64))
    items, num_items = _dense_ids(raw[:, 1].astype(np.int64))
    keep = raw[:, 2] >= rating_threshold
    pairs = _canonical(np.column_stack([users[keep], items[keep]]))
    return pairs, num_users, num_items


def _load_movielens(name: str, root: Path, rating_threshold: float, seed: int,
                    valid_ratio: float, test_ratio: float) -> Dataset:
    reader = read_ml100k if name == "ml-100k" else read_ml1m
    raw = reader(root / _FILES[name][0])
    pairs, num_users, num_items = _implicit_movielens(raw, rating_threshold)
    train, valid, test = split_per_user(pairs, num_users, seed=seed, valid_ratio=valid_ratio,
                                        test_ratio=test_ratio)
    return Dataset(name, num_users, num_items, train, valid, test)


def _load_lightgcn(name: str, root: Path) -> Dataset:
    train_path, test_path = (root / rel for rel in _FILES[name])
    train, max_user_train = _read_lightgcn(train_path)
    test, max_user_test = _read_lightgcn(test_path)
    num_users = max(max_user_train, max_user_test) + 1
    num_items = int(max(train[:, 1].max(initial=-1), test[:, 1].max(initial=-1))) + 1
    return Dataset(name, num_users, num_items, _canonical(train), _EMPTY_PAIRS, _canonical(test))


def _keep_first_users(data: Dataset, max_users: int) -> Dataset:
    """Users ``0..max_users-1`` only (a small, reproducible slice); items unchanged."""
    num_users = min(data.num_users, max_users)

    def pick(arr: np.ndarray) -> np.ndarray:
        return arr[arr[:, 0] < num_users]

    return Dataset(data.name, num_users, data.num_items, pick(data.train), pick(data.valid), pick(data.test))


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, root: Path, rating_threshold: float, seed: int, valid_ratio: float,
                 test_ratio: float, max_users: int | None) -> Dataset:
    if name in ("ml-100k", "ml-1m"):
        data = _load_movielens(name, root, rating_threshold, seed, valid_ratio, test_ratio)
    else:
        data = _load_lightgcn(name, root)
    # Slicing after the split keeps each kept user's split identical to the full dataset's.
    return data if max_users is None else _keep_first_users(data, max_users)


def load_dataset(name: str, data_root: Path | None = None, *, rating_threshold: float = 0.0, seed: int = 0,
                 valid_ratio: float = 0.1, test_ratio: float = 0.1, max_users: int | None = None) -> Dataset:
    """Load one of :data:`DATASETS` (cached per process on all arguments and the resolved root).

    MovieLens: ratings ``>= rating_threshold`` become interactions, split per user with
    :func:`split_per_user`. LightGCN-format datasets keep their given train/test split (valid empty)
    and ignore ``rating_threshold``, ``seed`` and the ratios. ``max_users`` keeps users
    ``0..max_users-1`` only.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be >= 1 or None, got {max_users}")
    root = Path(data_root if data_root is not None else default_data_root()).expanduser().resolve()
    return _load_cached(name, root, float(rating_threshold), int(seed), float(valid_ratio),
                        float(test_ratio), max_users)
