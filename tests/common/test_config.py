import pytest

from common.config import ConfigError, RunConfig, load_config


def test_defaults_match_pyproject():
    import tomllib
    from pathlib import Path
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    app_config = pyproject["tool"]["flwr"]["app"]["config"]
    assert load_config(app_config) == RunConfig()
    assert set(app_config) == set(RunConfig().as_dict())


@pytest.mark.parametrize("key,value", [("sharing-ratio", 1.5), ("sharing-ratio", -0.1),
                                       ("num-rounds", -1), ("num-rounds", 0),
                                       ("dataset", "netflix"), ("fraction-train", 0.0),
                                       ("snapshot-rounds", "1,x")])
def test_bad_value_names_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        load_config({key: value})


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="sharing-ration: unknown config key"):
        load_config({"sharing-ration": 0.5})


def test_kebab_case_round_trip_and_snapshot_rounds():
    cfg = load_config({"sharing-ratio": 0.25, "snapshot-rounds": "10, 0,5,5"})
    assert cfg.sharing_ratio == 0.25
    assert cfg.snapshot_round_list == (0, 5, 10)
    assert load_config(cfg.as_dict()) == cfg


def test_sharing_fingerprint_depends_on_sharing_setup_only():
    base = load_config({})
    assert base.sharing_fingerprint() == load_config({"num-rounds": 3}).sharing_fingerprint()
    assert base.sharing_fingerprint() != load_config({"sharing-ratio": 0.3}).sharing_fingerprint()
    assert not load_config({"sharing-ratio": 0.0}).sharing_enabled


def test_dataset_is_a_name_or_a_path_and_data_keys_are_checked():
    assert load_config({"dataset": "yelp"}).dataset == "yelp"
    assert load_config({"dataset": "../shared/data/yelp-diffnet"}).dataset.endswith("diffnet")
    with pytest.raises(ConfigError, match="dataset: .*name .*or a path"):
        load_config({"dataset": "netflix"})
    for key, value in [("split", "temporal"), ("k-core", -1), ("data-format", "parquet"),
                       ("valid-from-train", "maybe")]:
        with pytest.raises(ConfigError, match=key):
            load_config({key: value})


def test_later_data_keys_change_the_sharing_fingerprint_only_when_set():
    import hashlib
    import json

    base = load_config({})
    old_keys = ("dataset", "rating-threshold", "valid-ratio", "test-ratio", "max-users", "seed",
                "sharing-ratio", "sharing-distribution", "sharing-file")
    old_payload = json.dumps({k: base.as_dict()[k] for k in old_keys}, sort_keys=True)
    assert base.sharing_fingerprint() == hashlib.sha256(old_payload.encode()).hexdigest()[:12]
    assert load_config({"k-core": 0}).sharing_fingerprint() == base.sharing_fingerprint()
    assert load_config({"k-core": 5}).sharing_fingerprint() != base.sharing_fingerprint()
    assert load_config({"split": "last"}).sharing_fingerprint() != base.sharing_fingerprint()


def test_load_data_passes_every_data_key(tmp_path):
    folder = tmp_path / "lg"
    folder.mkdir()
    (folder / "train.txt").write_text("".join(f"{u} 1 2 3 4 5\n" for u in range(4)))
    (folder / "test.txt").write_text("".join(f"{u} 6\n" for u in range(4)))
    cfg = load_config({"dataset": str(folder)})
    data = cfg.load_data()
    assert len(data.valid) == 4 and len(data.test) == 4           # valid-from-train: carved
    plain = load_config({"dataset": str(folder), "valid-from-train": False}).load_data()
    assert len(plain.valid) == 0 and len(plain.train) == 20


@pytest.mark.parametrize("overrides,message", [
    ({"seed": 10**13}, "seed: Input should be less than 4294967296"),
    ({"run-name": ".."}, "run-name: Value error, must name a folder"),
    ({"run-name": "."}, "run-name: Value error, must name a folder"),
])
def test_configs_that_would_break_runs_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)
