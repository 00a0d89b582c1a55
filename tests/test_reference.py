"""The readable LSTM (charlstm/reference.py) against finite differences, and the fast
path (lstm.py, model.py, the current kernel set) against it."""

import numpy as np
import pytest

from charlstm import reference
from charlstm.model import backward, forward, init_params
from helpers import numeric_gradient, perturbed_model as random_params, random_window, relative_error


def test_step_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    B, D, H = 3, 4, 5
    x, h, c = rng.normal(size=(B, D)), rng.normal(size=(B, H)), rng.normal(size=(B, H))
    W_x, W_h, b = rng.normal(scale=0.5, size=(D, 4 * H)), rng.normal(scale=0.5, size=(H, 4 * H)), rng.normal(size=4 * H)
    d_h, d_c = rng.normal(size=(B, H)), rng.normal(size=(B, H))

    def objective():
        h_t, c_t, _ = reference.step_forward(x, h, c, W_x, W_h, b)
        return np.sum(h_t * d_h) + np.sum(c_t * d_c)

    _, _, cache = reference.step_forward(x, h, c, W_x, W_h, b)
    d_x, d_h_prev, d_c_prev, (dW_x, dW_h, db) = reference.step_backward(d_h, d_c, cache, W_x, W_h)
    for array, analytic in [(x, d_x), (h, d_h_prev), (c, d_c_prev), (W_x, dW_x), (W_h, dW_h), (b, db)]:
        np.testing.assert_allclose(analytic, numeric_gradient(objective, array, 1e-6), rtol=1e-6, atol=1e-9)


def test_model_gradients_match_finite_differences_for_every_tensor_and_the_initial_state():
    rng = np.random.default_rng(1)
    vocab, hidden, layers, T, B = 7, 4, 2, 5, 3
    params = random_params(rng, vocab, hidden, layers)
    named = {name: params[name] for name in params.names()}
    ids, targets = rng.integers(0, vocab, (T, B)), rng.integers(0, vocab, (T, B))
    h0, c0 = rng.normal(scale=0.5, size=(2, layers, B, hidden))
    masks = [(rng.random((T, B, hidden)) > 0.3) / 0.7 for _ in range(layers)]

    def loss():
        return reference.model_forward(named, ids, targets, (h0, c0), masks)[0]

    _, _, cache = reference.model_forward(named, ids, targets, (h0, c0), masks)
    grads, (d_h0, d_c0) = reference.model_backward(named, cache)
    worst = {name: relative_error(grads[name], numeric_gradient(loss, named[name])).max() for name in named}
    worst["h0"] = relative_error(d_h0, numeric_gradient(loss, h0)).max()
    worst["c0"] = relative_error(d_c0, numeric_gradient(loss, c0)).max()
    assert set(worst) == set(params.names()) | {"h0", "c0"}
    assert max(worst.values()) < 1e-5, worst


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("dropout, weight_dropout", [(0.0, 0.0), (0.3, 0.0), (0.3, 0.4)])
def test_fast_model_equals_the_reference_in_loss_state_and_every_gradient(dtype, tolerance, dropout, weight_dropout):
    """With recurrent weight dropout the reference steps W_h * mask, and the gradient of
    W_h is the mask times the reference's gradient of the masked weights."""
    rng = np.random.default_rng(2)
    vocab, hidden, layers, T, B = 9, 6, 3, 7, 4
    params = random_params(rng, vocab, hidden, layers).astype(dtype)
    ids, targets, state = random_window(rng, vocab, layers, hidden, T, B, dtype)

    loss, final_state, cache = forward(params, ids, targets, state, dropout=dropout, rng=np.random.default_rng(3),
                                       recurrent_weight_dropout=weight_dropout)
    grads = params.zeros_like()
    d_h0, d_c0 = backward(params, cache, grads)

    masks = None if dropout == 0 else [m.transpose(0, 2, 1).astype(np.float64) for m in cache.dropout_masks]
    named = {name: params[name].astype(np.float64) for name in params.names()}
    weight_masks = {f"lstm.{k}.W_h": mask.astype(np.float64) for k, mask in enumerate(cache.recurrent_masks or [])}
    assert len(weight_masks) == (layers if weight_dropout else 0)
    assert all(0.2 < np.mean(mask == 0) < 0.6 for mask in weight_masks.values())
    for name, mask in weight_masks.items():
        named[name] = named[name] * mask
    as64 = tuple(a.astype(np.float64) for a in state)
    ref_loss, ref_state, ref_cache = reference.model_forward(named, ids, targets, as64, masks)
    ref_grads, (ref_d_h0, ref_d_c0) = reference.model_backward(named, ref_cache)
    for name, mask in weight_masks.items():
        ref_grads[name] = ref_grads[name] * mask

    assert loss == pytest.approx(ref_loss, rel=tolerance)
    for ours, theirs in [*zip(final_state, ref_state), (d_h0, ref_d_h0), (d_c0, ref_d_c0),
                         *((grads[name], ref_grads[name]) for name in params.names())]:
        scale = max(np.abs(theirs).max(), 1e-3)
        assert np.abs(ours - theirs).max() <= tolerance * scale


def test_the_learned_initial_state_gets_the_gradient_of_the_streams_that_start_from_it():
    """float64 finite differences of the loss with respect to lstm.{k}.h0 / c0, where two
    of three streams start from the learned state and one from a carried state."""
    from charlstm.model import reset_streams

    rng = np.random.default_rng(4)
    vocab, hidden, layers, T, B = 6, 4, 2, 5, 3
    params = init_params(vocab, hidden, layers, 1.0, rng, np.float64, learned_state=True)
    params.flat += rng.normal(scale=0.3, size=params.flat.shape)
    ids, targets = rng.integers(0, vocab, (T, B)), rng.integers(0, vocab, (T, B))
    carried = rng.normal(scale=0.5, size=(2, layers, B, hidden))
    started = np.array([True, False, True])

    def loss():
        state = carried.copy()
        reset_streams(state, params, started)
        return forward(params, ids, targets, state)[0]

    state = carried.copy()
    reset_streams(state, params, started)
    _, _, cache = forward(params, ids, targets, state)
    grads = params.zeros_like()
    backward(params, cache, grads, started=started)
    for name in [f"lstm.{k}.{part}0" for k in range(layers) for part in "hc"]:
        numeric = numeric_gradient(loss, params[name])
        assert np.abs(grads[name]).max() > 1e-4
        assert relative_error(grads[name], numeric).max() < 1e-6, name
    for name in params.names():  # the rest of the model is unchanged by the learned state
        # plus 1e-10: central differences of a loss near 2 rounded to 1e-16 are good to
        # about 2e-11, which is more than 1e-5 of the smallest entries (near 1e-6)
        numeric = numeric_gradient(loss, params[name])
        assert np.all(np.abs(grads[name] - numeric) <= 1e-5 * (np.abs(grads[name]) + np.abs(numeric)) + 1e-10), name
