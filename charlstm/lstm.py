"""One LSTM layer over a whole window, fast: forward and backward side by side.

The math is charlstm/reference.py's (read that first): per step, gates packed i, f, g, o,

    z_t = x_t @ W_x + h_{t-1} @ W_h + b          # (B, 4H)
    i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);  g = tanh(z_g)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

This module arranges the same math for speed (docs/design.md has the measurements):
- Feature-major layout. Every per-step array is (T, F, B): time, then features, then
  the batch, so one step's (4H, B) gates and each (H, B) gate block are contiguous.
  The in-loop product is W_h^T (4H, H) @ h (H, B).
- Weights are prepared once per set of weights (`prepare_layer`): scaled for the
  sigmoid-through-tanh trick (sigmoid(z) = 0.5 * tanh(z / 2) + 0.5; scaling by 1/2 is
  exact), W_h transposed, and for one-hot inputs a gather table (W_x + b)^T. Training
  prepares them every step, sampling once; both step the same PreparedLayer.
- Only the recurrent product and the cell run inside the time loop. The input
  projection is one product (or a gather) for all T steps before it; the backward
  loop only produces the gate gradients dZ, and dW_x, dW_h, db are single products
  over all T*B columns afterwards: dW_x and dW_h one product where they sit together
  (`weight_gradients`).
- The cell's pointwise math is the kernel set's (charlstm/kernels): `cell_forward`
  and `cell_backward`, whichever set is current.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import kernels

# Up to this vocabulary size the one-hot product beats sorting ids for the
# scatter-add of dW_x. Measured on 2 cores, float32, 2048 rows x 1024 columns:
# V=256 6 ms vs 14 ms, V=512 20 ms vs 14 ms, V=2000 79 ms vs 18 ms.
ONEHOT_SCATTER_MAX_VOCAB = 384


@lru_cache(maxsize=32)
def _gate_scale(hidden_size: int, dtype: np.dtype) -> np.ndarray:
    """(4H,) factors [1/2, 1/2, 1, 1/2] per gate block: sigmoid(z) = 0.5 * tanh(z/2) + 0.5
    and tanh(z) = tanh(1 * z), so tanh(scale * z) activates every block at once."""
    scale = np.repeat(np.array([0.5, 0.5, 1.0, 0.5], dtype=dtype), hidden_size)
    scale.flags.writeable = False
    return scale


def scaled_transpose(matrix: np.ndarray, scale: np.ndarray, block: int = 128) -> np.ndarray:
    """(matrix * scale).T as a contiguous array, (N, M) from (M, N). Transposing in
    column blocks keeps each block's source in cache: measured 1.6x faster than one
    whole-matrix transposing copy for (512, 2048) float32."""
    out = np.empty(matrix.shape[::-1], dtype=matrix.dtype)
    for start in range(0, matrix.shape[1], block):
        rows = slice(start, start + block)
        np.multiply(matrix[:, rows].T, scale[rows, None], out=out[rows])
    return out


@dataclass
class PreparedLayer:
    """One layer's weights as the time loop steps them.

    W_x, W_h:     (D, 4H), (H, 4H) as stored (the backward's products use these)
    recurrent_T:  (4H, H) (W_h * scale)^T, contiguous
    input_table:  (4H, V) ((W_x + b) * scale)^T for one-hot ids, else None
    input_scaled: (D, 4H) W_x * scale for dense inputs (BLAS reads its transpose in place)
    bias_scaled:  (4H,) b * scale for dense inputs
    """

    W_x: np.ndarray
    W_h: np.ndarray
    recurrent_T: np.ndarray
    input_table: np.ndarray | None
    input_scaled: np.ndarray
    bias_scaled: np.ndarray

    @property
    def hidden_size(self) -> int:
        return self.W_h.shape[0]


def prepare_layer(W_x: np.ndarray, W_h: np.ndarray, b: np.ndarray, takes_ids: bool) -> PreparedLayer:
    """Scale, transpose and (for one-hot ids, where onehot(x) @ W_x == W_x[x]) build the
    gather table, once per set of weights."""
    scale = _gate_scale(W_h.shape[0], W_h.dtype)
    input_scaled, bias_scaled = W_x * scale, b * scale
    input_table = np.ascontiguousarray((input_scaled + bias_scaled).T) if takes_ids else None
    transpose = kernels.current().scaled_transpose or scaled_transpose
    return PreparedLayer(W_x, W_h, transpose(W_h, scale), input_table, input_scaled, bias_scaled)


def padded_row(length: int, dtype) -> int:
    """A row length of at least `length` elements for a buffer read a block of columns
    at a time: a row of a multiple of 4 KiB (T*B floats often is) gets one cache line
    more, so that the rows of a block do not all fall on the same cache sets and evict
    each other. dZ's (4H, B) block of one step, read by the backward's product:
    measured in recurrence_backward."""
    row_bytes = length * np.dtype(dtype).itemsize
    return length + (64 // np.dtype(dtype).itemsize if row_bytes % 4096 == 0 else 0)


def _reuse(array: np.ndarray | None, shape: tuple[int, ...], dtype) -> np.ndarray:
    if array is not None and array.shape == shape and array.dtype == dtype:
        return array
    return np.empty(shape, dtype=dtype)


class LayerBuffers:
    """The large arrays of one layer over a window, kept from one call to the next.

    A step at 2x512, B=64, T=100 would otherwise take hundreds of MB of fresh memory
    from the system and fault every page of it in again (measured: tens to hundreds
    of ms per step). Whatever a call leaves here (its cache) is overwritten by the
    next call with the same buffers, so reuse them only where the previous cache is
    no longer needed, as a training loop does. A fresh LayerBuffers() per call keeps
    every cache.
    """

    def __init__(self):
        self.z_columns = self.gates = self.h = self.c = self.tanh_c = self.d_z = None
        self.uniforms = self.keep = self.recurrent_mask = self.masked_W_h = None
        self.inputs = None  # (D + H, T*B), see LSTMCache.inputs

    def recurrent_dropout(self, shape: tuple[int, int], dtype) -> LayerBuffers:
        """Make the arrays of a DropConnect of W_h fit (model.drop_recurrent_weights)."""
        self.uniforms = _reuse(self.uniforms, shape, np.float32)
        self.keep = _reuse(self.keep, shape, np.bool_)
        self.recurrent_mask = _reuse(self.recurrent_mask, shape, dtype)
        self.masked_W_h = _reuse(self.masked_W_h, shape, dtype)
        return self

    def window(self, time: int, hidden: int, batch: int, dtype) -> LayerBuffers:
        """Make the forward's arrays fit a (T, ., B) window of this layer."""
        self.h = _reuse(self.h, (time + 1, hidden, batch), dtype)
        self.c = _reuse(self.c, (time + 1, hidden, batch), dtype)
        self.tanh_c = _reuse(self.tanh_c, (time, hidden, batch), dtype)
        return self


@dataclass
class LSTMCache:
    """What the forward pass saves for the backward pass, feature-major.

    x:      (T, D, B) dense inputs, or (T, B) integer ids (one-hot over D)
    gates:  (T, 4H, B) activated gates i, f, g, o
    c:      (T+1, H, B) cell states c_0 .. c_T
    tanh_c: (T, H, B) tanh(c_1) .. tanh(c_T)
    h:      (T+1, H, B) hidden states h_0 .. h_T; the layer's outputs are h[1:]
    inputs: (D + H, T*B) for dense inputs, their columns x_t in the top D rows (the
            input projection's operand); the backward writes the states h_{t-1} below
            them for the weight gradients' one product. None for ids.
    """

    x: np.ndarray
    gates: np.ndarray
    c: np.ndarray
    tanh_c: np.ndarray
    h: np.ndarray
    inputs: np.ndarray | None = None


def columns(array: np.ndarray) -> np.ndarray:
    """(T, F, B) -> (F, T*B): every step's columns side by side, for one product."""
    time, features, batch = array.shape
    return np.ascontiguousarray(array.transpose(1, 0, 2)).reshape(features, time * batch)


def copy_columns(array: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`columns(array)` written into `out` (F, T*B), a block of rows of a larger array."""
    time, features, batch = array.shape
    np.copyto(out.reshape(features, time, batch), array.transpose(1, 0, 2))
    return out


def input_projection(layer: PreparedLayer, x: np.ndarray, buffers: LayerBuffers) -> tuple[np.ndarray, np.ndarray]:
    """x_t @ W_x + b (scaled) for all T steps of dense inputs x (T, D, B) at once,
    (T, 4H, B) feature-major: a strided view of one (4H, D) @ (D, T*B) product (one
    large product runs faster than T small ones and than transposing its result); the
    time loop reads it step by step. Returns it and LSTMCache.inputs, whose top rows
    hold x as columns. (Ids are gathered inside the time loop instead, by the kernel
    set's cell_forward_ids: no one-hot matrix and no (T, 4H, B) array.)
    """
    time, depth, batch = x.shape
    weights = layer.input_scaled
    inputs = buffers.inputs = _reuse(buffers.inputs, (depth + layer.hidden_size, time * batch), weights.dtype)
    x_columns = copy_columns(x, inputs[:depth])
    out = buffers.z_columns = _reuse(buffers.z_columns, (weights.shape[1], time * batch), weights.dtype)
    np.matmul(weights.T, x_columns, out=out)  # (4H, T*B); BLAS reads the transpose in place
    out += layer.bias_scaled[:, None]
    return out.reshape(-1, time, batch).transpose(1, 0, 2), inputs


def layer_forward(layer: PreparedLayer, x: np.ndarray, h0: np.ndarray, c0: np.ndarray,
                  buffers: LayerBuffers | None = None) -> LSTMCache:
    """One layer over a window: x (T, D, B) or ids (T, B); h0, c0 (H, B). The last
    step's state is cache.h[-1], cache.c[-1]; the outputs are cache.h[1:]."""
    cell = kernels.current()
    buffers = buffers or LayerBuffers()
    takes_ids = layer.input_table is not None
    z, inputs = (None, None) if takes_ids else input_projection(layer, x, buffers)
    time, batch = x.shape[0], x.shape[-1]
    hidden = layer.hidden_size
    dtype = layer.W_h.dtype
    buffers.window(time, hidden, batch, dtype)
    gates = buffers.gates = _reuse(buffers.gates, (time, 4 * hidden, batch), dtype)
    h, c, tanh_c = buffers.h, buffers.c, buffers.tanh_c
    h[0], c[0] = h0, c0
    recurrent = np.empty((4 * hidden, batch), dtype=dtype)
    for t in range(time):
        np.matmul(layer.recurrent_T, h[t], out=recurrent)
        if takes_ids:
            cell.cell_forward_ids(layer.input_table, x[t], recurrent, gates[t], c[t], c[t + 1], tanh_c[t], h[t + 1])
        else:
            cell.cell_forward(z[t], recurrent, gates[t], c[t], c[t + 1], tanh_c[t], h[t + 1])
    return LSTMCache(x=x, gates=gates, c=c, tanh_c=tanh_c, h=h, inputs=inputs)


def layer_backward(layer: PreparedLayer, cache: LSTMCache, d_outputs: np.ndarray,
                   grads: tuple[np.ndarray, np.ndarray, np.ndarray],
                   d_h_last: np.ndarray | None = None, d_c_last: np.ndarray | None = None,
                   need_d_x: bool = True, buffers: LayerBuffers | None = None):
    """The gradient of `layer_forward`. d_outputs: the loss gradient at h_1 .. h_T,
    any (T, H, B)-shaped array or view; d_h_last, d_c_last (H, B) add gradient at the
    final state. Writes dW_x, dW_h, db into `grads`; returns (d_x, d_h0, d_c0): d_x a
    (T, D, B) view for dense inputs when `need_d_x`, else None; d_h0, d_c0 (H, B)."""
    d_z_columns, d_h0, d_c0 = recurrence_backward(layer, cache, d_outputs, d_h_last, d_c_last, buffers)
    d_x = weight_gradients(layer, cache, d_z_columns, grads, need_d_x, buffers)
    return d_x, d_h0, d_c0


def recurrence_backward(layer: PreparedLayer, cache: LSTMCache, d_outputs: np.ndarray,
                        d_h_last: np.ndarray | None, d_c_last: np.ndarray | None,
                        buffers: LayerBuffers | None = None):
    """Backward through the time loop: dZ as columns, (4H, T*B) with column t*B + n for
    step t and stream n (ready for the weight-gradient products), and (d_h0, d_c0)."""
    cell = kernels.current()
    gates, c, tanh_c = cache.gates, cache.c, cache.tanh_c
    time, four_hidden, batch = gates.shape
    hidden = four_hidden // 4
    dtype = gates.dtype
    buffers = buffers or LayerBuffers()
    if d_outputs.strides[-1] != d_outputs.itemsize:  # the kernels take (H, B) blocks with contiguous rows
        d_outputs = np.ascontiguousarray(d_outputs)
    # rows one cache line longer where T*B floats make a multiple of 4 KiB (padded_row):
    # the products reading each step's (4H, B) block measured 5.8 ms against 6.5 for
    # a 2x256 layer's 64 steps (B=64, 2 threads), 3.3 against 4.0 at 1x256 (B=32); a
    # 2x256 and a 1x256 training step 5% faster, four alternating pairs each
    buffers.d_z = _reuse(buffers.d_z, (four_hidden, padded_row(time * batch, dtype)), dtype)
    d_z_columns = buffers.d_z[:, :time * batch].reshape(four_hidden, time, batch)
    d_h_carry = np.zeros((hidden, batch), dtype=dtype) if d_h_last is None else np.array(d_h_last, dtype, order="C")
    d_c = np.zeros((hidden, batch), dtype=dtype) if d_c_last is None else np.array(d_c_last, dtype, order="C")
    for t in range(time - 1, -1, -1):
        # dz_t goes straight into its columns, a (4H, B) view with contiguous rows that
        # BLAS reads in place: no per-step copy, no transpose of dZ afterwards
        d_z_t = d_z_columns[:, t]
        cell.cell_backward(gates[t], c[t], tanh_c[t], d_outputs[t], d_h_carry, d_c, d_z_t)
        np.matmul(layer.W_h, d_z_t, out=d_h_carry)
    return buffers.d_z[:, :time * batch], d_h_carry, d_c


def weight_gradients(layer: PreparedLayer, cache: LSTMCache, d_z_columns: np.ndarray,
                     grads: tuple[np.ndarray, np.ndarray, np.ndarray], need_d_x: bool,
                     buffers: LayerBuffers | None = None):
    """dW_x, dW_h, db (written into `grads`) as single products over all T*B columns
    of dZ (4H, T*B), and d_x for dense inputs when `need_d_x` (else None): a (T, D, B)
    view of one (D, 4H) @ (4H, T*B) product.

    Where dW_h follows dW_x in memory (model.Params keeps them so), both are one
    product, [x; h_prev] columns (D + H, T*B) @ dZ^T, which reads dZ once: measured
    10.5 ms against 11.2 for two at 2x256 (B=64, T=64) on 2 threads, 7.0 against 7.9
    for layer 0 with its one-hot matrix; and the dense inputs' columns are the ones
    the input projection made."""
    dW_x, dW_h, db = grads
    depth = dW_x.shape[0]
    # the bias gradient as a product with ones: BLAS's gemv measured 0.11 ms against
    # np.sum's 0.57 for (1024, 4096) float32
    np.matmul(d_z_columns, np.ones(d_z_columns.shape[1], dtype=d_z_columns.dtype), out=db)
    takes_ids = np.issubdtype(cache.x.dtype, np.integer)
    both = _rows_together(dW_x, dW_h)
    if both is not None and (not takes_ids or depth <= ONEHOT_SCATTER_MAX_VOCAB):
        inputs = _one_hot_columns(cache, depth, buffers or LayerBuffers()) if takes_ids else cache.inputs
        copy_columns(cache.h[:-1], inputs[depth:])
        np.matmul(inputs, d_z_columns.T, out=both)
    else:
        np.matmul(columns(cache.h[:-1]), d_z_columns.T, out=dW_h)
        if takes_ids:
            dW_x[...] = 0
            scatter_add_rows(dW_x, cache.x.ravel(), d_z_columns.T)
        else:
            np.matmul(cache.inputs[:depth], d_z_columns.T, out=dW_x)
    if takes_ids or not need_d_x:
        return None
    time, _, batch = cache.x.shape
    return np.matmul(layer.W_x, d_z_columns).reshape(-1, time, batch).transpose(1, 0, 2)


def _rows_together(top: np.ndarray, bottom: np.ndarray) -> np.ndarray | None:
    """One (m + n, k) view of (m, k) `top` and (n, k) `bottom` when bottom's rows
    follow top's in memory, else None."""
    if (top.ndim == bottom.ndim == 2 and top.shape[1] == bottom.shape[1] and top.dtype == bottom.dtype
            and top.flags.c_contiguous and bottom.flags.c_contiguous and top.flags.writeable
            and bottom.ctypes.data == top.ctypes.data + top.nbytes):
        return np.lib.stride_tricks.as_strided(top, (top.shape[0] + bottom.shape[0], top.shape[1]))
    return None


def _one_hot_columns(cache: LSTMCache, vocab_size: int, buffers: LayerBuffers) -> np.ndarray:
    """(V + H, T*B) holding the one-hot columns of the ids in its top V rows, the rows
    below left for the states (weight_gradients)."""
    time, hidden, batch = cache.tanh_c.shape
    inputs = buffers.inputs = _reuse(buffers.inputs, (vocab_size + hidden, time * batch), cache.h.dtype)
    inputs[:vocab_size] = 0
    inputs[cache.x.ravel(), np.arange(time * batch)] = 1
    return inputs


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
