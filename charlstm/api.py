"""A checkpoint as a Python object: `charlstm.load(path)` for use in one's own code.

    model = charlstm.load("runs/my/best.safetensors")
    model.sample(prime="ROMEO:", length=200, temperature=0.8, seed=1)   # str, prime included
    model.score("some text")      # float: mean nats/char of predicting text[1:] from text[:-1]
    model.logits("some text")     # (T, V) float32: row t scores the character after text[:t+1]

This is also the one place outside the training code that runs the model's forward
math (`run`, `initial_state`): every exporter checks its written file against it, so
a change to the model (e.g. a learned initial state) is made here once and every
export follows. The math is the textbook LSTM of lstm.py's docstring, written plainly
for one stream (no batching, no workspaces):

    z_t = x_t @ W_x + h_{t-1} @ W_h + b        gate blocks i, f, g, o
    c_t = sigmoid(z_f) * c_{t-1} + sigmoid(z_i) * tanh(z_g)
    h_t = sigmoid(z_o) * tanh(c_t)
    logits_t = h_t @ W_y + b_y                  (top layer's h)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import checkpoint
from .data import Vocab
from .errors import CharlstmError
from .model import Params


def initial_state(params: Params) -> tuple[np.ndarray, np.ndarray]:
    """(h0, c0), each (L, H): the state every stream starts from, in every export
    (ONNX defaults, the web page) and here. Zeros: the model has no learned initial
    state yet."""
    shape = (params.num_layers, params.hidden_size)
    return np.zeros(shape, params.flat.dtype), np.zeros(shape, params.flat.dtype)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * np.tanh(0.5 * z) + 0.5  # exact identity; never overflows exp


def run(params: Params, ids: np.ndarray, state=None):
    """Run one stream over character ids (T,) from `state` ((h, c), each (L, H);
    default `initial_state`). Returns (logits (T, V), final state (h, c))."""
    ids = np.asarray(ids, dtype=np.intp).reshape(-1)
    h0, c0 = initial_state(params) if state is None else state
    hidden = params.hidden_size
    final_h, final_c = np.array(h0, copy=True), np.array(c0, copy=True)
    inputs = None  # layer 0 reads one-hot ids: its input projection is a row gather
    for layer in range(params.num_layers):
        W_x, W_h, b = (params[f"lstm.{layer}.{n}"] for n in ("W_x", "W_h", "b"))
        projected = (W_x[ids] if inputs is None else inputs @ W_x) + b  # (T, 4H), all steps at once
        h, c = final_h[layer], final_c[layer]
        outputs = np.empty((len(ids), hidden), dtype=params.flat.dtype)
        for t in range(len(ids)):
            z = projected[t] + h @ W_h
            i, f, o = _sigmoid(z[:hidden]), _sigmoid(z[hidden:2 * hidden]), _sigmoid(z[3 * hidden:])
            c = f * c + i * np.tanh(z[2 * hidden:3 * hidden])
            h = o * np.tanh(c)
            outputs[t] = h
        final_h[layer], final_c[layer] = h, c
        inputs = outputs
    if inputs is None:
        raise AssertionError("a model has at least one layer")
    logits = inputs @ params["head.W_y"] + params["head.b_y"]
    return logits, (final_h, final_c)


class CharModel:
    """A trained character model: its vocabulary, parameters and config, with
    `sample`, `score` and `logits` on text."""

    def __init__(self, ckpt: checkpoint.Checkpoint):
        self.config = ckpt.config
        self.vocab: Vocab = ckpt.vocab
        self.params: Params = ckpt.params

    @property
    def chars(self) -> str:
        """The vocabulary in id order: character id i is chars[i]."""
        return self.vocab.chars

    def initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(h0, c0), each (L, H), as `initial_state`."""
        return initial_state(self.params)

    def logits(self, text: str) -> np.ndarray:
        """(T, V) next-character logits: row t after reading text[:t+1] from the
        initial state. Characters outside the vocabulary are refused."""
        return run(self.params, self.vocab.encode(text))[0]

    def score(self, text: str) -> float:
        """Mean loss in nats/char of predicting text[1:] from what precedes it (the
        same number `charlstm eval` gives for a file holding `text`, on one stream)."""
        ids = self.vocab.encode(text).astype(np.intp)
        if len(ids) < 2:
            raise CharlstmError("score needs a text of at least two characters")
        logits = run(self.params, ids[:-1])[0].astype(np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
        return float(np.mean(log_norm - logits[np.arange(len(ids) - 1), ids[1:]]))

    def sample(self, prime: str = "", length: int = 200, temperature: float = 1.0,
               seed: int | None = None, argmax: bool = False, top_k: int | None = None) -> str:
        """`prime` followed by `length` generated characters: the text `charlstm
        sample` prints for the same arguments and seed (without its final newline)."""
        from .sample import generate  # the CLI's own sampler, so both give the same text

        steps = generate(self.params, self.vocab, length, prime=prime, temperature=temperature,
                         top_k=top_k, argmax=argmax, rng=np.random.default_rng(seed))
        return prime + "".join(steps)

    def __repr__(self) -> str:
        return (f"CharModel({self.params.num_layers}x{self.params.hidden_size} LSTM, "
                f"vocabulary {self.vocab.size})")


def load(path: str | Path) -> CharModel:
    """The model in a charlstm checkpoint file (e.g. runs/my/best.safetensors)."""
    return CharModel(checkpoint.load(Path(path)))
