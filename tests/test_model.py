"""The full model: finite-difference gradient check, init, masked loss, dropout."""

import numpy as np
import pytest

from charlstm.model import (ModelBuffers, Params, backward, dropout_forward, forward, init_params, param_shapes,
                            zero_state)
from helpers import numeric_gradient, perturbed_model, relative_error


@pytest.mark.parametrize("weight_dropout", [0.0, 0.4])
def test_gradients_match_central_differences_for_every_tensor_and_the_initial_state(weight_dropout):
    rng = np.random.default_rng(0)
    vocab, hidden, layers, T, B = 7, 5, 2, 6, 3
    params = perturbed_model(rng, vocab, hidden, layers)
    inputs, targets = rng.integers(0, vocab, (T, B)), rng.integers(0, vocab, (T, B))
    h0, c0 = rng.normal(scale=0.5, size=(2, layers, B, hidden))

    def run():  # dropout on, with the same masks every call
        return forward(params, inputs, targets, (h0, c0), dropout=0.3, rng=np.random.default_rng(7),
                       recurrent_weight_dropout=weight_dropout)

    def loss():
        return run()[0]

    _, _, cache = run()
    grads = params.zeros_like()
    d_h0, d_c0 = backward(params, cache, grads)

    worst = {}
    for name in params.names():
        worst[name] = relative_error(grads[name], numeric_gradient(loss, params[name])).max()
    worst["h0"] = relative_error(d_h0, numeric_gradient(loss, h0)).max()
    worst["c0"] = relative_error(d_c0, numeric_gradient(loss, c0)).max()
    print("max relative error per tensor:", {k: f"{v:.1e}" for k, v in worst.items()})
    assert set(worst) == set(param_shapes(vocab, hidden, layers)) | {"h0", "c0"}
    assert max(worst.values()) < 1e-5


def test_init_follows_keras_defaults():
    params = init_params(11, 8, 2, forget_bias=1.0, rng=np.random.default_rng(1))
    for layer in range(2):
        W_h = params[f"lstm.{layer}.W_h"].astype(np.float64)  # (8, 32)
        np.testing.assert_allclose(W_h @ W_h.T, np.eye(8), atol=1e-5)  # orthonormal rows
        b = params[f"lstm.{layer}.b"]
        assert np.all(b[8:16] == 1.0) and np.all(b[:8] == 0) and np.all(b[16:] == 0)
        W_x = params[f"lstm.{layer}.W_x"]
        limit = np.sqrt(6 / sum(W_x.shape))
        assert np.abs(W_x).max() <= limit and np.abs(W_x).max() > 0.8 * limit
    assert params.flat.dtype == np.float32
    assert np.all(params["head.b_y"] == 0)


def test_same_seed_gives_identical_weights():
    a = init_params(11, 8, 2, 1.0, np.random.default_rng(5))
    b = init_params(11, 8, 2, 1.0, np.random.default_rng(5))
    assert np.array_equal(a.flat, b.flat)


def test_params_are_views_into_one_flat_buffer():
    params = init_params(5, 3, 2, 1.0, np.random.default_rng(0))
    for name in params.names():
        assert np.shares_memory(params[name], params.flat)
    params.flat[:] = 0
    assert not params["lstm.1.W_h"].any()


def test_masked_loss_is_the_mean_over_unmasked_positions_only():
    rng = np.random.default_rng(2)
    params = perturbed_model(rng)
    inputs, targets = rng.integers(0, 7, (5, 3)), rng.integers(0, 7, (5, 3))
    state = zero_state(2, 3, 5, np.float64)
    mask = rng.random((5, 3)) < 0.6
    masked, _, cache = forward(params, inputs, targets, state, mask=mask)
    full, _, full_cache = forward(params, inputs, targets, state)
    probs = full_cache.probs.reshape(5, 3, 7)
    nll = -np.log(np.take_along_axis(probs, targets[..., None], axis=2)[..., 0])
    assert masked == pytest.approx(nll[mask].mean(), rel=1e-12)
    assert full == pytest.approx(nll.mean(), rel=1e-12)
    assert cache.count == mask.sum()


