"""Shared fixtures: tiny corpora and configs so tests stay fast."""

from pathlib import Path

import numpy as np
import pytest

from charlstm.config import load_config
from charlstm.lstm import layer_backward, layer_forward, prepare_layer


def write_tiny_corpus(directory: Path) -> Path:
    """A few KB of repetitive text a tiny model learns in a few dozen steps."""
    lines = [f"the {a} {b} sat on the {c}.\n"
             for a in ("red", "big", "old") for b in ("cat", "dog", "hen") for c in ("mat", "log", "rug")]
    path = directory / "tiny.txt"
    path.write_text("".join(lines) * 12, encoding="utf-8")
    return path


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    return write_tiny_corpus(tmp_path)


def tiny_config(**overrides):
    """A config that trains in well under a second per few steps."""
    sets = {
        "model.hidden_size": 16, "model.num_layers": 2, "train.batch_size": 4, "train.seq_len": 12,
        "train.max_steps": 20, "train.eval_every": 10, "train.checkpoint_every": 10,
        "train.sample_every": 10, "train.sample_length": 20, "train.log_every": 5,
        "train.warmup_steps": 2, "train.lr": 0.02,
    }
    sets.update(overrides)
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


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


def fast_layer(x, h0, c0, W_x, W_h, b, d_out, d_h_T, d_c_T, buffers=None):
    """lstm.py's layer through a time-major interface, as reference.py takes it."""
    layer = prepare_layer(W_x, W_h, b, takes_ids=False)
    cache = layer_forward(layer, np.ascontiguousarray(x.transpose(0, 2, 1)), h0.T, c0.T, buffers)
    outputs = cache.h[1:].transpose(0, 2, 1).copy()
    final = cache.h[-1].T.copy(), cache.c[-1].T.copy()
    grads = (np.empty_like(W_x), np.empty_like(W_h), np.empty_like(b))
    d_x, d_h0, d_c0 = layer_backward(layer, cache, d_out.transpose(0, 2, 1), grads, d_h_T.T, d_c_T.T, True, buffers)
    return outputs, final, d_x.transpose(0, 2, 1), d_h0.T, d_c0.T, grads


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    """best.safetensors of a 2x32 model trained until its argmax text is the corpus's
    sentences (300 steps, about a second): the checkpoint the export tests use."""
    from charlstm.cli import main

    root = tmp_path_factory.mktemp("small_model")
    corpus = write_tiny_corpus(root)
    assert main(["train", str(corpus), "--out", str(root / "run"), "--quiet",
                 "--set", "model.hidden_size=32", "--set", "train.max_steps=300",
                 "--set", "train.batch_size=8", "--set", "train.seq_len=32", "--set", "train.lr=0.01",
                 "--set", "train.eval_every=100", "--set", "train.sample_length=0"]) == 0
    return root / "run" / "best.safetensors"
