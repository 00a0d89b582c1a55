"""One LSTM layer over a whole window: forward and backward side by side.

Per step, with gates packed in the order i, f, g, o (PyTorch's and Keras's):

    z_t = x_t @ W_x + h_{t-1} @ W_h + b          # (B, 4H)
    i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);  g = tanh(z_g)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

W_x (D, 4H), W_h (H, 4H), b (4H,); state is ordered (h, c).

Layout. The public pair `lstm_forward` / `lstm_backward` takes and returns the usual
time-major arrays (T, B, .) and states (B, H). Inside, every per-step array is
feature-major, (T, F, B): time, then features, then the batch, so that one step's
slice (F, B) and each of its gate blocks (H, B) is a single contiguous block. On this
project's machines that makes the in-loop product W_h^T (4H, H) @ h (H, B) about 25%
faster than h (B, H) @ W_h (H, 4H), and pointwise work on a gate block 4-5x faster than
on a (B, H) column slice of a (B, 4H) array. model.py calls the feature-major
functions directly; the forward saves (T, F, B) arrays for the backward.

Speed (see DESIGN.md): only the recurrent product and the cell's pointwise math run
inside the time loop, all on contiguous, cache-sized blocks. The input projection is
computed for all steps before the loop (a row gather when the input is one-hot ids);
the backward loop only produces the gate gradients dZ, and dW_x, dW_h, db are single
products over all T*B columns afterwards. The sigmoid gates use
sigmoid(z) = 0.5 * tanh(z / 2) + 0.5, and the 1/2 is folded into copies of the
weights (exact: scaling by a power of two does not round), so one tanh activates
all four gate blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Up to this vocabulary size the one-hot product beats sorting ids for the
# scatter-add of dW_x. Measured on 2 cores, float32, 2048 rows x 1024 columns:
# V=256 6 ms vs 14 ms, V=512 20 ms vs 14 ms, V=2000 79 ms vs 18 ms.
ONEHOT_SCATTER_MAX_VOCAB = 384


@dataclass
class LSTMCache:
    """What the forward pass saves for the backward pass, feature-major.

    x:      (T, D, B) dense inputs, or (T, B) integer ids (one-hot over D)
    gates:  (T, 4H, B) activated gates i, f, g, o
    c:      (T+1, H, B) cell states c_0 .. c_T
    tanh_c: (T, H, B) tanh(c_1) .. tanh(c_T)
    h:      (T+1, H, B) hidden states h_0 .. h_T; the layer's outputs are h[1:]
    """

    x: np.ndarray
    gates: np.ndarray
    c: np.ndarray
    tanh_c: np.ndarray
    h: np.ndarray

    @property
    def outputs(self) -> np.ndarray:
        """h_1 .. h_T as a time-major (T, B, H) view."""
        return self.h[1:].transpose(0, 2, 1)


class Workspace:
    """Large arrays kept from one training step to the next, looked up by name.

    A step at 2x512, B=64, T=100 would otherwise take hundreds of MB of fresh memory
    from the system and fault every page of it in again; measured, that costs tens to
    hundreds of ms per step and varies with the machine's state. Whatever a step
    leaves in here (its caches) is overwritten by the next step that uses the same
    workspace, so only reuse one across calls that no longer need the previous
    caches, as a training loop does.
    """

    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}

    def empty(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        array = self._arrays.get(name)
        if array is None or array.shape != tuple(shape) or array.dtype != dtype:
            array = self._arrays[name] = np.empty(shape, dtype=dtype)
        return array


def _empty(workspace: Workspace | None, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.empty(shape, dtype=dtype) if workspace is None else workspace.empty(name, shape, dtype)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # 0.5 * (1 + tanh(x / 2)) equals the logistic function and never overflows.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@lru_cache(maxsize=32)
def _gate_scale(hidden_size: int, dtype: np.dtype) -> np.ndarray:
    """(4H,) factors [1/2, 1/2, 1, 1/2] per gate block: sigmoid(z) = 0.5 * tanh(z/2) + 0.5
    and tanh(z) = tanh(1 * z), so tanh(scale * z) activates every block at once."""
    scale = np.repeat(np.array([0.5, 0.5, 1.0, 0.5], dtype=dtype), hidden_size)
    scale.flags.writeable = False
    return scale


def scaled_weights(W_x: np.ndarray, W_h: np.ndarray, b: np.ndarray):
    """The weights as the forward loop uses them: columns times the gate scale, and
    W_h transposed to a contiguous (4H, H) for the feature-major product.
    Returns (W_x * s (D, 4H), (W_h * s).T (4H, H), b * s (4H,))."""
    scale = _gate_scale(W_h.shape[0], W_h.dtype)
    return W_x * scale, scaled_transpose(W_h, scale), b * scale


def scaled_transpose(matrix: np.ndarray, scale: np.ndarray, block: int = 128) -> np.ndarray:
    """(matrix * scale).T as a contiguous array, (N, M) from (M, N). Transposing in
    column blocks keeps each block's source in cache: measured 1.6x faster than one
    whole-matrix transposing copy for (512, 2048) float32."""
    out = np.empty(matrix.shape[::-1], dtype=matrix.dtype)
    for start in range(0, matrix.shape[1], block):
        rows = slice(start, start + block)
        np.multiply(matrix[:, rows].T, scale[rows, None], out=out[rows])
    return out


def cell_forward(gates, c_prev, c_out, tanh_c_out, h_out, scratch):
    """One step of the cell, in place and feature-major. `gates` (4H, B) holds the
    scaled pre-activations (see `scaled_weights`) and becomes the activated gates;
    c_t, tanh(c_t) and h_t are written into the given (H, B) buffers. `scratch` is an
    (H, B) buffer. Used by the training loop and by sampling."""
    hidden = c_prev.shape[0]
    np.tanh(gates, out=gates)
    for sigmoid_block in (gates[:2 * hidden], gates[3 * hidden:]):  # i, f and o
        sigmoid_block *= 0.5
        sigmoid_block += 0.5
    i, f, g, o = gates[:hidden], gates[hidden:2 * hidden], gates[2 * hidden:3 * hidden], gates[3 * hidden:]
    np.multiply(f, c_prev, out=c_out)
    np.multiply(i, g, out=scratch)
    c_out += scratch
    np.tanh(c_out, out=tanh_c_out)
    np.multiply(o, tanh_c_out, out=h_out)


def input_projection(x: np.ndarray, W_x: np.ndarray, b: np.ndarray,
                     workspace: Workspace | None = None, name: str = "") -> np.ndarray:
    """x_t @ W_x + b for all T steps at once, shaped (T, 4H, B) feature-major.

    `x` is (T, D, B) dense and feature-major, or (T, B) integer ids meaning one-hot
    inputs: onehot(x) @ W_x == W_x[x], so columns of (W_x + b)^T are gathered and no
    one-hot matrix is ever built. For dense inputs the result is a strided view of
    one (4H, D) @ (D, T*B) product (one large product runs faster than T small ones
    and than transposing its result); the time loop reads it step by step.
    """
    if np.issubdtype(x.dtype, np.integer):
        table = np.ascontiguousarray((W_x + b).T)  # (4H, V)
        out = _empty(workspace, name + "z", (x.shape[0], table.shape[0], x.shape[1]), table.dtype)
        for t in range(x.shape[0]):  # per step: measured faster than one gather + transpose
            np.take(table, x[t], axis=1, out=out[t])
        return out
    time, _, batch = x.shape
    out = _empty(workspace, name + "z_columns", (W_x.shape[1], time * batch), W_x.dtype)
    np.matmul(W_x.T, columns(x), out=out)  # (4H, T*B); BLAS reads the transpose in place
    out += b[:, None]
    return out.reshape(-1, time, batch).transpose(1, 0, 2)


def recurrence_forward(z: np.ndarray, h0: np.ndarray, c0: np.ndarray, W_h_T: np.ndarray,
                       x: np.ndarray, workspace: Workspace | None = None, name: str = "") -> LSTMCache:
    """Run the time loop, feature-major. `z` (T, 4H, B) holds the scaled input
    projections; if it is contiguous it becomes the cache's gate activations
    (overwritten in place). h0, c0 are (H, B); W_h_T is the scaled, transposed
    (4H, H) from `scaled_weights`."""
    time, four_hidden, batch = z.shape
    gates = z if z.flags.c_contiguous else _empty(workspace, name + "gates", z.shape, z.dtype)
    hidden = four_hidden // 4
    h = _empty(workspace, name + "h", (time + 1, hidden, batch), z.dtype)
    c = _empty(workspace, name + "c", (time + 1, hidden, batch), z.dtype)
    tanh_c = _empty(workspace, name + "tanh_c", (time, hidden, batch), z.dtype)
    h[0], c[0] = h0, c0
    recurrent = np.empty((four_hidden, batch), dtype=z.dtype)
    scratch = np.empty((hidden, batch), dtype=z.dtype)
    for t in range(time):
        np.matmul(W_h_T, h[t], out=recurrent)
        np.add(z[t], recurrent, out=gates[t])
        cell_forward(gates[t], c[t], c[t + 1], tanh_c[t], h[t + 1], scratch)
    return LSTMCache(x=x, gates=gates, c=c, tanh_c=tanh_c, h=h)


def layer_forward(x: np.ndarray, h0: np.ndarray, c0: np.ndarray,
                  W_x: np.ndarray, W_h: np.ndarray, b: np.ndarray,
                  workspace: Workspace | None = None, name: str = "") -> LSTMCache:
    """One layer over a window, feature-major: x (T, D, B) or ids (T, B); h0, c0 (H, B).
    With a `workspace`, the large arrays are taken from it under names starting with
    `name` (one name per layer)."""
    W_x_scaled, W_h_T_scaled, b_scaled = scaled_weights(W_x, W_h, b)
    z = input_projection(x, W_x_scaled, b_scaled, workspace, name)
    return recurrence_forward(z, h0, c0, W_h_T_scaled, x, workspace, name)


def lstm_forward(x: np.ndarray, h0: np.ndarray, c0: np.ndarray,
                 W_x: np.ndarray, W_h: np.ndarray, b: np.ndarray):
    """Run one LSTM layer over a window (time-major interface).

    Args:
        x:  (T, B, D) float inputs, or (T, B) integer ids meaning one-hot over D.
        h0, c0: (B, H) initial state, ordered (h, c).
        W_x: (D, 4H), W_h: (H, 4H), b: (4H,); gate blocks in the order i, f, g, o.

    Returns:
        outputs (T, B, H) = h_1 .. h_T, the final state (h_T, c_T), and the cache
        that `lstm_backward` needs.
    """
    if not np.issubdtype(x.dtype, np.integer):
        x = np.ascontiguousarray(x.transpose(0, 2, 1))
    cache = layer_forward(x, h0.T, c0.T, W_x, W_h, b)
    return cache.outputs, (cache.h[-1].T.copy(), cache.c[-1].T.copy()), cache


def recurrence_backward(d_outputs: np.ndarray, cache: LSTMCache, W_h: np.ndarray,
                        d_h_last: np.ndarray | None = None, d_c_last: np.ndarray | None = None,
                        workspace: Workspace | None = None, name: str = ""):
    """Backward through the time loop: the gate pre-activation gradients dZ and the
    gradients of the initial state (d_h0, d_c0), each (H, B). `d_outputs` is the loss
    gradient at h_1 .. h_T, any (T, H, B)-shaped array or view; d_h_last / d_c_last
    (H, B) add gradient at the final state. dZ comes back as columns, (4H, T*B) with
    column t*B + n for step t and stream n, ready for the weight-gradient products.

    Each step works on cache-sized contiguous blocks: per block,
    dz = (carried grad) * d(gate)/dz * (partner), that is
        i: dc * i(1-i) * g      f: dc * f(1-f) * c_prev
        g: dc * (1-g^2) * i     o: dh * o(1-o) * tanh(c)
    with dc = dh * o * (1 - tanh(c)^2) + (dc carried from step t+1).
    """
    gates, c, tanh_c = cache.gates, cache.c, cache.tanh_c
    time, four_hidden, batch = gates.shape
    hidden = four_hidden // 4
    dtype = gates.dtype
    d_z_columns = _empty(workspace, name + "d_z", (four_hidden, time, batch), dtype)
    d_z_t = np.empty((four_hidden, batch), dtype=dtype)
    d_i, d_f, d_g, d_o = (d_z_t[k * hidden:(k + 1) * hidden] for k in range(4))
    d_ifg = d_z_t[:3 * hidden].reshape(3, hidden, batch)
    d_h = np.empty((hidden, batch), dtype=dtype)
    d_c = np.empty((hidden, batch), dtype=dtype)
    d_h_carry = np.zeros((hidden, batch), dtype=dtype) if d_h_last is None else d_h_last.astype(dtype)
    d_c_carry = np.zeros((hidden, batch), dtype=dtype) if d_c_last is None else d_c_last.astype(dtype)
    W_h = np.ascontiguousarray(W_h)
    for t in range(time - 1, -1, -1):
        gates_t = gates[t]
        i, f, g, o = (gates_t[k * hidden:(k + 1) * hidden] for k in range(4))
        np.add(d_outputs[t], d_h_carry, out=d_h)
        np.multiply(tanh_c[t], tanh_c[t], out=d_c)
        np.subtract(1.0, d_c, out=d_c)
        d_c *= o
        d_c *= d_h
        d_c += d_c_carry
        np.subtract(1.0, gates_t, out=d_z_t)  # a(1-a) for the sigmoid blocks ...
        d_z_t *= gates_t
        np.multiply(g, g, out=d_g)            # ... and 1-g^2 for the tanh block
        np.subtract(1.0, d_g, out=d_g)
        d_i *= g
        d_f *= c[t]
        d_g *= i
        np.multiply(d_ifg, d_c, out=d_ifg)
        d_o *= tanh_c[t]
        d_o *= d_h
        np.multiply(d_c, f, out=d_c_carry)
        np.matmul(W_h, d_z_t, out=d_h_carry)
        d_z_columns[:, t] = d_z_t  # one strided copy beats transposing all of dZ afterwards
    return d_z_columns.reshape(four_hidden, time * batch), d_h_carry, d_c_carry


def scatter_add_rows(out: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> None:
    """out[ids[n]] += rows[n] for every n, duplicates summed (dW_x of a gather).

    np.add.at is slow; for small vocabularies a (V, N) one-hot product runs in BLAS,
    for large ones sorting the ids and summing each run of equal ids scales with N.
    """
    vocab_size = out.shape[0]
    if vocab_size <= ONEHOT_SCATTER_MAX_VOCAB:
        onehot = np.zeros((vocab_size, len(ids)), dtype=rows.dtype)
        onehot[ids, np.arange(len(ids))] = 1
        out += onehot @ rows
        return
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    out[sorted_ids[starts]] += np.add.reduceat(rows[order], starts, axis=0)


def columns(array: np.ndarray) -> np.ndarray:
    """(T, F, B) -> (F, T*B): every step's columns side by side, for one product."""
    time, features, batch = array.shape
    return np.ascontiguousarray(array.transpose(1, 0, 2)).reshape(features, time * batch)


