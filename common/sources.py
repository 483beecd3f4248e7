"""Datasets from a path: find the files, read them, filter, map ids, split (bring your own data).

A *source* is a file (all interactions; split here) or a folder. In a folder, files whose name has
a ``train`` / ``val``/``valid``/``validation``/``dev`` / ``test`` word (split on ``.``, ``_``, ``-``)
are a given split (``train.txt``, ``yelp.val.rating``, ``ml-1m.test.inter``); otherwise the
folder must hold exactly one data file (``.inter`` files preferred). The format is detected on the
train (or only) file and used for every file of the source.

Pipeline (:func:`build_split`): ratings below ``rating_threshold`` are dropped (files with a rating
column only); raw ids of all files are mapped together to dense 0-based ids (sorted raw order);
the optional ``k_core`` filter keeps users and items with at least k interactions (over all
files, repeated until stable) and re-densifies the ids; then the split: the given one where there
is one (``split="auto"``; a missing validation part is carved from train when
``valid_from_train``; ``given_valid="merge"`` first puts a given validation part back into
train, for splits whose validation part is too small to select by, e.g. Yelp's 3,497 pairs for
17,235 users), else a seeded per-user split (``"random"``: :func:`split_per_user`;
``"last"``: leave-last-out by timestamp, or by file order where the files have none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.formats import detect_format, read_interactions
from common.parsing import Interactions
from common.splitting import (canonical_pairs, carve_validation, dense_ids, k_core,
                              split_last_out, split_per_user)

SPLIT_MODES = ("auto", "random", "last")
GIVEN_VALID = ("use", "merge")   # a given validation part: used, or merged into train
_ROLE_WORDS = {"train": {"train", "training"}, "valid": {"val", "valid", "validation", "dev"},
               "test": {"test", "testing"}}
_NOT_DATA = re.compile(r"(?i)^(readme|license|licence|provenance|changelog)|"
                       r"\.(md|pl|sh|py|zip|gz|tar|json|ya?ml|html|pdf)$")


@dataclass(frozen=True)
class LoadOptions:
    """How a source becomes a dataset (hashable: part of the load cache key)."""

    fmt: str = "auto"
    rating_threshold: float = 0.0
    k_core: int = 0
    split: str = "auto"
    seed: int = 0
    valid_ratio: float = 0.1
    test_ratio: float = 0.1
    valid_from_train: bool = False
    given_valid: str = "use"

    def __post_init__(self) -> None:
        if self.given_valid not in GIVEN_VALID:
            raise ValueError(f"unknown given_valid {self.given_valid!r}; expected one of "
                             f"{', '.join(GIVEN_VALID)}")
        if self.split not in SPLIT_MODES:
            raise ValueError(f"unknown split {self.split!r}; expected one of {', '.join(SPLIT_MODES)}")
        if self.k_core < 0:
            raise ValueError(f"k_core must be >= 0, got {self.k_core}")


# --------------------------------------------------------------------------- files


def _role(path: Path) -> str | None:
    words = set(re.split(r"[._\-\s]+", path.name.lower()))
    return next((role for role, names in _ROLE_WORDS.items() if words & names), None)


def source_files(path: Path) -> dict[str, Path]:
    """``{"train", "test"[, "valid"]: file}`` for a folder with a given split, else ``{"all": file}``."""
    path = Path(path)
    if path.is_file():
        return {"all": path}
    if not path.is_dir():
        raise FileNotFoundError(f"dataset path not found: {path}")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and not _NOT_DATA.search(p.name))
    roles: dict[str, list[Path]] = {}
    for file in files:
        if _role(file):
            roles.setdefault(_role(file), []).append(file)
    for role, found in roles.items():
        if len(found) > 1:
            raise ValueError(f"{path}: several {role} files ({', '.join(p.name for p in found)}); "
                             f"pass one file, or keep one train/valid/test set in the folder")
    if roles and not {"train", "test"} <= set(roles):
        raise ValueError(f"{path}: a given split needs a train and a test file, found "
                         f"{', '.join(f'{r}={p[0].name}' for r, p in roles.items())}")
    if roles:
        return {role: found[0] for role, found in roles.items()}
    inter = [p for p in files if p.suffix == ".inter"]
    candidates = inter or files
    if len(candidates) != 1:
        raise ValueError(f"{path}: cannot tell which file holds the interactions (found "
                         f"{', '.join(p.name for p in candidates) or 'none'}); pass a file path, or "
                         f"name the files train/valid/test")
    return {"all": candidates[0]}


def read_source(path: Path, fmt: str = "auto") -> dict[str, Interactions]:
    """Every file of the source, read in one format (detected on the train or only file)."""
    files = source_files(path)
    if fmt == "auto":
        fmt = detect_format(files.get("train", files.get("all")))
    return {role: read_interactions(file, fmt) for role, file in files.items()}


# --------------------------------------------------------------------------- ids and filters


def _joint_dense(columns: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Raw id columns of several files mapped together to dense ids; returns (columns, count)."""
    if any(col.dtype.kind in "US" for col in columns):
        uniq, inverse = np.unique(np.concatenate([col.astype(str) for col in columns]),
                                  return_inverse=True)
        ids, count = inverse.reshape(-1).astype(np.int64), len(uniq)
    else:
        ids, count = dense_ids(np.concatenate(columns).astype(np.int64))
    return np.split(ids, np.cumsum([len(col) for col in columns])[:-1]), count


