"""A checkpoint as a Python object: `charlstm.load(path)` for use in one's own code.

    model = charlstm.load("runs/my/best.safetensors")
    model.sample(prime="ROMEO:", length=200, temperature=0.8, seed=1)   # str, prime included
    model.score("some text")      # float: mean nats/char of predicting text[1:] from text[:-1]
    model.logits("some text")     # (T, V) float32: row t scores the character after text[:t+1]

`run` and `initial_state` are the model's own forward (model.logits, the same kernels
training, evaluation and sampling step) for one stream, with the state as (L, H)
arrays: every exporter checks its written file against them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import checkpoint, model
from .data import Vocab
from .errors import CharlstmError
from .model import Params


def initial_state(params: Params) -> tuple[np.ndarray, np.ndarray]:
    """(h0, c0), each (L, H): the state every stream starts from (the learned one, or
    zeros), in every export (ONNX defaults, the web page) and here."""
    h, c = model.initial_state(params, 1)
    return h[:, 0], c[:, 0]


def run(params: Params, ids: np.ndarray, state=None):
    """Run one stream over character ids (T,) from `state` ((h, c), each (L, H);
    default `initial_state`). Returns (logits (T, V), final state (h, c))."""
    ids = np.asarray(ids, dtype=np.intp).reshape(-1, 1)
    h0, c0 = initial_state(params) if state is None else state
    start = (np.array(h0, dtype=params.flat.dtype)[:, None].copy(), np.array(c0, dtype=params.flat.dtype)[:, None].copy())
    scores, (h, c) = model.logits(params, ids, start)
    return scores[:, 0], (h[:, 0], c[:, 0])


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
