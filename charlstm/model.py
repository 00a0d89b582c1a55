"""The character model: L stacked LSTM layers, a linear head, softmax cross-entropy.

Parameters live in one flat buffer with a named view per tensor (`Params`), so the
optimizer is one vectorised update, global-norm clipping is one dot product, and the
checkpoint and gradient check walk the same names:

    lstm.{k}.W_x  (D_k, 4H)   D_0 = V (one-hot characters), D_k = H above
    lstm.{k}.W_h  (H, 4H)
    lstm.{k}.b    (4H,)       gate blocks i, f, g, o
    lstm.{k}.h0   (H,)        the learned initial state (h, c) of layer k, present with
    lstm.{k}.c0   (H,)        model.initial_state: learned (else every start is zero)
    head.W_y      (H, V)
    head.b_y      (V,)

Inverted dropout (Srivastava et al. 2014; between layers as in Zaremba et al. 2014)
is applied to the outputs of every layer, i.e. before each layer above and before the
head, and only when training. Recurrent weight dropout (DropConnect, Wan et al. 2013, on
W_h as AWD-LSTM does, Merity et al. 2018) zeroes entries of every layer's W_h instead,
one mask per window shared by all steps and streams: it regularises the recurrence,
which dropout between layers never touches.

Every sequence starts from the initial state (`initial_state`): training at each epoch
start and where a stream's carried state is reset, evaluation, sampling. A learned
initial state gets gradient only from the streams that start from it in a window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels
from .lstm import LayerBuffers, LSTMCache, PreparedLayer, columns, layer_backward, layer_forward, prepare_layer


def param_shapes(vocab_size: int, hidden_size: int, num_layers: int,
                 learned_state: bool = False) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for layer in range(num_layers):
        input_size = vocab_size if layer == 0 else hidden_size
        shapes[f"lstm.{layer}.W_x"] = (input_size, 4 * hidden_size)
        shapes[f"lstm.{layer}.W_h"] = (hidden_size, 4 * hidden_size)
        shapes[f"lstm.{layer}.b"] = (4 * hidden_size,)
        if learned_state:
            shapes[f"lstm.{layer}.h0"] = (hidden_size,)
            shapes[f"lstm.{layer}.c0"] = (hidden_size,)
    shapes["head.W_y"] = (hidden_size, vocab_size)
    shapes["head.b_y"] = (vocab_size,)
    return shapes


class Params:
    """Named arrays that are views into one flat, contiguous buffer."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype=np.float32, flat: np.ndarray | None = None):
        total = sum(int(np.prod(s)) for s in shapes.values())
        self.flat = np.zeros(total, dtype=dtype) if flat is None else flat
        if self.flat.shape != (total,):
            raise ValueError(f"flat buffer of shape {self.flat.shape} does not hold the {total} parameters")
        self.shapes = dict(shapes)
        self.views: dict[str, np.ndarray] = {}
        offset = 0
        for name, shape in shapes.items():
            size = int(np.prod(shape))
            self.views[name] = self.flat[offset:offset + size].reshape(shape)
            offset += size

    def __getitem__(self, name: str) -> np.ndarray:
        return self.views[name]

    def names(self) -> list[str]:
        return list(self.views)

    def zeros_like(self) -> Params:
        return Params(self.shapes, self.flat.dtype)

    def astype(self, dtype) -> Params:
        return Params(self.shapes, dtype, self.flat.astype(dtype))

    @property
    def num_layers(self) -> int:
        return sum(1 for name in self.views if name.endswith(".W_h"))

    @property
    def hidden_size(self) -> int:
        return self.shapes["lstm.0.W_h"][0]

    @property
    def vocab_size(self) -> int:
        return self.shapes["head.b_y"][0]

    @property
    def learned_state(self) -> bool:
        return "lstm.0.h0" in self.views


def _glorot_uniform(rng: np.random.Generator, shape) -> np.ndarray:
    limit = np.sqrt(6.0 / (shape[0] + shape[1]))
    return rng.uniform(-limit, limit, size=shape)


def _orthogonal(rng: np.random.Generator, shape) -> np.ndarray:
    """Orthogonal init as Keras does it: QR of a Gaussian matrix, signs fixed by diag(R)."""
    rows, cols = shape
    flat = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    return q if rows >= cols else q.T


