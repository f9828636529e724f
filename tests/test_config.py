import json

import pytest

from core.config import CRITICAL_KEYS, ConfigError, load_config, schema_reference


def test_defaults_validate_and_repo_config_loads():
    cfg = load_config()
    assert cfg.model.max_length == 512
    assert cfg.layout.inbox.name == "inbox"


def test_every_problem_reported_at_once_with_key_path(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "training": {"learning_rate": -1, "warmup_stepz": 3},
        "model": {"max_length": "long"},
        "surprise": {},
    }))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    for needle in ("training.learning_rate", "training.warmup_stepz: unknown key", "model.max_length", "surprise: unknown key"):
        assert needle in text
    assert len(err.value.problems) == 4


def test_overrides_parse_json_values_and_report_bad_ones(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{}")
    cfg = load_config(path, ["training.learning_rate=1e-4", "daemon.default_priority=high", "inference.api_keys=[\"k\"]"])
    assert cfg.training.learning_rate == 1e-4
    assert cfg.daemon.default_priority == "high"
    assert cfg.inference.api_keys == ["k"]
    with pytest.raises(ConfigError) as err:
        load_config(path, ["nonsense", "training.epochs=0"])
    assert "expected key=value" in str(err.value)


def test_invalid_json_named(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{nope")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "not valid JSON" in str(err.value)


def test_critical_keys_marked_and_hashed(tmp_path):
    assert {"model.base_model", "model.max_length", "model.model_name"} <= CRITICAL_KEYS
    path = tmp_path / "config.json"
    path.write_text("{}")
    a = load_config(path)
    b = load_config(path, ["training.learning_rate=0.5"])
    c = load_config(path, ["model.max_length=1024", "training.micro_batch_tokens=2048"])
    assert a.critical_hash() == b.critical_hash() != c.critical_hash()
    assert "(CRITICAL)" in schema_reference()


def test_relative_base_dir_resolves_against_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "config.json"
    path.write_text(json.dumps({"paths": {"base_dir": "data"}}))
    cfg = load_config(path)
    assert cfg.layout.base_dir == (tmp_path / "sub" / "data").resolve()
    assert cfg.resolve("models/base") == (tmp_path / "sub" / "data" / "models" / "base").resolve()


def test_cross_check_micro_batch_vs_max_length(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": {"max_length": 4096}, "training": {"micro_batch_tokens": 1024}}))
    with pytest.raises(ConfigError, match="micro_batch_tokens"):
        load_config(path)
