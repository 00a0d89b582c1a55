"""`export --to keras` / `import --from keras`: Keras 3 .weights.h5 files, checked with
real Keras 3 (on the torch backend, the CPU torch the tests already use)."""

import os

import numpy as np
import pytest
from helpers import one_error_line

import charlstm
from charlstm import keras_h5
from charlstm.cli import main
from charlstm.exchange import vocab_path_for
from charlstm.interop import to_keras_weights

h5py = pytest.importorskip("h5py", reason="the keras extra is not installed (pip install '.[keras]')")
os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="Keras 3 is not installed (pip install keras)")

# Keras's torch backend converts tensors with np.array(x), which NumPy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TEXT = "the old cat sat on the rug.\nthe big hen sat on the log.\n" * 4


def readme_model(vocab_size, hidden_size, num_layers, functional=False):
    """README's Keras model: one-hot input, LSTM(H, return_sequences=True) per layer, Dense(V)."""
    if functional:
        inputs = keras.Input((None, vocab_size))
        x = inputs
        for _ in range(num_layers):
            x = keras.layers.LSTM(hidden_size, return_sequences=True)(x)
        return keras.Model(inputs, keras.layers.Dense(vocab_size)(x))
    return keras.Sequential([keras.Input((None, vocab_size))]
                            + [keras.layers.LSTM(hidden_size, return_sequences=True) for _ in range(num_layers)]
                            + [keras.layers.Dense(vocab_size)])


def keras_logits(model, charlstm_model, text):
    """Keras's logits for `text` from charlstm's initial state (each LSTM's initial_state)."""
    one_hot = np.eye(charlstm_model.vocab.size, dtype=np.float32)[charlstm_model.vocab.encode(text)]
    h0, c0 = charlstm_model.initial_state()
    x = one_hot[None]
    lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    for k, layer in enumerate(lstms):
        x = layer(x, initial_state=[h0[k][None], c0[k][None]])
    return keras.ops.convert_to_numpy(model.layers[-1](x))[0]


def layout(path):
    """Every group and dataset of an HDF5 file: path -> (attributes, shape, dtype)."""
    entries = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: entries.__setitem__(
            name, (dict(obj.attrs), getattr(obj, "shape", None), str(getattr(obj, "dtype", "")))))
    return entries


