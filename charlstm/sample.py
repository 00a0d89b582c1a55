"""Text generation from a trained model, one character per step for N samples at once."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .data import Vocab
from .errors import CharlstmError
from .lstm import cell_forward, scaled_weights
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


def check_sampling_args(vocab: Vocab, length: int, temperature: float, top_k: int | None,
                        num_samples: int = 1) -> None:
    if length < 0:
        raise CharlstmError(f"--length must be 0 or more, got {length}")
    if num_samples < 1:
        raise CharlstmError(f"--num-samples must be 1 or more, got {num_samples}")
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
    check_sampling_args(vocab, length, temperature, top_k, num_samples)
    if not prime:
        prime = "\n" if "\n" in vocab.chars else vocab.chars[0]
    prime_ids = vocab.encode(prime).astype(np.intp)
    state = zero_state(params.num_layers, num_samples, params.hidden_size, params.flat.dtype)
    inputs = np.repeat(prime_ids[:, None], num_samples, axis=1)  # (T, N)
    if len(prime_ids) > 1:  # read all but the last prime character in one window
        _, state, _, _ = run_layers(params, inputs[:-1], state)
    stepper = SamplingStep(params, state)
    return _sample_steps(stepper, vocab, inputs[-1], length, temperature, top_k, argmax, rng)


class SamplingStep:
    """The model advanced one character at a time for N streams, kept lean because at
    N=1 the per-step overhead is the cost: weights are scaled, transposed and
    concatenated once, the state is feature-major (H, N) as in lstm.py, and every
    array a step writes is allocated here.

    Layer k > 0 computes its gates with one product, [W_x^T | W_h^T] (4H, 2H) @
    [h_{k-1}; h_k] (2H, N); layer 0 gathers its input columns by id.
    """

    def __init__(self, params: Params, state):
        dtype = params.flat.dtype
        num_layers, hidden = params.num_layers, params.hidden_size
        h0, c0 = state  # (L, N, H) each
        num_samples = h0.shape[1]
        self.hidden = hidden
        self.recurrent_weights, self.biases = [], [None]  # layer 0's bias is in its input table
        # inputs_and_h[k] is [h_{k-1}; h_k] for layer k (layer 0: [unused; h_0]).
        self.inputs_and_h = np.zeros((num_layers, 2 * hidden, num_samples), dtype=dtype)
        self.c = np.ascontiguousarray(c0.transpose(0, 2, 1))  # (L, H, N)
        for layer in range(num_layers):
            W_x, W_h, b = (params[f"lstm.{layer}.{n}"] for n in ("W_x", "W_h", "b"))
            W_x_scaled, W_h_T_scaled, b_scaled = scaled_weights(W_x, W_h, b)
            if layer == 0:
                self.input_table = np.ascontiguousarray((W_x_scaled + b_scaled).T)  # (4H, V)
                self.recurrent_weights.append(W_h_T_scaled)                          # (4H, H)
            else:
                self.recurrent_weights.append(np.hstack([W_x_scaled.T, W_h_T_scaled]))  # (4H, 2H)
                self.biases.append(b_scaled[:, None].copy())
            self.inputs_and_h[layer, hidden:] = h0[layer].T
        self.head_weight = np.ascontiguousarray(params["head.W_y"].T)  # (V, H)
        self.head_bias = params["head.b_y"][:, None].copy()
        self.gates = np.empty((4 * hidden, num_samples), dtype=dtype)
        self.recurrent = np.empty_like(self.gates)
        self.tanh_c = np.empty((hidden, num_samples), dtype=dtype)
        self.scratch = np.empty_like(self.tanh_c)
        self.logits = np.empty((params.vocab_size, num_samples), dtype=dtype)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Feed one id per stream, (N,); return the next-character logits, (V, N)."""
        hidden, gates = self.hidden, self.gates
        num_layers = len(self.recurrent_weights)
        for layer in range(num_layers):
            state = self.inputs_and_h[layer]
            h = state[hidden:]
            if layer == 0:
                np.take(self.input_table, ids, axis=1, out=gates)
                np.matmul(self.recurrent_weights[0], h, out=self.recurrent)
                gates += self.recurrent
            else:
                np.matmul(self.recurrent_weights[layer], state, out=gates)
                gates += self.biases[layer]
            cell_forward(gates, self.c[layer], self.c[layer], self.tanh_c, h, self.scratch)
            if layer + 1 < num_layers:
                self.inputs_and_h[layer + 1, :hidden] = h
        np.matmul(self.head_weight, self.inputs_and_h[-1, hidden:], out=self.logits)
        self.logits += self.head_bias
        return self.logits


def _sample_steps(stepper: SamplingStep, vocab, current, length, temperature, top_k, argmax, rng):
    chars = np.array(list(vocab.chars))
    for _ in range(length):
        logits = stepper(current).T  # (N, V)
        if argmax:
            current = logits.argmax(axis=1)
        else:
            current = draw(next_char_probs(logits, temperature, top_k), rng)
        yield "".join(chars[current]) if len(current) > 1 else vocab.chars[current[0]]
