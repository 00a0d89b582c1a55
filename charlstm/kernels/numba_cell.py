"""The compiled kernel set: the cell's forward and backward, each fused into one pass
over the (H, B) block, compiled by numba (the `fast` extra).

Same contract as the readable NumPy set (numpy_cell.py), which is the oracle: the same
operations in the same order, so every result equals NumPy's to the last bit except
tanh in float32. NumPy's float32 tanh cannot be fused into a loop; here it is a
rational approximation (Eigen's generic_fast_tanh_float) that the compiler
vectorises: 4x faster than np.tanh on this project's machine and within 4e-7 of the
true tanh (a few float32 ulps; it never leaves [-1, 1]). float64 keeps the exact
math.tanh: that precision is for checks.

Three things keep the loops vectorised (8 floats per instruction with AVX2), each
worth 2-4x on a kernel:
- error_model="numpy": a division by zero gives inf instead of raising; Python's
  check is a branch in every iteration;
- `_rows`: the layer loop hands over column blocks of larger buffers (a step's dZ
  inside all of dZ, a step of the input projection), rows contiguous but spaced
  wider than B. numba compiles any non-contiguous array with unknown strides, which
  does not vectorise; `_rows` tells it the elements of a row are adjacent;
- no overlap between an input and an output (the callers keep them apart): a
  vectorised loop checks for overlap at run time and falls back to one element at a
  time if there is any.

Compiled with cache=True: the first use on a machine compiles for a few seconds (see
README.md, Performance) and writes the machine code beside this file (__pycache__);
later processes load it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import literal_unroll, njit, types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, overload
from numba.np.arrayobj import make_array

JIT = {"cache": True, "error_model": "numpy", "nogil": True}

# Eigen's rational tanh: an odd numerator of degree 13 over an even denominator of
# degree 6, clamped where tanh is 1 to float32 precision.
_CLAMP = np.float32(7.90531110763549805)
_ALPHA = tuple(np.float32(a) for a in (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05,
                                        5.12229709037114e-08, -8.60467152213735e-11, 2.00018790482477e-13,
                                        -2.76076847742355e-16))
_BETA = tuple(np.float32(b) for b in (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04,
                                       1.19825839466702e-06))


def _tanh(x):
    """tanh for the kernels: the vectorisable rational form for float32, libm's otherwise."""
    return math.tanh(x)


@overload(_tanh, jit_options={"error_model": "numpy"})
def _tanh_overload(x):
    if x != types.float32:
        return lambda x: math.tanh(x)
    a1, a3, a5, a7, a9, a11, a13 = _ALPHA
    b0, b2, b4, b6 = _BETA
    clamp = _CLAMP

    def rational_tanh(x):
        # selects, not min/max (those branch on NaN); written so that NaN stays NaN and
        # a diverging run is seen as diverged
        x = clamp if x >= clamp else x
        x = -clamp if x <= -clamp else x
        x2 = x * x
        p = x2 * a13 + a11
        p = x2 * p + a9
        p = x2 * p + a7
        p = x2 * p + a5
        p = x2 * p + a3
        p = x2 * p + a1
        q = x2 * b6 + b4
        q = x2 * q + b2
        q = x2 * q + b0
        return x * p / q
    return rational_tanh


@intrinsic
def _rows(typingctx, array):
    """A 2-D array whose rows are each contiguous, typed as a C-contiguous array of
    shape (rows, row stride): numba then indexes [j, n] as j * stride + n with a unit
    step it knows, and vectorises loops over n. Columns at or past the original width
    belong to other arrays; the kernels never index them."""
    if not isinstance(array, types.Array) or array.ndim != 2:
        return None
    result = array.copy(layout="C")

    def codegen(context, builder, signature, args):
        source = make_array(array)(context, builder, value=args[0])
        view = make_array(result)(context, builder)
        rows, _ = cgutils.unpack_tuple(builder, source.shape)
        row_bytes, _ = cgutils.unpack_tuple(builder, source.strides)
        shape = cgutils.pack_array(builder, [rows, builder.sdiv(row_bytes, source.itemsize)])
        context.populate_array(view, data=source.data, shape=shape, strides=source.strides,
                               itemsize=source.itemsize, meminfo=source.meminfo, parent=source.parent)
        return impl_ret_borrowed(context, builder, result, view._getvalue())

    return result(array), codegen


@njit(**JIT)
def _check_rows(*arrays):
    for a in literal_unroll(arrays):  # (the stride of a length-1 axis can be anything)
        if (a.shape[1] > 1 and a.strides[1] != a.itemsize) or (a.shape[0] > 1 and a.strides[0] < a.itemsize * a.shape[1]):
            raise ValueError("the cell kernels need arrays whose rows are contiguous")


@njit(**JIT, inline="always")
def _cell(zi, zf, zg, zo, c_prev, half):
    """One element of the cell from its four scaled pre-activations, in NumPy's order;
    `half` is 0.5 in the arrays' precision."""
    i = _tanh(zi) * half + half
    f = _tanh(zf) * half + half
    g = _tanh(zg)
    o = _tanh(zo) * half + half
    c = f * c_prev + i * g
    t = _tanh(c)
    return i, f, g, o, c, t, o * t


