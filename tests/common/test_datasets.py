"""Tests for common.datasets (parsing, splitting, partitioning, fingerprints) and common.download."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from common import datasets as ds
from common import download
from common.datasets import (DATA_ENV, DATASETS, DataFormatError, Dataset, default_data_root, load_dataset,
                             partition_users, read_lightgcn, read_ml1m, read_ml100k, split_per_user)

REAL_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


# --------------------------------------------------------------------------- helpers


def write(path: Path, text: str, encoding: str = "latin-1") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def ml100k_text(rows: list[tuple]) -> str:
    return "".join("\t".join(str(v) for v in row) + "\n" for row in rows)


def random_pairs(seed: int = 0, num_users: int = 50, num_items: int = 40, n: int = 800) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pairs = np.column_stack([rng.integers(0, num_users, n), rng.integers(0, num_items, n)])
    return np.unique(pairs, axis=0)


def as_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return set(map(tuple, pairs.tolist()))


# --------------------------------------------------------------------------- parsing


def test_read_ml100k(tmp_path: Path) -> None:
    path = write(tmp_path / "u.data", ml100k_text([(196, 242, 3, 881250949), (186, 302, 3.5, 891717742)]))
    raw = read_ml100k(path)
    assert raw.dtype == np.float64 and raw.shape == (2, 3)
    np.testing.assert_array_equal(raw, [[196, 242, 3], [186, 302, 3.5]])


def test_read_ml1m_latin1_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.dat", "1::1193::5::978300760\r\n2::661::3::978302109\r\n\n")
    np.testing.assert_array_equal(read_ml1m(path), [[1, 1193, 5], [2, 661, 3]])


def test_read_lightgcn(tmp_path: Path) -> None:
    path = write(tmp_path / "train.txt", "0 3 1\n1\n2 5\n")
    np.testing.assert_array_equal(read_lightgcn(path), [[0, 3], [0, 1], [2, 5]])
    assert read_lightgcn(path).dtype == np.int64


def test_lightgcn_fast_and_slow_paths_agree(tmp_path: Path) -> None:
    text = "0 3 1\n1\n2 5 7 9\n"
    fast = read_lightgcn(write(tmp_path / "a.txt", text))
    slow, max_user = ds._parse_lightgcn_slow(tmp_path / "a.txt", text)
    np.testing.assert_array_equal(fast, slow)
    assert max_user == 2


# (file name, content, 1-based bad line, words expected in the message)
MALFORMED = [
    ("u.data", "1\t2\t3\t4\n1\t3\t4\t5\n1\t2\t3\n", 3, "fields"),
    ("u.data", "1\t2\t3\t4\n1\tx\t4\t5\n", 2, "non-integer item id"),
    ("u.data", "1\t2\t3\t4\n1\t2.5\t4\t5\n", 2, "non-integer item id"),
    ("u.data", "1\t2\t3\t4\n\n-1\t3\t4\t5\n", 3, "negative user id"),
    ("u.data", "1\t2\t3\t4\n1\t3\tgood\t5\n", 2, "non-numeric rating"),
    ("u.data", "1\t2\tnan\t4\n", 1, "non-finite rating"),
    ("u.data", "", 1, "empty"),
    ("u.data", "\n\n", 1, "empty"),
    ("ratings.dat", "1::2::3::4\n1::2::3\n", 2, "fields"),
    ("ratings.dat", "1::2::3::4\n1::2::3::4::5\n", 2, "fields"),
    ("ratings.dat", "1::2::3::4\n1\t2::3::4::5\n", 2, "non-integer user id"),
    ("ratings.dat", "1::2::3::4\n1::-2::3::4\n", 2, "negative item id"),
    ("ratings.dat", "1::2::five::4\n", 1, "non-numeric rating"),
    ("ratings.dat", "", 1, "empty"),
    ("train.txt", "0 1 2\n1 x\n", 2, "non-integer item id"),
    ("train.txt", "0 1 2\n1 2\n2 -3\n", 3, "negative item id"),
    ("train.txt", "0 1 2\n-1 2\n", 2, "negative user id"),
    ("train.txt", "0 1 2\n1 2.0\n", 2, "non-integer item id"),
    ("train.txt", "0 1\n1 99999999999999999999999\n", 2, "implausibly large"),
    ("u.data", "1\t2\t3\t4\n9007199254740993\t2\t3\t4\n", 2, "user id '9007199254740993' is implausibly large"),
    ("train.txt", "", 1, "empty"),
]
READERS = {"u.data": read_ml100k, "ratings.dat": read_ml1m, "train.txt": read_lightgcn}


@pytest.mark.parametrize("fname,content,line,what", MALFORMED)
def test_malformed_names_file_and_line(tmp_path: Path, fname: str, content: str, line: int, what: str) -> None:
    path = write(tmp_path / fname, content)
    with pytest.raises(DataFormatError) as info:
        READERS[fname](path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert what in message
    assert info.value.line == line and isinstance(info.value, ValueError)


def test_missing_file_mentions_env(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=DATA_ENV) as info:
        load_dataset("ml-100k", tmp_path)
    assert str(tmp_path / "ml-100k" / "u.data") in str(info.value)


def test_unknown_dataset_lists_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_dataset("netflix", tmp_path)
    assert all(name in str(info.value) for name in DATASETS)


def test_default_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv(DATA_ENV)
    repo_root = Path(ds.__file__).resolve().parent.parent
    assert default_data_root() == repo_root.parent / "shared" / "data"


# --------------------------------------------------------------------------- loading synthetic data


def test_load_movielens_remap_threshold_dedupe(tmp_path: Path) -> None:
    rows = [(30, 500, 5, 1), (30, 100, 2, 2), (30, 100, 4, 3), (10, 700, 1, 4), (10, 500, 4, 5), (20, 100, 5, 6)]
    write(tmp_path / "ml-100k" / "u.data", ml100k_text(rows))
    data = load_dataset("ml-100k", tmp_path, valid_ratio=0.0, test_ratio=0.0)
    # users 10,20,30 -> 0,1,2 ; items 100,500,700 -> 0,1,2 ; (30,100) deduplicated
    assert (data.num_users, data.num_items) == (3, 3)
    assert as_set(data.train) == {(2, 1), (2, 0), (0, 2), (0, 1), (1, 0)}
    assert len(data.valid) == len(data.test) == 0 and data.valid.shape == (0, 2)
    strict = load_dataset("ml-100k", tmp_path, rating_threshold=4, valid_ratio=0.0, test_ratio=0.0)
    assert (strict.num_users, strict.num_items) == (3, 3)  # catalog is independent of the threshold
    assert as_set(strict.train) == {(2, 1), (2, 0), (0, 1), (1, 0)}


def test_load_lightgcn_sizes_and_max_users(tmp_path: Path) -> None:
    write(tmp_path / "gowalla" / "train.txt", "0 1 2\n1 0\n2 4 4\n")
    write(tmp_path / "gowalla" / "test.txt", "0 3\n1\n3\n")
    data = load_dataset("gowalla", tmp_path)
    assert (data.num_users, data.num_items) == (4, 5)
    np.testing.assert_array_equal(data.train, [[0, 1], [0, 2], [1, 0], [2, 4]])
    np.testing.assert_array_equal(data.test, [[0, 3]])
    assert data.valid.shape == (0, 2)
    small = load_dataset("gowalla", tmp_path, max_users=2)
    assert (small.num_users, small.num_items) == (2, 5)
    np.testing.assert_array_equal(small.train, [[0, 1], [0, 2], [1, 0]])


def test_load_is_cached_and_read_only(tmp_path: Path) -> None:
    write(tmp_path / "ml-100k" / "u.data", ml100k_text([(1, 1, 5, 0), (1, 2, 5, 0), (2, 1, 3, 0)]))
    first = load_dataset("ml-100k", tmp_path)
    assert load_dataset("ml-100k", tmp_path / ".") is first
    with pytest.raises(ValueError):
        first.train[0, 0] = 7


# --------------------------------------------------------------------------- splitting


def check_split_invariants(pairs: np.ndarray, num_users: int, parts: tuple, valid_ratio: float,
                           test_ratio: float) -> None:
    train, valid, test = parts
    assert as_set(train) | as_set(valid) | as_set(test) == as_set(pairs)
    assert len(train) + len(valid) + len(test) == len(pairs)  # hence disjoint
    for arr in parts:
        assert arr.dtype == np.int64 and arr.shape[1] == 2
        np.testing.assert_array_equal(arr, np.unique(arr, axis=0).reshape(-1, 2))  # sorted, no duplicates
    counts = np.bincount(pairs[:, 0], minlength=num_users)
    n_test = np.bincount(test[:, 0], minlength=num_users)
    n_valid = np.bincount(valid[:, 0], minlength=num_users)
    for user, n in enumerate(counts):
        want_test = max(1, round(test_ratio * n)) if n >= 3 and test_ratio else 0
        want_valid = max(1, round(valid_ratio * n)) if n >= 3 and valid_ratio else 0
        assert (n_test[user], n_valid[user]) == (want_test, want_valid), (user, n)


@pytest.mark.parametrize("valid_ratio,test_ratio", [(0.1, 0.1), (0.0, 0.2), (0.25, 0.0), (0.0, 0.0)])
def test_split_invariants(valid_ratio: float, test_ratio: float) -> None:
    pairs = random_pairs()
    parts = split_per_user(pairs, 50, seed=3, valid_ratio=valid_ratio, test_ratio=test_ratio)
    check_split_invariants(pairs, 50, parts, valid_ratio, test_ratio)


def test_split_small_users_stay_in_train() -> None:
    pairs = np.array([[0, 1], [0, 2], [1, 0], [2, 0], [2, 1], [2, 2]])
    train, valid, test = split_per_user(pairs, 4, seed=0, valid_ratio=0.1, test_ratio=0.1)
    assert as_set(train) >= {(0, 1), (0, 2), (1, 0)}
    assert len(train) == 4 and len(valid) == len(test) == 1


def test_split_determinism_and_order_independence() -> None:
    pairs = random_pairs()
    kwargs = dict(seed=7, valid_ratio=0.1, test_ratio=0.2)
    base = split_per_user(pairs, 50, **kwargs)
    again = split_per_user(pairs.copy(), 50, **kwargs)
    shuffled = split_per_user(pairs[np.random.default_rng(1).permutation(len(pairs))], 50, **kwargs)
    duplicated = split_per_user(np.concatenate([pairs, pairs[:100]]), 50, **kwargs)
    for other in (again, shuffled, duplicated):
        for a, b in zip(base, other):
            np.testing.assert_array_equal(a, b)
    other_seed = split_per_user(pairs, 50, seed=8, valid_ratio=0.1, test_ratio=0.2)
    assert as_set(other_seed[2]) != as_set(base[2])


def test_split_pinned_values() -> None:
    """The split must not drift across numpy versions or refactors (fingerprints depend on it)."""
    pairs = np.array([[0, i] for i in range(10)])
    for seed, want_valid, want_test in [(0, 7, 0), (1, 4, 7)]:
        _, valid, test = split_per_user(pairs[::-1], 1, seed=seed, valid_ratio=0.1, test_ratio=0.1)
        assert (valid.tolist(), test.tolist()) == ([[0, want_valid]], [[0, want_test]])


def test_split_keeps_one_train_interaction_for_extreme_ratios() -> None:
    pairs = np.array([[0, 0], [0, 1], [0, 2]])
    train, valid, test = split_per_user(pairs, 1, seed=0, valid_ratio=0.05, test_ratio=0.9)
    assert (len(train), len(valid), len(test)) == (1, 0, 2)


def test_split_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        split_per_user(random_pairs(), 50, seed=0, valid_ratio=0.6, test_ratio=0.5)
    with pytest.raises(ValueError):
        split_per_user(np.array([[5, 0]]), 3, seed=0, valid_ratio=0.1, test_ratio=0.1)


# --------------------------------------------------------------------------- partitions and Dataset


@pytest.mark.parametrize("num_users,num_partitions", [(10, 3), (943, 10), (5, 5), (3, 7)])
def test_partition_users_cover_exactly_once(num_users: int, num_partitions: int) -> None:
    parts = [partition_users(num_users, p, num_partitions) for p in range(num_partitions)]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(num_users))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("partition_id,num_partitions", [(3, 3), (-1, 3), (0, 0)])
def test_partition_users_validates(partition_id: int, num_partitions: int) -> None:
    with pytest.raises(ValueError) as info:
        partition_users(10, partition_id, num_partitions)
    assert f"partition_id={partition_id}" in str(info.value)
    assert f"num_partitions={num_partitions}" in str(info.value)


def make_dataset(**changes) -> Dataset:
    fields = dict(name="toy", num_users=3, num_items=4, train=np.array([[0, 1], [1, 2], [2, 3]]),
                  valid=np.empty((0, 2), np.int64), test=np.array([[0, 2]]))
    fields.update(changes)
    return Dataset(**fields)


def test_fingerprint_stable_and_sensitive() -> None:
    base = make_dataset()
    assert len(base.fingerprint) == 64 and make_dataset().fingerprint == base.fingerprint
    assert make_dataset() == base and hash(make_dataset()) == hash(base)
    variants = [make_dataset(name="toy2"), make_dataset(num_items=5), make_dataset(num_users=4),
                make_dataset(train=np.array([[0, 1], [1, 2], [2, 2]])),
                make_dataset(test=np.array([[0, 3]])),
                make_dataset(train=np.array([[0, 1], [1, 2]]), valid=np.array([[2, 3]]))]
    assert len({v.fingerprint for v in variants} | {base.fingerprint}) == len(variants) + 1
    with pytest.raises(ValueError):
        make_dataset(fingerprint="0" * 64)


def test_users_slice() -> None:
    base = make_dataset()
    part = base.users_slice(np.array([0, 2]))
    assert (part.num_users, part.num_items, part.name) == (3, 4, "toy")
    np.testing.assert_array_equal(part.train, [[0, 1], [2, 3]])
    np.testing.assert_array_equal(part.test, [[0, 2]])
    assert part.fingerprint != base.fingerprint
    assert base.users_slice(np.arange(3)).fingerprint == base.fingerprint


@pytest.mark.parametrize("users", [[5], [0, 1, 2], [3, 9, 4], [19, 0], [], [7, 7]])
def test_users_slice_is_exactly_the_rows_of_those_users(users: list[int]) -> None:
    rng = np.random.default_rng(0)
    pairs = np.unique(rng.integers(0, [20, 30], size=(300, 2)), axis=0)   # sorted by (user, item)
    base = make_dataset(num_users=20, num_items=30, train=pairs, test=pairs[::7])
    part = base.users_slice(np.array(users, dtype=np.int64))
    np.testing.assert_array_equal(part.train, pairs[np.isin(pairs[:, 0], users)])
    np.testing.assert_array_equal(part.test, pairs[::7][np.isin(pairs[::7, 0], users)])


def test_pairs_not_sorted_by_user_are_refused() -> None:
    with pytest.raises(ValueError, match="train pairs must be sorted by user"):
        make_dataset(train=np.array([[1, 2], [0, 1]]))


# --------------------------------------------------------------------------- download helpers (no network)


def test_verify_md5(tmp_path: Path) -> None:
    path = write(tmp_path / "blob.bin", "hello")
    good = hashlib.md5(b"hello").hexdigest()
    download.verify_md5(path, good)
    download.verify_md5(path, good.upper())
    with pytest.raises(ValueError) as info:
        download.verify_md5(path, "0" * 32)
    assert str(path) in str(info.value) and good in str(info.value) and "0" * 32 in str(info.value)


def test_install_from_local_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-100k/u.data", ml100k_text([(1, 1, 5, 0), (2, 1, 4, 0)]))
    url, _, marker = download.ARCHIVES["ml-100k"]
    monkeypatch.setitem(download.ARCHIVES, "ml-100k", (url, download.md5_file(archive), marker))
    monkeypatch.setattr(download, "_fetch", lambda *a, **k: pytest.fail("must not touch the network"))
    root = tmp_path / "root"
    assert download.main(["ml-100k", "--root", str(root), "--zip", str(archive)]) == 0
    assert load_dataset("ml-100k", root).num_users == 2
    assert download.install("ml-100k", root) == root / "ml-100k"  # already present: no fetch
    monkeypatch.setitem(download.ARCHIVES, "ml-100k", (url, "0" * 32, marker))
    assert download.main(["ml-100k", "--root", str(root), "--zip", str(archive), "--force"]) == 1


# --------------------------------------------------------------------------- real data


def real_root() -> Path:
    if not REAL_ROOT.is_dir():
        pytest.skip(f"real data folder {REAL_ROOT} is missing")
    return REAL_ROOT


def total(data: Dataset) -> int:
    return len(data.train) + len(data.valid) + len(data.test)


def test_real_ml100k() -> None:
    data = load_dataset("ml-100k", real_root())
    assert (data.num_users, data.num_items, total(data)) == (943, 1682, 100_000)
    check_split_invariants(np.concatenate([data.train, data.valid, data.test]), 943,
                           (data.train, data.valid, data.test), 0.1, 0.1)
    assert data.fingerprint == "14c53e603c1684680b4aace2673bde5856fc77d06e965b8bf3a720bc324b1622"  # pinned
    again = load_dataset("ml-100k", real_root(), seed=1)
    assert again.fingerprint != data.fingerprint and total(again) == 100_000
    small = load_dataset("ml-100k", real_root(), max_users=10)
    assert small.num_users == 10 and small.num_items == 1682
    np.testing.assert_array_equal(small.test, data.test[data.test[:, 0] < 10])


def test_real_ml1m() -> None:
    data = load_dataset("ml-1m", real_root())
    assert (data.num_users, data.num_items, total(data)) == (6040, 3706, 1_000_209)
    liked = load_dataset("ml-1m", real_root(), rating_threshold=4)
    assert liked.num_items == 3706 and total(liked) == 348_971 + 226_310


def test_real_receraser() -> None:
    data = load_dataset("ml-1m-receraser", real_root())
    assert (len(data.train), len(data.test), len(data.valid)) == (720_152, 200_041, 0)
    assert data.num_users == 6040 and data.num_items == 3706  # max item id 3705 + 1


def test_real_gowalla() -> None:
    data = load_dataset("gowalla", real_root())
    assert (data.num_users, data.num_items) == (29_858, 40_981)
    assert (len(data.train), len(data.test)) == (810_128, 217_242)
    keys = [arr[:, 0] * data.num_items + arr[:, 1] for arr in (data.train, data.test)]
    assert len(np.intersect1d(*keys)) == 0  # PROVENANCE: train and test are disjoint
