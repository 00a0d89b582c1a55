import json
import math

import numpy as np
import pytest

from charlstm import checkpoint, train as train_module
from charlstm.data import read_corpus
from charlstm.errors import CharlstmError
from charlstm.evaluate import evaluate
from charlstm.model import forward, init_params, initial_state
from charlstm.train import TrainingDiverged, train
from helpers import metrics as read_metrics, tiny_config


def run(tiny_corpus, tmp_path, name="run", **overrides):
    return train(tiny_config(**overrides), tiny_corpus, tmp_path / name, show_progress=False, echo=lambda s: None)


def test_a_run_learns_and_records_everything(tiny_corpus, tmp_path):
    result = run(tiny_corpus, tmp_path, **{"train.max_steps": 150, "train.eval_every": 50})
    run_dir = result.run_dir
    for name in ("config.yaml", "run.json", "metrics.jsonl", "last.safetensors", "best.safetensors"):
        assert (run_dir / name).is_file()
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(5, 151, 5))
    for r in records:
        assert {"step", "train_loss", "lr", "grad_norm", "chars_per_s", "elapsed_s"} <= set(r)
        assert r["chars_per_s"] > 0 and math.isfinite(r["train_loss"])
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [50, 100, 150]
    for r in evals:
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2))
    vocab, _ = read_corpus(tiny_corpus)
    assert evals[-1]["val_loss"] < 0.6 * math.log(vocab.size)  # learned something
    assert records[-1]["train_loss"] < records[0]["train_loss"]

    best = checkpoint.load(run_dir / "best.safetensors")
    last = checkpoint.load(run_dir / "last.safetensors")
    assert best.progress["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in evals))
    assert last.progress["step"] == 150 and last.optimizer_step == 150
    assert last.carried_state[0].shape == (2, 4, 16)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["vocab_size"] == vocab.size
    # the best checkpoint really scores its recorded validation loss
    _, ids = read_corpus(tiny_corpus)
    val_ids = ids[len(ids) - round(len(ids) * 0.1):]
    assert evaluate(best.params, val_ids, 64, 12, 256).loss == pytest.approx(best.progress["best_val_loss"], rel=1e-6)


def test_same_config_and_seed_give_bitwise_identical_weights(tiny_corpus, tmp_path):
    a = run(tiny_corpus, tmp_path, "a", **{"model.dropout": 0.2})
    b = run(tiny_corpus, tmp_path, "b", **{"model.dropout": 0.2})
    c = run(tiny_corpus, tmp_path, "c", **{"model.dropout": 0.2, "train.seed": 2})
    weights = [checkpoint.load(r.run_dir / "last.safetensors").params.flat for r in (a, b, c)]
    assert np.array_equal(weights[0], weights[1])
    assert not np.array_equal(weights[0], weights[2])


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tiny_corpus, tmp_path, monkeypatch):
    training_calls = {"n": 0}

    def forward_that_blows_up(*args, **kwargs):
        loss, state, cache = forward(*args, **kwargs)
        if "mask" in kwargs:  # an evaluation pass
            return loss, state, cache
        training_calls["n"] += 1
        return (math.nan if training_calls["n"] == 13 else loss), state, cache

    monkeypatch.setattr(train_module, "forward", forward_that_blows_up)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 13.*last\.safetensors.*lower train\.lr"):
        run(tiny_corpus, tmp_path)
    last = checkpoint.load(tmp_path / "run" / "last.safetensors")
    assert last.progress["step"] == 10 and np.isfinite(last.params.flat).all()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "diverged"


def test_an_existing_run_is_not_overwritten_without_force(tiny_corpus, tmp_path):
    run(tiny_corpus, tmp_path)
    before = (tmp_path / "run" / "last.safetensors").read_bytes()
    with pytest.raises(CharlstmError, match="already holds a run.*--force"):
        run(tiny_corpus, tmp_path, **{"train.seed": 9})
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == before
    train(tiny_config(**{"train.seed": 9}), tiny_corpus, tmp_path / "run", force=True,
          show_progress=False, echo=lambda s: None)
    assert (tmp_path / "run" / "last.safetensors").read_bytes() != before
    assert len(read_metrics(tmp_path / "run")) == 4  # the old records are gone


