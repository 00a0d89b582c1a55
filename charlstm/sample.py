"""Text generation from a trained model, one character per step for N samples at once.

Every path starts from the model's initial state and reads the prime first (in
windows of PRIME_WINDOW characters, so a prime of any length costs a few large
products, not one Python step per character). Beam search lives in beam.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .data import Vocab
from .errors import CharlstmError
from . import kernels
from .model import Params, initial_state, prepare_layers, run_layers

# Prime characters read per run_layers call: long enough that the per-call overhead
# vanishes, short enough that the window's caches stay a few MB (T * 4H * N floats).
PRIME_WINDOW = 1024

MIN_TEMPERATURE = 1e-6


def next_char_probs(logits: np.ndarray, temperature: float, top_k: int | None,
                    top_p: float | None = None) -> np.ndarray:
    """Softmax of logits / temperature over each row, keeping only the top_k largest,
    then only the nucleus: the most likely characters whose mass first reaches top_p
    (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration")."""
    scaled = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < scaled.shape[1]:
        cutoff = np.partition(scaled, -top_k, axis=1)[:, -top_k][:, None]
        scaled[scaled < cutoff] = -np.inf
    scaled -= scaled.max(axis=1, keepdims=True)
    probs = np.exp(scaled)
    probs /= probs.sum(axis=1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=1)
        # keep a character if the mass of the more likely ones is still below top_p,
        # so the most likely character is always kept
        mass_before = np.cumsum(sorted_probs, axis=1) - sorted_probs
        drop = np.zeros_like(probs, dtype=bool)
        np.put_along_axis(drop, order, mass_before >= top_p, axis=1)
        probs[drop] = 0.0
        probs /= probs.sum(axis=1, keepdims=True)
    return probs


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities of (N, V) logits, in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of `probs`, by inverting each row's cumulative distribution."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=1), probs.shape[1] - 1)


def check_sampling_args(vocab: Vocab, length: int, temperature: float, top_k: int | None,
                        num_samples: int = 1, top_p: float | None = None) -> None:
    if length < 0:
        raise CharlstmError(f"--length must be 0 or more, got {length}")
    if num_samples < 1:
        raise CharlstmError(f"--num-samples must be 1 or more, got {num_samples}")
    # Below MIN_TEMPERATURE, logits / temperature overflows to infinity: argmax is what it means.
    if not MIN_TEMPERATURE <= temperature <= 1 / MIN_TEMPERATURE:
        raise CharlstmError(f"--temperature must be between {MIN_TEMPERATURE:g} and {1 / MIN_TEMPERATURE:g}, "
                            f"got {temperature}; use --argmax for greedy decoding")
    if top_k is not None and not 1 <= top_k <= vocab.size:
        raise CharlstmError(f"--top-k must be between 1 and the vocabulary size {vocab.size}, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise CharlstmError(f"--top-p must be in (0, 1], got {top_p}")


def read_prime(params: Params, vocab: Vocab, prime: str, num_streams: int):
    """The state after reading `prime` from the initial state, for `num_streams`
    copies, and the prime's last id (what the first step is fed). An empty prime means
    a newline (or the vocabulary's first character). All but the last character are
    read in windows of PRIME_WINDOW with the state carried."""
    if not prime:
        prime = "\n" if "\n" in vocab.chars else vocab.chars[0]
    prime_ids = vocab.encode(prime).astype(np.intp)
    state = initial_state(params, num_streams)
    if len(prime_ids) > 1:
        layers = prepare_layers(params)
        for start in range(0, len(prime_ids) - 1, PRIME_WINDOW):
            window = prime_ids[start:min(start + PRIME_WINDOW, len(prime_ids) - 1)]
            inputs = np.repeat(window[:, None], num_streams, axis=1)  # (T, N)
            _, state, _, _ = run_layers(layers, inputs, state)
    return state, np.full(num_streams, prime_ids[-1], dtype=np.intp)


def generate(params: Params, vocab: Vocab, length: int, *, prime: str = "",
             temperature: float = 1.0, top_k: int | None = None, argmax: bool = False,
             rng: np.random.Generator | None = None, num_samples: int = 1,
             top_p: float | None = None) -> Iterator[str]:
    """Iterate over `length` steps of text; each step is a string of `num_samples`
    characters, one per independent sample. From its initial state the model first
    reads `prime` (without a prime it starts as if after a newline, or after the
    vocabulary's first character).

    Arguments are checked and the prime is read when this is called, not on the first
    step, so a bad argument fails before any text is produced."""
    steps = generate_scored(params, vocab, length, prime=prime, temperature=temperature, top_k=top_k,
                            argmax=argmax, rng=rng, num_samples=num_samples, top_p=top_p)
    return (chars for chars, _ in steps)


def generate_scored(params: Params, vocab: Vocab, length: int, *, prime: str = "",
                    temperature: float = 1.0, top_k: int | None = None, argmax: bool = False,
                    rng: np.random.Generator | None = None, num_samples: int = 1,
                    top_p: float | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """As `generate`, but each step also gives the (N,) log-probabilities, under the
    model itself (temperature 1, nothing cut off), of the characters drawn."""
    check_sampling_args(vocab, length, temperature, top_k, num_samples, top_p)
    state, current = read_prime(params, vocab, prime, num_samples)
    stepper = SamplingStep(params, state)
    return _sample_steps(stepper, vocab, current, length, temperature, top_k, top_p, argmax, rng)


class SamplingStep:
    """The model advanced one character at a time for N streams, stepping the same
    prepared layers and kernel set as training (model.prepare_layers,
    kernels.current()). Kept lean because at N=1 the per-step overhead is the cost:
    the weights are prepared once, the state is feature-major (H, N) as in lstm.py,
    and every array a step writes is allocated here.
    """

    def __init__(self, params: Params, state):
        dtype = params.flat.dtype
        h0, c0 = state  # (L, N, H) each
        num_samples, hidden = h0.shape[1], params.hidden_size
        self.layers = prepare_layers(params)
        self.cell = kernels.current()
        self.h = np.array(h0.transpose(0, 2, 1), order="C")  # (L, H, N), a copy even at N=1:
        self.c = np.array(c0.transpose(0, 2, 1), order="C")   # the steps write into it
        self.c_next = np.empty_like(self.c)  # the cell writes here, then the two swap
        self.head_weight = np.ascontiguousarray(params["head.W_y"].T)  # (V, H)
        self.head_bias = params["head.b_y"][:, None].copy()
        self.z = np.empty((4 * hidden, num_samples), dtype=dtype)
        self.gates = np.empty_like(self.z)
        self.recurrent = np.empty_like(self.z)
        self.tanh_c = np.empty((hidden, num_samples), dtype=dtype)
        self.logits = np.empty((params.vocab_size, num_samples), dtype=dtype)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Feed one id per stream, (N,); return the next-character logits, (V, N)."""
        z, recurrent = self.z, self.recurrent
        for index, layer in enumerate(self.layers):
            # as in training: the input projection, the recurrent product, then the cell
            # (separate inputs and outputs: a compiled kernel vectorises only without overlap)
            state = (self.gates, self.c[index], self.c_next[index], self.tanh_c, self.h[index])
            if index == 0:
                np.matmul(layer.recurrent_T, self.h[index], out=recurrent)
                self.cell.cell_forward_ids(layer.input_table, ids, recurrent, *state)
                continue
            np.matmul(layer.input_scaled.T, self.h[index - 1], out=z)
            z += layer.bias_scaled[:, None]
            np.matmul(layer.recurrent_T, self.h[index], out=recurrent)
            self.cell.cell_forward(z, recurrent, *state)
        self.c, self.c_next = self.c_next, self.c
        np.matmul(self.head_weight, self.h[-1], out=self.logits)
        self.logits += self.head_bias
        return self.logits


def _sample_steps(stepper: SamplingStep, vocab, current, length, temperature, top_k, top_p, argmax, rng):
    chars = np.array(list(vocab.chars))
    rows = np.arange(len(current))
    for _ in range(length):
        logits = stepper(current).T  # (N, V)
        if argmax:
            current = logits.argmax(axis=1)
        else:
            current = draw(next_char_probs(logits, temperature, top_k, top_p), rng)
        log_probs = log_softmax(logits)[rows, current]
        yield ("".join(chars[current]) if len(current) > 1 else vocab.chars[current[0]]), log_probs


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Length of `text` up to and including the earliest complete stop string, or None."""
    ends = [text.find(stop) + len(stop) for stop in stops if stop in text]
    return min(ends) if ends else None