def _file_order(parts: dict[str, Interactions]) -> dict[str, np.ndarray]:
    """``(n,)`` time per row: the timestamps if every file has them, else file positions."""
    if all(part.time is not None for part in parts.values()):
        return {role: part.time for role, part in parts.items()}
    sizes = np.cumsum([0] + [len(part) for part in parts.values()])
    return {role: np.arange(sizes[k], sizes[k + 1], dtype=np.float64)
            for k, role in enumerate(parts)}


def to_pairs(parts: dict[str, Interactions], rating_threshold: float
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int, int]:
    """``({role: (n, 2) pairs}, {role: (n,) time}, U, I)`` after the rating threshold."""
    parts = {role: part if part.rating is None else part.subset(part.rating >= rating_threshold)
             for role, part in parts.items()}
    order = _file_order(parts)
    users, num_users = _joint_dense([part.user for part in parts.values()])
    items, num_items = _joint_dense([part.item for part in parts.values()])
    pairs = {role: np.column_stack([u, i]) for role, u, i in zip(parts, users, items)}
    return pairs, order, num_users, num_items


def apply_k_core(pairs: dict[str, np.ndarray], order: dict[str, np.ndarray], k: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int, int]:
    """Keep rows whose user and item are in the k-core of all files together; re-densify ids."""
    core = k_core(np.concatenate(list(pairs.values())), k)
    users = np.unique(core[:, 0])
    items = np.unique(core[:, 1])
    keep = {role: np.isin(p[:, 0], users) & np.isin(p[:, 1], items) for role, p in pairs.items()}
    remap = lambda col, kept: np.searchsorted(kept, col)  # noqa: E731
    pairs = {role: np.column_stack([remap(p[keep[role], 0], users), remap(p[keep[role], 1], items)])
             for role, p in pairs.items()}
    return pairs, {role: order[role][keep[role]] for role in pairs}, len(users), len(items)


# --------------------------------------------------------------------------- split


def _pooled(pairs: dict[str, np.ndarray], order: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate(list(pairs.values())), np.concatenate(list(order.values()))


def build_split(parts: dict[str, Interactions], opts: LoadOptions
                ) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """``(U, I, train, valid, test)`` of a source's interactions (the module's pipeline)."""
    pairs, order, num_users, num_items = to_pairs(parts, opts.rating_threshold)
    if opts.k_core > 1:
        pairs, order, num_users, num_items = apply_k_core(pairs, order, opts.k_core)
    if opts.split == "auto" and "all" not in pairs:
        train, test = canonical_pairs(pairs["train"]), canonical_pairs(pairs["test"])
        valid = canonical_pairs(pairs.get("valid", np.empty((0, 2), np.int64)))
        if opts.given_valid == "merge":   # too small to select by: back into train, carved below
            train, valid = canonical_pairs(np.concatenate([train, valid])), valid[:0]
        if len(valid) == 0 and opts.valid_from_train and opts.valid_ratio > 0:
            train, valid = carve_validation(train, test, num_users, seed=opts.seed,
                                            valid_ratio=opts.valid_ratio)
        return num_users, num_items, train, valid, test
    everything, times = _pooled(pairs, order)
    if opts.split == "last":
        train, valid, test = split_last_out(everything, times, num_users, valid=opts.valid_ratio > 0)
    else:
        train, valid, test = split_per_user(everything, num_users, seed=opts.seed,
                                            valid_ratio=opts.valid_ratio, test_ratio=opts.test_ratio)
    return num_users, num_items, train, valid, test
