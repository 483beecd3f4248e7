"""Recommendation datasets as implicit-feedback interaction arrays, by name or by path.

Names (:data:`DATASETS`): MovieLens 100K / 1M (explicit ratings turned into implicit feedback and
split per user here), two LightGCN-format datasets with a given train/test split (Gowalla, the
RecEraser ML-1M), Amazon Beauty (SELFRec train/test) and Yelp (DiffNet train/val/test). Any other
dataset is loaded by path (a file or a folder, any format of :mod:`common.formats`; see
:mod:`common.sources` for the pipeline). Every array is an ``(n, 2)`` int64 ``[user, item]`` table
with 0-based contiguous ids, sorted by ``(user, item)`` without duplicates.

The raw files are research-use-only and are never stored in the repository: they are read from
``$FEDSHARE_DATA_DIR`` (default ``<repo>/../shared/data``), or fetched with ``python -m common.download``.
This module has no ``flwr`` dependency (numpy and the standard library only).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.parsing import (DATA_ENV, DataFormatError, _parse_lightgcn_slow,  # noqa: F401 (re-exported)
                            _read_lightgcn, read_lightgcn, read_ml1m, read_ml100k)
from common.sources import LoadOptions, build_split, read_source
from common.splitting import (_EMPTY_PAIRS, canonical_pairs, carve_validation, dense_ids,
                              partition_users, split_per_user)  # noqa: F401 (partition_users re-exported)

DATASETS = ("ml-100k", "ml-1m", "gowalla", "ml-1m-receraser", "amazon-beauty", "yelp")
# Named datasets read by the generic path loader: their folder under the data root.
_FOLDERS = {"amazon-beauty": "amazon-beauty-selfrec", "yelp": "yelp-diffnet"}

# Files each dataset is read from, relative to the data root.
_FILES = {
    "ml-100k": ("ml-100k/u.data",),
    "ml-1m": ("ml-1m/ratings.dat",),
    "gowalla": ("gowalla/train.txt", "gowalla/test.txt"),
    "ml-1m-receraser": ("ml-1m-receraser/train.txt", "ml-1m-receraser/test.txt"),
}


# --------------------------------------------------------------------------- locations


def default_data_root() -> Path:
    """``$FEDSHARE_DATA_DIR`` if set, else ``<repo root>/../shared/data``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parent.parent
    return repo_root.parent / "shared" / "data"



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
            pairs = _frozen_pairs(getattr(self, field))
            if len(pairs) > 1 and bool(np.any(pairs[1:, 0] < pairs[:-1, 0])):
                raise ValueError(f"{field} pairs must be sorted by user (users_slice relies on it)")
            object.__setattr__(self, field, pairs)
        actual = _fingerprint(self.name, self.num_users, self.num_items, (self.train, self.valid, self.test))
        if self.fingerprint and self.fingerprint != actual:
            raise ValueError(f"fingerprint {self.fingerprint} does not match the data ({actual})")
        object.__setattr__(self, "fingerprint", actual)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dataset) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def users_slice(self, users: np.ndarray) -> Dataset:
        """Rows of train/valid/test whose user is in ``users``; ids and sizes unchanged.

        Each user's rows are one block of the user-sorted arrays, found by binary search:
        O(|users| log n + rows), not a scan of the whole dataset (a cross-user simulation
        loads one such slice per client)."""
        users = np.unique(np.asarray(users, dtype=np.int64).ravel())

        def pick(arr: np.ndarray) -> np.ndarray:
            starts = np.searchsorted(arr[:, 0], users, side="left")
            ends = np.searchsorted(arr[:, 0], users, side="right")
            if len(users) and int(users[-1] - users[0]) + 1 == len(users):   # a contiguous block
                return arr[starts[0]:ends[-1]]
            return arr[np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)] or
                                      [np.zeros(0, np.int64)])]

        return Dataset(self.name, self.num_users, self.num_items,
                       pick(self.train), pick(self.valid), pick(self.test))


# --------------------------------------------------------------------------- loading


def _implicit_movielens(raw: np.ndarray, rating_threshold: float) -> tuple[np.ndarray, int, int]:
    """Raw ratings -> deduplicated 0-based pairs; ids remapped over ALL ratings (stable catalog)."""
    users, num_users = dense_ids(raw[:, 0].astype(np.int64))
    items, num_items = dense_ids(raw[:, 1].astype(np.int64))
    keep = raw[:, 2] >= rating_threshold
    pairs = canonical_pairs(np.column_stack([users[keep], items[keep]]))
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
    return Dataset(name, num_users, num_items, canonical_pairs(train), _EMPTY_PAIRS, canonical_pairs(test))


def _keep_first_users(data: Dataset, max_users: int) -> Dataset:
    """Users ``0..max_users-1`` only (a small, reproducible slice); items unchanged."""
    num_users = min(data.num_users, max_users)

    def pick(arr: np.ndarray) -> np.ndarray:
        return arr[arr[:, 0] < num_users]

    return Dataset(data.name, num_users, data.num_items, pick(data.train), pick(data.valid), pick(data.test))


