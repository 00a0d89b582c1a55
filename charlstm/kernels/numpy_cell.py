"""The readable kernel set: the cell's forward and backward in NumPy, one ufunc per
operation, in place on feature-major (H, B) blocks (see charlstm/lstm.py).

Both work on the gate pre-activations scaled for the sigmoid-through-tanh trick:
sigmoid(z) = 0.5 * tanh(z / 2) + 0.5, with the 1/2 folded into the weights by
lstm.prepare_layer, so a single tanh activates all four gate blocks.
"""

from __future__ import annotations

import numpy as np


def cell_forward(z, recurrent, gates, c_prev, c, tanh_c, h):
    """One step of the cell. In: the gate pre-activations in two parts, each (4H, B)
    and scaled, blocks i, f, g, o: `z` from the input (x W_x + b) and `recurrent`
    (h W_h); c_prev (H, B). Out, in place: `gates` (4H, B) the activated gates (it may
    be `z` itself), c (H, B) = f * c_prev + i * g, tanh_c (H, B) = tanh(c),
    h (H, B) = o * tanh(c). `recurrent` is left as scratch. c may be c_prev
    (sampling updates in place)."""
    hidden = c_prev.shape[0]
    np.add(z, recurrent, out=gates)
    np.tanh(gates, out=gates)
    for sigmoid_block in (gates[:2 * hidden], gates[3 * hidden:]):  # i, f and o
        sigmoid_block *= 0.5
        sigmoid_block += 0.5
    i, f, g, o = gates[:hidden], gates[hidden:2 * hidden], gates[2 * hidden:3 * hidden], gates[3 * hidden:]
    scratch = recurrent[:hidden]
    np.multiply(f, c_prev, out=c)
    np.multiply(i, g, out=scratch)
    c += scratch
    np.tanh(c, out=tanh_c)
    np.multiply(o, tanh_c, out=h)


def cell_forward_ids(table, ids, recurrent, gates, c_prev, c, tanh_c, h):
    """`cell_forward` for a layer that reads one-hot characters: z is columns `ids`
    (B,) of the gather table (4H, V), onehot(x) @ W_x + b == (W_x + b)[x]."""
    np.take(table, ids, axis=1, out=gates)
    cell_forward(gates, recurrent, gates, c_prev, c, tanh_c, h)


def cell_backward(gates, c_prev, tanh_c, d_out, d_h_carry, d_c, d_z):
    """The gradient of one step, the mirror of `cell_forward`. In: the step's
    activated `gates` (4H, B), c_prev and tanh_c (H, B) as the forward left them; the
    loss gradient at h_t in two parts, d_out (H, B) from above (the layer's output)
    and d_h_carry (H, B) from step t+1 (left as scratch); d_c (H, B) the gradient at
    c_t carried from step t+1. Out, in place: d_z (4H, B), any view with contiguous
    rows (the layer loop passes a column block of its dZ buffer), the gradient at the
    (unscaled) gate pre-activations; and d_c becomes the gradient at c_{t-1}.

    Per block, dz = (gradient arriving at the gate) * d(gate)/dz:
        i: dc * g * i(1-i)      f: dc * c_prev * f(1-f)
        g: dc * i * (1-g^2)     o: dh * tanh(c) * o(1-o)
    with dh = d_out + d_h_carry and dc = dh * o * (1 - tanh(c)^2) + (dc carried from t+1).
    """
    hidden = c_prev.shape[0]
    i, f, g, o = gates[:hidden], gates[hidden:2 * hidden], gates[2 * hidden:3 * hidden], gates[3 * hidden:]
    d_i, d_f, d_g, d_o = d_z[:hidden], d_z[hidden:2 * hidden], d_z[2 * hidden:3 * hidden], d_z[3 * hidden:]
    d_ifg = d_z[:3 * hidden].reshape(3, hidden, -1)  # a view: splitting the first axis never copies
    d_h = np.add(d_out, d_h_carry, out=d_h_carry)
    # dc_t in full, into d_o as scratch (d_o is written last)
    np.multiply(tanh_c, tanh_c, out=d_o)
    np.subtract(1.0, d_o, out=d_o)
    d_o *= o
    d_o *= d_h
    d_c += d_o
    np.subtract(1.0, gates, out=d_z)  # a(1-a) for the sigmoid blocks ...
    d_z *= gates
    np.multiply(g, g, out=d_g)        # ... and 1-g^2 for the tanh block
    np.subtract(1.0, d_g, out=d_g)
    d_i *= g
    d_f *= c_prev
    d_g *= i
    np.multiply(d_ifg, d_c, out=d_ifg)
    d_o *= tanh_c
    d_o *= d_h
    d_c *= f
