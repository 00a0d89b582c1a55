"""Typed, frozen configuration: defaults, YAML loading, `--set` overrides, validation.

Every knob is a field of one of three frozen dataclasses (`model`, `train`, `data`);
the field's default is the project's default, and its `check` says which values are
allowed. `configs/default.yaml` repeats the defaults with a comment per key (a test
keeps the two in step).
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import CharlstmError
from .files import existing_file
from .parsing import ParseError, load_yaml
from .kernels import names as kernel_set_names


class ConfigError(CharlstmError):
    """A config file, key or value that cannot be used."""


# ---- value checks: each returns None when fine, or what the value must be ----

def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"at least {low}"


def _greater_than(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v > low else f"greater than {low}"


def _in_range(low: float, high: float, high_inclusive: bool = False) -> Callable[[Any], str | None]:
    def check(v):
        ok = low <= v <= high if high_inclusive else low <= v < high
        return None if ok else f"in [{low}, {high}{']' if high_inclusive else ')'}"
    return check


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else "one of " + ", ".join(choices)


def _betas(v) -> str | None:
    return None if all(0.0 <= b < 1.0 for b in v) else "two numbers, each in [0, 1)"


def _encoding(v) -> str | None:
    try:
        codec = codecs.lookup(v)
    except LookupError:
        codec = None
    # Python's codecs include bytes-to-bytes and str-to-str transforms (hex, base64,
    # zlib, rot13); only a text encoding decodes a file's bytes into characters.
    if codec is None or not codec._is_text_encoding:
        return "a text encoding Python knows (e.g. utf-8, latin-1)"
    return None


def _fraction_in_range(v) -> str | None:
    # Zero would leave nothing to validate on, and `best` would mean nothing.
    return None if 0.0 < v <= 0.5 else "in (0, 0.5]"


def _key(default, check=None):
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = _key(256, _at_least(1))
    num_layers: int = _key(2, _at_least(1))
    dropout: float = _key(0.0, _in_range(0.0, 1.0))
    recurrent_weight_dropout: float = _key(0.0, _in_range(0.0, 1.0))  # DropConnect on W_h; see model.py
    forget_bias: float = _key(1.0, _in_range(-100.0, 100.0, high_inclusive=True))  # sigmoid(100) is 1 already
    initial_state: str = _key("learned", _one_of("zero", "learned"))


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = _key(32, _at_least(1))
    seq_len: int = _key(64, _at_least(1))
    max_steps: int = _key(1000, _at_least(1))
    lr: float = _key(3e-3, _greater_than(0.0))
    lr_schedule: str = _key("cosine", _one_of("constant", "cosine", "exponential"))
    warmup_steps: int = _key(50, _at_least(0))
    final_lr_fraction: float = _key(0.1, _in_range(0.0, 1.0, high_inclusive=True))
    betas: tuple[float, float] = _key((0.9, 0.999), _betas)
    eps: float = _key(1e-8, _greater_than(0.0))
    weight_decay: float = _key(0.0, _at_least(0.0))
    ema_decay: float = _key(0.0, _in_range(0.0, 1.0))  # 0 = off; see optim.WeightAverage
    grad_clip: float = _key(5.0, _at_least(0.0))
    log_every: int = _key(10, _at_least(1))
    eval_every: int = _key(200, _at_least(1))
    checkpoint_every: int = _key(200, _at_least(1))
    sample_every: int = _key(400, _at_least(1))
    sample_length: int = _key(200, _at_least(0))
    seed: int = _key(1337, _at_least(0))
    dtype: str = _key("float32", _one_of("float32", "float64"))
    state_reset: float = _key(0.01, _in_range(0.0, 1.0))
    eval_streams: int = _key(64, _at_least(1))
    eval_warmup: int = _key(256, _at_least(0))
    patience: int = _key(0, _at_least(0))
    min_delta: float = _key(0.0, _at_least(0.0))
    max_minutes: float = _key(0.0, _at_least(0.0))
    kernels: str = _key("auto", _one_of(*kernel_set_names()))
    threads: int = _key(0, _at_least(0))


@dataclass(frozen=True)
class DataConfig:
    val_fraction: float = _key(0.1, _fraction_in_range)
    encoding: str = _key("utf-8", _encoding)
    skip_bad_files: bool = _key(False)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


def all_keys() -> list[str]:
    """Every dotted key, e.g. 'train.lr', in declaration order."""
    return [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


# ---- coercion: YAML value -> declared type, or a ConfigError naming the key ----

def _coerce(key: str, type_name: str, value: Any) -> Any:
    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"config key '{key}' must be {expected}, got {value!r}")

    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        if not -2**63 <= value < 2**63:  # what NumPy can index with
            raise wrong("an integer that fits in 64 bits")
        return value
    if type_name == "float":
        if isinstance(value, bool):
            raise wrong("a number")
        if isinstance(value, str):
            # PyYAML reads "1e-3" (no dot) as a string; accept what float() accepts.
            try:
                value = float(value)
            except ValueError:
                raise wrong("a number") from None
        if not isinstance(value, (int, float)):
            raise wrong("a finite number")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float range
            raise wrong("a finite number") from None
        if not math.isfinite(value):
            raise wrong("a finite number")
        return value
    if type_name == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if type_name == "str":
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if type_name == "tuple[float, float]":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise wrong("a list of two numbers, e.g. [0.9, 0.999]")
        return tuple(_coerce(key, "float", v) for v in value)
    raise AssertionError(f"no coercion for type {type_name}")


def _closest_key(key: str) -> str | None:
    """Best guess at the key meant: the same name in another section, an acronym
    (learning_rate -> lr), or the most similar name, preferring the same section."""
    section, _, name = key.rpartition(".")
    if not section:  # a section name
        close = difflib.get_close_matches(name, list(SECTIONS), n=1, cutoff=0.5)
        return close[0] if close else None
    keys = all_keys()
    by_name = {k.rpartition(".")[2]: k for k in keys}
    acronym = "".join(part[0] for part in name.split("_") if part)
    in_section = [k.rpartition(".")[2] for k in keys if k.startswith(section + ".")]
    for guess in (name, acronym if "_" in name else None):
        if guess in by_name:
            return by_name[guess]
    close = difflib.get_close_matches(name, in_section, n=1, cutoff=0.6)
    if close:
        return f"{section}.{close[0]}"
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_key(key: str) -> ConfigError:
    close = _closest_key(key)
    hint = f" (did you mean '{close}'?)" if close else f"; known keys: {', '.join(all_keys())}"
    return ConfigError(f"unknown config key {key!r}{hint}")


def config_from_dict(raw: Any, source: str = "config") -> Config:
    """Validate a nested dict (as read from YAML) into a Config; missing keys keep defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping of sections (model, train, data)")
    sections = {}
    for section_name, section in raw.items():
        if section_name not in SECTIONS:
            raise _unknown_key(str(section_name))
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise ConfigError(f"config section '{section_name}' must be a mapping of keys to values")
        cls = SECTIONS[section_name]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for name, value in section.items():
            key = f"{section_name}.{name}"
            if name not in fields:
                raise _unknown_key(key)
            value = _coerce(key, fields[name].type, value)
            check = fields[name].metadata["check"]
            problem = check(value) if check else None
            if problem:
                raise ConfigError(f"config key '{key}' must be {problem}, got {value!r}")
            values[name] = value
        sections[section_name] = cls(**values)
    return Config(**sections)


