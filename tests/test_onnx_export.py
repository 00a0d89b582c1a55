"""`export --to onnx`: the step and sequence models in onnxruntime against charlstm."""

import json

import numpy as np
import pytest
from helpers import one_error_line

import charlstm
from charlstm import api, onnx_export
from charlstm.cli import main
from charlstm.data import Vocab
from charlstm.model import init_params

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")


def session(path_or_bytes):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the note that h and c have default values
    return ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(small_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "my.onnx"
    assert main(["export", "--ckpt", str(small_model), "--to", "onnx", str(out)]) == 0
    return out


def test_export_writes_two_models_and_says_what_it_checked(small_model, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    capsys.readouterr()
    assert main(["export", "--ckpt", str(small_model), "--to", "onnx", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"wrote {out}", f"wrote {tmp_path / 'm.seq.onnx'}"]
    assert lines[2].startswith(f"checked: onnxruntime {ort.__version__} gives the checkpoint's logits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.seq.onnx"]  # vocabulary inside


def test_models_are_standard_onnx_with_the_vocabulary_in_metadata(small_model, exported):
    chars = charlstm.load(small_model).chars
    for path, graph in ((exported, "step"), (onnx_export.sequence_path_for(exported), "sequence")):
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        assert [(o.domain, o.version) for o in model.opset_import] == [("", onnx_export.OPSET)]
        assert [n.op_type for n in model.graph.node].count("LSTM") == 2  # one ONNX LSTM per layer
        meta = {p.key: p.value for p in model.metadata_props}
        assert json.loads(meta["vocab"]) == {"chars": chars} and meta["graph"] == graph


def test_sequence_model_equals_charlstm_on_three_streams_from_a_given_state(small_model, exported, record_property):
    model = charlstm.load(small_model)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, model.vocab.size, (300, 3))
    h = rng.normal(0.0, 0.5, (2, 3, 32)).astype(np.float32)
    c = rng.normal(0.0, 0.5, (2, 3, 32)).astype(np.float32)
    logits, h_out, c_out = session(str(onnx_export.sequence_path_for(exported))).run(
        None, {"ids": ids, "h": h, "c": c})
    assert logits.shape == (300, 3, model.vocab.size) and h_out.shape == c_out.shape == (2, 3, 32)
    worst = 0.0
    for stream in range(3):
        expected, (final_h, final_c) = api.run(model.params, ids[:, stream], (h[:, stream], c[:, stream]))
        for ours, theirs in ((expected, logits[:, stream]), (final_h, h_out[:, stream]), (final_c, c_out[:, stream])):
            worst = max(worst, float(np.abs(ours - theirs).max()))
            np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
    record_property("onnx sequence max abs diff", worst)
    print(f"\nONNX sequence model in onnxruntime vs charlstm, 300 chars x 3 streams: max abs diff {worst:.2e}")


def test_step_model_fed_one_character_at_a_time_equals_charlstm(small_model, exported):
    model = charlstm.load(small_model)
    step = session(str(exported))
    text = "the big dog sat on the rug.\n" * 10
    rows, state = [], {}  # no state fed: the initial state
    for ch in text:
        logits, h, c = step.run(None, {"id": np.array([model.chars.index(ch)], np.int64), **state})
        rows.append(logits[0])
        state = {"h": h, "c": c}
    expected, (final_h, final_c) = api.run(model.params, model.vocab.encode(text))
    np.testing.assert_allclose(np.array(rows), expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(state["h"][:, 0], final_h, atol=1e-5)
    np.testing.assert_allclose(state["c"][:, 0], final_c, atol=1e-5)


def test_argmax_sampling_through_onnxruntime_equals_charlstm_sample(small_model, exported, capsys):
    capsys.readouterr()
    prime, length = "the hen", 300
    assert main(["sample", "--ckpt", str(small_model), "--argmax", "--prime", prime, "--length", str(length)]) == 0
    printed = capsys.readouterr().out
    step = session(str(exported))
    chars = json.loads(step.get_modelmeta().custom_metadata_map["vocab"])["chars"]
    text, state = prime, {}
    for ch in prime:
        logits, h, c = step.run(None, {"id": np.array([chars.index(ch)], np.int64), **state})
        state = {"h": h, "c": c}
    for _ in range(length):
        next_id = int(logits[0].argmax())
        text += chars[next_id]
        logits, h, c = step.run(None, {"id": np.array([next_id], np.int64), **state})
        state = {"h": h, "c": c}
    assert text + "\n" == printed
    assert len(set(text)) > 10  # real text, not one repeated character


def test_gate_blocks_are_reordered_to_onnx_i_o_f_c():
    hidden = 2
    blocks = np.repeat(np.array([1.0, 2.0, 3.0, 4.0]), hidden)  # our i, f, g, o
    assert onnx_export._ifgo_to_iofc(blocks, hidden).tolist() == [1, 1, 4, 4, 2, 2, 3, 3]


def test_a_model_that_disagrees_with_the_checkpoint_is_never_written(small_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(onnx_export, "_ifgo_to_iofc", lambda array, hidden: array)  # keep PyTorch's order
    capsys.readouterr()
    assert main(["export", "--ckpt", str(small_model), "--to", "onnx", str(tmp_path / "bad.onnx")]) == 1
    assert "the ONNX step model in onnxruntime gave logits that differ" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_one_layer_float64_checkpoint_exports_as_float32(tmp_path):
    params = init_params(5, 4, 1, 1.0, np.random.default_rng(0), np.float64)
    step = session(onnx_export.build_model(params, Vocab("abcde"), "step").SerializeToString())
    logits, h, c = step.run(None, {"id": np.array([0, 4], np.int64)})  # two streams, initial state
    assert logits.dtype == np.float32 and h.shape == (1, 2, 4)
    np.testing.assert_allclose(logits[1], api.run(params, [4])[0][0], atol=1e-6)


def test_onnx_names_and_missing_package_are_one_line(small_model, tmp_path, capsys, monkeypatch):
    capsys.readouterr()
    assert main(["export", "--ckpt", str(small_model), "--to", "onnx", str(tmp_path / "my.model")]) == 1
    assert "name the ONNX file my.model.onnx" in one_error_line(capsys)
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # as if the extra were not installed
    assert main(["export", "--ckpt", str(small_model), "--to", "onnx", str(tmp_path / "my.onnx")]) == 1
    assert 'needs the onnx package: pip install "charlstm[onnx]"' in one_error_line(capsys)
