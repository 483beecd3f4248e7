"""Datasets by path: given splits, carved validation, filters, seeded splits, real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.datasets import DATASETS, load_dataset
from common.splitting import carve_validation, k_core, split_last_out

REAL_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def as_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return set(map(tuple, np.asarray(pairs).tolist()))


def keys(pairs: np.ndarray, width: int = 10**6) -> np.ndarray:
    return pairs[:, 0] * width + pairs[:, 1]


def lightgcn_folder(root: Path, users: int = 40, items: int = 30, seed: int = 0) -> Path:
    """A LightGCN train/test folder: each user 8-15 train items and 2 test items."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for user in range(users):
        liked = rng.choice(items, rng.integers(10, 18), replace=False)
        train.append(f"{user} " + " ".join(map(str, liked[2:])))
        test.append(f"{user} " + " ".join(map(str, liked[:2])))
    write(root / "train.txt", "\n".join(train) + "\n")
    write(root / "test.txt", "\n".join(test) + "\n")
    return root


# --------------------------------------------------------------------------- given split + validation


def test_given_split_by_path_and_carved_validation(tmp_path: Path) -> None:
    folder = lightgcn_folder(tmp_path / "lg")
    given = load_dataset(str(folder))
    assert given.name == "lg" and len(given.valid) == 0 and (given.num_users, given.num_items) == (40, 30)
    carved = load_dataset(str(folder), valid_from_train=True, seed=3)
    assert as_set(carved.train) | as_set(carved.valid) == as_set(given.train)
    assert not as_set(carved.train) & as_set(carved.valid)
    assert not as_set(carved.valid) & as_set(carved.test)               # disjoint from test
    np.testing.assert_array_equal(carved.test, given.test)
    counts = np.bincount(carved.valid[:, 0], minlength=40)
    assert (counts >= 1).all()                                          # >= 3 train items each
    again = load_dataset(str(folder) + "/", valid_from_train=True, seed=3)
    assert again.fingerprint == carved.fingerprint                       # seeded
    other = load_dataset(str(folder), valid_from_train=True, seed=4)
    assert as_set(other.valid) != as_set(carved.valid)


def test_a_given_validation_part_can_be_merged_into_train_and_carved_again(tmp_path: Path) -> None:
    folder = lightgcn_folder(tmp_path / "lg")
    before = load_dataset(str(folder))
    taken = as_set(before.train) | as_set(before.test)
    tiny = [next((u, i) for i in range(30) if (u, i) not in taken) for u in (0, 1)]
    write(folder / "valid.txt", "".join(f"{u} {i}\n" for u, i in tiny))  # a tiny given part
    given = load_dataset(str(folder), valid_from_train=True)
    assert as_set(given.valid) == set(tiny)                           # "use": kept as it is
    merged = load_dataset(str(folder), valid_from_train=True, given_valid="merge", seed=3)
    assert as_set(merged.train) | as_set(merged.valid) == as_set(given.train) | as_set(given.valid)
    assert not as_set(merged.train) & as_set(merged.valid)
    assert not as_set(merged.valid) & as_set(merged.test)
    assert (np.bincount(merged.valid[:, 0], minlength=40) >= 1).all()  # every user validated
    assert load_dataset(str(folder), valid_from_train=True, given_valid="merge",
                        seed=3).fingerprint == merged.fingerprint
    with pytest.raises(ValueError, match="given_valid"):
        load_dataset(str(folder), given_valid="drop")


def test_carved_validation_never_takes_a_test_pair() -> None:
    train = np.array([[0, i] for i in range(10)])
    test = train[:5]                                   # a broken given split: train ∩ test
    for seed in range(20):
        new_train, valid = carve_validation(train, test, 1, seed=seed, valid_ratio=0.5)
        assert not as_set(valid) & as_set(test)
        assert as_set(new_train) | as_set(valid) == as_set(train)


def test_named_gowalla_keeps_split_unless_validation_is_asked(tmp_path: Path) -> None:
    lightgcn_folder(tmp_path / "gowalla")
    plain = load_dataset("gowalla", tmp_path)
    assert len(plain.valid) == 0
    carved = load_dataset("gowalla", tmp_path, valid_from_train=True)
    assert as_set(carved.train) | as_set(carved.valid) == as_set(plain.train)
    assert not as_set(carved.valid) & as_set(carved.test) and len(carved.valid) >= 40


# --------------------------------------------------------------------------- filters and splits


def test_rating_threshold_string_ids_and_k_core(tmp_path: Path) -> None:
    text = "user,item,rating\n" + "".join(
        f"u{u},i{i},{5 if (u + i) % 4 else 1}\n" for u in range(6) for i in range(5)) + "lone,i9,5\n"
    path = write(tmp_path / "r.csv", text)
    everything = load_dataset(str(path), valid_ratio=0, test_ratio=0)
    assert (everything.num_users, everything.num_items, len(everything.train)) == (7, 6, 31)
    liked = load_dataset(str(path), rating_threshold=4, valid_ratio=0, test_ratio=0)
    assert len(liked.train) == 31 - sum((u + i) % 4 == 0 for u in range(6) for i in range(5))
    core = load_dataset(str(path), k_core=3, valid_ratio=0, test_ratio=0)
    assert (core.num_users, core.num_items, len(core.train)) == (6, 5, 30)   # 'lone' and i9 go


