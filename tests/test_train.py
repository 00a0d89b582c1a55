import json
import math

import numpy as np
import pytest

from charlstm import checkpoint, train as train_module
from charlstm.data import read_corpus
from charlstm.errors import CharlstmError
from charlstm.model import forward, init_params, zero_state
from charlstm.evaluate import evaluate
from charlstm.train import TrainingDiverged, train
from conftest import tiny_config


def run(tiny_corpus, tmp_path, name="run", **overrides):
    return train(tiny_config(**overrides), tiny_corpus, tmp_path / name, show_progress=False, echo=lambda s: None)


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


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
    assert evaluate(best.params, val_ids, 4, 12) == pytest.approx(best.progress["best_val_loss"], rel=1e-6)


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


def test_evaluate_with_one_stream_equals_one_forward_pass_over_the_text():
    rng = np.random.default_rng(0)
    params = init_params(6, 8, 2, 1.0, rng)
    ids = rng.integers(0, 6, 301)
    whole, _, _ = forward(params, ids[:-1, None], ids[1:, None], zero_state(2, 1, 8))
    assert evaluate(params, ids, batch_size=1, seq_len=7) == pytest.approx(whole, rel=1e-5)
    # many streams: different state boundaries, but every character still counted once
    assert abs(evaluate(params, ids, batch_size=4, seq_len=7) - whole) < 0.05