def init_params(vocab_size: int, hidden_size: int, num_layers: int, forget_bias: float,
                rng: np.random.Generator, dtype=np.float32, learned_state: bool = False) -> Params:
    """Keras defaults: W_x glorot-uniform, W_h orthogonal, b zero but the forget block
    at `forget_bias` (Jozefowicz et al. 2015); head glorot-uniform, zero bias. A learned
    initial state starts at zero, so it draws nothing and starts as the zero state."""
    params = Params(param_shapes(vocab_size, hidden_size, num_layers, learned_state), dtype)
    for layer in range(num_layers):
        params[f"lstm.{layer}.W_x"][...] = _glorot_uniform(rng, params.shapes[f"lstm.{layer}.W_x"])
        params[f"lstm.{layer}.W_h"][...] = _orthogonal(rng, params.shapes[f"lstm.{layer}.W_h"])
        params[f"lstm.{layer}.b"][hidden_size:2 * hidden_size] = forget_bias
    params["head.W_y"][...] = _glorot_uniform(rng, params.shapes["head.W_y"])
    return params


def zero_state(num_layers: int, batch_size: int, hidden_size: int, dtype=np.float32):
    """Carried state (h, c), each (L, B, H)."""
    shape = (num_layers, batch_size, hidden_size)
    return np.zeros(shape, dtype=dtype), np.zeros(shape, dtype=dtype)


def initial_state(params: Params, batch_size: int):
    """The state every sequence starts from, (h, c) each (L, B, H): the learned (h0, c0)
    of every layer copied to each of `batch_size` streams, or zeros."""
    state = zero_state(params.num_layers, batch_size, params.hidden_size, params.flat.dtype)
    if params.learned_state:
        reset_streams(state, params, np.ones(batch_size, dtype=bool))
    return state


def reset_streams(state, params: Params, streams: np.ndarray) -> None:
    """Set the carried state (h, c), each (L, B, H), of the streams where `streams`
    (B,) is True back to the initial state, in place."""
    h, c = state
    for layer in range(params.num_layers):
        if params.learned_state:
            h[layer, streams] = params[f"lstm.{layer}.h0"]
            c[layer, streams] = params[f"lstm.{layer}.c0"]
        else:
            h[layer, streams] = 0
            c[layer, streams] = 0


def initial_state_gradients(grads: Params, d_state, started: np.ndarray) -> None:
    """Fill the learned initial state's gradients from the gradient at a window's
    start state (d_h0, d_c0), each (L, B, H): the sum over the streams that started
    from the initial state (`started`, (B,) booleans); the other streams started from
    a carried state, a constant."""
    for layer in range(grads.num_layers):
        for name, d_start in zip(("h0", "c0"), d_state):
            np.sum(d_start[layer, started], axis=0, out=grads[f"lstm.{layer}.{name}"])


def prepare_layers(params: Params, recurrent_weights: list[np.ndarray] | None = None) -> list[PreparedLayer]:
    """Every layer's weights as the time loop steps them (see lstm.prepare_layer);
    layer 0 reads character ids through its gather table. recurrent_weights: the W_h
    of each layer to step in place of the stored ones (`drop_recurrent_weights`)."""
    return [prepare_layer(params[f"lstm.{layer}.W_x"],
                          params[f"lstm.{layer}.W_h"] if recurrent_weights is None else recurrent_weights[layer],
                          params[f"lstm.{layer}.b"], takes_ids=layer == 0)
            for layer in range(params.num_layers)]


