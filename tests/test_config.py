import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlstm.config import (Config, ConfigError, all_keys, config_from_dict, config_to_dict,
                             config_yaml, load_config)
from charlstm.errors import CharlstmError

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


# Sweep files (sweep_*.yaml) are checked in test_sweep.py.
@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("sweep")),
                         ids=lambda p: p.name)
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
    ("model.recurrent_weight_dropout=1", "'model.recurrent_weight_dropout' must be in [0.0, 1.0)"),
    ("train.ema_decay=1", "'train.ema_decay' must be in [0.0, 1.0)"),  # 1 would never move
    ("train.ema_decay=-0.5", "'train.ema_decay' must be in [0.0, 1.0)"),
    ("train.lr=0", "'train.lr' must be greater than 0"),
    ("train.lr=nan", "'train.lr' must be a finite number"),
    ("train.lr=1" + "0" * 400, "'train.lr' must be a finite number"),
    ("train.seq_len=1" + "0" * 400, "'train.seq_len' must be an integer that fits in 64 bits"),
    ("train.lr_schedule=linear", "one of constant, cosine, exponential"),
    ("data.encoding=klingon", "'data.encoding' must be a text encoding"),
    # codecs Python has that are no text encoding: bytes to bytes, or str to str
    *[(f"data.encoding={codec}", "'data.encoding' must be a text encoding")
      for codec in ("hex", "base64", "zlib", "bz2", "uu", "quopri", "rot13")],
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
    with pytest.raises(CharlstmError, match="config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_round_trips(tmp_path):
    config = load_config(None, ["model.hidden_size=7", "train.betas=[0.5, 0.6]"])
    (tmp_path / "config.yaml").write_text(config_yaml(config))
    assert load_config(tmp_path / "config.yaml") == config
    assert config_from_dict(config_to_dict(config)) == config


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().train.lr = 1.0


# ---- property: any input either loads or is refused with one line, never a traceback ----

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([10**400, -10**400, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["1e-3", "cosine", "float64", "utf-8", ".inf", "0x10", "[0.9, 0.99]"]))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
known_names = st.sampled_from([key.partition(".")[2] for key in all_keys()])
sections = st.dictionaries(known_names | st.text(max_size=10), yaml_values, max_size=5)
config_dicts = st.dictionaries(st.sampled_from(["model", "train", "data"]) | st.text(max_size=6),
                               sections | yaml_values, max_size=3) | yaml_values


def assert_loads_or_one_line(load):
    try:
        assert isinstance(load(), Config)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message


@settings(max_examples=300, deadline=None)
@given(config_dicts)
def test_any_config_dict_loads_or_is_refused_in_one_line(raw):
    assert_loads_or_one_line(lambda: config_from_dict(raw))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200) | config_dicts.map(lambda raw: yaml.safe_dump(raw, allow_unicode=True)))
def test_any_yaml_file_loads_or_is_refused_in_one_line(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    assert_loads_or_one_line(lambda: load_config(path))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=30) | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(all_keys()),
                                                  st.text(max_size=12)), max_size=3))
def test_any_set_override_loads_or_is_refused_in_one_line(overrides):
    assert_loads_or_one_line(lambda: load_config(None, overrides))
