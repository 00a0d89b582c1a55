"""`charlstm export` and `charlstm import`: PyTorch and Keras files, vocabularies, refusals."""

import importlib.util
import json

import numpy as np
import pytest
import safetensors.numpy
from helpers import TINY_RUN, one_error_line

from charlstm import checkpoint
from charlstm.cli import main
from charlstm.exchange import read_vocab, vocab_path_for
from charlstm.model import initial_state, logits
from charlstm.state import TrainingState


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    """A small trained checkpoint (tiny corpus, 20 steps)."""
    root = tmp_path_factory.mktemp("exchange")
    corpus = root / "corpus.txt"
    corpus.write_text("the cat sat on the mat.\nthe dog sat on the log!\n" * 40, encoding="utf-8")
    assert main(["train", str(corpus), "--out", str(root / "run"), *TINY_RUN]) == 0
    return root / "run" / "best.safetensors"


def charlstm_logits(params, ids):
    return logits(params, ids, initial_state(params, ids.shape[1]))[0]


def test_export_torch_loads_strictly_and_gives_the_same_logits(trained_ckpt, tmp_path, capsys, record_property):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    out = tmp_path / "model.safetensors"
    assert main(["export", "--ckpt", str(trained_ckpt), "--to", "torch", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"wrote {out}", f"wrote {tmp_path / 'model.vocab.json'}"]
    assert len(lines) == 3
    assert lines[2].startswith("checked: the safetensors file read back gives the checkpoint's logits")
    ckpt = checkpoint.load(trained_ckpt)
    params = ckpt.params
    assert json.loads((tmp_path / "model.vocab.json").read_text(encoding="utf-8")) == {"chars": ckpt.vocab.chars}

    lstm = torch.nn.LSTM(params.vocab_size, params.hidden_size, params.num_layers)
    head = torch.nn.Linear(params.hidden_size, params.vocab_size)
    model = torch.nn.ModuleDict({"lstm": lstm, "head": head})
    state_dict = safetensors.torch.load_file(out)
    # the learned initial state travels as two extra (L, H) tensors, popped before loading
    h0, c0 = state_dict.pop("initial_state.h"), state_dict.pop("initial_state.c")
    assert params.learned_state and h0.abs().sum() > 0  # trained away from zero
    model.load_state_dict(state_dict, strict=True)

    ids = np.random.default_rng(0).integers(0, params.vocab_size, (30, 4))
    with torch.no_grad():
        onehot = torch.nn.functional.one_hot(torch.from_numpy(ids), params.vocab_size).float()
        start = (h0[:, None].expand(-1, 4, -1).contiguous(), c0[:, None].expand(-1, 4, -1).contiguous())
        torch_logits = head(lstm(onehot, start)[0]).numpy()
    ours = charlstm_logits(params, ids)
    difference = float(np.max(np.abs(ours - torch_logits)))
    record_property("export torch logits max abs diff", difference)
    print(f"\nexported checkpoint in PyTorch vs charlstm, float32 logits: max abs difference {difference:.2e}")
    np.testing.assert_allclose(ours, torch_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt, suffix", [
    ("torch", ".safetensors"),
    pytest.param("keras", ".weights.h5", marks=pytest.mark.skipif(
        importlib.util.find_spec("h5py") is None, reason="the keras extra is not installed (pip install '.[keras]')")),
])
def test_export_import_export_round_trip_is_exact(trained_ckpt, tmp_path, fmt, suffix, capsys):
    first, second = tmp_path / f"first{suffix}", tmp_path / f"second{suffix}"
    imported = tmp_path / "imported.safetensors"
    assert main(["export", "--ckpt", str(trained_ckpt), "--to", fmt, str(first)]) == 0
    assert main(["import", "--from", fmt, str(first), "--vocab", str(vocab_path_for(first)),
                 "--out", str(imported)]) == 0
    assert main(["export", "--ckpt", str(imported), "--to", fmt, str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()

    original, back = checkpoint.load(trained_ckpt), checkpoint.load(imported)
    assert np.array_equal(original.params.flat, back.params.flat)
    assert back.vocab == original.vocab
    assert back.config.model == original.config.model
    assert back.progress["step"] == 0 and back.optimizer_step == 0
    assert not back.optimizer_moments[0].any() and not back.optimizer_moments[1].any()
    capsys.readouterr()
    # The same weights and seed sample the same text.
    texts = []
    for path in (trained_ckpt, imported):
        assert main(["sample", "--ckpt", str(path), "--length", "40", "--seed", "5"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1]


def test_import_a_torch_trained_model_with_an_itos_list(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    torch.manual_seed(0)
    vocab_size, hidden, layers = 7, 12, 2
    model = torch.nn.ModuleDict({"lstm": torch.nn.LSTM(vocab_size, hidden, layers),
                                 "head": torch.nn.Linear(hidden, vocab_size)})
    weights = tmp_path / "torch.safetensors"
    safetensors.torch.save_file(model.state_dict(), weights)
    vocab = tmp_path / "itos.json"
    vocab.write_text(json.dumps(list("\nzyx ab")), encoding="utf-8")  # any order: ids are positions
    out = tmp_path / "from_torch.safetensors"
    config = tmp_path / "fine_tune.yaml"
    config.write_text("train: {lr: 0.0005, batch_size: 3}\nmodel: {hidden_size: 999}\n", encoding="utf-8")
    assert main(["import", "--from", "torch", str(weights), "--vocab", str(vocab), "--out", str(out),
                 "--config", str(config)]) == 0
    bias_hh = layers * 4 * hidden  # PyTorch's second bias per layer folds into our b
    num_params = sum(p.numel() for p in model.parameters()) - bias_hh
    assert capsys.readouterr().out == f"wrote {out}: 2x12 LSTM, vocabulary 7, {num_params:,} parameters\n"

    ckpt = checkpoint.load(out)
    assert ckpt.vocab.chars == "\nzyx ab"
    assert (ckpt.config.model.hidden_size, ckpt.config.model.num_layers) == (hidden, layers)  # from the weights
    assert (ckpt.config.train.lr, ckpt.config.train.batch_size) == (0.0005, 3)  # from --config
    assert ckpt.carried_state[0].shape == (layers, 3, hidden)
    ids = np.random.default_rng(1).integers(0, vocab_size, (9, 2))
    with torch.no_grad():
        onehot = torch.nn.functional.one_hot(torch.from_numpy(ids), vocab_size).float()
        torch_logits = model["head"](model["lstm"](onehot)[0]).numpy()
    np.testing.assert_allclose(charlstm_logits(ckpt.params, ids), torch_logits, atol=1e-5, rtol=1e-5)
    assert main(["sample", "--ckpt", str(out), "--length", "20", "--seed", "1", "--prime", "ab"]) == 0
    assert len(capsys.readouterr().out) == 2 + 20 + 1


def test_imported_checkpoint_matches_a_fresh_training_state_in_shape(trained_ckpt, tmp_path):
    """What resuming reads (moments, carried state, generators) is all there."""
    exported = tmp_path / "m.safetensors"
    assert main(["export", "--ckpt", str(trained_ckpt), "--to", "torch", str(exported)]) == 0
    out = tmp_path / "imported.safetensors"
    assert main(["import", "--from", "torch", str(exported), "--vocab", str(vocab_path_for(exported)),
                 "--out", str(out)]) == 0
    ckpt = checkpoint.load(out)
    fresh = TrainingState.fresh(ckpt.config, ckpt.vocab.size)
    assert ckpt.optimizer_moments[0].shape == fresh.optimizer.exp_avg.shape
    assert ckpt.carried_state[0].shape == fresh.carried[0].shape
    assert set(ckpt.rng_states) == set(fresh.rngs)


@pytest.mark.parametrize("vocab_json", [{"chars": "abc"}, list("abc")])
def test_vocab_files_in_both_forms(tmp_path, vocab_json):
    path = tmp_path / "v.json"
    path.write_text(json.dumps(vocab_json), encoding="utf-8")
    assert read_vocab(path).chars == "abc"


def exported_pair(trained_ckpt, tmp_path):
    out = tmp_path / "m.safetensors"
    assert main(["export", "--ckpt", str(trained_ckpt), "--to", "torch", str(out)]) == 0
    return out, vocab_path_for(out)


@pytest.mark.parametrize("vocab_text, fragment", [
    ('{"chars": "abc"}', "has 3 characters but the weights in"),
    ('{"chars": "aab"}', "repeats 'a'"),
    ("not json", "is not UTF-8 JSON"),
    ('{"chars": 5}', "must hold"),
    ('["ab", "c"]', "must hold"),
])
def test_bad_vocabulary_is_one_line(trained_ckpt, tmp_path, capsys, vocab_text, fragment):
    weights, _ = exported_pair(trained_ckpt, tmp_path)
    vocab = tmp_path / "bad.json"
    vocab.write_text(vocab_text, encoding="utf-8")
    capsys.readouterr()
    out = tmp_path / "out.safetensors"
    assert main(["import", "--from", "torch", str(weights), "--vocab", str(vocab), "--out", str(out)]) == 1
    assert fragment in one_error_line(capsys)
    assert not out.exists()


def test_bad_inputs_are_one_line(trained_ckpt, tmp_path, capsys):
    weights, vocab = exported_pair(trained_ckpt, tmp_path)
    text = tmp_path / "text.txt"
    text.write_text("hello, this is not a checkpoint\n", encoding="utf-8")
    npz_with_objects = tmp_path / "objects.npz"
    np.savez(npz_with_objects, **{"dense/kernel": np.array([{"a": 1}], dtype=object)})
    single_array = tmp_path / "single.npy"
    np.save(single_array, np.zeros(3, np.float32))
    wrong_names = tmp_path / "wrong.safetensors"
    wrong_names.write_bytes(safetensors.numpy.save({"rnn.weight": np.zeros((2, 2), np.float32)}))
    capsys.readouterr()
    cases = [
        (["export", "--ckpt", str(tmp_path / "none.safetensors"), "--to", "torch", str(tmp_path / "x")],
         "does not exist"),
        (["export", "--ckpt", str(text), "--to", "torch", str(tmp_path / "x")], "not a charlstm checkpoint"),
        (["export", "--ckpt", str(trained_ckpt), "--to", "torch", str(tmp_path)], "is a directory"),
        (["export", "--ckpt", str(trained_ckpt), "--to", "torch", str(tmp_path / "no" / "m.safetensors")],
         "does not exist"),
        (["export", "--ckpt", str(trained_ckpt), "--to", "tflite", str(tmp_path / "x")], "'tflite' is not one of"),
        (["import", "--from", "torch", str(tmp_path / "none"), "--vocab", str(vocab), "--out", "o"],
         "weights file"),
        (["import", "--from", "torch", str(weights), "--vocab", str(tmp_path / "none.json"), "--out", "o"],
         "vocabulary file"),
        (["import", "--from", "torch", str(text), "--vocab", str(vocab), "--out", "o"], "not a readable safetensors"),
        (["import", "--from", "keras", str(text), "--vocab", str(vocab), "--out", "o"],
         "not a readable Keras .weights.h5 (or .npz)"),
        (["import", "--from", "keras", str(npz_with_objects), "--vocab", str(vocab), "--out", "o"],
         "not a readable Keras .weights.h5 (or .npz)"),
        (["import", "--from", "keras", str(single_array), "--vocab", str(vocab), "--out", "o"],
         "not a readable Keras .weights.h5 (or .npz)"),
        (["import", "--from", "torch", str(wrong_names), "--vocab", str(vocab), "--out", "o"],
         "state dict lacks head.weight"),
        (["import", "--from", "torch", str(weights), "--vocab", str(vocab), "--out",
          str(tmp_path / "no" / "o.safetensors")], "does not exist"),
    ]
    for args, fragment in cases:
        assert main(args) != 0, args
        assert fragment in one_error_line(capsys), args


def test_import_as_a_run_directory_then_fine_tune_with_resume(trained_ckpt, tmp_path, capsys):
    weights, vocab = exported_pair(trained_ckpt, tmp_path)
    corpus = trained_ckpt.parent.parent / "corpus.txt"
    config = tmp_path / "fine_tune.yaml"
    config.write_text("train: {batch_size: 4, seq_len: 12, max_steps: 6, eval_every: 3, sample_length: 0}\n",
                      encoding="utf-8")
    run_dir = tmp_path / "fine-tune"
    assert main(["import", "--from", "torch", str(weights), "--vocab", str(vocab), "--run-dir", str(run_dir),
                 "--corpus", str(corpus), "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"fine-tune: charlstm train --resume {run_dir}"
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "last.safetensors", "run.json"]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "imported"

    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert f"resuming {run_dir} from step 0" in captured.out + captured.err  # the imported weights
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["steps"] == 6
    tuned = checkpoint.load(run_dir / "last.safetensors")
    original = checkpoint.load(trained_ckpt)
    assert tuned.vocab == original.vocab and not np.array_equal(tuned.params.flat, original.params.flat)


def test_import_as_a_run_refuses_a_corpus_with_other_characters(trained_ckpt, tmp_path, capsys):
    weights, vocab = exported_pair(trained_ckpt, tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("completely different text with q and z and x! " * 100, encoding="utf-8")
    capsys.readouterr()
    run_dir = tmp_path / "ft"
    assert main(["import", "--from", "torch", str(weights), "--vocab", str(vocab), "--run-dir", str(run_dir),
                 "--corpus", str(other)]) == 1
    assert "fine-tuning needs" in one_error_line(capsys)
    assert not run_dir.exists()
    for args, fragment in ((["--out", "a", "--run-dir", "b"], "either --out"), ([], "either --out"),
                           (["--run-dir", "b"], "--run-dir and --corpus go together")):
        assert main(["import", "--from", "torch", str(weights), "--vocab", str(vocab), *args]) == 1
        assert fragment in one_error_line(capsys)


@pytest.mark.parametrize("name", ["model.pt", "model.PTH", "model.bin"])
def test_export_torch_refuses_a_name_torch_load_would_try(trained_ckpt, tmp_path, capsys, name):
    capsys.readouterr()
    assert main(["export", "--ckpt", str(trained_ckpt), "--to", "torch", str(tmp_path / name)]) == 1
    line = one_error_line(capsys)
    assert "--to torch writes safetensors, which torch.load cannot open; name it model.safetensors" in line
    assert 'safetensors.torch.load_file("model.safetensors")' in line
    assert list(tmp_path.iterdir()) == []


def test_torch_and_keras_exports_of_one_checkpoint_share_its_vocabulary_file(trained_ckpt, tmp_path, capsys):
    pytest.importorskip("h5py", reason="the keras extra is not installed (pip install '.[keras]')")
    assert main(["export", "--ckpt", str(trained_ckpt), "--to", "torch", str(tmp_path / "my.safetensors")]) == 0
    assert main(["export", "--ckpt", str(trained_ckpt), "--to", "keras", str(tmp_path / "my.weights.h5")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my.safetensors", "my.vocab.json", "my.weights.h5"]
    other = tmp_path / "other.vocab.json"
    other.write_text('{"chars": "xy"}', encoding="utf-8")  # a different vocabulary is still never replaced
    capsys.readouterr()
    assert main(["export", "--ckpt", str(trained_ckpt), "--to", "torch", str(tmp_path / "other.safetensors")]) == 1
    assert "other.vocab.json already exists" in one_error_line(capsys)
