"""Keras and TensorFlow 1 layouts, checked by running each framework's LSTM equations,
written out here in NumPy, on the converted weights (no Keras or TensorFlow needed)."""

import numpy as np
import pytest

from charlstm.errors import CharlstmError
from charlstm.interop import (
    from_keras_weights,
    keras_names,
    to_keras_weights,
    to_tf1_lstm_cell,
)
from charlstm.model import init_params, logits

VOCAB, HIDDEN, LAYERS, STEPS, BATCH = 9, 5, 2, 6, 3


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def problem(seed=0):
    """float64 weights with every bias nonzero, random ids and a nonzero start state."""
    rng = np.random.default_rng(seed)
    params = init_params(VOCAB, HIDDEN, LAYERS, 1.0, rng, np.float64)
    params.flat += rng.normal(0.0, 0.3, params.flat.shape)
    ids = rng.integers(0, VOCAB, (STEPS, BATCH))
    h0 = rng.normal(0.0, 0.5, (LAYERS, BATCH, HIDDEN))
    c0 = rng.normal(0.0, 0.5, (LAYERS, BATCH, HIDDEN))
    return params, ids, h0, c0


def charlstm_logits(params, ids, h0, c0):
    return logits(params, ids, (h0.copy(), c0.copy()))[0]


def keras_lstm_layer(x, kernel, recurrent_kernel, bias, h, c):
    """keras.layers.LSTMCell.call with activation=tanh, recurrent_activation=sigmoid:
    z = x @ kernel + h @ recurrent_kernel + bias, split into i, f, c, o."""
    outputs = []
    for x_t in x:
        z = x_t @ kernel + h @ recurrent_kernel + bias
        z0, z1, z2, z3 = np.split(z, 4, axis=-1)
        i, f, o = sigmoid(z0), sigmoid(z1), sigmoid(z3)
        c = f * c + i * np.tanh(z2)
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs)


def tf1_lstm_cell_layer(x, kernel, bias, forget_bias, c, h):
    """tf.nn.rnn_cell.LSTMCell (no peepholes, no projection): one kernel on [x, h],
    blocks i, j, f, o, forget_bias added at run time; state (c, h)."""
    outputs = []
    for x_t in x:
        lstm_matrix = np.concatenate([x_t, h], axis=1) @ kernel + bias
        i, j, f, o = np.split(lstm_matrix, 4, axis=1)
        c = sigmoid(f + forget_bias) * c + sigmoid(i) * np.tanh(j)
        h = sigmoid(o) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs)


def test_keras_layout_runs_the_same_model_under_keras_equations():
    params, ids, h0, c0 = problem()
    weights = to_keras_weights(params)
    assert list(weights) == list(keras_names(LAYERS).values())  # get_weights() order
    x = np.eye(VOCAB)[ids]  # Keras sees one-hot (T, B, V) inputs
    for layer in range(LAYERS):
        x = keras_lstm_layer(x, weights[f"lstm_{layer}/kernel"], weights[f"lstm_{layer}/recurrent_kernel"],
                             weights[f"lstm_{layer}/bias"], h0[layer], c0[layer])
    keras_logits = x @ weights["dense/kernel"] + weights["dense/bias"]
    ours = charlstm_logits(params, ids, h0, c0)
    difference = np.max(np.abs(ours - keras_logits))
    print(f"\nKeras equations vs charlstm, float64 logits: max abs difference {difference:.2e}")
    np.testing.assert_allclose(ours, keras_logits, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("forget_bias", [1.0, 0.0, 2.5])
def test_tf1_lstm_cell_convention_runs_the_same_model(forget_bias):
    params, ids, h0, c0 = problem(1)
    weights = to_keras_weights(params)
    x = np.eye(VOCAB)[ids]
    for layer in range(LAYERS):
        kernel, bias = to_tf1_lstm_cell(weights[f"lstm_{layer}/kernel"], weights[f"lstm_{layer}/recurrent_kernel"],
                                        weights[f"lstm_{layer}/bias"], forget_bias)
        assert kernel.shape == (x.shape[-1] + HIDDEN, 4 * HIDDEN)
        x = tf1_lstm_cell_layer(x, kernel, bias, forget_bias, c0[layer], h0[layer])  # TF1 state is (c, h)
    tf1_logits = x @ weights["dense/kernel"] + weights["dense/bias"]
    ours = charlstm_logits(params, ids, h0, c0)
    difference = np.max(np.abs(ours - tf1_logits))
    print(f"\nTF1 LSTMCell (forget_bias={forget_bias}) vs charlstm, float64 logits: "
          f"max abs difference {difference:.2e}")
    np.testing.assert_allclose(ours, tf1_logits, atol=1e-12, rtol=1e-12)


def test_tf1_bias_stores_the_forget_block_minus_forget_bias_and_j_in_second_place():
    hidden = 2
    b = np.array([1, 1, 2, 2, 3, 3, 4, 4], dtype=np.float64)  # blocks i, f, g, o
    W = np.arange(8.0).reshape(1, 8)
    kernel, bias = to_tf1_lstm_cell(W, np.zeros((hidden, 4 * hidden)), b, forget_bias=1.0)
    assert bias.tolist() == [1, 1, 3, 3, 1, 1, 4, 4]  # i, j(=g), f - 1, o
    assert kernel[0].tolist() == [0, 1, 4, 5, 2, 3, 6, 7]


def test_keras_round_trip_is_exact():
    params = problem()[0].astype(np.float32)
    back = from_keras_weights(to_keras_weights(params))
    assert back.names() == params.names() and back.flat.dtype == np.float32
    assert np.array_equal(back.flat, params.flat)


@pytest.mark.parametrize("edit, message", [
    (lambda w: w.pop("dense/kernel"), "lack dense/kernel"),
    (lambda w: w.pop("lstm_1/bias"), "lack lstm_1/bias"),
    (lambda w: w.update({"lstm_0/kernel": np.zeros((VOCAB + 1, 4 * HIDDEN))}), "lstm_0/kernel has shape"),
    (lambda w: w.update({"dense/kernel": np.zeros((HIDDEN, VOCAB), np.int64)}), "expected a float"),
    (lambda w: w.update({"embedding/embeddings": np.zeros((VOCAB, 3))}), "lacks: embedding/embeddings"),
    (lambda w: [w.pop(k) for k in list(w) if k.startswith("lstm_")], "lack lstm_0/kernel"),
])
def test_bad_keras_weights_are_refused(edit, message):
    weights = to_keras_weights(problem()[0])
    edit(weights)
    with pytest.raises(CharlstmError, match=message):
        from_keras_weights(weights)
