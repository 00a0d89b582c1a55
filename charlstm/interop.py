"""Convert parameters to and from a PyTorch state dict (NumPy only, no torch import).

The PyTorch model is `nn.LSTM(V, H, L)` (batch_first=False) stored under `lstm.` and
`nn.Linear(H, V)` under `head.`. Both use the gate order i, f, g, o, so the mapping
is a transpose per matrix (PyTorch stores `y = x @ W.T`, we store `y = x @ W`):

    lstm.weight_ih_l{k}  (4H, D_k)  = lstm.{k}.W_x.T
    lstm.weight_hh_l{k}  (4H, H)    = lstm.{k}.W_h.T
    lstm.bias_ih_l{k}    (4H,)      = lstm.{k}.b
    lstm.bias_hh_l{k}    (4H,)      = 0     PyTorch adds the two biases; ours is their sum
    head.weight          (V, H)     = head.W_y.T
    head.bias            (V,)       = head.b_y

Both use the state order (h, c), each (L, B, H).
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
    return state_dict


def _get(state_dict, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in state_dict:
        raise CharlstmError(f"state dict lacks {name}")
    array = np.asarray(state_dict[name])
    if array.shape != shape:
        raise CharlstmError(f"state dict entry {name} has shape {array.shape}, expected {shape}")
    return array


def from_torch_state_dict(state_dict) -> Params:
    """Inverse of `to_torch_state_dict`; V, H and L are read from the shapes and
    b = bias_ih + bias_hh. Array-likes (NumPy arrays, CPU tensors) are accepted."""
    if "head.weight" not in state_dict:
        raise CharlstmError("state dict lacks head.weight")
    head_weight = np.asarray(state_dict["head.weight"])  # (V, H)
    if head_weight.ndim != 2 or not np.issubdtype(head_weight.dtype, np.floating):
        raise CharlstmError(f"state dict entry head.weight is {head_weight.dtype} {head_weight.shape}, "
                            "expected a float (V, H) matrix")
    vocab_size, hidden_size = head_weight.shape
    num_layers = 0
    while f"lstm.weight_ih_l{num_layers}" in state_dict:
        num_layers += 1
    if num_layers == 0:
        raise CharlstmError("state dict lacks lstm.weight_ih_l0")
    if f"lstm.weight_hh_l{num_layers}" in state_dict:
        raise CharlstmError(f"state dict lacks lstm.weight_ih_l{num_layers}")

    params = Params(param_shapes(vocab_size, hidden_size, num_layers), head_weight.dtype)
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
