"""`charlstm export` and `charlstm import`: the checkpoint's model for other tools, and
PyTorch or Keras weights back into a checkpoint.

Files written by `export --to FORMAT OUT`:

    torch  OUT (.safetensors)  the state dict of nn.LSTM(V, H, L) under `lstm.` and
                               nn.Linear(H, V) under `head.` (interop.py); load it with
                               safetensors.torch.load_file + load_state_dict(strict=True)
    keras  OUT (.weights.h5)   Keras 3 weights of an LSTM stack + Dense head (keras_h5.py)
           torch, keras: OUT.vocab.json beside, {"chars": "..."}: character id i is chars[i]
    onnx   OUT (.onnx), OUT.seq.onnx   step and sequence models, vocabulary inside (onnx_export.py)
    html   OUT (.html)         one page that samples offline, everything inside (web_export.py)

Every export is built in memory and checked (export_check.py) before anything is
written. A vocabulary file for `import` is that JSON object, or a JSON list of
one-character strings (an `itos` list). `import` reads a safetensors state dict or a
Keras .weights.h5 (or the .npz that earlier versions exported) and writes an ordinary
charlstm checkpoint: the model section of its config is read from the weights' shapes,
Adam's moments are zero and the step is 0, so it can be sampled. With a corpus it
becomes a run directory instead (config.yaml, run.json, last.safetensors at step 0)
that `charlstm train --resume` fine-tunes.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from . import checkpoint, keras_h5
from .api import run
from .config import Config, config_from_dict, config_to_dict, load_config
from .data import Vocab, load_corpus
from .errors import CharlstmError
from .export_check import probe_ids, require_close
from .files import atomic_write, existing_file
from .parsing import ParseError, load_json
from .interop import (
    from_keras_weights,
    from_torch_state_dict,
    to_keras_weights,
    to_torch_state_dict,
)
from .model import Params, initial_state
from .onnx_export import export_onnx, sequence_path_for
from .rundir import checkpoint_path, prepare_run_dir, write_config, write_run_info
from .state import make_rngs
from .web_export import export_page

FORMATS = ("torch", "keras", "onnx", "html")
# Names torch.load is expected to open: a safetensors file under them only fails there.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


def vocab_path_for(out: Path) -> Path:
    """model.safetensors -> model.vocab.json, my.weights.h5 -> my.vocab.json, beside the weights."""
    name = out.name
    stem = name[:-len(keras_h5.SUFFIX)] if name.endswith(keras_h5.SUFFIX) else out.stem
    return out.with_name(stem + ".vocab.json")


def vocab_bytes(vocab: Vocab) -> bytes:
    # A lone surrogate (text decoded with e.g. unicode_escape) has no UTF-8 form;
    # backslashreplace writes it as \udXXX, which is its escape in JSON too.
    return (json.dumps({"chars": vocab.chars}, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def read_vocab(path: Path) -> Vocab:
    """A vocabulary file: {"chars": "..."} or a JSON list of one-character strings."""
    path = existing_file(path, "vocabulary file")
    try:
        raw = load_json(path.read_bytes())
    except (OSError, ParseError) as exc:
        raise CharlstmError(f"vocabulary file {path} is not UTF-8 JSON ({exc}); expected "
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


def check_export_name(fmt: str, out: Path) -> None:
    """Refuse a file name that would mislead whoever opens the file."""
    if fmt == "torch" and out.suffix.lower() in PICKLE_SUFFIXES:
        raise CharlstmError(f"--to torch writes safetensors, which torch.load cannot open; name it "
                            f"{out.stem}.safetensors and load it with "
                            f"model.load_state_dict(safetensors.torch.load_file(\"{out.stem}.safetensors\"))")
    if fmt == "keras" and not out.name.endswith(keras_h5.SUFFIX):
        stem = out.name.split(".")[0] or "model"
        retired = " (the .npz export is retired: Keras 3 loads .weights.h5)" if out.suffix == ".npz" else ""
        raise CharlstmError(f"Keras's load_weights opens only files named *{keras_h5.SUFFIX}; "
                            f"name it {stem}{keras_h5.SUFFIX}{retired}")
    if fmt == "onnx" and out.suffix != ".onnx":
        raise CharlstmError(f"name the ONNX file {out.name}.onnx (the sequence model is written beside it "
                            f"as {out.name}.seq.onnx)")


def export_outputs(fmt: str, out: Path) -> list[Path]:
    """Every file `export --to fmt out` writes."""
    if fmt in ("torch", "keras"):
        return [out, vocab_path_for(out)]
    if fmt == "onnx":
        return [out, sequence_path_for(out)]
    return [out]


def check_read_back(params: Params, read_back: Params, what: str) -> str:
    """The weights a written file holds give the checkpoint's logits."""
    ids = probe_ids(params.vocab_size)
    difference = require_close(run(params, ids)[0], run(read_back, ids)[0], what)
    return (f"checked: {what} gives the checkpoint's logits on {len(ids)} characters "
            f"(max abs difference {difference:.1e})")


