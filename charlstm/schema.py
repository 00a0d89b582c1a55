"""The checkpoint schema: what every field and array of a checkpoint must be before
anything uses it.

A checkpoint's sha256 proves the file is whole, not that its writer was friendly: a
shared checkpoint is untrusted input. `check` looks at every metadata field (type,
range, shape) and every array (floating dtype, exact shape, finite values) and raises
one CharlstmError naming the first field that is wrong. `sample`, `eval`, `info`,
`export` and `train --resume` all load through checkpoint.load, which calls it before
building anything, so a refusal happens before any file is written or removed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .config import Config, ConfigError, config_from_dict, with_legacy_defaults
from .data import Vocab
from .model import param_shapes

# Larger than any real run, small enough that arithmetic on it stays exact in float64
# and in NumPy's int64 (the learning-rate schedule, the data cursor).
MAX_COUNT = 2**52


class SchemaError(ValueError):
    """One field of a checkpoint that is not what the schema says (internal to load)."""


def _count(value: Any, name: str, low: int = 0) -> int:
    if type(value) is not int or not low <= value <= MAX_COUNT:
        raise SchemaError(f"{name} must be an integer in [{low}, 2**52], got {_show(value)}")
    return value


def _seconds_or_loss(value: Any, name: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise SchemaError(f"{name} must be a finite number of at least 0, got {_show(value)}")
    return float(value)


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _mapping(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise SchemaError(f"{name} must be a JSON object, got {_show(value)}")
    return value


def check_progress(progress: Any) -> None:
    """step, epoch, window, averaged_steps, best_val_loss, elapsed_s, schedule_steps, since_log: each
    optional (older checkpoints lack some), each of its type and range when present."""
    progress = _mapping(progress, "progress")
    for key in ("step", "epoch", "window", "averaged_steps"):
        if key in progress:
            _count(progress[key], f"progress.{key}")
    if "schedule_steps" in progress:
        _count(progress["schedule_steps"], "progress.schedule_steps", low=1)
    _seconds_or_loss(progress.get("best_val_loss"), "progress.best_val_loss", optional=True)
    _seconds_or_loss(progress.get("elapsed_s", 0.0), "progress.elapsed_s")
    if progress.get("since_log") is not None:
        window = _mapping(progress["since_log"], "progress.since_log")
        _count(window.get("steps"), "progress.since_log.steps")
        for key in ("loss_sum", "seconds"):
            _seconds_or_loss(window.get(key), f"progress.since_log.{key}")


def check_rng_states(states: Any) -> None:
    """Each generator state must be one NumPy's PCG64 accepts (what make_rngs creates)."""
    for name, state in _mapping(states, "rng_states").items():
        if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
            raise SchemaError(f"rng_states.{name} is not a PCG64 generator state")
        try:
            np.random.PCG64().state = state
        except (TypeError, ValueError, KeyError, OverflowError):
            raise SchemaError(f"rng_states.{name} is not a valid PCG64 state") from None


def check_vocab(chars: Any) -> Vocab:
    if not isinstance(chars, str) or len(chars) < 2:
        raise SchemaError(f"vocab must be a string of at least two characters, got {_show(chars)}")
    if len(set(chars)) != len(chars):
        raise SchemaError("vocab repeats a character")
    return Vocab(chars)


def expected_shapes(config: Config, vocab_size: int, tensors: dict[str, np.ndarray]) -> dict[str, tuple]:
    """Every array the checkpoint must hold (model.*) or may hold (Adam's moments and
    the carried state, each as a pair; the weights behind an average), with its exact shape."""
    model = config.model
    shapes = param_shapes(vocab_size, model.hidden_size, model.num_layers, model.initial_state == "learned")
    num_params = sum(int(np.prod(shape)) for shape in shapes.values())
    state_shape = (model.num_layers, config.train.batch_size, model.hidden_size)  # (L, B, H)
    expected = {f"model.{name}": shape for name, shape in shapes.items()}
    for pair, shape in ((("optimizer.exp_avg", "optimizer.exp_avg_sq"), (num_params,)),
                        (("state.h", "state.c"), state_shape)):
        if any(name in tensors for name in pair):
            expected.update({name: shape for name in pair})
    if "training.params" in tensors:
        expected["training.params"] = (num_params,)
    return expected


def array_problem(tensors: dict[str, np.ndarray], shapes: dict[str, tuple], config: Config) -> str | None:
    """What is wrong with a checkpoint's arrays for its config, or None. Shapes and
    dtypes must match exactly: loading and resuming copy the arrays into place, and
    NumPy would broadcast a wrong shape and cast a wrong dtype without a word. Values
    must be finite: a NaN weight samples nothing but newlines and evaluates to NaN."""
    dtype = np.dtype(config.train.dtype)
    for name, shape in shapes.items():
        if name not in tensors:
            return f"{name} is missing"
        if tensors[name].shape != shape:
            return f"{name} has shape {tensors[name].shape}, expected {shape}"
        if tensors[name].dtype != dtype:
            return f"{name} has dtype {tensors[name].dtype}, expected {dtype} (train.dtype)"
        if not np.isfinite(tensors[name]).all():
            return f"{name} holds NaN or infinite values"
    if "optimizer.exp_avg_sq" in shapes and (tensors["optimizer.exp_avg_sq"] < 0).any():
        return "optimizer.exp_avg_sq holds negative values"
    unknown = sorted(set(tensors) - set(shapes))
    if unknown:
        return f"{unknown[0]} is not an array a checkpoint holds"
    return None


def check(tensors: dict[str, np.ndarray], payload: Any, source: str) -> tuple[Config, Vocab]:
    """The checkpoint's config and vocabulary once every field and array is as the
    schema says; a SchemaError or ConfigError naming the first that is not."""
    payload = _mapping(payload, "payload")
    if not isinstance(payload.get("charlstm_version", ""), str):
        raise SchemaError("charlstm_version must be a string")
    if "config" not in payload:
        raise SchemaError("config is missing")
    config = config_from_dict(with_legacy_defaults(payload["config"]), f"config in {source}")
    vocab = check_vocab(payload.get("vocab"))
    check_progress(payload.get("progress", {}))
    _count(payload.get("optimizer_step", 0), "optimizer_step")
    check_rng_states(payload.get("rng_states", {}))
    problem = array_problem(tensors, expected_shapes(config, vocab.size, tensors), config)
    if problem:
        raise SchemaError(problem)
    return config, vocab


__all__ = ["ConfigError", "SchemaError", "check", "array_problem", "expected_shapes", "MAX_COUNT"]