@pytest.fixture(scope="module")
def exported(small_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("keras") / "my.weights.h5"
    assert main(["export", "--ckpt", str(small_model), "--to", "keras", str(out)]) == 0
    return out


@pytest.mark.parametrize("functional", [False, True], ids=["Sequential", "functional"])
def test_keras_load_weights_accepts_the_file_and_gives_charlstms_logits(small_model, exported, functional,
                                                                          record_property):
    ours = charlstm.load(small_model)
    model = readme_model(ours.vocab.size, 32, 2, functional)
    model.load_weights(str(exported))
    theirs = keras_logits(model, ours, TEXT)
    difference = float(np.abs(theirs - ours.logits(TEXT)).max())
    record_property("keras logits max abs diff", difference)
    print(f"\nKeras 3 ({keras.backend.backend()}) vs charlstm over {len(TEXT)} chars: max abs diff {difference:.2e}")
    np.testing.assert_allclose(theirs, ours.logits(TEXT), atol=1e-5, rtol=1e-5)


def test_file_has_exactly_the_layout_keras_save_weights_writes(small_model, exported, tmp_path):
    ours = charlstm.load(small_model)
    keras.utils.clear_session()  # so the layers get their first names (lstm, lstm_1, dense), as a fresh program
    model = readme_model(ours.vocab.size, 32, 2)
    model.load_weights(str(exported))
    saved = tmp_path / "by_keras.weights.h5"
    model.save_weights(str(saved))
    ours = layout(exported)
    learned_state = {name: ours.pop(name) for name in list(ours) if name.startswith("charlstm")}
    assert ours == layout(saved)  # and Keras's loader never looks at the learned state kept beside
    assert learned_state["charlstm/initial_state/h"] == ({}, (2, 32), "float32")
    with h5py.File(exported, "r") as a, h5py.File(saved, "r") as b:
        for name in ("layers/lstm/cell/vars/0", "layers/lstm_1/cell/vars/2", "layers/dense/vars/0"):
            assert np.array_equal(a[name][()], b[name][()])


def test_import_reads_a_file_keras_itself_saved(tmp_path, capsys):
    chars = "\n .abdeghlnorst"
    model = readme_model(len(chars), 8, 3)  # Keras's own random weights, three layers
    weights = tmp_path / "from_keras.weights.h5"
    model.save_weights(str(weights))
    vocab = tmp_path / "vocab.json"
    vocab.write_text('{"chars": "\\n .abdeghlnorst"}', encoding="utf-8")
    out = tmp_path / "imported.safetensors"
    assert main(["import", "--from", "keras", str(weights), "--vocab", str(vocab), "--out", str(out)]) == 0
    imported = charlstm.load(out)
    assert imported.config.model.num_layers == 3 and imported.config.model.hidden_size == 8
    np.testing.assert_allclose(imported.logits("the rat"), keras_logits(model, imported, "the rat"), atol=1e-5)


def test_the_npz_of_earlier_versions_still_imports(small_model, tmp_path, capsys):
    ours = charlstm.load(small_model)
    legacy = tmp_path / "old.npz"
    np.savez(legacy, **to_keras_weights(ours.params))
    vocab = tmp_path / "old.vocab.json"
    vocab.write_text('{"chars": %s}' % __import__("json").dumps(ours.chars), encoding="utf-8")
    out = tmp_path / "back.safetensors"
    assert main(["import", "--from", "keras", str(legacy), "--vocab", str(vocab), "--out", str(out)]) == 0
    assert np.array_equal(charlstm.load(out).params.flat, ours.params.flat)


def test_keras_names_and_foreign_files_are_one_line(small_model, exported, tmp_path, capsys):
    ours = charlstm.load(small_model)
    with_embedding = tmp_path / "embedding.weights.h5"
    model = keras.Sequential([keras.Input((None,)), keras.layers.Embedding(ours.vocab.size, 4),
                              keras.layers.LSTM(32, return_sequences=True), keras.layers.Dense(ours.vocab.size)])
    model.save_weights(str(with_embedding))
    keras2_style = tmp_path / "keras2.weights.h5"
    with h5py.File(keras2_style, "w") as f:
        f.attrs["layer_names"] = [b"lstm"]
    vocab = vocab_path_for(exported)
    capsys.readouterr()
    cases = [
        (["export", "--ckpt", str(small_model), "--to", "keras", str(tmp_path / "m.npz")],
         "name it m.weights.h5 (the .npz export is retired: Keras 3 loads .weights.h5)"),
        (["export", "--ckpt", str(small_model), "--to", "keras", str(tmp_path / "m.h5")], "name it m.weights.h5"),
        (["import", "--from", "keras", str(with_embedding), "--vocab", str(vocab), "--out", str(tmp_path / "o")],
         "has layers a plain LSTM stack + dense head lacks: embedding"),
        (["import", "--from", "keras", str(keras2_style), "--vocab", str(vocab), "--out", str(tmp_path / "o")],
         "is not a Keras 3 .weights.h5 file"),
    ]
    for args, fragment in cases:
        assert main(args) == 1, args
        assert fragment in one_error_line(capsys), args
    assert not (tmp_path / "o").exists()


def test_reading_what_we_write_is_exact(small_model):
    weights = {k: v.astype(np.float32) for k, v in to_keras_weights(charlstm.load(small_model).params).items()}
    back = keras_h5.read_weights_h5(keras_h5.weights_h5_bytes(weights), "memory")
    assert back.keys() == weights.keys() and all(np.array_equal(back[k], weights[k]) for k in weights)