def export_checkpoint(ckpt_path: Path, fmt: str, out: Path, force: bool = False,
                      float16: bool = False) -> tuple[list[Path], list[str]]:
    """Write the checkpoint's model in `fmt` to `out` (and what goes beside it), each
    file checked first; returns the files written and what was checked."""
    out = Path(out)
    if float16 and fmt != "html":
        raise CharlstmError("--float16 applies to --to html only")
    check_export_name(fmt, out)
    ckpt = checkpoint.load(ckpt_path)
    params, vocab = ckpt.params, ckpt.vocab
    vocab_path = vocab_path_for(out)
    # The same vocabulary already beside (e.g. from --to torch, then --to keras) is no clash.
    same_vocab = vocab_path.is_file() and vocab_path.read_bytes() == vocab_bytes(vocab)
    check_outputs([path for path in export_outputs(fmt, out) if not (path == vocab_path and same_vocab)],
                  [Path(ckpt_path)], force)
    if fmt == "torch":
        data = safetensors.numpy.save(to_torch_state_dict(params))
        back = from_torch_state_dict(safetensors.numpy.load(data))
        files, checks = {out: data}, [check_read_back(params, back, "the safetensors file read back")]
    elif fmt == "keras":
        weights = {name: array.astype(np.float32) for name, array in to_keras_weights(params).items()}
        data = keras_h5.weights_h5_bytes(weights)
        back = from_keras_weights(keras_h5.read_weights_h5(data, str(out)))
        files, checks = {out: data}, [check_read_back(params, back, "the .weights.h5 file read back")]
    elif fmt == "onnx":
        files, checks = export_onnx(params, vocab, out)
    elif fmt == "html":
        files, checks = export_page(params, vocab, out, float16)
    else:
        raise AssertionError(f"unknown export format {fmt}")
    if fmt in ("torch", "keras"):
        files[vocab_path] = vocab_bytes(vocab)
    for path, data in files.items():
        atomic_write(path, data)
    return list(files), checks


def read_weights(path: Path, fmt: str) -> dict[str, np.ndarray]:
    """Arrays of a safetensors (torch) file, or a Keras .weights.h5 or legacy .npz
    (keras) file, never unpickling anything."""
    data = existing_file(path, "weights file").read_bytes()
    if fmt == "keras" and data.startswith(keras_h5.H5_SIGNATURE):
        return keras_h5.read_weights_h5(data, str(path))
    try:
        if fmt == "torch":
            return safetensors.numpy.load(data)
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a single .npy array
            raise ValueError
        with loaded as archive:
            return {name: archive[name] for name in archive.files}
    except KeyError:  # safetensors.numpy has no NumPy dtype for bf16 and float8
        raise CharlstmError(f"{path} holds arrays in a dtype NumPy has no type for (bfloat16 or float8); "
                            "convert them to float32 first") from None
    except (safetensors.SafetensorError, ValueError, OSError, EOFError, zipfile.BadZipFile):
        kind = "safetensors" if fmt == "torch" else "Keras .weights.h5 (or .npz)"
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
        carried_state=initial_state(params, train_cfg.batch_size),
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
        "corpus": str(Path(corpus).resolve()), "corpus_sha256": data.sha256,
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
    raw["model"].update(hidden_size=params.hidden_size, num_layers=params.num_layers,
                        initial_state="learned" if params.learned_state else "zero")
    raw["train"]["dtype"] = params.flat.dtype.name
    return config_from_dict(raw)
