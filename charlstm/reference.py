"""The LSTM to read: a character language model as a textbook writes it.

Start here. This module is the whole model in plain NumPy, written for reading and as
the oracle: the fast path (lstm.py, model.py and every kernel set) is tested against
it, and it is tested against finite differences. Nothing in training calls it.

Conventions (the same everywhere in charlstm):
- Arrays are time-major: inputs (T, B, D), outputs (T, B, H); T steps, B streams.
- One layer holds W_x (D, 4H), W_h (H, 4H) and b (4H,), the four gates packed in the
  order i, f, g, o (input, forget, candidate, output: PyTorch's and Keras's order).
- The state is ordered (h, c), each (B, H) per layer.
- The first layer reads one-hot characters, D = V; layers above read the outputs of
  the layer below, D = H. A linear head (W_y (H, V), b_y (V,)) gives the logits of
  the next character, and the loss is the mean softmax cross-entropy in nats/char.

One step (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000):

    z   = x_t @ W_x + h_{t-1} @ W_h + b        (B, 4H)
    i   = sigmoid(z_i)    f = sigmoid(z_f)    g = tanh(z_g)    o = sigmoid(z_o)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

The backward of each function sits right below its forward.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---- one step -------------------------------------------------------------------

def step_forward(x_t, h_prev, c_prev, W_x, W_h, b):
    """One time step of one layer.

    x_t (B, D), h_prev (B, H), c_prev (B, H) -> h_t (B, H), c_t (B, H), and the
    cache the backward needs.
    """
    hidden = h_prev.shape[1]
    z = x_t @ W_x + h_prev @ W_h + b                # (B, 4H) gate pre-activations
    i = sigmoid(z[:, 0 * hidden:1 * hidden])        # (B, H) input gate
    f = sigmoid(z[:, 1 * hidden:2 * hidden])        # (B, H) forget gate
    g = np.tanh(z[:, 2 * hidden:3 * hidden])        # (B, H) candidate cell
    o = sigmoid(z[:, 3 * hidden:4 * hidden])        # (B, H) output gate
    c_t = f * c_prev + i * g                        # (B, H)
    h_t = o * np.tanh(c_t)                          # (B, H)
    cache = (x_t, h_prev, c_prev, i, f, g, o, c_t)
    return h_t, c_t, cache


def step_backward(d_h, d_c, cache, W_x, W_h):
    """The gradient of `step_forward`.

    d_h (B, H): loss gradient at h_t (from the output and from step t+1);
    d_c (B, H): loss gradient at c_t arriving from step t+1.
    Returns d_x_t (B, D), d_h_prev (B, H), d_c_prev (B, H) and (dW_x, dW_h, db) of
    this step alone.
    """
    x_t, h_prev, c_prev, i, f, g, o, c_t = cache
    tanh_c = np.tanh(c_t)                           # (B, H)
    d_o = d_h * tanh_c                              # h = o * tanh(c)
    d_c = d_c + d_h * o * (1.0 - tanh_c ** 2)       # c reaches the loss through h and through c_{t+1}
    d_f = d_c * c_prev                              # c = f * c_prev + i * g
    d_i = d_c * g
    d_g = d_c * i
    d_c_prev = d_c * f
    d_z = np.concatenate([d_i * i * (1.0 - i),      # sigmoid' = s (1 - s)
                          d_f * f * (1.0 - f),
                          d_g * (1.0 - g ** 2),     # tanh' = 1 - tanh^2
                          d_o * o * (1.0 - o)], axis=1)  # (B, 4H)
    d_x_t = d_z @ W_x.T                             # (B, D)
    d_h_prev = d_z @ W_h.T                          # (B, H)
    dW_x = x_t.T @ d_z                              # (D, 4H)
    dW_h = h_prev.T @ d_z                           # (H, 4H)
    db = d_z.sum(axis=0)                            # (4H,)
    return d_x_t, d_h_prev, d_c_prev, (dW_x, dW_h, db)


# ---- one layer over a window ------------------------------------------------------

def layer_forward(x, h0, c0, W_x, W_h, b):
    """Run one layer over a window: x (T, B, D), h0 and c0 (B, H).
    Returns outputs (T, B, H) = h_1 .. h_T, the final state (h_T, c_T) and the caches."""
    h, c = h0, c0
    outputs, caches = [], []
    for x_t in x:
        h, c, cache = step_forward(x_t, h, c, W_x, W_h, b)
        outputs.append(h)
        caches.append(cache)
    return np.stack(outputs), (h, c), caches


def layer_backward(d_outputs, d_h_last, d_c_last, caches, W_x, W_h):
    """The gradient of `layer_forward`: d_outputs (T, B, H) at h_1 .. h_T and
    (d_h_last, d_c_last) (B, H) at the final state. The state's gradient flows back
    through the steps; the weights' gradients add up over them.
    Returns d_x (T, B, D), d_h0, d_c0 (B, H) and (dW_x, dW_h, db)."""
    d_h_next, d_c_next = d_h_last, d_c_last
    weight_grads = [np.zeros_like(W_x), np.zeros_like(W_h), np.zeros(W_h.shape[1], dtype=W_h.dtype)]
    d_x = []
    for t in reversed(range(len(caches))):
        d_x_t, d_h_next, d_c_next, step_grads = step_backward(d_outputs[t] + d_h_next, d_c_next, caches[t], W_x, W_h)
        for total, step in zip(weight_grads, step_grads):
            total += step
        d_x.append(d_x_t)
    return np.stack(d_x[::-1]), d_h_next, d_c_next, tuple(weight_grads)


# ---- the model: layers, head, softmax cross-entropy --------------------------------

def one_hot(ids, vocab_size, dtype=np.float64):
    """(T, B) ids -> (T, B, V) one-hot rows."""
    return np.eye(vocab_size, dtype=dtype)[ids]


def model_forward(params, ids, targets, state, dropout_masks=None):
    """Mean cross-entropy in nats/char of predicting `targets` (T, B) from `ids` (T, B).

    params: name -> array, named as model.Params names them (lstm.{k}.W_x, lstm.{k}.W_h,
    lstm.{k}.b, head.W_y, head.b_y). state: (h0, c0), each (L, B, H).
    dropout_masks: optional per-layer (T, B, H) arrays multiplying each layer's output
    (inverted dropout: zeros and 1 / (1 - p)).
    Returns (loss, final state, cache).
    """
    num_layers = state[0].shape[0]
    vocab_size = params["head.b_y"].shape[0]
    x = one_hot(ids, vocab_size, params["head.W_y"].dtype)
    layer_caches, final_h, final_c = [], [], []
    for k in range(num_layers):
        outputs, (h_T, c_T), caches = layer_forward(
            x, state[0][k], state[1][k], params[f"lstm.{k}.W_x"], params[f"lstm.{k}.W_h"], params[f"lstm.{k}.b"])
        layer_caches.append(caches)
        final_h.append(h_T)
        final_c.append(c_T)
        x = outputs if dropout_masks is None else outputs * dropout_masks[k]
    logits = x @ params["head.W_y"] + params["head.b_y"]              # (T, B, V)
    shifted = logits - logits.max(axis=2, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=2, keepdims=True)
    picked = np.take_along_axis(probs, targets[..., None], axis=2)[..., 0]  # (T, B)
    loss = -np.log(picked).mean()
    cache = (layer_caches, x, probs, targets, dropout_masks)
    return loss, (np.stack(final_h), np.stack(final_c)), cache


def model_backward(params, cache):
    """The gradient of `model_forward`'s loss: a dict name -> gradient like `params`,
    and the gradient of the initial state (d_h0, d_c0), each (L, B, H)."""
    layer_caches, top, probs, targets, dropout_masks = cache
    time, batch, vocab_size = probs.shape
    d_logits = (probs - one_hot(targets, vocab_size, probs.dtype)) / (time * batch)  # (T, B, V)
    grads = {"head.W_y": np.einsum("tbh,tbv->hv", top, d_logits), "head.b_y": d_logits.sum(axis=(0, 1))}
    d_x = d_logits @ params["head.W_y"].T                                # (T, B, H)
    num_layers = len(layer_caches)
    hidden = d_x.shape[2]
    d_h0 = np.zeros((num_layers, batch, hidden), dtype=d_x.dtype)
    d_c0 = np.zeros_like(d_h0)
    for k in reversed(range(num_layers)):
        if dropout_masks is not None:
            d_x = d_x * dropout_masks[k]
        zeros = np.zeros((batch, hidden), dtype=d_x.dtype)
        d_x, d_h0[k], d_c0[k], (dW_x, dW_h, db) = layer_backward(
            d_x, zeros, zeros, layer_caches[k], params[f"lstm.{k}.W_x"], params[f"lstm.{k}.W_h"])
        grads[f"lstm.{k}.W_x"], grads[f"lstm.{k}.W_h"], grads[f"lstm.{k}.b"] = dW_x, dW_h, db
    return grads, (d_h0, d_c0)