@njit(**JIT)
def _forward(z, recurrent, gates, c_prev, c, tanh_c, h):
    _check_rows(z, recurrent, gates, c_prev, c, tanh_c, h)
    hidden, batch = c_prev.shape
    z, recurrent, gates, c_prev, c, tanh_c, h = (_rows(z), _rows(recurrent), _rows(gates), _rows(c_prev),
                                                 _rows(c), _rows(tanh_c), _rows(h))
    half = gates.dtype.type(0.5)
    for j in range(hidden):
        for n in range(batch):
            i, f, g, o, c[j, n], tanh_c[j, n], h[j, n] = _cell(
                z[j, n] + recurrent[j, n], z[hidden + j, n] + recurrent[hidden + j, n],
                z[2 * hidden + j, n] + recurrent[2 * hidden + j, n],
                z[3 * hidden + j, n] + recurrent[3 * hidden + j, n], c_prev[j, n], half)
            gates[j, n], gates[hidden + j, n], gates[2 * hidden + j, n], gates[3 * hidden + j, n] = i, f, g, o


@njit(**JIT)
def _forward_ids(table, ids, recurrent, gates, c_prev, c, tanh_c, h):
    _check_rows(table, recurrent, gates, c_prev, c, tanh_c, h)
    hidden, batch = c_prev.shape
    table, recurrent, gates, c_prev, c, tanh_c, h = (_rows(table), _rows(recurrent), _rows(gates),
                                                     _rows(c_prev), _rows(c), _rows(tanh_c), _rows(h))
    half = gates.dtype.type(0.5)
    # The gather first, on its own: a gather inside the cell's loop keeps the whole loop
    # from vectorising (measured 4.5x slower at H=256, B=32). Then the cell in place:
    # reading and writing the same element of one array does not stop vectorising.
    for row in range(4 * hidden):
        for n in range(batch):
            gates[row, n] = table[row, ids[n]] + recurrent[row, n]
    for j in range(hidden):
        for n in range(batch):
            i, f, g, o, c[j, n], tanh_c[j, n], h[j, n] = _cell(
                gates[j, n], gates[hidden + j, n], gates[2 * hidden + j, n], gates[3 * hidden + j, n],
                c_prev[j, n], half)
            gates[j, n], gates[hidden + j, n], gates[2 * hidden + j, n], gates[3 * hidden + j, n] = i, f, g, o


@njit(**JIT)
def _backward(gates, c_prev, tanh_c, d_out, d_h_carry, d_c, d_z):
    _check_rows(gates, c_prev, tanh_c, d_out, d_h_carry, d_c, d_z)
    hidden, batch = c_prev.shape
    gates, c_prev, tanh_c, d_out, d_h_carry, d_c, d_z = (_rows(gates), _rows(c_prev), _rows(tanh_c),
                                                         _rows(d_out), _rows(d_h_carry), _rows(d_c), _rows(d_z))
    one = gates.dtype.type(1.0)
    for j in range(hidden):
        for n in range(batch):
            i, f, g, o = gates[j, n], gates[hidden + j, n], gates[2 * hidden + j, n], gates[3 * hidden + j, n]
            t = tanh_c[j, n]
            d_h = d_out[j, n] + d_h_carry[j, n]
            dc = d_c[j, n] + (one - t * t) * o * d_h  # NumPy's order: ((1 - t^2) * o) * dh
            d_z[j, n] = (one - i) * i * g * dc
            d_z[hidden + j, n] = (one - f) * f * c_prev[j, n] * dc
            d_z[2 * hidden + j, n] = (one - g * g) * i * dc
            d_z[3 * hidden + j, n] = (one - o) * o * t * d_h
            d_c[j, n] = dc * f


def cell_forward(z, recurrent, gates, c_prev, c, tanh_c, h):
    """numpy_cell.cell_forward fused into one pass. No output may overlap an input
    (gates and z, c and c_prev are separate arrays)."""
    if c_prev.shape[1] == 1 and all(a.flags.c_contiguous for a in (gates, c, tanh_c, h)):
        # one stream (sampling): (k*H, 1) as (k, H), so that the loop over H vectorises
        # rather than a loop over a batch of one
        z, recurrent, c_prev = (np.ascontiguousarray(a).reshape(k, -1) for a, k in ((z, 4), (recurrent, 4), (c_prev, 1)))
        gates, c, tanh_c, h = gates.reshape(4, -1), c.reshape(1, -1), tanh_c.reshape(1, -1), h.reshape(1, -1)
    _forward(z, recurrent, gates, c_prev, c, tanh_c, h)


def cell_forward_ids(table, ids, recurrent, gates, c_prev, c, tanh_c, h):
    """numpy_cell.cell_forward_ids with the gather fused into the cell's pass."""
    if c_prev.shape[1] == 1:
        cell_forward(np.take(table, ids, axis=1), recurrent, gates, c_prev, c, tanh_c, h)
        return
    _forward_ids(table, ids, recurrent, gates, c_prev, c, tanh_c, h)


def cell_backward(gates, c_prev, tanh_c, d_out, d_h_carry, d_c, d_z):
    """numpy_cell.cell_backward fused into one pass (d_h_carry is left as it was)."""
    _backward(gates, c_prev, tanh_c, d_out, d_h_carry, d_c, d_z)
