"""scripts/make_tiny_model.py's preset overrides (benchmarks/train_throughput.py --processes --layers / --fit-layers)."""
from __future__ import annotations

import json

import pytest

from scripts.make_tiny_model import PRESETS, build_model, main


def test_fewer_layers_at_the_same_widths(tmp_path):
    out = build_model(tmp_path / "m", preset="micro", overrides={"num_hidden_layers": 1})
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
        assert config[key] == PRESETS["micro"][key], key


@pytest.mark.parametrize("overrides, why", [
    ({"hidden_size": 32}, "preset override 'hidden_size' is not supported (supported: num_hidden_layers)"),
    ({"num_hidden_layers": 0}, "preset override num_hidden_layers=0: must be a positive integer"),
    ({"num_hidden_layers": "2"}, "preset override num_hidden_layers='2': must be a positive integer"),
])
def test_bad_overrides_are_refused_by_name(tmp_path, overrides, why):
    with pytest.raises(ValueError) as err:
        build_model(tmp_path / "m", preset="micro", overrides=overrides)
    assert str(err.value) == why
    assert not (tmp_path / "m").exists()


def test_the_command_line_override(tmp_path, capsys):
    assert main(["--preset", "micro", "--layers", "3", "--out", str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["num_hidden_layers"] == 3
    assert "built micro model, 3 layers" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--preset", "micro", "--layers", "0", "--out", str(tmp_path / "n")])
    assert "must be a positive integer" in capsys.readouterr().err
