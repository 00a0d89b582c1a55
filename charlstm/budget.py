"""A time budget (train.max_minutes) turned into a number of steps before training
starts, so the learning-rate schedule ends on time and the run is then exactly a
step-limited run: deterministic, resumable, and reproducible with
--set train.max_steps=<planned>.

The step time is measured on a throwaway copy of the training state (the real run
has not taken a step yet, so nothing it computes depends on the measurement), and
one validation pass is timed, because evaluations share the budget.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from .config import Config
from .data import Corpus
from .evaluate import evaluate
from .parallel import SingleProcess

MEASURE_STEPS = 10  # the first steps are slower (allocation, caches): the mean of the last half counts
# Small models take a step in tens of milliseconds: steps are added until the
# measurement spans about MEASURE_SECONDS (at most 1% of the budget), or a few lucky
# steps plan a run that ends late.
MEASURE_SECONDS = 2.0
# The plan ends this fraction of the budget early. The loop's steps run a little slower
# than the measured ones (checkpoints, samples, logging, a machine that slows): runs
# planned for the whole budget ended 4.5% late (627 s of 10 minutes) and 4.2% late
# (1,875 s of 30) on this project's 2-core machine, 2026-11-23.
BUDGET_HEADROOM = 0.05


@dataclass(frozen=True)
class Plan:
    steps: int
    step_s: float
    eval_s: float
    measured_s: float  # spent measuring, taken from the budget


def plan_steps(config: Config, data: Corpus, ts, train_step, comm: SingleProcess = SingleProcess()) -> Plan:
    """Steps that fit in train.max_minutes with the evaluations they bring. `ts` is the
    run's TrainingState at step 0 (left untouched); `train_step` is train.train_step.
    Under MPI every rank measures its share and the ranks plan on their mean, so that
    all of them stop at the same step."""
    train_cfg = config.train
    started = time.perf_counter()
    trial = copy.deepcopy(ts)
    grads = trial.params.zeros_like()
    decay_views = [trial.params[n] for n in trial.params.names() if ".W_" in n]
    times = []

    def take_steps(count: int) -> None:
        for _ in range(count):
            step_started = time.perf_counter()
            train_step(trial, grads, data.streams, config, decay_views, comm)
            times.append(time.perf_counter() - step_started)

    take_steps(MEASURE_STEPS)
    # Every rank must take the same number of steps (each ends in a collective): the
    # count of extra steps is agreed on, from the ranks' mean.
    seconds_per_step = sum(times) / len(times)
    measure_s = min(MEASURE_SECONDS, train_cfg.max_minutes * 60.0 / 100)
    wanted = max(0.0, measure_s / seconds_per_step - MEASURE_STEPS)
    take_steps(min(int(comm.sum(np.array([wanted]))[0] / comm.size), 10 * MEASURE_STEPS))
    settled = times[len(times) // 2:]
    step_s = sum(settled) / len(settled)  # the mean, not the median: the run pays for its slow steps too
    eval_started = time.perf_counter()
    evaluate(trial.params, data.val_ids, train_cfg.eval_streams, train_cfg.seq_len, train_cfg.eval_warmup, comm)
    eval_s = time.perf_counter() - eval_started
    measured_s = time.perf_counter() - started
    step_s, eval_s, measured_s = comm.sum(np.array([step_s, eval_s, measured_s])) / comm.size
    left_s = max(0.0, train_cfg.max_minutes * 60.0 * (1.0 - BUDGET_HEADROOM) - measured_s)
    per_step_s = step_s + eval_s / train_cfg.eval_every
    return Plan(max(1, int(left_s / per_step_s)), step_s, eval_s, measured_s)


def plan_budget(config: Config, data: Corpus, ts, train_step, echo, comm: SingleProcess) -> tuple[Config, object, dict]:
    """train.max_minutes -> train.max_steps: the config to train and write to the run
    directory (it holds the planned steps, so a resume continues the same plan), `ts`
    with the schedule's length set, and what run.json records of the plan."""
    plan = plan_steps(config, data, ts, train_step, comm)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=plan.steps))
    ts.schedule_steps = plan.steps
    echo(f"time budget {config.train.max_minutes:g} min: {plan.step_s * 1e3:.1f} ms per step and "
         f"{plan.eval_s:.2f} s per evaluation measured; planned {plan.steps} steps")
    return config, ts, {"planned_steps": plan.steps, "budget": {
        "max_minutes": config.train.max_minutes, "step_s": plan.step_s, "eval_s": plan.eval_s,
        "measured_s": plan.measured_s}}
