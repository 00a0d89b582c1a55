"""The weight average (train.ema_decay): the plain mean of the weights, then their
moving average; with it the checkpoint's model, the evaluations and the best
checkpoint are the average while Adam trains its own weights. Exact resumes with
it are tested in test_resume.py, MPI ranks in test_parallel.py."""

import numpy as np
import pytest

from charlstm import checkpoint, train as train_module
from charlstm.corpus_files import load_training_corpus
from charlstm.evaluate import evaluate
from charlstm.model import Params
from charlstm.optim import WeightAverage
from charlstm.train import train
from helpers import metrics, tiny_config

QUIET = {"show_progress": False, "echo": lambda s: None}


def moving_average(seen: list[np.ndarray], decay: float) -> np.ndarray:
    """The average the docstring of WeightAverage promises, written out: the mean of the
    first 1 / (1 - decay) weights, then decay * average + (1 - decay) * weights."""
    horizon = round(1 / (1 - decay))
    average = np.mean(seen[:horizon], axis=0)
    for weights in seen[horizon:]:
        average = decay * average + (1 - decay) * weights
    return average


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9])
def test_the_average_is_the_mean_until_its_horizon_then_a_moving_average(decay):
    seen = list(np.random.default_rng(0).normal(size=(25, 7)))
    average = WeightAverage(decay, np.full(7, 100.0))  # the starting weights leave no trace
    for count, weights in enumerate(seen, 1):
        average.update(weights)
        np.testing.assert_allclose(average.weights, moving_average(seen[:count], decay), rtol=1e-12, atol=1e-12)
    assert average.steps == 25


@pytest.fixture
def averaged_run(tiny_corpus, tmp_path, monkeypatch):
    """A tiny run keeping an average over 0.9, with the weights Adam held after every step."""
    seen = []
    real_step = train_module.train_step

    def train_step(ts, *args):
        result = real_step(ts, *args)
        seen.append(ts.params.flat.astype(np.float64))
        return result

    monkeypatch.setattr(train_module, "train_step", train_step)
    config = tiny_config(**{"train.ema_decay": 0.9, "model.dropout": 0.2})
    train(config, tiny_corpus, tmp_path / "run", **QUIET)
    return config, tiny_corpus, tmp_path / "run", seen


def test_the_checkpoint_model_is_the_average_and_adam_trains_on_its_own_weights(averaged_run):
    _, _, run_dir, seen = averaged_run
    ckpt = checkpoint.load(run_dir / "last.safetensors")
    assert len(seen) == ckpt.progress["step"] == ckpt.progress["averaged_steps"] == 20
    assert np.array_equal(ckpt.training_params, seen[-1].astype(np.float32))
    np.testing.assert_allclose(ckpt.params.flat, moving_average(seen, 0.9), rtol=1e-4, atol=1e-6)
    assert np.abs(ckpt.params.flat - ckpt.training_params).max() > 1e-3  # the two really differ


def test_evaluations_and_the_best_checkpoint_score_the_average(averaged_run):
    config, corpus, run_dir, _ = averaged_run
    ckpt = checkpoint.load(run_dir / "last.safetensors")
    val_ids = load_training_corpus(corpus, config, lambda line: None)[0].val_ids
    train_cfg = config.train

    def score(params: Params) -> float:
        return evaluate(params, val_ids, train_cfg.eval_streams, train_cfg.seq_len, train_cfg.eval_warmup).loss

    logged = [record["val_loss"] for record in metrics(run_dir) if "val_loss" in record]
    assert score(ckpt.params) == logged[-1]
    training = Params(ckpt.params.shapes, np.float32, ckpt.training_params)
    assert score(training) != logged[-1]
    best = checkpoint.load(run_dir / "best.safetensors")
    assert score(best.params) == min(logged) == best.progress["best_val_loss"]


def test_without_an_average_the_checkpoint_holds_no_second_set_of_weights(tiny_corpus, tmp_path):
    train(tiny_config(), tiny_corpus, tmp_path / "run", **QUIET)
    ckpt = checkpoint.load(tmp_path / "run" / "last.safetensors")
    assert ckpt.training_params is None and "averaged_steps" not in ckpt.progress
