"""The compiled set's whole-array work outside the cell (the `fast` extra): Adam's
update, the recurrent weights' scaled transpose, applying a dropout mask and the
head's softmax, each one pass where NumPy makes several.

The first three do NumPy's operations in NumPy's order and precision (the constants
in the arrays' dtype); sqrt and division are exact IEEE operations in both, so the
results are the NumPy lines' to the last bit (tests/test_kernels.py). The softmax
sums in another order and takes a float32 exp of its own (see `_exp`): float32 to
rounding, as the cell's tanh.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .numba_cell import JIT

# Rows of the source transposed together: each column's 8 floats make 32 contiguous
# bytes of the output. Measured for (512, 2048) float32: 0.59 ms against 2.3 for
# lstm.scaled_transpose's NumPy blocks; (256, 1024): 0.15 against 0.56.
_TILE = 8


@njit(**JIT)
def _adam(params, grads, exp_avg, exp_avg_sq, one_minus_beta1, beta2, one_minus_beta2, inv_sqrt_correction2,
          eps, step_size):
    for k in range(params.shape[0]):
        grad = grads[k]
        m = exp_avg[k] + (grad - exp_avg[k]) * one_minus_beta1
        v = exp_avg_sq[k] * beta2 + (grad * grad) * one_minus_beta2
        exp_avg[k], exp_avg_sq[k] = m, v
        params[k] = params[k] - m / (math.sqrt(v) * inv_sqrt_correction2 + eps) * step_size


def adam_update(params, grads, exp_avg, exp_avg_sq, one_minus_beta1, beta2, one_minus_beta2,
                inv_sqrt_correction2, eps, step_size, scratch=None):
    """optim.adam_update in one pass (all arrays flat, contiguous, one dtype; the
    scalars already in that dtype): measured 0.19 ms against 0.96 at 871,745 float32
    parameters (2x256, V=65), 1.2 against 4.7 at 3.3 million (2x512). It needs no
    scratch buffer."""
    _adam(params, grads, exp_avg, exp_avg_sq, one_minus_beta1, beta2, one_minus_beta2, inv_sqrt_correction2,
          eps, step_size)


@njit(**JIT)
def _scaled_transpose(matrix, scale, out):
    rows, cols = matrix.shape
    for first_row in range(0, rows, _TILE):
        for col in range(cols):
            factor = scale[col]
            for row in range(first_row, min(first_row + _TILE, rows)):
                out[col, row] = matrix[row, col] * factor


def scaled_transpose(matrix, scale):
    """lstm.scaled_transpose in one pass, a few rows at a time: (matrix * scale).T,
    contiguous."""
    out = np.empty(matrix.shape[::-1], dtype=matrix.dtype)
    _scaled_transpose(matrix, scale, out)
    return out


@njit(**JIT)
def _apply_dropout(uniforms, first, x, rate, scale, scratch, out, mask):
    time, hidden, batch = x.shape
    zero = out.dtype.type(0.0)
    for t in range(time):
        # the mask in the drawn order first (both sides contiguous, vectorised), then
        # transposed out of that small block: reading the uniforms across their rows
        # instead measured 0.29 ms against 0.25 at (64, 256, 32)
        for n in range(batch):
            for j in range(hidden):
                scratch[n, j] = scale if uniforms[t, first + n, j] >= rate else zero
        for j in range(hidden):
            for n in range(batch):
                keep = scratch[n, j]
                mask[j, t, n] = keep
                out[j, t, n] = x[t, j, n] * keep


def apply_dropout(uniforms, first, x, rate):
    """model.apply_dropout in one pass, the same numbers. Both results are written
    as the head's and the next layer's input columns, (H, T, B), and returned as
    (T, H, B) views of them: the columns then need no transposing copy. Measured at
    (64, 256, 32), with the copy to columns and the backward's product by the mask:
    0.31 ms against 0.67."""
    time, hidden, batch = x.shape
    out = np.empty((hidden, time, batch), x.dtype)
    mask = np.empty_like(out)
    _apply_dropout(uniforms, first, x, np.float32(rate), x.dtype.type(1.0 / (1.0 - rate)),
                   np.empty((batch, hidden), x.dtype), out, mask)
    return out.transpose(1, 0, 2), mask.transpose(1, 0, 2)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 `bits`."""
    if bits != types.int32:
        return None
    return types.float32(types.int32), lambda context, builder, signature, args: builder.bitcast(args[0], ir.FloatType())


# exp(x) = 2**k * exp(r), k = round(x / ln 2), |r| <= ln(2) / 2: ln 2 split in two so
# that r = x - k ln 2 is exact; exp(r) from Cephes' degree-7 polynomial for expf
# (measured within 1 float32 ulp of the true exp on [-87, 0]; tests/test_kernels.py
# holds it to 2, NumPy's own float32 exp reaching 2.3).
_LOG2_E = np.float32(1.44269504088896341)
_LN2_HIGH, _LN2_LOW = np.float32(0.693359375), np.float32(-2.12194440e-4)
_EXP_P = tuple(np.float32(p) for p in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                                       1.6666665459e-1, 5.0000001201e-1))
_EXP_FLOOR = np.float32(-87.0)  # 2**k stays a normal float32 at and above this


def _exp(x):
    """exp for the softmax, of x <= 0: a vectorisable form for float32, libm's otherwise."""
    return math.exp(x)


@overload(_exp, jit_options={"error_model": "numpy"})
def _exp_overload(x):
    if x != types.float32:
        return lambda x: math.exp(x)
    p0, p1, p2, p3, p4, p5 = _EXP_P

    def polynomial_exp(x):
        x = _EXP_FLOOR if x < _EXP_FLOOR else x  # a select, so NaN stays NaN
        k = np.float32(math.floor(x * _LOG2_E + np.float32(0.5)))
        r = (x - k * _LN2_HIGH) - k * _LN2_LOW
        p = ((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5
        return (p * r * r + r + np.float32(1.0)) * _float32_from_bits(np.int32((np.int32(k) + 127) << 23))
    return polynomial_exp


# reassoc: the row's max and sum vectorise (NumPy's sum is pairwise, in another order)
@njit(**JIT, fastmath={"reassoc", "nsz"})
def _softmax_rows(logits, bias, targets, nll):
    rows, vocab = logits.shape
    for n in range(rows):
        top = logits[n, 0] + bias[0]
        for v in range(vocab):
            x = logits[n, v] + bias[v]
            logits[n, v] = x
            top = x if x > top else top
        target = logits[n, targets[n]] - top
        total = logits.dtype.type(0.0)
        for v in range(vocab):
            e = _exp(logits[n, v] - top)
            logits[n, v] = e
            total += e
        for v in range(vocab):
            logits[n, v] /= total
        nll[n] = math.log(total) - target


def softmax_rows(logits, bias, targets):
    """model.softmax_rows in one pass over each row: measured 0.14 ms against 0.25
    for (2048, 65) float32 (1x256, B=32, T=64)."""
    nll = np.empty(logits.shape[0], logits.dtype)
    _softmax_rows(logits, bias, targets, nll)
    return nll
