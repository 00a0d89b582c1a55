"""Checkpoint files: safetensors arrays plus JSON metadata, never pickle.

A checkpoint is one safetensors file (an 8-byte header length, a JSON header, raw
little-endian array bytes; readable by any safetensors library). Its string metadata:

    format          "charlstm-checkpoint"
    format_version  FORMAT_VERSION; a newer version is refused with what to do
    payload         JSON: charlstm version, resolved config, vocabulary, training
                    progress (step, epoch, next window, best validation loss, the
                    losses since the last metrics record), Adam's step count and the
                    random generators' states
    sha256          over the format name and version, the payload and every array's
                    name, dtype, shape and bytes, so a flipped byte anywhere is caught
                    (version 1 left the name and version out; such files still load)

Arrays: `model.<param name>` (see model.py), and for resuming `optimizer.exp_avg`,
`optimizer.exp_avg_sq` (flat, same order as the parameters) and `state.h`,
`state.c` (L, B, H), the carried state of every stream and layer. A run that keeps
a weight average (`train.ema_decay`) saves the average as `model.*`, the model to
use, and the weights Adam updates as `training.params` (flat).

Writes go through files.atomic_write: a crash at any instant leaves the previous file
whole.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.numpy

from . import __version__
from . import schema
from .config import Config, ConfigError, config_to_dict
from .data import Vocab
from .errors import CharlstmError
from .files import atomic_write, existing_file
from .parsing import ParseError, load_json
from .model import Params, param_shapes

FORMAT_NAME = "charlstm-checkpoint"
# Version 2 brought the format name and version under the sha256. Later versions must
# keep that digest rule: it is how an older charlstm tells a newer file (whose digest
# verifies) from a damaged one (a flipped bit in the version read as "newer" in v1).
FORMAT_VERSION = 2
EXTENSION = ".safetensors"


@dataclass
class Checkpoint:
    config: Config
    vocab: Vocab
    params: Params
    progress: dict = field(default_factory=dict)    # step, epoch, window, best_val_loss, ...
    optimizer_step: int = 0
    optimizer_moments: tuple[np.ndarray, np.ndarray] | None = None  # (exp_avg, exp_avg_sq)
    carried_state: tuple[np.ndarray, np.ndarray] | None = None      # (h, c), each (L, B, H)
    rng_states: dict = field(default_factory=dict)  # name -> bit_generator.state
    training_params: np.ndarray | None = None        # (P,) flat: Adam's weights when `params` is their average


def _digest(format_version: str, payload: str, tensors: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    if format_version != "1":  # version 1 covered only the payload and the arrays
        digest.update(f"{FORMAT_NAME}:{format_version}\n".encode("utf-8"))
    digest.update(payload.encode("utf-8"))
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def write_checkpoint(path: Path, tensors: dict[str, np.ndarray], payload: dict,
                     format_version: int = FORMAT_VERSION) -> None:
    """`format_version` other than the current one is for tests of older and newer files."""
    payload_json = json.dumps(payload, sort_keys=True, allow_nan=False)
    tensors = {name: np.ascontiguousarray(a) for name, a in tensors.items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(format_version),
        "payload": payload_json,
        "sha256": _digest(str(format_version), payload_json, tensors),
    }
    atomic_write(path, safetensors.numpy.save(tensors, metadata=metadata))


def read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and payload of a checkpoint file, or a CharlstmError saying why not."""
    path = existing_file(path, "checkpoint")
    data = path.read_bytes()
    not_ours = CharlstmError(f"{path} is not a charlstm checkpoint")
    corrupt = CharlstmError(f"checkpoint {path} is truncated or corrupt; use another checkpoint (e.g. best/last)")
    if data.startswith(b"PK\x03\x04"):  # never handed to np.load: .npz may hold pickles
        raise CharlstmError(f"{path} is a zip or .npz archive, not a charlstm checkpoint "
                            f"({EXTENSION}); it was not opened")
    if len(data) < 8:
        raise corrupt if data else not_ours
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise not_ours if header_len > 100_000_000 else corrupt
    try:
        header = load_json(data[8:8 + header_len])
        metadata = header.get("__metadata__") or {}
    except (ParseError, AttributeError):
        raise corrupt from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise not_ours
    version_text = metadata.get("format_version")
    if not isinstance(version_text, str) or not version_text.isascii() or not version_text.isdigit() \
            or len(version_text) > 6 or not isinstance(metadata.get("payload"), str):
        raise corrupt
    try:
        version = int(version_text)
        tensors = safetensors.numpy.load(data)
        payload_json = metadata["payload"]
        intact = version >= 1 and _digest(version_text, payload_json, tensors) == metadata.get("sha256")
    except Exception:  # safetensors raises its own error types for malformed files
        raise corrupt from None
    if not intact:
        raise corrupt
    if version > FORMAT_VERSION:  # intact under its own version's digest: really newer
        raise CharlstmError(
            f"checkpoint {path} has format version {version}, newer than this charlstm "
            f"({__version__}) reads ({FORMAT_VERSION}); upgrade charlstm")
    try:
        payload = load_json(payload_json)
    except ParseError as exc:
        raise CharlstmError(f"checkpoint {path}: its payload is unusable ({exc}); it cannot be used") from None
    return tensors, payload


def save(path: Path, ckpt: Checkpoint) -> None:
    tensors = {f"model.{name}": view for name, view in ckpt.params.views.items()}
    if ckpt.optimizer_moments is not None:
        tensors["optimizer.exp_avg"], tensors["optimizer.exp_avg_sq"] = ckpt.optimizer_moments
    if ckpt.carried_state is not None:
        tensors["state.h"], tensors["state.c"] = ckpt.carried_state
    if ckpt.training_params is not None:
        tensors["training.params"] = ckpt.training_params
    payload = {
        "charlstm_version": __version__,
        "config": config_to_dict(ckpt.config),
        "vocab": ckpt.vocab.chars,
        "progress": ckpt.progress,
        "optimizer_step": ckpt.optimizer_step,
        "rng_states": ckpt.rng_states,
    }
    write_checkpoint(path, tensors, payload)


def load(path: Path) -> Checkpoint:
    """A checkpoint whose every field and array passed schema.check (else one
    CharlstmError naming the field)."""
    tensors, payload = read_checkpoint(path)
    try:
        config, vocab = schema.check(tensors, payload, str(path))
    except (schema.SchemaError, ConfigError) as exc:
        raise CharlstmError(f"checkpoint {path} is incomplete or inconsistent ({exc}); it cannot be used") from None
    shapes = param_shapes(vocab.size, config.model.hidden_size, config.model.num_layers,
                          config.model.initial_state == "learned")
    params = Params(shapes, np.dtype(config.train.dtype))
    for name in shapes:
        params[name][...] = tensors[f"model.{name}"]
    moments = state = None
    if "optimizer.exp_avg" in tensors:
        moments = (tensors["optimizer.exp_avg"], tensors["optimizer.exp_avg_sq"])
    if "state.h" in tensors:
        state = (tensors["state.h"], tensors["state.c"])
    return Checkpoint(config, vocab, params, payload.get("progress", {}),
                      payload.get("optimizer_step", 0), moments, state, payload.get("rng_states", {}),
                      tensors.get("training.params"))
