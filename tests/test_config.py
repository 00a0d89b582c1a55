import dataclasses
from pathlib import Path

import pytest
import yaml

from charlstm.config import (Config, ConfigError, all_keys, config_from_dict, config_to_dict,
                             load_config, save_config)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_default_yaml_matches_dataclass_defaults_and_documents_every_key():
    path = CONFIGS / "default.yaml"
    assert config_to_dict(load_config(path)) == config_to_dict(Config())
    raw = yaml.safe_load(path.read_text())
    documented = [f"{s}.{k}" for s, keys in raw.items() for k in keys]
    assert documented == all_keys()
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert "#" in line, f"key without a comment: {line!r}"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_config_loads(path):
    assert isinstance(load_config(path), Config)


def test_overrides_are_typed_and_win_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n  max_steps: 5\n")
    config = load_config(path, ["train.lr=1e-3", "model.dropout=0.25", "train.betas=[0.8, 0.99]"])
    assert config.train.lr == 0.001 and isinstance(config.train.lr, float)
    assert config.train.max_steps == 5
    assert config.model.dropout == 0.25
    assert config.train.betas == (0.8, 0.99)


@pytest.mark.parametrize("override, fragment", [
    ("train.learning_rate=0.1", "did you mean 'train.lr'"),
    ("model.hiden_size=12", "did you mean 'model.hidden_size'"),
    ("train.batch_size=abc", "'train.batch_size' must be an integer"),
    ("train.batch_size=2.5", "'train.batch_size' must be an integer"),
    ("train.batch_size=true", "'train.batch_size' must be an integer"),
    ("train.batch_size=0", "'train.batch_size' must be at least 1"),
    ("model.dropout=1.0", "'model.dropout' must be in [0.0, 1.0)"),
    ("train.lr=0", "'train.lr' must be greater than 0"),
    ("train.lr=nan", "'train.lr' must be a finite number"),
    ("train.lr_schedule=linear", "one of constant, cosine, exponential"),
    ("data.encoding=klingon", "'data.encoding' must be a text encoding"),
    ("train.betas=[0.9]", "'train.betas' must be a list of two numbers"),
    ("data.val_fraction=0", "'data.val_fraction' must be in (0, 0.5]"),
    ("train.lr", "--set expects section.key=value"),
    ("lr=0.1", "--set expects section.key=value"),
])
def test_bad_values_are_refused_with_one_line_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 0.1\n  seq_len: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: YAML syntax error"):
        load_config(path)


@pytest.mark.parametrize("text, fragment", [
    ("- 1\n- 2\n", "must be a mapping of sections"),
    ("training:\n  lr: 1\n", "unknown config key 'training'"),
    ("train: 5\n", "section 'train' must be a mapping"),
])
def test_malformed_files_are_refused(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_config(path)


def test_missing_config_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_round_trips(tmp_path):
    config = load_config(None, ["model.hidden_size=7", "train.betas=[0.5, 0.6]"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    assert config_from_dict(config_to_dict(config)) == config


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().train.lr = 1.0
