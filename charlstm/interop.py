"""Convert parameters to and from PyTorch, Keras and TensorFlow 1 layouts (NumPy only).

PyTorch
-------

The PyTorch model is `nn.LSTM(V, H, L)` (batch_first=False) stored under `lstm.` and
`nn.Linear(H, V)` under `head.`. Both use the gate order i, f, g, o, so the mapping
is a transpose per matrix (PyTorch stores `y = x @ W.T`, we store `y = x @ W`):

    lstm.weight_ih_l{k}  (4H, D_k)  = lstm.{k}.W_x.T
    lstm.weight_hh_l{k}  (4H, H)    = lstm.{k}.W_h.T
    lstm.bias_ih_l{k}    (4H,)      = lstm.{k}.b
    lstm.bias_hh_l{k}    (4H,)      = 0     PyTorch adds the two biases; ours is their sum
    head.weight          (V, H)     = head.W_y.T
    head.bias            (V,)       = head.b_y

Both use the state order (h, c), each (L, B, H). nn.LSTM has no learned initial
state; a model with one (model.initial_state: learned) adds two tensors beside the
state dict, for the caller to pop before `load_state_dict(strict=True)` and pass as
the initial (h, c) of every sequence, expanded over the batch:

    initial_state.h      (L, H)     = lstm.{k}.h0 stacked over k
    initial_state.c      (L, H)     = lstm.{k}.c0 stacked over k

Keras
-----
A stack of `keras.layers.LSTM(H, return_sequences=True)` layers on one-hot (T, V)
inputs, then `Dense(V)`. Keras uses our layout and gate order as they are. The arrays
go by these names here and in the .npz files earlier versions exported; keras_h5.py
places them where Keras's .weights.h5 keeps them:

    lstm_{k}/kernel            (D_k, 4H)  = lstm.{k}.W_x
    lstm_{k}/recurrent_kernel  (H, 4H)    = lstm.{k}.W_h
    lstm_{k}/bias              (4H,)      = lstm.{k}.b
    dense/kernel               (H, V)     = head.W_y
    dense/bias                 (V,)       = head.b_y

with Keras's defaults activation="tanh", recurrent_activation="sigmoid",
use_bias=True (`unit_forget_bias` only affects initialisation). State order (h, c).
A learned initial state travels as `initial_state/h` and `initial_state/c`, (L, H)
each, the initial_state argument of every sequence's first LSTM call.

TensorFlow 1
------------
`tf.nn.rnn_cell.LSTMCell` keeps one kernel (D + H, 4H) acting on [x, h] with the
gate blocks in the order i, j, f, o (j is our g), and adds `forget_bias` to the
forget pre-activation at run time, so its stored bias is ours minus forget_bias in
the f block. Its state order is (c, h).
"""

from __future__ import annotations

import numpy as np

from .errors import CharlstmError
from .model import Params, param_shapes


def to_torch_state_dict(params: Params) -> dict[str, np.ndarray]:
    """The state dict of nn.LSTM (under `lstm.`) + nn.Linear (under `head.`), as
    contiguous arrays of the parameters' dtype."""
    state_dict = {}
    for layer in range(params.num_layers):
        bias = params[f"lstm.{layer}.b"]
        state_dict[f"lstm.weight_ih_l{layer}"] = np.ascontiguousarray(params[f"lstm.{layer}.W_x"].T)
        state_dict[f"lstm.weight_hh_l{layer}"] = np.ascontiguousarray(params[f"lstm.{layer}.W_h"].T)
        state_dict[f"lstm.bias_ih_l{layer}"] = bias.copy()
        state_dict[f"lstm.bias_hh_l{layer}"] = np.zeros_like(bias)
    state_dict["head.weight"] = np.ascontiguousarray(params["head.W_y"].T)
    state_dict["head.bias"] = params["head.b_y"].copy()
    return {**state_dict, **learned_state_tensors(params, "initial_state.{}")}


def learned_state_tensors(params: Params, name: str) -> dict[str, np.ndarray]:
    """The learned initial state as two (L, H) arrays named name.format("h") and
    name.format("c"); nothing for a model without one."""
    if not params.learned_state:
        return {}
    return {name.format(part): np.stack([params[f"lstm.{k}.{part}0"] for k in range(params.num_layers)])
            for part in ("h", "c")}


def _read_learned_state(arrays, params: Params, name: str, what: str) -> None:
    for part in ("h", "c"):
        stacked = _get(arrays, name.format(part), (params.num_layers, params.hidden_size), what)
        for k in range(params.num_layers):
            params[f"lstm.{k}.{part}0"][...] = stacked[k]


def _missing(what: str, name: str) -> CharlstmError:
    return CharlstmError(f"{what} lack{'' if what.endswith('s') else 's'} {name}")  # "weights lack", "dict lacks"


def _get(arrays, name: str, shape: tuple[int, ...], what: str = "state dict") -> np.ndarray:
    if name not in arrays:
        raise _missing(what, name)
    array = np.asarray(arrays[name])
    if array.shape != shape:
        raise CharlstmError(f"{what} entry {name} has shape {array.shape}, expected {shape}")
    if not np.issubdtype(array.dtype, np.floating):  # e.g. strings or complex numbers
        raise CharlstmError(f"{what} entry {name} holds {array.dtype} values, expected real floats")
    return array