# Keys added after configs were first saved in checkpoints and run directories, with
# the value that reproduces what a config without them did: such a model has no
# learned initial state and its training never reset a stream mid-epoch.
LEGACY_DEFAULTS = {"model": {"initial_state": "zero"}, "train": {"state_reset": 0.0}}


def with_legacy_defaults(raw: Any) -> Any:
    """A saved config dict (from a checkpoint or a run's config.yaml) with every key
    it predates set as it behaved then; anything not a mapping is returned as is for
    config_from_dict to refuse."""
    if not isinstance(raw, dict):
        return raw
    merged = dict(raw)
    for section, values in LEGACY_DEFAULTS.items():
        saved = merged.get(section)
        if isinstance(saved, dict) or saved is None:
            merged[section] = {**values, **(saved or {})}
    return merged


def config_to_dict(config: Config) -> dict:
    """Plain nested dict (tuples as lists) suitable for YAML and JSON."""
    out = {}
    for name in SECTIONS:
        section = dataclasses.asdict(getattr(config, name))
        out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
    return out


def read_yaml(path: Path, what: str = "config file") -> Any:
    """The YAML document in `path` (safe_load), or a ConfigError saying why not."""
    try:
        text = existing_file(path, what).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None
    try:
        return load_yaml(text)
    except ParseError as exc:
        raise ConfigError(f"{path}{'' if str(exc).startswith('line') else ':'} {exc}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=0.001' -> ('train.lr', 0.001); the value is read as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if sep and "." not in key and value.strip():  # e.g. lr=0.01: name the section it lives in
        matches = [k for k in all_keys() if k.rpartition(".")[2] == key]
        close = matches[0] if matches else _closest_key(f"train.{key}")
        suggestion = f"{close}={value.strip()}"
        # a value with a newline or control character would break the one-line message
        hint = f"; did you mean --set {suggestion}?" if close and suggestion.isprintable() else ""
        raise ConfigError(f"--set expects section.key=value, got {text!r}{hint}")
    if not sep or "." not in key or not value.strip():
        raise ConfigError(f"--set expects section.key=value (e.g. train.lr=0.001), got {text!r}")
    try:
        return key, load_yaml(value)
    except ParseError as exc:
        raise ConfigError(f"--set {key!r}: cannot read value {value[:80]!r} ({exc})") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of the nested dict `raw` with each 'section.key=value' applied."""
    merged = dict(raw)
    for text in overrides:
        key, value = parse_override(text)
        if key not in all_keys():
            raise _unknown_key(key)
        section, _, name = key.partition(".")
        merged[section] = {**(merged.get(section) or {}), name: value}
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file at `path` (if any), then each `--set` override."""
    source = str(path) if path is not None else "config"
    raw = read_yaml(Path(path)) if path is not None else None
    config = config_from_dict(raw, source)  # the file alone must be valid
    if not overrides:
        return config
    return config_from_dict(apply_overrides(config_to_dict(config), list(overrides)), source)


def load_run_config(path: Path, overrides: list[str] = ()) -> Config:
    """A run directory's saved config.yaml (keys it predates read as they behaved then,
    see LEGACY_DEFAULTS), then each `--set` override."""
    config = config_from_dict(with_legacy_defaults(read_yaml(Path(path))), str(path))
    if not overrides:
        return config
    return config_from_dict(apply_overrides(config_to_dict(config), list(overrides)), str(path))


def config_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


# ---- the resume policy: which keys a resumed run may change ----

# Keys a resume may change: they decide how long to train, what to report and how
# this machine computes (kernel sets agree to float32 rounding), not what the model,
# the data or any step already planned computes (the learning-rate schedule keeps
# the length it started with; see state.TrainingState.schedule_steps).
RESUMABLE_KEYS = ("train.max_steps", "train.eval_every", "train.checkpoint_every",
                  "train.sample_every", "train.sample_length", "train.log_every",
                  "train.eval_streams", "train.eval_warmup", "train.patience", "train.min_delta",
                  "train.max_minutes", "train.kernels", "train.threads")


def check_resumable(before: Config, after: Config, run_dir: Path) -> None:
    """Refuse a resume whose config would change the model, the data or the steps."""
    old, new = flatten(config_to_dict(before)), flatten(config_to_dict(after))
    changed = [key for key in old if old[key] != new[key] and key not in RESUMABLE_KEYS]
    if changed:
        raise ConfigError(
            f"--resume {run_dir} cannot change {', '.join(changed)} (it would change the model, "
            f"the data or the training); only {', '.join(RESUMABLE_KEYS)} may change")


def flatten(nested: dict) -> dict:
    """{'train': {'lr': 0.1}} -> {'train.lr': 0.1}"""
    return {f"{section}.{key}": value for section, values in nested.items() for key, value in values.items()}
