"""The fast layer (lstm.py): against the reference layer, the one-hot gather, the
weight preparation, buffer reuse and the scatter-add."""

import numpy as np
import pytest

from charlstm import reference
from charlstm.lstm import (ONEHOT_SCATTER_MAX_VOCAB, LayerBuffers, layer_backward,
                           layer_forward, prepare_layer, scatter_add_rows)
from charlstm.model import columns
from helpers import fast_layer, gradient_arrays


def random_layer(rng, T=6, B=3, D=5, H=4, dtype=np.float64):
    x = rng.normal(size=(T, B, D)).astype(dtype)
    h0, c0 = (rng.normal(size=(B, H)).astype(dtype) for _ in range(2))
    W_x = rng.normal(scale=0.5, size=(D, 4 * H)).astype(dtype)
    W_h = rng.normal(scale=0.5, size=(H, 4 * H)).astype(dtype)
    b = rng.normal(scale=0.5, size=4 * H).astype(dtype)
    return x, h0, c0, W_x, W_h, b


@pytest.mark.parametrize("grads_together", [False, True])  # dW_x and dW_h as two products, or as one
def test_layer_forward_and_backward_equal_the_reference_layer(grads_together):
    rng = np.random.default_rng(0)
    x, h0, c0, W_x, W_h, b = random_layer(rng)
    d_out, d_h_T, d_c_T = rng.normal(size=(6, 3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    outputs, (h_T, c_T), d_x, d_h0, d_c0, grads = fast_layer(x, h0, c0, W_x, W_h, b, d_out, d_h_T, d_c_T,
                                                             grads_together=grads_together)
    ref_out, (ref_h, ref_c), caches = reference.layer_forward(x, h0, c0, W_x, W_h, b)
    ref_d_x, ref_d_h0, ref_d_c0, ref_grads = reference.layer_backward(d_out, d_h_T, d_c_T, caches, W_x, W_h)
    for ours, theirs in [(outputs, ref_out), (h_T, ref_h), (c_T, ref_c), (d_x, ref_d_x), (d_h0, ref_d_h0),
                         (d_c0, ref_d_c0), *zip(grads, ref_grads)]:
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_gradients_through_dz_rows_padded_past_a_multiple_of_4_kib_equal_the_reference():
    rng = np.random.default_rng(8)
    x, h0, c0, W_x, W_h, b = random_layer(rng, T=16, B=64)  # T*B float64s: 8 KiB a row of dZ
    d_out, d_h_T, d_c_T = rng.normal(size=(16, 64, 4)), rng.normal(size=(64, 4)), rng.normal(size=(64, 4))
    buffers = LayerBuffers()
    _, _, d_x, d_h0, d_c0, grads = fast_layer(x, h0, c0, W_x, W_h, b, d_out, d_h_T, d_c_T, buffers)
    assert buffers.d_z.shape == (16, 16 * 64 + 8)  # one 64-byte line of float64s more
    _, _, caches = reference.layer_forward(x, h0, c0, W_x, W_h, b)
    expected = reference.layer_backward(d_out, d_h_T, d_c_T, caches, W_x, W_h)
    for ours, theirs in [(d_x, expected[0]), (d_h0, expected[1]), (d_c0, expected[2]), *zip(grads, expected[3])]:
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_two_windows_with_carried_state_equal_one_long_window():
    x, h0, c0, W_x, W_h, b = random_layer(np.random.default_rng(1), T=10)
    layer = prepare_layer(W_x, W_h, b, takes_ids=False)
    feature_major = np.ascontiguousarray(x.transpose(0, 2, 1))
    whole = layer_forward(layer, feature_major, h0.T, c0.T)
    first = layer_forward(layer, feature_major[:4], h0.T, c0.T)
    second = layer_forward(layer, feature_major[4:], first.h[-1], first.c[-1])
    np.testing.assert_allclose(np.concatenate([first.h[1:], second.h[1:]]), whole.h[1:], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(second.c[-1], whole.c[-1], rtol=1e-13, atol=1e-13)


def test_float32_stays_float32():
    x, h0, c0, W_x, W_h, b = random_layer(np.random.default_rng(2), dtype=np.float32)
    layer = prepare_layer(W_x, W_h, b, takes_ids=False)
    cache = layer_forward(layer, np.ascontiguousarray(x.transpose(0, 2, 1)), h0.T, c0.T)
    assert cache.h.dtype == cache.c.dtype == cache.gates.dtype == layer.recurrent_T.dtype == np.float32


# dW_x and dW_h as two products or as one; past ONEHOT_SCATTER_MAX_VOCAB, ids' dW_x is
# a sorted scatter-add even where the two sit together
@pytest.mark.parametrize("vocab, grads_together", [(9, False), (9, True), (ONEHOT_SCATTER_MAX_VOCAB + 1, True)])
def test_gather_path_equals_explicit_one_hot_product(vocab, grads_together):
    rng = np.random.default_rng(3)
    hidden, T, B = 4, 5, 3
    ids = rng.integers(0, vocab, size=(T, B))
    onehot = np.ascontiguousarray(np.eye(vocab, dtype=np.float32)[ids].transpose(0, 2, 1))  # (T, V, B)
    _, _, _, W_x, W_h, b = random_layer(rng, D=vocab, H=hidden, dtype=np.float32)
    by_id, dense = prepare_layer(W_x, W_h, b, takes_ids=True), prepare_layer(W_x, W_h, b, takes_ids=False)
    h0 = c0 = np.zeros((hidden, B), np.float32)
    cache_ids, cache_dense = layer_forward(by_id, ids, h0, c0), layer_forward(dense, onehot, h0, c0)
    np.testing.assert_allclose(cache_ids.gates, cache_dense.gates, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cache_ids.h, cache_dense.h, rtol=1e-6, atol=1e-6)
    d_out = rng.normal(size=(T, hidden, B)).astype(np.float32)
    grads_ids, grads_dense = (gradient_arrays(W_x, W_h, b, grads_together) for _ in range(2))
    layer_backward(by_id, cache_ids, d_out, grads_ids, need_d_x=False)
    layer_backward(dense, cache_dense, d_out, grads_dense, need_d_x=False)
    for g_ids, g_dense in zip(grads_ids, grads_dense):
        np.testing.assert_allclose(g_ids, g_dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hidden", [3, 19])  # fewer rows than the compiled transpose takes at once, and more
def test_prepared_weights_are_the_scaled_weights_and_the_scaling_is_exact(kernel_set, hidden):
    _, _, _, W_x, W_h, b = random_layer(np.random.default_rng(4), D=6, H=hidden, dtype=np.float32)
    layer = prepare_layer(W_x, W_h, b, takes_ids=True)
    scale = np.repeat([0.5, 0.5, 1.0, 0.5], hidden).astype(np.float32)
    assert np.array_equal(layer.recurrent_T, (W_h * scale).T) and layer.recurrent_T.flags.c_contiguous
    assert np.array_equal(layer.input_table, ((W_x + b) * scale).T)
    assert np.array_equal(layer.input_scaled * 2 / np.where(scale == 1, 2, 1), W_x)  # a power of two: no rounding


def test_reused_buffers_give_bitwise_the_same_results_as_fresh_ones():
    rng = np.random.default_rng(5)
    buffers = LayerBuffers()
    for _ in range(3):  # shapes repeat, so the buffers are reused
        x, h0, c0, W_x, W_h, b = random_layer(rng, dtype=np.float32)
        d_out, d_h_T, d_c_T = (rng.normal(size=s).astype(np.float32) for s in [(6, 3, 4), (3, 4), (3, 4)])
        fresh = fast_layer(x, h0, c0, W_x, W_h, b, d_out, d_h_T, d_c_T)
        reused = fast_layer(x, h0, c0, W_x, W_h, b, d_out, d_h_T, d_c_T, buffers)
        for a, b_ in zip(fresh[:5], reused[:5]):
            assert np.array_equal(a[0] if isinstance(a, tuple) else a, b_[0] if isinstance(b_, tuple) else b_)
        assert all(np.array_equal(a, b_) for a, b_ in zip(fresh[5], reused[5]))
    held = buffers.h
    fast_layer(*random_layer(rng, dtype=np.float32), d_out, d_h_T, d_c_T, buffers)
    assert buffers.h is held  # the arrays really are kept


@pytest.mark.parametrize("vocab", [5, 1000])  # the one-hot product and the sorted-run path
def test_scatter_add_rows_equals_add_at(vocab):
    rng = np.random.default_rng(6)
    ids = rng.integers(0, vocab, size=500)
    rows = rng.normal(size=(500, 8))
    out = rng.normal(size=(vocab, 8))
    expected = out.copy()
    np.add.at(expected, ids, rows)
    assert (vocab <= ONEHOT_SCATTER_MAX_VOCAB) == (vocab == 5)
    scatter_add_rows(out, ids, rows)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_columns_puts_every_step_side_by_side():
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # (T, F, B)
    cols = columns(array)
    assert cols.shape == (3, 8) and np.array_equal(cols[:, 4:], array[1])