def test_dropout_is_inverted_and_off_without_a_rate():
    rng = np.random.default_rng(3)
    params = perturbed_model(rng, dtype=np.float32)
    inputs, targets = rng.integers(0, 7, (50, 40)), rng.integers(0, 7, (50, 40))
    state = zero_state(2, 40, 5, np.float32)
    _, _, cache = forward(params, inputs, targets, state, dropout=0.25, rng=np.random.default_rng(0))
    mask = cache.dropout_masks[0]
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.75)}
    assert abs((mask == 0).mean() - 0.25) < 0.02
    assert abs(mask.mean() - 1.0) < 0.03  # expectation preserved
    rng = np.random.default_rng(1)
    drawn_before = rng.bit_generator.state
    _, _, cache = forward(params, inputs, targets, state, dropout=0.0, rng=rng)
    assert cache.dropout_masks == [None, None]
    assert rng.bit_generator.state == drawn_before  # evaluation draws no mask at all


@pytest.mark.parametrize("shard", [None, (3, 8)])
def test_dropout_masks_follow_the_draws_in_time_stream_feature_order(shard):
    # a seed's masks are the uniforms drawn as (T, all streams, H), these streams kept,
    # whatever order the mask is scaled and transposed in
    time, hidden, batch, rate = 6, 5, 4, 0.3
    x = np.random.default_rng(1).standard_normal((time, hidden, batch)).astype(np.float32)
    dropped, mask = dropout_forward(x, rate, np.random.default_rng(9), shard)
    first, total = shard or (0, batch)
    uniforms = np.random.default_rng(9).random((time, total, hidden), dtype=np.float32)[:, first:first + batch]
    expected = np.where(uniforms >= rate, np.float32(1 / (1 - rate)), np.float32(0)).transpose(0, 2, 1)
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(dropped, x * expected)


def test_recurrent_weight_dropout_masks_w_h_only_inverted_and_leaves_the_weights_alone():
    rng = np.random.default_rng(4)
    params = perturbed_model(rng, hidden=40, dtype=np.float32)
    stored = params.flat.copy()
    inputs, targets = rng.integers(0, 7, (5, 3)), rng.integers(0, 7, (5, 3))
    state = zero_state(2, 3, 40, np.float32)
    _, _, cache = forward(params, inputs, targets, state, rng=np.random.default_rng(0), recurrent_weight_dropout=0.3)
    for layer, mask in enumerate(cache.recurrent_masks):
        assert mask.shape == params[f"lstm.{layer}.W_h"].shape and mask.dtype == np.float32
        assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.7)}
        assert abs((mask == 0).mean() - 0.3) < 0.03
        np.testing.assert_array_equal(cache.prepared[layer].W_h, params[f"lstm.{layer}.W_h"] * mask)
        np.testing.assert_array_equal(cache.prepared[layer].W_x, params[f"lstm.{layer}.W_x"])
    assert not np.array_equal(cache.recurrent_masks[0], cache.recurrent_masks[1])
    np.testing.assert_array_equal(params.flat, stored)  # the stored weights are what evaluation uses
    rng = np.random.default_rng(1)
    drawn_before = rng.bit_generator.state
    _, _, cache = forward(params, inputs, targets, state, rng=rng)
    assert cache.recurrent_masks is None and rng.bit_generator.state == drawn_before


def test_reused_buffers_give_bitwise_the_same_steps_as_fresh_arrays():
    rng = np.random.default_rng(11)
    params = perturbed_model(rng, dtype=np.float32)
    state = zero_state(2, 4, 5, np.float32)
    windows = [(rng.integers(0, 7, (6, 4)), rng.integers(0, 7, (6, 4))) for _ in range(3)]
    buffers = ModelBuffers()
    fresh_state, reused_state = state, state
    for inputs, targets in windows:  # shapes repeat, so the buffers are reused
        fresh_grads, reused_grads = params.zeros_like(), params.zeros_like()
        loss_a, fresh_state, cache_a = forward(params, inputs, targets, fresh_state)
        backward(params, cache_a, fresh_grads)
        loss_b, reused_state, cache_b = forward(params, inputs, targets, reused_state, buffers=buffers)
        backward(params, cache_b, reused_grads, buffers=buffers)
        assert loss_a == loss_b
        assert np.array_equal(fresh_grads.flat, reused_grads.flat)
        assert all(np.array_equal(a, b) for a, b in zip(fresh_state, reused_state))
    assert cache_b.layers[1].h is buffers.layers[1].h  # the arrays really come from the buffers



def test_a_flat_buffer_of_the_wrong_size_is_refused_even_under_python_O():
    shapes = param_shapes(5, 3, 1)
    with pytest.raises(ValueError, match="does not hold"):
        Params(shapes, np.float32, np.zeros(7, np.float32))
