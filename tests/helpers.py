"""Helpers the tests share: a tiny corpus and config, the command as a subprocess,
metrics, gradients by finite differences, and the fast layer in time-major form."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from charlstm.config import load_config
from charlstm.data import Vocab
from charlstm.lstm import layer_backward, layer_forward, prepare_layer
from charlstm.model import init_params
from charlstm.rundir import read_metrics

# Trains in well under a second per few steps: 2 layers of 16 units, 4 streams of 12.
TINY_SETTINGS = {
    "model.hidden_size": 16, "model.num_layers": 2, "train.batch_size": 4, "train.seq_len": 12,
    "train.max_steps": 20, "train.eval_every": 10, "train.checkpoint_every": 10,
    "train.sample_every": 10, "train.sample_length": 20, "train.log_every": 5,
    "train.warmup_steps": 2, "train.lr": 0.02,
}


def tiny_config(**overrides):
    """The tiny config as a Config; keys as in TINY_SETTINGS."""
    return load_config(None, [f"{k}={v}" for k, v in {**TINY_SETTINGS, **overrides}.items()])


def tiny_args(**overrides) -> list[str]:
    """The tiny config as `charlstm train` arguments (quiet, no samples unless overridden)."""
    sets = {**TINY_SETTINGS, "train.sample_length": 0, **overrides}
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")] + ["--quiet"]


TINY_RUN = tiny_args()


def write_tiny_corpus(directory: Path) -> Path:
    """A few KB of repetitive text a tiny model learns in a few dozen steps."""
    lines = [f"the {a} {b} sat on the {c}.\n"
             for a in ("red", "big", "old") for b in ("cat", "dog", "hen") for c in ("mat", "log", "rug")]
    path = directory / "tiny.txt"
    path.write_text("".join(lines) * 12, encoding="utf-8")
    return path


def charlstm_command(*args: str) -> list[str]:
    """The command line of `charlstm ARGS` run by this interpreter."""
    return [sys.executable, "-m", "charlstm.cli", *map(str, args)]


def run_charlstm(*args, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`charlstm ARGS` in a subprocess, its output captured as text."""
    return subprocess.run(charlstm_command(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    """The records of a run's metrics.jsonl, read as resume, plot and sweep read them."""
    return read_metrics(Path(run_dir))


def one_error_line(capsys) -> str:
    """The single `error:` line a failed command printed, with no traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


SAMPLING_VOCAB = Vocab("\n abcdefgh")


def sampling_model(scale: float):
    """A 2x12 model with a learned initial state over SAMPLING_VOCAB, its weights
    shaken by `scale` so that its distributions are far from uniform."""
    p = init_params(SAMPLING_VOCAB.size, 12, 2, 1.0, np.random.default_rng(0), learned_state=True)
    p.flat += np.random.default_rng(1).normal(scale=scale, size=p.flat.shape).astype(np.float32)
    return p


def random_window(rng, vocab: int, layers: int, hidden: int, T: int, B: int, dtype=np.float64):
    """Random (T, B) input ids and targets, and a random carried state (h, c), each (L, B, H)."""
    ids, targets = rng.integers(0, vocab, (T, B)), rng.integers(0, vocab, (T, B))
    state = tuple(rng.normal(scale=0.5, size=(layers, B, hidden)).astype(dtype) for _ in range(2))
    return ids, targets, state


def perturbed_model(rng, vocab=7, hidden=5, layers=2, dtype=np.float64):
    """Initialised weights moved by noise, so every bias is nonzero and the gates vary."""
    params = init_params(vocab, hidden, layers, 1.0, rng, dtype)
    params.flat += rng.normal(scale=0.3, size=params.flat.shape)
    return params


def relative_error(analytic, numeric):
    return np.abs(analytic - numeric) / np.maximum(np.abs(analytic) + np.abs(numeric), 1e-8)


def numeric_gradient(objective, array, eps=1e-5):
    """Central differences of the scalar `objective()` with respect to each entry of
    `array`, which is perturbed in place and restored."""
    gradient = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        plus = objective()
        array[index] = saved - eps
        minus = objective()
        array[index] = saved
        gradient[index] = (plus - minus) / (2 * eps)
    return gradient


def gradient_arrays(W_x, W_h, b, together=False):
    """Empty dW_x, dW_h, db: separate arrays, or views one after another in one buffer
    as model.Params lays them out (lstm.weight_gradients then makes one product)."""
    if not together:
        return tuple(np.empty_like(a) for a in (W_x, W_h, b))
    flat = np.empty(W_x.size + W_h.size + b.size, dtype=W_x.dtype)
    return (flat[:W_x.size].reshape(W_x.shape), flat[W_x.size:W_x.size + W_h.size].reshape(W_h.shape),
            flat[W_x.size + W_h.size:])


def fast_layer(x, h0, c0, W_x, W_h, b, d_out, d_h_T, d_c_T, buffers=None, grads_together=False):
    """lstm.py's layer through a time-major interface, as reference.py takes it."""
    layer = prepare_layer(W_x, W_h, b, takes_ids=False)
    cache = layer_forward(layer, np.ascontiguousarray(x.transpose(0, 2, 1)), h0.T, c0.T, buffers)
    outputs = cache.h[1:].transpose(0, 2, 1).copy()
    final = cache.h[-1].T.copy(), cache.c[-1].T.copy()
    grads = gradient_arrays(W_x, W_h, b, grads_together)
    d_x, d_h0, d_c0 = layer_backward(layer, cache, d_out.transpose(0, 2, 1), grads, d_h_T.T, d_c_T.T, True, buffers)
    return outputs, final, d_x.transpose(0, 2, 1), d_h0.T, d_c0.T, grads
