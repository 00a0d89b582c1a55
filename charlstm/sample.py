"""Text generation from a trained model, one character per step for N samples at once."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .data import Vocab
from .errors import CharlstmError
from .model import Params, run_layers, zero_state


def next_char_probs(logits: np.ndarray, temperature: float, top_k: int | None) -> np.ndarray:
    """Softmax of logits / temperature over each row, keeping only the top_k largest."""
    scaled = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < scaled.shape[1]:
        cutoff = np.partition(scaled, -top_k, axis=1)[:, -top_k][:, None]
        scaled[scaled < cutoff] = -np.inf
    scaled -= scaled.max(axis=1, keepdims=True)
    probs = np.exp(scaled)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs


def draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of `probs`, by inverting each row's cumulative distribution."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=1), probs.shape[1] - 1)


def check_sampling_args(vocab: Vocab, length: int, temperature: float, top_k: int | None) -> None:
    if length < 0:
        raise CharlstmError(f"--length must be 0 or more, got {length}")
    if not temperature > 0:
        raise CharlstmError(f"--temperature must be greater than 0, got {temperature}; "
                            "use --argmax for greedy decoding")
    if top_k is not None and not 1 <= top_k <= vocab.size:
        raise CharlstmError(f"--top-k must be between 1 and the vocabulary size {vocab.size}, got {top_k}")


def generate(params: Params, vocab: Vocab, length: int, *, prime: str = "",
             temperature: float = 1.0, top_k: int | None = None, argmax: bool = False,
             rng: np.random.Generator | None = None, num_samples: int = 1) -> Iterator[str]:
    """Iterate over `length` steps of text; each step is a string of `num_samples`
    characters, one per independent sample. The model first reads `prime` (without a
    prime it starts as if after a newline, or after the vocabulary's first character).

    Arguments are checked and the prime is read when this is called, not on the first
    step, so a bad argument fails before any text is produced."""
    check_sampling_args(vocab, length, temperature, top_k)
    if not prime:
        prime = "\n" if "\n" in vocab.chars else vocab.chars[0]
    prime_ids = vocab.encode(prime).astype(np.intp)
    state = zero_state(params.num_layers, num_samples, params.hidden_size, params.flat.dtype)
    inputs = np.repeat(prime_ids[:, None], num_samples, axis=1)  # (T, N)
    if len(prime_ids) > 1:  # read all but the last prime character in one window
        _, state, _, _ = run_layers(params, inputs[:-1], state)
    return _sample_steps(params, vocab, state, inputs[-1:], length, temperature, top_k, argmax, rng)


def _sample_steps(params, vocab, state, current, length, temperature, top_k, argmax, rng):
    for _ in range(length):
        top, state, _, _ = run_layers(params, current, state)
        logits = top[0] @ params["head.W_y"] + params["head.b_y"]
        if argmax:
            next_ids = logits.argmax(axis=1)
        else:
            next_ids = draw(next_char_probs(logits, temperature, top_k), rng)
        current = next_ids[None, :].astype(np.intp)
        yield "".join(vocab.chars[i] for i in next_ids)
