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
import time
from dataclasses import dataclass

import numpy as np

from .config import Config
from .data import Corpus
from .evaluate import evaluate
from .parallel import SingleProcess

MEASURE_STEPS = 10  # the first steps are slower (allocation, caches): the mean of the last half counts


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
    for _ in range(MEASURE_STEPS):
        step_started = time.perf_counter()
        train_step(trial, grads, data.streams, config, decay_views, comm)
        times.append(time.perf_counter() - step_started)
    step_s = sorted(times[MEASURE_STEPS // 2:])[len(times[MEASURE_STEPS // 2:]) // 2]  # median of the settled half
    eval_started = time.perf_counter()
    evaluate(trial.params, data.val_ids, train_cfg.eval_streams, train_cfg.seq_len, train_cfg.eval_warmup, comm)
    eval_s = time.perf_counter() - eval_started
    measured_s = time.perf_counter() - started
    step_s, eval_s, measured_s = comm.sum(np.array([step_s, eval_s, measured_s])) / comm.size
    left_s = max(0.0, train_cfg.max_minutes * 60.0 - measured_s)
    per_step_s = step_s + eval_s / train_cfg.eval_every
    return Plan(max(1, int(left_s / per_step_s)), step_s, eval_s, measured_s)