def weight_gradients(d_z_columns: np.ndarray, cache: LSTMCache, W_x: np.ndarray,
                     grads: tuple[np.ndarray, np.ndarray, np.ndarray], need_d_x: bool):
    """dW_x, dW_h, db (written into `grads`) as single products over all T*B columns
    of dZ (4H, T*B), and d_x for dense inputs when `need_d_x` (else None): a (T, D, B)
    view of one (D, 4H) @ (4H, T*B) product."""
    dW_x, dW_h, db = grads
    np.matmul(columns(cache.h[:-1]), d_z_columns.T, out=dW_h)
    np.sum(d_z_columns, axis=1, out=db)
    if np.issubdtype(cache.x.dtype, np.integer):
        dW_x[...] = 0
        scatter_add_rows(dW_x, cache.x.ravel(), d_z_columns.T)
        return None
    np.matmul(columns(cache.x), d_z_columns.T, out=dW_x)
    if not need_d_x:
        return None
    time, _, batch = cache.x.shape
    return np.matmul(W_x, d_z_columns).reshape(-1, time, batch).transpose(1, 0, 2)


def layer_backward(d_outputs: np.ndarray, cache: LSTMCache, W_x: np.ndarray, W_h: np.ndarray,
                   grads: tuple[np.ndarray, np.ndarray, np.ndarray],
                   d_h_last: np.ndarray | None = None, d_c_last: np.ndarray | None = None,
                   need_d_x: bool = True, workspace: Workspace | None = None, name: str = ""):
    """Feature-major backward of one layer: d_outputs (T, H, B) -> (d_x (T, D, B) view
    or None, d_h0 (H, B), d_c0 (H, B)); weight gradients are written into `grads`."""
    d_z_columns, d_h0, d_c0 = recurrence_backward(d_outputs, cache, W_h, d_h_last, d_c_last, workspace, name)
    d_x = weight_gradients(d_z_columns, cache, W_x, grads, need_d_x)
    return d_x, d_h0, d_c0


def lstm_backward(d_outputs: np.ndarray, cache: LSTMCache, W_x: np.ndarray, W_h: np.ndarray,
                  d_h_last: np.ndarray | None = None, d_c_last: np.ndarray | None = None,
                  grads: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                  need_d_x: bool = True):
    """Gradients of one layer, given d_outputs (T, B, H) at h_1 .. h_T (time-major
    interface; d_h_last, d_c_last are (B, H)).

    Returns (d_x, d_h0, d_c0, (dW_x, dW_h, db)). `d_x` is (T, B, D), or None for id
    inputs or when `need_d_x` is False. If `grads` is given, the weight gradients
    are written into those arrays (overwriting them) instead of new ones.
    """
    if grads is None:
        grads = (np.empty_like(W_x), np.empty_like(W_h), np.empty(W_h.shape[1], dtype=W_h.dtype))
    d_x, d_h0, d_c0 = layer_backward(
        d_outputs.transpose(0, 2, 1), cache, W_x, W_h, grads,
        None if d_h_last is None else d_h_last.T, None if d_c_last is None else d_c_last.T, need_d_x)
    if d_x is not None:
        d_x = d_x.transpose(0, 2, 1)
    return d_x, d_h0.T, d_c0.T, grads