def _head_and_depth(arrays, head_name: str, head_layout: str, layer_key: str, what: str):
    """The head matrix (a 2-D float array, from which V and H follow) and the number
    of layers L, counted as the keys layer_key.format(0), layer_key.format(1), ..."""
    if head_name not in arrays:
        raise _missing(what, head_name)
    head = np.asarray(arrays[head_name])
    if head.ndim != 2 or not np.issubdtype(head.dtype, np.floating):
        raise CharlstmError(f"{what} entry {head_name} is {head.dtype} {head.shape}, "
                            f"expected a float {head_layout} matrix")
    num_layers = 0
    while layer_key.format(num_layers) in arrays:
        num_layers += 1
    if num_layers == 0:
        raise _missing(what, layer_key.format(0))
    return head, num_layers


def from_torch_state_dict(state_dict) -> Params:
    """Inverse of `to_torch_state_dict`; V, H and L are read from the shapes and
    b = bias_ih + bias_hh. Array-likes (NumPy arrays, CPU tensors) are accepted."""
    head_weight, num_layers = _head_and_depth(state_dict, "head.weight", "(V, H)", "lstm.weight_ih_l{}",
                                              "state dict")
    vocab_size, hidden_size = head_weight.shape
    if f"lstm.weight_hh_l{num_layers}" in state_dict:
        raise CharlstmError(f"state dict lacks lstm.weight_ih_l{num_layers}")

    learned = "initial_state.h" in state_dict
    params = Params(param_shapes(vocab_size, hidden_size, num_layers, learned), head_weight.dtype)
    if learned:
        _read_learned_state(state_dict, params, "initial_state.{}", "state dict")
    four_hidden = 4 * hidden_size
    for layer in range(num_layers):
        input_size = vocab_size if layer == 0 else hidden_size
        params[f"lstm.{layer}.W_x"][...] = _get(state_dict, f"lstm.weight_ih_l{layer}", (four_hidden, input_size)).T
        params[f"lstm.{layer}.W_h"][...] = _get(state_dict, f"lstm.weight_hh_l{layer}", (four_hidden, hidden_size)).T
        params[f"lstm.{layer}.b"][...] = (_get(state_dict, f"lstm.bias_ih_l{layer}", (four_hidden,))
                                          + _get(state_dict, f"lstm.bias_hh_l{layer}", (four_hidden,)))
    params["head.W_y"][...] = head_weight.T
    params["head.b_y"][...] = _get(state_dict, "head.bias", (vocab_size,))
    # Bidirectional or projected LSTMs (weight_ih_l0_reverse, weight_hr_l0) do not map.
    unexpected = sorted(set(state_dict) - set(to_torch_state_dict(params)))
    if unexpected:
        raise CharlstmError(f"state dict has entries a plain LSTM + linear head lacks: {', '.join(unexpected)}")
    return params


# ---- Keras ----

def keras_names(num_layers: int) -> dict[str, str]:
    """Our parameter name -> Keras weight name, in `model.get_weights()` order."""
    names = {}
    for layer in range(num_layers):
        names[f"lstm.{layer}.W_x"] = f"lstm_{layer}/kernel"
        names[f"lstm.{layer}.W_h"] = f"lstm_{layer}/recurrent_kernel"
        names[f"lstm.{layer}.b"] = f"lstm_{layer}/bias"
    names["head.W_y"] = "dense/kernel"
    names["head.b_y"] = "dense/bias"
    return names


def to_keras_weights(params: Params) -> dict[str, np.ndarray]:
    """Keras's layout is ours: the same arrays under Keras's names."""
    weights = {keras: params[ours].copy() for ours, keras in keras_names(params.num_layers).items()}
    return {**weights, **learned_state_tensors(params, "initial_state/{}")}


def from_keras_weights(weights) -> Params:
    """Inverse of `to_keras_weights`; V, H and L are read from the shapes."""
    dense_kernel, num_layers = _head_and_depth(weights, "dense/kernel", "(H, V)", "lstm_{}/kernel",
                                               "Keras weights")
    hidden_size, vocab_size = dense_kernel.shape
    learned = "initial_state/h" in weights
    params = Params(param_shapes(vocab_size, hidden_size, num_layers, learned), dense_kernel.dtype)
    if learned:
        _read_learned_state(weights, params, "initial_state/{}", "Keras weights")
    names = keras_names(num_layers)
    for ours, keras in names.items():
        params[ours][...] = _get(weights, keras, params.shapes[ours], "Keras weights")
    unexpected = sorted(set(weights) - set(names.values()) - set(learned_state_tensors(params, "initial_state/{}")))
    if unexpected:
        raise CharlstmError(f"Keras weights have entries a plain LSTM stack + dense head lacks: "
                            f"{', '.join(unexpected)}")
    return params


# ---- TensorFlow 1 LSTMCell ----

def _ifgo_to_ijfo(array: np.ndarray, hidden_size: int) -> np.ndarray:
    """Reorder the last axis's gate blocks from i, f, g, o to TF1's i, j(=g), f, o."""
    i, f, g, o = (array[..., k * hidden_size:(k + 1) * hidden_size] for k in range(4))
    return np.concatenate([i, g, f, o], axis=-1)


def to_tf1_lstm_cell(W_x: np.ndarray, W_h: np.ndarray, b: np.ndarray,
                     forget_bias: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(kernel (D + H, 4H), bias (4H,)) of a TF1 LSTMCell computing the same layer,
    given the `forget_bias` that cell adds at run time."""
    hidden_size = W_h.shape[0]
    kernel = _ifgo_to_ijfo(np.concatenate([W_x, W_h], axis=0), hidden_size)
    bias = _ifgo_to_ijfo(b, hidden_size).copy()
    bias[2 * hidden_size:3 * hidden_size] -= forget_bias
    return kernel, bias
