"""Export checkpoints as PyTorch or Keras weight files, and import them back.

Files written (layouts and names in interop.py):

    --to torch  OUT.safetensors  the state dict of nn.LSTM(V, H, L) under `lstm.` and
                                 nn.Linear(H, V) under `head.`; load it with
                                 safetensors.torch.load_file + load_state_dict(strict=True)
    --to keras  OUT.npz          `lstm_{k}/kernel`, `lstm_{k}/recurrent_kernel`,
                                 `lstm_{k}/bias`, `dense/kernel`, `dense/bias`
    both        OUT.vocab.json   {"chars": "..."}: character id i is chars[i]

A vocabulary file for `import` is that JSON object, or a JSON list of one-character
strings (an `itos` list). `import` writes an ordinary charlstm checkpoint: the model
section of its config is read from the weights' shapes, Adam's moments are zero and
the step is 0, so it can be sampled. With a corpus it becomes a run directory instead
(config.yaml, run.json, last.safetensors at step 0) that `charlstm train --resume`
fine-tunes.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from . import checkpoint
from .config import Config, config_from_dict, config_to_dict, load_config
from .data import Vocab, file_sha256, load_corpus
from .errors import CharlstmError
from .files import atomic_write, existing_file
from .interop import (
    from_keras_weights,
    from_torch_state_dict,
    to_keras_weights,
    to_torch_state_dict,
)
from .model import Params, zero_state
from .rundir import checkpoint_path, prepare_run_dir, write_config, write_run_info
from .state import make_rngs

FORMATS = ("torch", "keras")
EXTENSIONS = {"torch": ".safetensors", "keras": ".npz"}


def vocab_path_for(out: Path) -> Path:
    """model.safetensors -> model.vocab.json, beside the weights."""
    return out.with_name(out.stem + ".vocab.json")


def write_vocab(path: Path, vocab: Vocab) -> None:
    text = json.dumps({"chars": vocab.chars}, ensure_ascii=False) + "\n"
    # A lone surrogate (text decoded with e.g. unicode_escape) has no UTF-8 form;
    # backslashreplace writes it as \udXXX, which is its escape in JSON too.
    atomic_write(path, text.encode("utf-8", "backslashreplace"))


def read_vocab(path: Path) -> Vocab:
    """A vocabulary file: {"chars": "..."} or a JSON list of one-character strings."""
    path = existing_file(path, "vocabulary file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CharlstmError(f"vocabulary file {path} is not UTF-8 JSON; expected "
                            '{"chars": "..."} or a list of characters') from None
    chars = raw.get("chars") if isinstance(raw, dict) else raw
    if isinstance(chars, list) and all(isinstance(c, str) and len(c) == 1 for c in chars):
        chars = "".join(chars)
    if not isinstance(chars, str) or len(chars) < 2:
        raise CharlstmError(f"vocabulary file {path} must hold {{\"chars\": \"...\"}} or a list of "
                            "single characters, at least two")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in chars):  # lone surrogates: not text
        raise CharlstmError(f"vocabulary file {path} holds a lone surrogate, which is not a character")
    if len(set(chars)) != len(chars):
        repeated = sorted({c for c in chars if chars.count(c) > 1})
        raise CharlstmError(f"vocabulary file {path} repeats " + " ".join(repr(c) for c in repeated))
    return Vocab(chars)


def check_outputs(outputs: list[Path], inputs: list[Path], force: bool) -> None:
    """Refuse to write over an input, or over an existing file unless forced."""
    for out in outputs:
        if out.is_dir():
            raise CharlstmError(f"{out} is a directory; pass a file name")
        if not out.parent.is_dir():
            raise CharlstmError(f"directory {out.parent} does not exist")
        if any(out.exists() and source.exists() and out.samefile(source) for source in inputs):
            raise CharlstmError(f"{out} is also an input; choose another output file")
        if out.exists() and not force:
            raise CharlstmError(f"{out} already exists; choose another name or pass --force to replace it")


def export_checkpoint(ckpt_path: Path, fmt: str, out: Path, force: bool = False) -> list[Path]:
    """Write the checkpoint's weights in `fmt` to `out` and its vocabulary beside it;
    returns the files written."""
    out = Path(out)
    vocab_path = vocab_path_for(out)
    check_outputs([out, vocab_path], [Path(ckpt_path)], force)
    ckpt = checkpoint.load(ckpt_path)
    if fmt == "torch":
        data = safetensors.numpy.save(to_torch_state_dict(ckpt.params))
    elif fmt == "keras":
        buffer = io.BytesIO()
        np.savez(buffer, **to_keras_weights(ckpt.params))
        data = buffer.getvalue()
    else:
        raise AssertionError(f"unknown export format {fmt}")
    atomic_write(out, data)
    write_vocab(vocab_path, ckpt.vocab)
    return [out, vocab_path]


def read_weights(path: Path, fmt: str) -> dict[str, np.ndarray]:
    """Arrays of a safetensors (torch) or .npz (keras) file, never unpickling anything."""
    path = existing_file(path, "weights file")
    try:
        if fmt == "torch":
            return safetensors.numpy.load(path.read_bytes())
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a single .npy array
            raise ValueError
        with loaded as archive:
            return {name: archive[name] for name in archive.files}
    except (safetensors.SafetensorError, ValueError, OSError, EOFError, zipfile.BadZipFile):
        kind = "safetensors" if fmt == "torch" else ".npz"
        raise CharlstmError(f"{path} is not a readable {kind} file of named arrays") from None


def imported_checkpoint(weights_path: Path, fmt: str, vocab_path: Path,
                        config_path: Path | None = None) -> checkpoint.Checkpoint:
    """A PyTorch state dict or Keras weights file plus a vocabulary as a step-0
    checkpoint (training settings from `config_path`, if given)."""
    vocab = read_vocab(vocab_path)
    arrays = read_weights(weights_path, fmt)
    params = from_torch_state_dict(arrays) if fmt == "torch" else from_keras_weights(arrays)
    if params.vocab_size != vocab.size:
        raise CharlstmError(f"{vocab_path} has {vocab.size} characters but the weights in {weights_path} "
                            f"expect {params.vocab_size}")
    params = as_training_dtype(params)
    config = config_for(params, load_config(config_path))
    train_cfg = config.train
    return checkpoint.Checkpoint(
        config, vocab, params,
        progress={"step": 0, "epoch": 0, "window": 0, "best_val_loss": None},
        optimizer_step=0,
        optimizer_moments=(np.zeros_like(params.flat), np.zeros_like(params.flat)),
        carried_state=zero_state(params.num_layers, train_cfg.batch_size, params.hidden_size,
                                 params.flat.dtype),
        rng_states={name: rng.bit_generator.state for name, rng in make_rngs(train_cfg.seed).items()})


def import_weights(weights_path: Path, fmt: str, vocab_path: Path, out: Path,
                   config_path: Path | None = None, force: bool = False) -> checkpoint.Checkpoint:
    """Write the imported checkpoint to the file `out`."""
    out = Path(out)
    check_outputs([out], [Path(weights_path), Path(vocab_path)], force)
    ckpt = imported_checkpoint(weights_path, fmt, vocab_path, config_path)
    checkpoint.save(out, ckpt)
    return ckpt


def import_as_run(weights_path: Path, fmt: str, vocab_path: Path, run_dir: Path, corpus: Path,
                  config_path: Path | None = None) -> checkpoint.Checkpoint:
    """Make `run_dir` a run at step 0 on `corpus`, so `charlstm train --resume run_dir`
    fine-tunes the imported weights: config.yaml, run.json and last.safetensors."""
    ckpt = imported_checkpoint(weights_path, fmt, vocab_path, config_path)
    data = load_corpus(Path(corpus), ckpt.config)
    if data.vocab != ckpt.vocab:
        raise CharlstmError(f"fine-tuning needs {corpus}'s characters, sorted, as the vocabulary; "
                            f"it has {data.vocab.size} ({data.vocab.chars!r}), {vocab_path} has "
                            f"{ckpt.vocab.size} ({ckpt.vocab.chars!r})")
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, force=False)
    write_config(run_dir, ckpt.config)
    write_run_info(run_dir, {
        "corpus": str(Path(corpus).resolve()), "corpus_sha256": file_sha256(Path(corpus)),
        "vocab_size": ckpt.vocab.size, "num_params": int(ckpt.params.flat.size),
        "imported_from": str(weights_path), "status": "imported"})
    checkpoint.save(checkpoint_path(run_dir, "last"), ckpt)
    return ckpt


def as_training_dtype(params: Params) -> Params:
    """float32 unless the weights are float64 (half precision is widened)."""
    return params if params.flat.dtype in (np.float32, np.float64) else params.astype(np.float32)


def config_for(params: Params, base: Config) -> Config:
    """`base` with the model size and dtype the weights have."""
    raw = config_to_dict(base)
    raw["model"].update(hidden_size=params.hidden_size, num_layers=params.num_layers)
    raw["train"]["dtype"] = params.flat.dtype.name
    return config_from_dict(raw)
