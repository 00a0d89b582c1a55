"""The model as two standard ONNX models, written with the `onnx` package alone.

    OUT.onnx      step model: one character per stream, for sampling
        inputs   id      int64 (N,)         the current character of each of N streams
                 h, c    float32 (L, N, H)  optional: left out, every stream starts from
                                            the model's initial state (api.initial_state)
        outputs  logits  float32 (N, V)     scores of the next character
                 h_out, c_out (L, N, H)     the state to feed back in
    OUT.seq.onnx  sequence model: T characters per stream, for scoring
        inputs   ids     int64 (T, N)       time-major, like the state
                 h, c    as above
        outputs  logits  float32 (T, N, V), h_out, c_out

Each layer is one ONNX `LSTM` operator (opset 17). Its gate blocks are ordered i, o,
f, c (our i, o, f, g) and its `W`, `R` are our W_x^T, W_h^T; its `B` is [Wb; Rb] of
which we fill Wb with b and leave Rb zero. Layer 0's input is `OneHot(ids)`. The
initial state is each state input's default value (an initializer of shape (L, 1, H),
broadcast to N streams by `Expand`). The vocabulary is in the models' metadata_props
under "vocab" as {"chars": "..."}: character id i is chars[i].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import __version__
from .api import initial_state, run
from .data import Vocab
from .errors import CharlstmError
from .export_check import probe_ids, require_close
from .model import Params

OPSET = 17
IR_VERSION = 8  # the IR of opset 17, so runtimes of that age load the files


def _onnx():
    try:
        import onnx
    except ImportError:
        raise CharlstmError('--to onnx needs the onnx package: pip install "charlstm[onnx]"') from None
    return onnx


def sequence_path_for(out: Path) -> Path:
    """my.onnx -> my.seq.onnx, beside the step model."""
    return out.with_name(out.stem + ".seq" + out.suffix)


def _ifgo_to_iofc(array: np.ndarray, hidden: int) -> np.ndarray:
    """Reorder the first axis's gate blocks from i, f, g, o to ONNX's i, o, f, c."""
    i, f, g, o = (array[k * hidden:(k + 1) * hidden] for k in range(4))
    return np.concatenate([i, o, f, g], axis=0)


def _f32(array) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def build_model(params: Params, vocab: Vocab, graph: str):
    """The step model (graph="step") or the sequence model (graph="sequence")."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    num_layers, hidden, vocab_size = params.num_layers, params.hidden_size, params.vocab_size
    h0, c0 = initial_state(params)
    initializers = [
        numpy_helper.from_array(_f32(h0[:, None, :]), "h"),  # defaults of the state inputs
        numpy_helper.from_array(_f32(c0[:, None, :]), "c"),
        numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "one_hot_values"),
        numpy_helper.from_array(np.array([vocab_size], np.int64), "vocab_size"),
        numpy_helper.from_array(np.array([num_layers], np.int64), "num_layers"),
        numpy_helper.from_array(np.array([hidden], np.int64), "hidden_size"),
        numpy_helper.from_array(np.array([0], np.int64), "axis_0"),
        numpy_helper.from_array(np.array([1], np.int64), "axis_1"),
        numpy_helper.from_array(_f32(params["head.W_y"]), "head.W_y"),
        numpy_helper.from_array(_f32(params["head.b_y"]), "head.b_y"),
    ]
    nodes = []
    if graph == "step":
        nodes.append(helper.make_node("Unsqueeze", ["id", "axis_0"], ["ids"]))  # (1, N)
    # Shape (L, N, H) of the state, N from the ids, so a (L, 1, H) default broadcasts.
    nodes += [
        helper.make_node("Shape", ["ids"], ["streams"], start=1, end=2),
        helper.make_node("Concat", ["num_layers", "streams", "hidden_size"], ["state_shape"], axis=0),
        helper.make_node("Expand", ["h", "state_shape"], ["h_all"]),
        helper.make_node("Expand", ["c", "state_shape"], ["c_all"]),
        helper.make_node("OneHot", ["ids", "vocab_size", "one_hot_values"], ["x_0"], axis=-1),  # (T, N, V)
    ]
    for layer in range(num_layers):
        W_x, W_h, b = (params[f"lstm.{layer}.{n}"] for n in ("W_x", "W_h", "b"))
        initializers += [
            numpy_helper.from_array(_f32(_ifgo_to_iofc(W_x.T, hidden)[None]), f"lstm.{layer}.W"),
            numpy_helper.from_array(_f32(_ifgo_to_iofc(W_h.T, hidden)[None]), f"lstm.{layer}.R"),
            numpy_helper.from_array(_f32(np.concatenate([_ifgo_to_iofc(b, hidden), np.zeros_like(b)])[None]),
                                    f"lstm.{layer}.B"),
            numpy_helper.from_array(np.array([layer], np.int64), f"layer_{layer}"),
            numpy_helper.from_array(np.array([layer + 1], np.int64), f"layer_{layer}_end"),
        ]
        nodes += [
            helper.make_node("Slice", ["h_all", f"layer_{layer}", f"layer_{layer}_end", "axis_0"], [f"h_{layer}"]),
            helper.make_node("Slice", ["c_all", f"layer_{layer}", f"layer_{layer}_end", "axis_0"], [f"c_{layer}"]),
            helper.make_node("LSTM", [f"x_{layer}", f"lstm.{layer}.W", f"lstm.{layer}.R", f"lstm.{layer}.B", "",
                                      f"h_{layer}", f"c_{layer}"],
                             [f"y_{layer}", f"h_out_{layer}", f"c_out_{layer}"], hidden_size=hidden),
            helper.make_node("Squeeze", [f"y_{layer}", "axis_1"], [f"x_{layer + 1}"]),  # (T, N, H)
        ]
    nodes += [
        helper.make_node("Concat", [f"h_out_{k}" for k in range(num_layers)], ["h_out"], axis=0),
        helper.make_node("Concat", [f"c_out_{k}" for k in range(num_layers)], ["c_out"], axis=0),
        helper.make_node("MatMul", [f"x_{num_layers}", "head.W_y"], ["head_product"]),
    ]
    if graph == "step":
        nodes += [helper.make_node("Add", ["head_product", "head.b_y"], ["logits_1"]),
                  helper.make_node("Squeeze", ["logits_1", "axis_0"], ["logits"])]
        ids_input = helper.make_tensor_value_info("id", TensorProto.INT64, ["N"])
        logits_output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", vocab_size])
    else:
        nodes.append(helper.make_node("Add", ["head_product", "head.b_y"], ["logits"]))
        ids_input = helper.make_tensor_value_info("ids", TensorProto.INT64, ["T", "N"])
        logits_output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", "N", vocab_size])
    h, c, h_out, c_out = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [num_layers, "N", hidden])
                          for name in ("h", "c", "h_out", "c_out"))
    onnx_graph = helper.make_graph(nodes, f"charlstm_{graph}", [ids_input, h, c], [logits_output, h_out, c_out],
                                   initializers)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="charlstm", producer_version=__version__,
                              doc_string=f"charlstm {num_layers}x{hidden} LSTM character model, {graph} "
                                         "graph; state (h, c), each (L, N, H); see charlstm's README")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {
        "vocab": json.dumps({"chars": vocab.chars}, ensure_ascii=False),
        "graph": graph, "num_layers": str(num_layers), "hidden_size": str(hidden),
        "state": "h, c: each (num_layers, streams, hidden_size); omit both for the initial state",
    })
    onnx.checker.check_model(model, full_check=True)
    return model