def _with_valid_from_train(data: Dataset, seed: int, valid_ratio: float) -> Dataset:
    """``data`` with a seeded validation part carved from train when it has none."""
    if len(data.valid) or valid_ratio <= 0:
        return data
    train, valid = carve_validation(data.train, data.test, data.num_users, seed=seed,
                                    valid_ratio=valid_ratio)
    return Dataset(data.name, data.num_users, data.num_items, train, valid, data.test)


def _legacy_defaults(opts: LoadOptions) -> bool:
    """True when a named MovieLens/LightGCN dataset keeps its historical loader (same splits)."""
    return opts.fmt == "auto" and opts.k_core == 0 and opts.split == "auto"


def _load_named(name: str, root: Path, opts: LoadOptions) -> Dataset:
    if name in _FOLDERS:
        return _load_path(name, root / _FOLDERS[name], opts)
    if not _legacy_defaults(opts):
        source = root / _FILES[name][0] if name in ("ml-100k", "ml-1m") else root / name
        return _load_path(name, source, opts)
    if name in ("ml-100k", "ml-1m"):
        return _load_movielens(name, root, opts.rating_threshold, opts.seed, opts.valid_ratio,
                               opts.test_ratio)
    data = _load_lightgcn(name, root)
    return _with_valid_from_train(data, opts.seed, opts.valid_ratio) if opts.valid_from_train else data


def _load_path(name: str, path: Path, opts: LoadOptions) -> Dataset:
    num_users, num_items, train, valid, test = build_split(read_source(path, opts.fmt), opts)
    return Dataset(name, num_users, num_items, train, valid, test)


@functools.lru_cache(maxsize=16)
def _load_cached(spec: str, root: Path, opts: LoadOptions, max_users: int | None) -> Dataset:
    if spec in DATASETS:
        data = _load_named(spec, root, opts)
    else:
        path = Path(spec)
        data = _load_path(path.stem if path.is_file() else path.name, path, opts)
    # Slicing after the split keeps each kept user's split identical to the full dataset's.
    return data if max_users is None else _keep_first_users(data, max_users)


def resolve_source(spec: str, root: Path) -> str:
    """A dataset name unchanged, else the absolute path of ``spec`` (as given, or under ``root``)."""
    if spec in DATASETS:
        return spec
    path = Path(spec).expanduser()
    for candidate in (path, root / path):
        if candidate.exists():
            return str(candidate.resolve())
    raise ValueError(f"unknown dataset {spec!r}: neither a name ({', '.join(DATASETS)}) nor an "
                     f"existing file or folder (as given or under the data root {root})")


def load_dataset(name: str, data_root: Path | None = None, *, rating_threshold: float = 0.0,
                 seed: int = 0, valid_ratio: float = 0.1, test_ratio: float = 0.1,
                 max_users: int | None = None, k_core: int = 0, split: str = "auto",
                 fmt: str = "auto", valid_from_train: bool = False,
                 given_valid: str = "use") -> Dataset:
    """Load a dataset by name (:data:`DATASETS`) or path (cached per process on every argument).

    Args:
        name: a name, or a file / folder (absolute, relative to the working directory, or
            relative to the data root); see :mod:`common.sources`.
        data_root: folder of the named datasets (default :func:`default_data_root`).
        rating_threshold: ratings below it are dropped (sources with ratings only).
        seed, valid_ratio, test_ratio: the seeded per-user split (and a carved validation part).
        max_users: keep users ``0..max_users-1`` only (after the split).
        k_core: keep the k-core (users and items with >= k interactions); 0: off.
        split: "auto" (the given split if any, else "random"), "random" or "last" (leave-last-out).
        fmt: file format ("auto" detects it; :data:`common.formats.FORMATS`).
        valid_from_train: carve a seeded validation part from train when a given split has none.
        given_valid: a given validation part is ``"use"``d, or ``"merge"``d into train first
            (then carved again when ``valid_from_train``).

    With default ``k_core``, ``split`` and ``fmt``, MovieLens names ignore ``valid_from_train``
    (they are split here) and keep their historical ids and splits; Gowalla and the RecEraser
    ML-1M keep their given split and raw ids (``num_items = max id + 1``) and ignore
    ``rating_threshold`` and the ratios unless ``valid_from_train``.
    """
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be >= 1 or None, got {max_users}")
    root = Path(data_root if data_root is not None else default_data_root()).expanduser().resolve()
    opts = LoadOptions(fmt=fmt, rating_threshold=float(rating_threshold), k_core=int(k_core),
                       split=split, seed=int(seed), valid_ratio=float(valid_ratio),
                       test_ratio=float(test_ratio), valid_from_train=bool(valid_from_train),
                       given_valid=given_valid)
    return _load_cached(resolve_source(name, root), root, opts, max_users)
