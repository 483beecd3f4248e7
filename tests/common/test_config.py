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


@pytest.mark.parametrize("rounds", ["", "5,10"])
def test_a_config_that_cannot_unlearn_is_refused_at_start(rounds):
    with pytest.raises(ConfigError, match="snapshot-rounds must include 0"):
        load_config({"snapshot-rounds": rounds})
    assert load_config({"snapshot-rounds": rounds, "unlearning-method": "naive"})
    assert load_config({"snapshot-rounds": rounds, "unlearn-rounds": 0})


def test_ratio_schedule_and_data_fingerprint():
    assert load_config({"ratio-schedule": "10:0.75, 5:0.25"}).ratio_steps == ((5, 0.25), (10, 0.75))
    with pytest.raises(ConfigError, match="ratio-schedule"):
        load_config({"ratio-schedule": "5:1.5"})
    base = load_config({})
    assert base.data_fingerprint() == load_config({"sharing-ratio": 0.3}).data_fingerprint()
    assert base.data_fingerprint() != load_config({"max-users": 10}).data_fingerprint()


def test_sharing_file_contents_enter_the_sharing_fingerprint(tmp_path):
    path = tmp_path / "share.json"
    path.write_text('{"1": [2]}')
    before = load_config({"sharing-file": str(path)}).sharing_fingerprint()
    path.write_text('{"1": [2, 3]}')
    assert load_config({"sharing-file": str(path)}).sharing_fingerprint() != before


@pytest.mark.parametrize("overrides,message", [
    ({"receraser-shards": 0}, "receraser-shards"),
    ({"receraser-partition": "inbp"}, "receraser-partition"),
    ({"receraser-epochs": 0}, "receraser-epochs"),
    ({"receraser-aggregator-epochs": 0}, "receraser-aggregator-epochs"),
    ({"unlearning-method": "receraser", "server-cl-weight": 0.1},
     "server-cl-weight must be 0 with unlearning-method 'receraser'"),
])
def test_receraser_keys_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)
    # the ensemble keeps no snapshots: it needs no snapshot round 0
    assert load_config({"unlearning-method": "receraser", "snapshot-rounds": ""})