def drop_recurrent_weights(params: Params, rate: float, rng: np.random.Generator,
                           buffers: list[LayerBuffers]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """DropConnect of every layer's W_h for one window: returns (masks, W_h * mask),
    each mask holding 0 or 1/(1-rate), inverted like dropout, so evaluation and
    sampling use the stored weights as they are. Every stream shares the masks, so
    every MPI rank draws the same ones. The arrays live in `buffers`: fresh ones every
    step cost more than the drawing (measured 10 ms against 3 at 2x512)."""
    scale = params.flat.dtype.type(1.0 / (1.0 - rate))
    masks, masked = [], []
    for layer, arrays in enumerate(buffers):
        W_h = params[f"lstm.{layer}.W_h"]
        arrays.recurrent_dropout(W_h.shape, W_h.dtype)
        rng.random(out=arrays.uniforms, dtype=np.float32)
        np.greater_equal(arrays.uniforms, rate, out=arrays.keep)
        masks.append(np.multiply(arrays.keep, scale, out=arrays.recurrent_mask))
        masked.append(np.multiply(W_h, arrays.recurrent_mask, out=arrays.masked_W_h))
    return masks, masked


class ModelBuffers:
    """One lstm.LayerBuffers per layer, reused by a training loop from step to step
    (the previous step's cache lives in them until the next step overwrites it)."""

    def __init__(self):
        self.layers: list[LayerBuffers] = []

    def for_layers(self, num_layers: int) -> list[LayerBuffers]:
        while len(self.layers) < num_layers:
            self.layers.append(LayerBuffers())
        return self.layers[:num_layers]


@dataclass
class ModelCache:
    layers: list[LSTMCache]                   # feature-major, see lstm.py
    prepared: list[PreparedLayer]             # the weights the forward stepped
    recurrent_masks: list[np.ndarray] | None  # per layer, multiplying W_h (drop_recurrent_weights)
    dropout_masks: list[np.ndarray | None]    # per layer output, (T, H, B) scaled by 1/(1-p)
    head_input: np.ndarray                    # (H, T*B) top outputs after dropout, as columns
    probs: np.ndarray | None                  # (T*B, V) softmax, if the window is one head chunk
    targets: np.ndarray                       # (T*B,)
    weights: np.ndarray | None                # (T*B,) mask / count, or None for a plain mean
    count: float


def dropout_forward(x: np.ndarray, rate: float, rng: np.random.Generator,
                    shard: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inverted dropout of a feature-major (T, H, B) layer output: returns (x * mask,
    mask), the mask holding 0 or 1/(1-rate). The random numbers are drawn in (T, B, H)
    order, as before the layers went feature-major, so a seed gives the same masks as
    it did. shard (first, total): these B streams are streams [first, first + B) of
    `total`; the masks of all `total` are drawn and these kept, so that a stream's mask
    does not depend on how the streams are split over processes (see parallel.py)."""
    time, hidden, batch = x.shape
    first, total = shard or (0, batch)
    compiled = kernels.current()  # a compiled set's entries give the same numbers, faster
    uniforms = (compiled.random_float32 or _random_float32)(rng, (time, total, hidden))
    return (compiled.apply_dropout or apply_dropout)(uniforms, first, x, rate)


def _random_float32(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.random(shape, dtype=np.float32)


def apply_dropout(uniforms: np.ndarray, first: int, x: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(x * mask, mask) for x (T, H, B), keeping the units whose uniforms, drawn
    (T, total, H), are at least `rate`: streams [first, first + B) of them."""
    keep = uniforms[:, first:first + x.shape[2]] >= rate
    # scaled in the drawn order, then one transposing copy: scaling through the
    # transposed view measured 6.7 ms against 4.1 at (100, 512, 64), and the 2x512
    # loop's dropout 30.2 ms a step against 27.7
    scaled = np.multiply(keep, x.dtype.type(1.0 / (1.0 - rate)), dtype=x.dtype)
    mask = np.ascontiguousarray(scaled.transpose(0, 2, 1))
    return x * mask, mask


def dropout_backward(d_x: np.ndarray, mask: np.ndarray) -> None:
    """The gradient through `dropout_forward`, in place."""
    d_x *= mask


def run_layers(prepared: list[PreparedLayer], inputs: np.ndarray, state, dropout: float = 0.0,
               rng: np.random.Generator | None = None, buffers: ModelBuffers | None = None,
               shard: tuple[int, int] | None = None):
    """Run the LSTM stack over ids `inputs` (T, B) from state (h, c), each (L, B, H).

    Returns (top outputs feature-major (T, H, B) after dropout, the final state (h, c)
    each (L, B, H), the layer caches, the dropout masks). dropout > 0 needs `rng`;
    shard as in `dropout_forward`.
    """
    h0, c0 = (a.transpose(0, 2, 1) for a in state)  # (L, H, B) views
    num_layers, hidden = len(prepared), prepared[0].hidden_size
    layer_buffers = (buffers or ModelBuffers()).for_layers(num_layers)
    dtype = prepared[0].W_h.dtype
    final_h = np.empty((num_layers, hidden, inputs.shape[1]), dtype=dtype)
    final_c = np.empty_like(final_h)
    x = inputs
    layer_caches, dropout_masks = [], []
    for layer in range(num_layers):
        cache = layer_forward(prepared[layer], x, h0[layer], c0[layer], layer_buffers[layer])
        layer_caches.append(cache)
        final_h[layer], final_c[layer] = cache.h[-1], cache.c[-1]
        x, keep = dropout_forward(cache.h[1:], dropout, rng, shard) if dropout > 0.0 else (cache.h[1:], None)
        dropout_masks.append(keep)
    final_state = (np.ascontiguousarray(final_h.transpose(0, 2, 1)),
                   np.ascontiguousarray(final_c.transpose(0, 2, 1)))
    return x, final_state, layer_caches, dropout_masks


# The head's logits are made HEAD_CHUNK_ELEMENTS at a time (64 MB in float32): a
# window's (T*B, V) logits at V = 51,000 would take 2 GB at once. A window that fits
# in one chunk keeps its softmax for the backward; a larger one recomputes it there.
HEAD_CHUNK_ELEMENTS = 1 << 24


def head_chunks(num_rows: int, vocab_size: int) -> list[slice]:
    """Consecutive row ranges of a (T*B, V) window, each at most HEAD_CHUNK_ELEMENTS."""
    rows = max(1, HEAD_CHUNK_ELEMENTS // vocab_size)
    return [slice(start, min(start + rows, num_rows)) for start in range(0, num_rows, rows)]


def head_softmax(params: Params, head_input: np.ndarray, rows: slice, targets: np.ndarray):
    """Softmax over the vocabulary for columns `rows` of the head input (H, T*B), as
    (n, V) rows: one (n, H) @ (H, V) product that BLAS reads transposed in place, so
    no (V, T*B) -> (T*B, V) transpose is ever made. Returns (probs, nll) where nll
    (n,) is -log of each target's probability."""
    logits = head_input[:, rows].T @ params["head.W_y"]
    nll = (kernels.current().softmax_rows or softmax_rows)(logits, params["head.b_y"], targets)
    return logits, nll  # the logits are the probabilities now, turned in place


def softmax_rows(logits: np.ndarray, bias: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Turn (n, V) logits, before their bias, into softmax probabilities in place;
    returns -log of each row's target probability, (n,)."""
    logits += bias
    logits -= logits.max(axis=1, keepdims=True)  # stable: exp of at most 0
    target_logits = logits[np.arange(len(targets)), targets]
    probs = np.exp(logits, out=logits)
    row_sums = probs.sum(axis=1)
    probs /= row_sums[:, None]
    return np.log(row_sums) - target_logits


def head_loss(params: Params, head_input: np.ndarray, targets: np.ndarray):
    """-log p(target) for every column of the head input (H, T*B), chunk by chunk;
    returns (nll (T*B,), the (T*B, V) softmax if the window was one chunk, else None)."""
    nll = np.empty(len(targets), dtype=head_input.dtype)
    chunks = head_chunks(len(targets), params.vocab_size)
    for rows in chunks:
        probs, nll[rows] = head_softmax(params, head_input, rows, targets[rows])
    return nll, probs if len(chunks) == 1 else None


def head_backward(params: Params, cache: ModelCache, grads: Params) -> np.ndarray:
    """The gradient of the mean loss through softmax and head: fills head.W_y and
    head.b_y in `grads`; returns the gradient at the head input, (H, T*B)."""
    W_y, dW_y, db_y = params["head.W_y"], grads["head.W_y"], grads["head.b_y"]
    d_input = np.empty_like(cache.head_input)
    for index, rows in enumerate(head_chunks(len(cache.targets), params.vocab_size)):
        targets = cache.targets[rows]
        if cache.probs is not None:
            d_logits = cache.probs.copy()
        else:
            d_logits, _ = head_softmax(params, cache.head_input, rows, targets)
        d_logits[np.arange(len(targets)), targets] -= 1.0  # softmax minus one-hot
        if cache.weights is None:
            d_logits *= d_logits.dtype.type(1.0 / cache.count)
        else:
            d_logits *= cache.weights[rows, None]
        if index == 0:
            np.matmul(cache.head_input[:, rows], d_logits, out=dW_y)
            np.sum(d_logits, axis=0, out=db_y)
        else:
            dW_y += cache.head_input[:, rows] @ d_logits
            db_y += d_logits.sum(axis=0)
        np.matmul(W_y, d_logits.T, out=d_input[:, rows])
    return d_input


def forward(params: Params, inputs: np.ndarray, targets: np.ndarray, state,
            dropout: float = 0.0, rng: np.random.Generator | None = None,
            mask: np.ndarray | None = None, buffers: ModelBuffers | None = None,
            shard: tuple[int, int] | None = None, recurrent_weight_dropout: float = 0.0):
    """Mean cross-entropy (nats/char) of predicting `targets` from `inputs`.

    inputs, targets: (T, B) ids. state: (h, c), each (L, B, H). dropout > 0 or
    recurrent_weight_dropout > 0 needs `rng` (the weight masks are drawn first).
    mask: optional (T, B) booleans; only True positions count in the mean.
    buffers: optional ModelBuffers reused from step to step (the cache then lives in
    them until the next call with the same buffers). shard: (first, total) when these
    streams are some of the training streams (see `dropout_forward`).
    Returns (loss, final_state, cache).
    """
    dtype = params.flat.dtype
    buffers = buffers or ModelBuffers()
    recurrent_masks = recurrent_weights = None
    if recurrent_weight_dropout > 0:
        recurrent_masks, recurrent_weights = drop_recurrent_weights(
            params, recurrent_weight_dropout, rng, buffers.for_layers(params.num_layers))
    prepared = prepare_layers(params, recurrent_weights)
    top, final_state, layer_caches, dropout_masks = run_layers(prepared, inputs, state, dropout, rng, buffers, shard)
    head_input = columns(top)
    flat_targets = targets.reshape(-1)
    nll, probs = head_loss(params, head_input, flat_targets)
    if mask is None:
        count, weights = float(len(flat_targets)), None
        loss = float(nll.sum(dtype=np.float64) / count)
    else:
        flat_mask = mask.reshape(-1)
        count = float(flat_mask.sum())
        weights = flat_mask.astype(dtype) / dtype.type(count)
        loss = float((nll * flat_mask).sum(dtype=np.float64) / count)
    cache = ModelCache(layer_caches, prepared, recurrent_masks, dropout_masks, head_input, probs, flat_targets,
                       weights, count)
    return loss, final_state, cache


def backward(params: Params, cache: ModelCache, grads: Params, d_state=None,
             buffers: ModelBuffers | None = None, started: np.ndarray | None = None):
    """Fill `grads` (same names as `params`) with d loss / d param; return the
    gradient of the window's start state (d_h0, d_c0), each (L, B, H). d_state
    optionally adds gradient at the final state (used by the gradient check); buffers
    as in `forward`. started: (B,) booleans, the streams whose start state was the
    learned initial state (see `reset_streams`); None means none."""
    time, hidden, batch = cache.layers[-1].tanh_c.shape
    d_top = head_backward(params, cache, grads)  # (H, T*B) columns, seen as (T, H, B) below
    d_x = d_top.reshape(hidden, time, batch).transpose(1, 0, 2)

    num_layers = params.num_layers
    layer_buffers = (buffers or ModelBuffers()).for_layers(num_layers)
    d_h0 = np.empty((num_layers, batch, hidden), dtype=d_x.dtype)
    d_c0 = np.empty_like(d_h0)
    for layer in range(num_layers - 1, -1, -1):
        if cache.dropout_masks[layer] is not None:
            dropout_backward(d_x, cache.dropout_masks[layer])
        d_h_last = d_c_last = None
        if d_state is not None:
            d_h_last, d_c_last = d_state[0][layer].T, d_state[1][layer].T
        d_x, d_h0_layer, d_c0_layer = layer_backward(
            cache.prepared[layer], cache.layers[layer], d_x,
            (grads[f"lstm.{layer}.W_x"], grads[f"lstm.{layer}.W_h"], grads[f"lstm.{layer}.b"]),
            d_h_last, d_c_last, need_d_x=layer > 0, buffers=layer_buffers[layer])
        if cache.recurrent_masks is not None:  # d loss / d W_h = mask * d loss / d (W_h * mask)
            d_W_h = grads[f"lstm.{layer}.W_h"]
            d_W_h *= cache.recurrent_masks[layer]
        d_h0[layer], d_c0[layer] = d_h0_layer.T, d_c0_layer.T
    if params.learned_state:
        initial_state_gradients(grads, (d_h0, d_c0), np.zeros(batch, bool) if started is None else started)
    return d_h0, d_c0


def logits(params: Params, inputs: np.ndarray, state) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Next-character logits (T, B, V) for ids `inputs` (T, B) read from state (h, c),
    each (L, B, H), and the final state: the model as a scorer, without a loss."""
    top, final_state, _, _ = run_layers(prepare_layers(params), inputs, state)
    time, hidden, batch = top.shape
    head = columns(top).T @ params["head.W_y"] + params["head.b_y"]  # (T*B, V)
    return head.reshape(time, batch, -1), final_state
