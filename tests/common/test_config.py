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