def _onnxruntime_logits(step_bytes: bytes, sequence_bytes: bytes, ids: np.ndarray):
    """(step model's logits (T, V) fed one id at a time, sequence model's (T, V)), or
    None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # not the note that h and c have default values
    step = onnxruntime.InferenceSession(step_bytes, options, providers=["CPUExecutionProvider"])
    sequence = onnxruntime.InferenceSession(sequence_bytes, options, providers=["CPUExecutionProvider"])
    rows, state = [], {}  # no state fed: the model's initial state
    for character in ids:
        logits, h, c = step.run(None, {"id": np.array([character], np.int64), **state})
        rows.append(logits[0])
        state = {"h": h, "c": c}
    whole = sequence.run(None, {"ids": np.asarray(ids, np.int64)[:, None]})[0][:, 0]
    return np.array(rows), whole


def export_onnx(params: Params, vocab: Vocab, out: Path) -> tuple[dict[Path, bytes], list[str]]:
    """The step and sequence models' bytes, checked in onnxruntime when it is
    installed, and what was checked."""
    step, sequence = (build_model(params, vocab, graph).SerializeToString() for graph in ("step", "sequence"))
    files = {out: step, sequence_path_for(out): sequence}
    ids = probe_ids(vocab.size)
    results = _onnxruntime_logits(step, sequence, ids)
    if results is None:
        return files, ["not run: onnxruntime is not installed; onnx.checker accepted both models"]
    expected = run(params, ids)[0]
    difference = max(require_close(expected, results[0], "the ONNX step model in onnxruntime"),
                     require_close(expected, results[1], "the ONNX sequence model in onnxruntime"))
    import onnxruntime
    return files, [f"checked: onnxruntime {onnxruntime.__version__} gives the checkpoint's logits with both "
                   f"models on {len(ids)} characters (max abs difference {difference:.1e})"]
