"""When a run ends before its steps are done, or decides its steps itself (issue 14):
early stopping (train.patience, train.min_delta) and a time budget (train.max_minutes)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from charlstm import budget, checkpoint
from charlstm.cli import main
from charlstm.config import ConfigError, load_config
from charlstm.rundir import read_metrics
from charlstm.train import train

from helpers import TINY_RUN, tiny_config


def quiet(_):
    pass


def test_patience_ends_the_run_as_finished_with_the_reason_everywhere(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    # min_delta larger than any gain a few steps bring: the second evaluation without one stops it
    assert main(["train", str(tiny_corpus), "--out", str(run), *TINY_RUN, "--set", "train.max_steps=200",
                 "--set", "train.eval_every=5", "--set", "train.patience=2", "--set", "train.min_delta=5"]) == 0
    out = capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["steps"] == 15 and "early stopping" in info["stop_reason"]
    assert out.splitlines()[-2].startswith("done: 15 steps (early stopping: 2 evaluations without an improvement")
    last = read_metrics(run)[-1]
    assert last["step"] == 15 and last["stop_reason"] == info["stop_reason"]
    best = checkpoint.load(run / "best.safetensors")
    assert best.progress["best_val_loss"] == pytest.approx(info["best_val_loss"])
    assert checkpoint.load(run / "last.safetensors").progress["step"] == 15


def test_patience_0_never_stops_and_a_real_improvement_resets_the_count(tiny_corpus, tmp_path):
    off = train(tiny_config(**{"train.max_steps": 40, "train.eval_every": 5, "train.sample_length": 0}),
                tiny_corpus, tmp_path / "off", show_progress=False, echo=quiet)
    assert off.steps == 40 and off.stop_reason == ""
    # a tiny model on a tiny corpus improves at every evaluation early on: patience 1, min_delta 0 runs on
    on = train(tiny_config(**{"train.max_steps": 40, "train.eval_every": 5, "train.sample_length": 0,
                              "train.patience": 1}), tiny_corpus, tmp_path / "on", show_progress=False, echo=quiet)
    assert on.steps == 40 and on.best_val_loss == off.best_val_loss


@pytest.mark.parametrize("key, value, message", [
    ("train.patience", "-1", "at least 0"), ("train.patience", "1.5", "an integer"),
    ("train.min_delta", "-0.1", "at least 0"), ("train.max_minutes", "-1", "at least 0"),
    ("train.max_minutes", "soon", "a number"),
])
def test_bad_stopping_values_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"{key}={value}"])


def test_a_time_budget_plans_steps_and_the_run_is_then_a_step_limited_run(tiny_corpus, tmp_path):
    settings = {"train.max_minutes": 0.02, "train.eval_every": 50, "train.sample_length": 0,
                "train.checkpoint_every": 50}
    budget = train(tiny_config(**settings), tiny_corpus, tmp_path / "budget", show_progress=False, echo=quiet)
    info = json.loads((tmp_path / "budget" / "run.json").read_text())
    planned = info["planned_steps"]
    assert budget.steps == planned > 10 and info["budget"]["step_s"] > 0
    assert checkpoint.load(tmp_path / "budget" / "last.safetensors").progress["planned_steps"] == planned
    assert f"max_steps: {planned}" in (tmp_path / "budget" / "config.yaml").read_text()
    fixed = train(tiny_config(**{**settings, "train.max_minutes": 0, "train.max_steps": planned}), tiny_corpus,
                  tmp_path / "fixed", show_progress=False, echo=quiet)
    a = checkpoint.load(tmp_path / "budget" / "last.safetensors")
    b = checkpoint.load(tmp_path / "fixed" / "last.safetensors")
    assert np.array_equal(a.params.flat, b.params.flat) and fixed.best_val_loss == budget.best_val_loss


def test_a_budgeted_run_stopped_and_resumed_ends_as_the_step_limited_run(tiny_corpus, tmp_path):
    import os
    import signal

    from charlstm.train import TrainingInterrupted, resume

    def stop_at_step_20(line):
        if line.startswith("step 20:"):
            os.kill(os.getpid(), signal.SIGINT)  # the run stops after this step, as on Ctrl-C

    run = tmp_path / "run"
    settings = {"train.max_minutes": 0.02, "train.eval_every": 20, "train.sample_length": 0,
                "train.checkpoint_every": 20}
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(**settings), tiny_corpus, run, show_progress=False, echo=stop_at_step_20)
    planned = json.loads((run / "run.json").read_text())["planned_steps"]
    assert planned > 20 and checkpoint.load(run / "last.safetensors").progress["step"] == 20
    assert resume(run, show_progress=False, echo=quiet).steps == planned
    fixed = tmp_path / "fixed"
    train(tiny_config(**{**settings, "train.max_minutes": 0, "train.max_steps": planned}), tiny_corpus, fixed,
          show_progress=False, echo=quiet)
    assert np.array_equal(checkpoint.load(run / "last.safetensors").params.flat,
                          checkpoint.load(fixed / "last.safetensors").params.flat)


def plan_on_a_fake_clock(monkeypatch, config, step_s: float, eval_s: float = 0.0):
    """budget.plan_steps where a step takes exactly step_s and an evaluation eval_s,
    however loaded the machine. Returns (the plan, seconds on the fake clock)."""
    clock = [0.0]

    def fake_step(*_):
        clock[0] += step_s

    def fake_evaluate(*_, **__):
        clock[0] += eval_s

    monkeypatch.setattr(budget, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(budget, "evaluate", fake_evaluate)
    params = SimpleNamespace(zeros_like=lambda: None, names=lambda: [])
    plan = budget.plan_steps(config, SimpleNamespace(streams=None, val_ids=None), SimpleNamespace(params=params),
                             fake_step)
    return plan, clock[0]


@pytest.mark.parametrize("max_minutes, step_s, steps", [
    (10.0, 0.005, 40),   # fast steps: as many as span MEASURE_SECONDS (0.2 s here)
    (10.0, 0.05, 10),    # slow steps: the first ten are enough
    (10.0, 0.001, 110),  # never more than ten times the first ten
    (0.01, 0.001, 10),   # a tiny budget: at most 1% of it is spent measuring
])
def test_a_time_budget_measures_for_long_enough_but_not_too_long(monkeypatch, max_minutes, step_s, steps):
    monkeypatch.setattr(budget, "MEASURE_SECONDS", 0.2)
    _, seconds = plan_on_a_fake_clock(monkeypatch, tiny_config(**{"train.max_minutes": max_minutes}), step_s)
    assert round(seconds / step_s) == steps


def test_a_time_budget_plans_its_steps_and_evaluations_to_end_inside_the_budget(monkeypatch):
    step_s, eval_s = 0.05, 3.0
    config = tiny_config(**{"train.max_minutes": 10.0, "train.eval_every": 100})
    plan, _ = plan_on_a_fake_clock(monkeypatch, config, step_s, eval_s)
    assert plan.step_s == pytest.approx(step_s) and plan.eval_s == pytest.approx(eval_s)
    # the measurement, the steps and one evaluation per eval_every steps fill the
    # budget less its headroom, and one more step would not fit
    per_step_s = step_s + eval_s / 100
    planned_s = plan.measured_s + plan.steps * per_step_s
    assert 0 < budget.BUDGET_HEADROOM < 0.2
    assert 600 * (1 - budget.BUDGET_HEADROOM) - per_step_s < planned_s <= 600 * (1 - budget.BUDGET_HEADROOM)
