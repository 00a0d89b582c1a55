"""Keras 3 `.weights.h5` files for the README's Keras model, written and read with h5py.

The model is

    keras.Sequential([keras.Input((None, V))]
                     + [keras.layers.LSTM(H, return_sequences=True) for _ in range(L)]
                     + [keras.layers.Dense(V)])

and `model.save_weights` (keras/src/saving/saving_lib.py, H5IOStore) lays it out by
path, each object's variables in a `vars` group as datasets "0", "1", ... in the
order of the layer's variables, with the object's name as the group's `name` attribute:

    vars                         name="sequential"   (the model: no variables)
    layers/lstm/vars             name="lstm"         (the RNN wrapper: no variables)
    layers/lstm/cell/vars        name="lstm_cell"    0 kernel (D, 4H), 1 recurrent_kernel
                                                     (H, 4H), 2 bias (4H,)
    layers/lstm_1/...            the second LSTM layer, and so on
    layers/dense/vars            name="dense"        0 kernel (H, V), 1 bias (V,)

Paths come from each layer's class name (lstm, lstm_1, ...), not its `name`, so the
file loads into any such model however its layers are named, and into the same stack
built functionally (whose input layer has no variables to read).

A learned initial state, which no Keras layer holds, is kept beside the layers where
`load_weights` does not look: `charlstm/initial_state/h` and `.../c`, (L, H) each, for
the caller to pass as each LSTM's `initial_state` (see interop.py).
"""

from __future__ import annotations

import io
import re

import numpy as np

from .errors import CharlstmError

H5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
SUFFIX = ".weights.h5"
INITIAL_STATE_GROUP = "charlstm/initial_state"


def _h5py():
    try:
        import h5py
    except ImportError:
        raise CharlstmError('Keras .weights.h5 files need h5py: pip install "charlstm[keras]"') from None
    return h5py


def _layer_path(layer: int) -> str:
    """Keras's unique names per class: lstm, lstm_1, lstm_2, ..."""
    return "layers/lstm" if layer == 0 else f"layers/lstm_{layer}"


def weights_h5_bytes(weights: dict[str, np.ndarray]) -> bytes:
    """The .weights.h5 file of `interop.to_keras_weights` arrays (lstm_{k}/kernel, ...)."""
    h5py = _h5py()
    num_layers = sum(1 for name in weights if name.endswith("/recurrent_kernel"))
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_group("vars").attrs["name"] = "sequential"
        for layer in range(num_layers):
            path = _layer_path(layer)
            f.create_group(f"{path}/vars").attrs["name"] = path.split("/")[1]
            cell = f.create_group(f"{path}/cell/vars")
            cell.attrs["name"] = "lstm_cell"
            for index, part in enumerate(("kernel", "recurrent_kernel", "bias")):
                cell[str(index)] = weights[f"lstm_{layer}/{part}"]
        dense = f.create_group("layers/dense/vars")
        dense.attrs["name"] = "dense"
        dense["0"], dense["1"] = weights["dense/kernel"], weights["dense/bias"]
        for part in ("h", "c"):
            if f"initial_state/{part}" in weights:
                f[f"{INITIAL_STATE_GROUP}/{part}"] = weights[f"initial_state/{part}"]
    return buffer.getvalue()


def _variables(group) -> list[np.ndarray]:
    """The datasets "0", "1", ... of a `vars` group, in order."""
    count = len(group)
    if sorted(group) != sorted(str(i) for i in range(count)):
        raise ValueError(f"{group.name} holds {sorted(group)}")
    return [np.asarray(group[str(i)]) for i in range(count)]


def read_weights_h5(data: bytes, source: str) -> dict[str, np.ndarray]:
    """The arrays of a Keras 3 .weights.h5 file of an LSTM stack + Dense head, under
    `interop.keras_names` (lstm_{k}/kernel, ..., dense/bias). Layers without
    variables (the input layer, dropout) are passed over; any other layer is refused."""
    h5py = _h5py()
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            if "layers" not in f:
                raise CharlstmError(f"{source} is not a Keras 3 .weights.h5 file (it has no layers/ group); "
                                    "save the model with Keras 3's model.save_weights(\"m.weights.h5\")")
            weights, others = {}, []
            for name, layer in f["layers"].items():
                match = re.fullmatch(r"lstm(?:_(\d+))?", name)
                if match:
                    cell = _variables(layer["cell/vars"]) if "cell/vars" in layer else []
                    if len(cell) != 3:
                        raise CharlstmError(f"{source}: layer {name} has {len(cell)} cell variables, "
                                            "expected kernel, recurrent_kernel and bias")
                    index = int(match.group(1) or 0)
                    for part, array in zip(("kernel", "recurrent_kernel", "bias"), cell):
                        weights[f"lstm_{index}/{part}"] = array
                elif name == "dense":
                    kernel_and_bias = _variables(layer["vars"])
                    if len(kernel_and_bias) != 2:
                        raise CharlstmError(f"{source}: the dense layer has {len(kernel_and_bias)} variables, "
                                            "expected kernel and bias")
                    weights["dense/kernel"], weights["dense/bias"] = kernel_and_bias
                elif "vars" not in layer or len(layer["vars"]) > 0 or len(layer) > 1:
                    others.append(name)
            if INITIAL_STATE_GROUP in f:
                for part in ("h", "c"):
                    weights[f"initial_state/{part}"] = np.asarray(f[f"{INITIAL_STATE_GROUP}/{part}"])
    except CharlstmError:
        raise
    except Exception:  # h5py raises OSError, KeyError, ValueError, TypeError for malformed files
        raise CharlstmError(f"{source} is not a readable Keras .weights.h5 file") from None
    if others:
        raise CharlstmError(f"{source} has layers a plain LSTM stack + dense head lacks: {', '.join(others)}")
    return weights
