"""The layer: step-by-step equivalence, the one-hot gather, and layer-level gradients."""

import numpy as np
import pytest

from charlstm.lstm import (ONEHOT_SCATTER_MAX_VOCAB, input_projection, lstm_backward, lstm_forward,
                           scatter_add_rows, sigmoid)
from conftest import numeric_gradient


def reference_lstm(x, h, c, W_x, W_h, b):
    """Textbook LSTM, one step at a time, four separate gates (an independent check)."""
    hidden = h.shape[1]
    outputs = []
    for x_t in x:
        z = x_t @ W_x + h @ W_h + b
        i = sigmoid(z[:, :hidden])
        f = sigmoid(z[:, hidden:2 * hidden])
        g = np.tanh(z[:, 2 * hidden:3 * hidden])
        o = sigmoid(z[:, 3 * hidden:])
        c = f * c + i * g
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs), h, c


def random_layer(rng, T=6, B=3, D=5, H=4, dtype=np.float64):
    x = rng.normal(size=(T, B, D)).astype(dtype)
    h0, c0 = (rng.normal(size=(B, H)).astype(dtype) for _ in range(2))
    W_x = rng.normal(scale=0.5, size=(D, 4 * H)).astype(dtype)
    W_h = rng.normal(scale=0.5, size=(H, 4 * H)).astype(dtype)
    b = rng.normal(scale=0.5, size=4 * H).astype(dtype)
    return x, h0, c0, W_x, W_h, b


def test_sigmoid_matches_the_logistic_function_and_never_overflows():
    x = np.array([-1000.0, -30.0, -1.0, 0.0, 2.5, 1000.0])
    with np.errstate(all="raise"):
        y = sigmoid(x)
    expected = np.array([0.0, 1 / (1 + np.exp(30.0)), 1 / (1 + np.e), 0.5, 1 / (1 + np.exp(-2.5)), 1.0])
    # Absolute error is what a gate value carries; deep in the tail 1 + tanh cancels.
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-15)


def test_whole_window_equals_step_by_step_reference():
    args = random_layer(np.random.default_rng(0))
    outputs, (h_T, c_T), _ = lstm_forward(*args)
    ref_out, ref_h, ref_c = reference_lstm(*args)
    np.testing.assert_allclose(outputs, ref_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_T, ref_h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c_T, ref_c, rtol=1e-12, atol=1e-12)


def test_two_windows_with_carried_state_equal_one_long_window():
    x, h0, c0, W_x, W_h, b = random_layer(np.random.default_rng(1), T=10)
    whole, (h_T, c_T), _ = lstm_forward(x, h0, c0, W_x, W_h, b)
    first, state, _ = lstm_forward(x[:4], h0, c0, W_x, W_h, b)
    second, (h2, c2), _ = lstm_forward(x[4:], *state, W_x, W_h, b)
    np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(c2, c_T, rtol=1e-13, atol=1e-13)


def test_float32_forward_stays_float32():
    args = random_layer(np.random.default_rng(2), dtype=np.float32)
    outputs, (h_T, c_T), cache = lstm_forward(*args)
    assert outputs.dtype == h_T.dtype == c_T.dtype == cache.gates.dtype == np.float32


def test_gather_path_equals_explicit_one_hot_product():
    rng = np.random.default_rng(3)
    vocab, hidden, T, B = 9, 4, 5, 3
    ids = rng.integers(0, vocab, size=(T, B))
    onehot = np.eye(vocab, dtype=np.float32)[ids]  # (T, B, V)
    W_x = rng.normal(size=(vocab, 4 * hidden)).astype(np.float32)
    W_h = rng.normal(size=(hidden, 4 * hidden)).astype(np.float32)
    b = rng.normal(size=4 * hidden).astype(np.float32)
    onehot_feature_major = np.ascontiguousarray(onehot.transpose(0, 2, 1))  # (T, V, B)
    np.testing.assert_allclose(input_projection(ids, W_x, b), input_projection(onehot_feature_major, W_x, b),
                               rtol=1e-6, atol=1e-6)
    h0 = c0 = np.zeros((B, hidden), np.float32)
    out_ids, _, cache_ids = lstm_forward(ids, h0, c0, W_x, W_h, b)
    out_dense, _, cache_dense = lstm_forward(onehot, h0, c0, W_x, W_h, b)
    np.testing.assert_allclose(out_ids, out_dense, rtol=1e-6, atol=1e-6)
    d_out = rng.normal(size=out_ids.shape).astype(np.float32)
    grads_ids = lstm_backward(d_out, cache_ids, W_x, W_h)[3]
    grads_dense = lstm_backward(d_out, cache_dense, W_x, W_h)[3]
    for g_ids, g_dense in zip(grads_ids, grads_dense):
        np.testing.assert_allclose(g_ids, g_dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vocab", [5, 1000])  # the one-hot product and the sorted-run path
def test_scatter_add_rows_equals_add_at(vocab):
    rng = np.random.default_rng(4)
    ids = rng.integers(0, vocab, size=500)
    rows = rng.normal(size=(500, 8))
    out = rng.normal(size=(vocab, 8))
    expected = out.copy()
    np.add.at(expected, ids, rows)
    assert (vocab <= ONEHOT_SCATTER_MAX_VOCAB) == (vocab == 5)
    scatter_add_rows(out, ids, rows)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_layer_gradients_match_finite_differences():
    """Dense inputs, every weight, the inputs and the initial state, in float64."""
    rng = np.random.default_rng(5)
    x, h0, c0, W_x, W_h, b = random_layer(rng, T=5, B=2, D=3, H=3)
    d_out = rng.normal(size=(5, 2, 3))
    d_h_T, d_c_T = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))

    def objective():
        outputs, (h_T, c_T), _ = lstm_forward(x, h0, c0, W_x, W_h, b)
        return np.sum(outputs * d_out) + np.sum(h_T * d_h_T) + np.sum(c_T * d_c_T)

    _, _, cache = lstm_forward(x, h0, c0, W_x, W_h, b)
    d_x, d_h0, d_c0, (dW_x, dW_h, db) = lstm_backward(d_out, cache, W_x, W_h, d_h_T, d_c_T)
    for array, analytic in [(x, d_x), (h0, d_h0), (c0, d_c0), (W_x, dW_x), (W_h, dW_h), (b, db)]:
        numeric = numeric_gradient(objective, array, eps=1e-6)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