def test_k_core_is_iterated_until_stable() -> None:
    # item 2 has 2 users; dropping user 2 (degree 1 after item 3 goes) must cascade.
    pairs = np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [2, 2], [2, 3]])
    assert as_set(k_core(pairs, 2)) == {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)}
    assert len(k_core(pairs, 4)) == 0 and len(k_core(pairs, 0)) == len(pairs)


def test_leave_last_out_by_timestamp(tmp_path: Path) -> None:
    text = "".join(f"{u}\t{i}\t5\t{100 * u + (i * 7) % 5}\n" for u in range(4) for i in range(5))
    data = load_dataset(str(write(tmp_path / "r.tsv", text)), split="last")
    # per user, times (i * 7) % 5 = 0, 2, 4, 1, 3 for items 0..4: latest item 2, then item 4
    assert as_set(data.test) == {(u, 2) for u in range(4)}
    assert as_set(data.valid) == {(u, 4) for u in range(4)}
    no_valid = load_dataset(str(tmp_path / "r.tsv"), split="last", valid_ratio=0)
    assert len(no_valid.valid) == 0 and as_set(no_valid.test) == as_set(data.test)


def test_leave_last_out_uses_a_pairs_latest_time_and_file_order() -> None:
    pairs = np.array([[0, 1], [0, 2], [0, 3], [0, 1], [1, 4], [1, 5], [1, 6]])
    train, valid, test = split_last_out(pairs, np.array([1, 2, 3, 9, 0, 0, 0]), 2, valid=True)
    assert as_set(test) == {(0, 1), (1, 6)} and as_set(valid) == {(0, 3), (1, 5)}
    assert as_set(train) == {(0, 2), (1, 4)}


def test_random_split_of_a_file_is_seeded(tmp_path: Path) -> None:
    text = "".join(f"{u} {' '.join(str(i) for i in range(u % 7, u % 7 + 12))}\n" for u in range(30))
    path = write(tmp_path / "all.txt", text)
    first, again = load_dataset(str(path), seed=1), load_dataset(str(path), seed=1)
    assert first is again and len(first.test) == len(first.valid) == 30
    assert as_set(load_dataset(str(path), seed=2).test) != as_set(first.test)
    with pytest.raises(ValueError, match="unknown split 'temporal'"):
        load_dataset(str(path), split="temporal")


def test_path_relative_to_data_root_and_unknown(tmp_path: Path) -> None:
    lightgcn_folder(tmp_path / "mine")
    assert load_dataset("mine", tmp_path).num_users == 40
    with pytest.raises(ValueError) as info:
        load_dataset("netflix", tmp_path)
    assert all(name in str(info.value) for name in DATASETS) and "netflix" in str(info.value)


# --------------------------------------------------------------------------- real data


def real_root() -> Path:
    if not REAL_ROOT.is_dir():
        pytest.skip(f"real data folder {REAL_ROOT} is missing")
    return REAL_ROOT


def real_folder(name: str) -> Path:
    folder = real_root() / name
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is missing")
    return folder


def test_real_amazon_beauty() -> None:
    real_folder("amazon-beauty-selfrec")
    data = load_dataset("amazon-beauty", real_root())
    # PROVENANCE.md: 22,363 users, 12,101 items, train 176,139, test 22,363 (1 per user)
    assert (data.num_users, data.num_items) == (22_363, 12_101)
    assert (len(data.train), len(data.valid), len(data.test)) == (176_139, 0, 22_363)
    assert (np.bincount(data.test[:, 0]) == 1).all()
    carved = load_dataset("amazon-beauty", real_root(), valid_from_train=True)
    assert not np.isin(keys(carved.valid), keys(carved.test)).any()
    assert len(carved.train) + len(carved.valid) == 176_139


def test_real_yelp() -> None:
    real_folder("yelp-diffnet")
    data = load_dataset("yelp", real_root())
    # PROVENANCE.md: train 185,869, val 3,497, test 18,579; 17,235 users, 37,378 items
    assert (len(data.train), len(data.valid), len(data.test)) == (185_869, 3_497, 18_579)
    assert (data.num_users, data.num_items) == (17_235, 37_378)
    merged = load_dataset("yelp", real_root(), valid_from_train=True, given_valid="merge")
    assert len(merged.train) + len(merged.valid) == 185_869 + 3_497
    assert len(merged.valid) > 5 * 3_497                               # ~10 % of each user's
    assert not np.isin(keys(merged.valid), keys(merged.test)).any()


def test_real_paths_match_names() -> None:
    """A named dataset and its file loaded by path give the same split (ids already dense)."""
    real_folder("ml-100k")
    by_name = load_dataset("ml-100k", real_root())
    by_path = load_dataset(str(real_root() / "ml-100k" / "u.data"))
    for field in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(by_name, field), getattr(by_path, field))
    real_folder("gowalla")
    gowalla, folder = load_dataset("gowalla", real_root()), load_dataset(str(real_root() / "gowalla"))
    assert (gowalla.num_users, gowalla.num_items) == (folder.num_users, folder.num_items)
    np.testing.assert_array_equal(gowalla.test, folder.test)
