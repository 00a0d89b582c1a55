"""NumPy's float32 uniforms, drawn faster (the `fast` extra): the same numbers from
the same PCG64 generator, leaving it in the same state, as
`rng.random(shape, dtype=np.float32)`.

PCG64 is a 128-bit linear congruential generator, state <- state * M + inc, each
step giving one 64-bit output from its new state (XSL-RR: the state's two halves
xored, rotated right by its top 6 bits). NumPy turns each output into two float32
uniforms, low half first: (half >> 8) / 2**24. It steps one state after another,
and each step waits for the last (about 1.6 ns an output on this project's machine).
Here K lanes step at once, lane j holding the states j + 1, j + 1 + K, ...: K steps
of the generator are one step of the same form, state <- state * M^K + c_K * inc,
so the lanes are independent and the compiler runs them in vector registers.
Measured for 524,288 uniforms (dropout at 1x256, B=32, T=64): 0.16 ms against
NumPy's 0.72, bit for bit the same (tests/test_kernels.py).

The multiplier is PCG64's published default; the order of the halves and the
float conversion are NumPy's Generator.random for float32.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .numba_cell import JIT

MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645
_MASK_128 = (1 << 128) - 1
_MASK_64 = (1 << 64) - 1
LANES = 32  # 16 measured as fast; 8 half as fast (not enough independent work)
_UNIT = np.float32(2.0 ** -24)  # a uniform is (32-bit half >> 8) * 2**-24


def _jump(steps: int) -> tuple[int, int]:
    """(a, c) with `steps` steps of the generator taking state s to a * s + c * inc
    (mod 2**128), by squaring: log2(steps) rounds."""
    a, c = 1, 0
    square_a, square_c = MULTIPLIER, 1
    while steps:
        if steps & 1:
            a, c = (a * square_a) & _MASK_128, (c * square_a + square_c) & _MASK_128
        square_a, square_c = (square_a * square_a) & _MASK_128, (square_c * square_a + square_c) & _MASK_128
        steps >>= 1
    return a, c


_LANE_JUMP = _jump(LANES)


@njit(**JIT)
def _lane_outputs(raw, high, low, mul_high, mul_low, add_high, add_low):
    """raw[b*K + j] = lane j's output, then lane j steps by K (state * mul + add, in
    64-bit halves). len(raw) is a multiple of K."""
    lanes = high.shape[0]
    low_32, shift_32 = np.uint64(0xFFFFFFFF), np.uint64(32)
    m0, m1 = mul_low & low_32, mul_low >> shift_32
    for block in range(raw.shape[0] // lanes):
        for j in range(lanes):
            h, lo = high[j], low[j]
            x = h ^ lo
            rotation = h >> np.uint64(58)
            raw[block * lanes + j] = (x >> rotation) | (x << ((np.uint64(64) - rotation) & np.uint64(63)))
            # the high half of lo * mul_low from 32-bit pieces: vector units have no
            # 64 x 64 -> 128-bit product
            l0, l1 = lo & low_32, lo >> shift_32
            p00, p01, p10 = l0 * m0, l0 * m1, l1 * m0
            middle = (p00 >> shift_32) + (p01 & low_32) + (p10 & low_32)
            carry = l1 * m1 + (p01 >> shift_32) + (p10 >> shift_32) + (middle >> shift_32)
            product_low = lo * mul_low
            new_low = product_low + add_low
            high[j] = carry + lo * mul_high + h * mul_low + add_high + (new_low < product_low)
            low[j] = new_low


@njit(**JIT)
def _halves_to_float32(halves, out):
    for i in range(out.shape[0]):
        out[i] = np.float32(halves[i] >> np.uint32(8)) * _UNIT


def random_float32(rng: np.random.Generator, shape) -> np.ndarray:
    """rng.random(shape, dtype=np.float32), the same numbers and the same generator
    state afterwards; a generator other than PCG64 gets NumPy's own draw."""
    generator = rng.bit_generator
    if type(generator) is not np.random.PCG64:
        return rng.random(shape, dtype=np.float32)
    out = np.empty(shape, np.float32)
    flat = out.reshape(-1)
    if flat.size == 0:
        return out
    saved = generator.state
    state, increment = saved["state"]["state"], saved["state"]["inc"]
    first = 0
    if saved["has_uint32"]:  # the high half NumPy kept from its last output comes first
        flat[0] = np.float32(saved["uinteger"] >> 8) * _UNIT
        first = 1
    outputs = (flat.size - first + 1) // 2
    lanes = [state]
    for _ in range(LANES):
        lanes.append((lanes[-1] * MULTIPLIER + increment) & _MASK_128)
    a, c = _LANE_JUMP
    add = (c * increment) & _MASK_128
    raw = np.empty(-(-outputs // LANES) * LANES, np.uint64)  # whole blocks; the extra outputs go unused
    _lane_outputs(raw, np.array([s >> 64 for s in lanes[1:]], np.uint64),
                  np.array([s & _MASK_64 for s in lanes[1:]], np.uint64),
                  np.uint64(a >> 64), np.uint64(a & _MASK_64), np.uint64(add >> 64), np.uint64(add & _MASK_64))
    _halves_to_float32(raw.view(np.uint32)[:flat.size - first], flat[first:])
    a, c = _jump(outputs)
    final = (a * state + c * increment) & _MASK_128
    generator.state = {
        "bit_generator": "PCG64", "state": {"state": final, "inc": increment},
        # an odd count leaves the last output's high half for the next draw; NumPy
        # keeps that half in `uinteger` even once it is spent
        "has_uint32": (flat.size - first) % 2, "uinteger": int(raw[outputs - 1]) >> 32 if outputs else saved["uinteger"],
    }
    return out