def test_too_short_corpus_names_the_minimum(tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text("abcdefghij" * 5)
    with pytest.raises(CharlstmError, match=r"has 50 characters.*need at least \d+ \(lower train.batch_size"):
        train(tiny_config(), corpus, tmp_path / "run", show_progress=False, echo=lambda s: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("learned", [False, True])
def test_evaluate_with_one_stream_equals_one_forward_pass_from_the_initial_state(learned):
    rng = np.random.default_rng(0)
    params = init_params(6, 8, 2, 1.0, rng, learned_state=learned)
    params.flat += rng.normal(scale=0.1, size=params.flat.shape)  # a nonzero learned state
    ids = rng.integers(0, 6, 301)
    whole, _, _ = forward(params, ids[:-1, None], ids[1:, None], initial_state(params, 1))
    one = evaluate(params, ids, streams=1, seq_len=7, warmup=0)
    assert one.loss == pytest.approx(whole, rel=1e-5)
    assert (one.chars, one.streams, one.warmup_chars) == (300, 1, 0)
    # many streams with a warm-up: every character still counted once, each with context
    many = evaluate(params, ids, streams=4, seq_len=7, warmup=50)
    assert (many.chars, many.streams, many.warmup_chars) == (300, 4, 150)
    assert abs(many.loss - whole) < 0.02


def test_a_float64_run_trains_end_to_end_in_float64(tiny_corpus, tmp_path):
    result = run(tiny_corpus, tmp_path, **{"train.dtype": "float64", "train.max_steps": 40})
    last = checkpoint.load(tmp_path / "run" / "last.safetensors")
    assert last.params.flat.dtype == np.float64
    assert all(a.dtype == np.float64 for a in (*last.optimizer_moments, *last.carried_state))
    records = [r for r in read_metrics(tmp_path / "run") if "val_loss" in r]
    assert records[-1]["val_loss"] < records[0]["val_loss"] and result.best_val_loss < math.log(19)


def test_weight_decay_shrinks_the_weight_matrices_and_leaves_the_biases_alone(tiny_corpus, tmp_path):
    plain = run(tiny_corpus, tmp_path, "plain", **{"train.max_steps": 30})
    decayed = run(tiny_corpus, tmp_path, "decayed", **{"train.max_steps": 30, "train.weight_decay": 1.0})
    assert plain.steps == decayed.steps == 30
    a = checkpoint.load(tmp_path / "plain" / "last.safetensors").params
    b = checkpoint.load(tmp_path / "decayed" / "last.safetensors").params
    for name in a.names():
        if ".W_" in name:  # AdamW: lr * decay of every weight matrix, each step
            assert np.linalg.norm(b[name]) < 0.9 * np.linalg.norm(a[name]), name
    # the biases and the initial state are not decayed; their paths differ only through the weights
    assert np.linalg.norm(b["head.b_y"]) > 0.5 * np.linalg.norm(a["head.b_y"])


def test_a_vocabulary_above_the_scatter_threshold_trains_through_the_whole_model(tmp_path):
    from charlstm.lstm import ONEHOT_SCATTER_MAX_VOCAB

    rng = np.random.default_rng(0)
    chars = [chr(0x4E00 + i) for i in range(ONEHOT_SCATTER_MAX_VOCAB + 100)]
    corpus = tmp_path / "wide.txt"
    corpus.write_text("".join(rng.choice(chars, 6000)) + "".join(chars), encoding="utf-8")
    result = run(corpus, tmp_path, **{"train.max_steps": 15, "train.eval_every": 15})
    best = checkpoint.load(tmp_path / "run" / "best.safetensors")
    assert best.vocab.size == len(chars) > ONEHOT_SCATTER_MAX_VOCAB
    assert best.params["lstm.0.W_x"].shape == (len(chars), 64)
    assert math.isfinite(result.best_val_loss) and result.best_val_loss < math.log(len(chars)) + 0.5
