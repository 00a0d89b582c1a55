"""Everything that changes as training goes, and how it goes into and out of a
checkpoint: weights, Adam's moments, the weight average, the carried state, the
random generators and the step."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from . import checkpoint
from .config import Config
from .data import Vocab
from .errors import CharlstmError
from .model import ModelBuffers, Params, init_params, initial_state
from .optim import Adam, WeightAverage

RNG_NAMES = ("init", "dropout", "sample", "state_reset")


def make_rngs(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per purpose, all derived from the one config seed."""
    children = np.random.SeedSequence(seed).spawn(len(RNG_NAMES))
    return {name: np.random.default_rng(child) for name, child in zip(RNG_NAMES, children)}


@dataclass
class LogWindow:
    """The training steps since the last metrics.jsonl record, which the next record
    sums up. It is checkpointed, so a run stopped between two records and resumed
    logs the same records as one that never stopped."""

    loss_sum: float = 0.0
    steps: int = 0
    seconds: float = 0.0  # training time of these steps (evaluation and sampling excluded)

    def add(self, loss: float, seconds: float) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.seconds += seconds

    def chars_per_s(self, chars_per_step: int) -> float:
        return self.steps * chars_per_step / max(self.seconds, 1e-9)

    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)


@dataclass
class TrainingState:
    """Everything that changes as training goes; a checkpoint stores all of it."""

    params: Params
    optimizer: Adam
    carried: tuple[np.ndarray, np.ndarray]  # (h, c), each (L, B, H)
    rngs: dict[str, np.random.Generator]
    step: int = 0
    best_val_loss: float = math.inf
    elapsed_s: float = 0.0  # training time so far, across resumes
    # The learning-rate schedule's length: max_steps when training began. A resume that
    # raises max_steps trains on at the schedule's final rate instead of stretching it,
    # so the steps already planned stay exactly as they were.
    schedule_steps: int = 0
    # The step the schedule (warmup, then decay to schedule_steps) starts from: 0, or
    # the step a resume with --new-schedule began at (fine-tuning, training longer).
    schedule_start: int = 0
    since_log: LogWindow = field(default_factory=LogWindow)
    # Early stopping (train.patience): evaluations since the best improved by more than min_delta.
    evals_without_improvement: int = 0
    # The large per-window arrays of train_step, reused from one step to the next (a
    # step no longer needs the previous step's caches); not checkpointed. See lstm.LayerBuffers.
    buffers: ModelBuffers = field(default_factory=ModelBuffers, repr=False)
    # train.ema_decay > 0: the moving average of the weights, which is the model that
    # is evaluated, sampled and saved as the checkpoint's model.* arrays.
    average: WeightAverage | None = None

    @property
    def model_params(self) -> Params:
        """The weights that are the model: the average when one is kept, else the
        weights Adam updates."""
        if self.average is None:
            return self.params
        return Params(self.params.shapes, self.params.flat.dtype, self.average.weights)

    @classmethod
    def fresh(cls, config: Config, vocab_size: int) -> TrainingState:
        model_cfg, train_cfg = config.model, config.train
        dtype = np.dtype(train_cfg.dtype)
        rngs = make_rngs(train_cfg.seed)
        params = init_params(vocab_size, model_cfg.hidden_size, model_cfg.num_layers,
                             model_cfg.forget_bias, rngs["init"], dtype, model_cfg.initial_state == "learned")
        optimizer = Adam(params.flat.size, train_cfg.betas, train_cfg.eps, train_cfg.weight_decay, dtype)
        carried = initial_state(params, train_cfg.batch_size)
        average = WeightAverage(train_cfg.ema_decay, params.flat) if train_cfg.ema_decay else None
        return cls(params, optimizer, carried, rngs, schedule_steps=train_cfg.max_steps, average=average)

    @classmethod
    def from_checkpoint(cls, ckpt: checkpoint.Checkpoint, config: Config) -> TrainingState:
        """The state a checkpoint was written from, ready to take the next step."""
        ts = cls.fresh(config, ckpt.vocab.size)
        try:
            # With an average, the model arrays hold it and training.params the weights
            # Adam updates; a checkpoint without them (no average, imported weights)
            # trains on from its model.
            training = ckpt.params.flat if ckpt.training_params is None else ckpt.training_params
            ts.params.flat[...] = training
            if ts.average is not None:
                ts.average.weights[...] = ckpt.params.flat
                ts.average.steps = int(ckpt.progress.get("averaged_steps", 0))
            ts.optimizer.step_count = int(ckpt.optimizer_step)
            ts.optimizer.exp_avg[...], ts.optimizer.exp_avg_sq[...] = ckpt.optimizer_moments
            for carried, saved in zip(ts.carried, ckpt.carried_state):
                carried[...] = saved
            for purpose, rng in ts.rngs.items():
                if purpose == "state_reset" and purpose not in ckpt.rng_states:
                    continue  # a checkpoint from before resets existed: it never drew from it
                rng.bit_generator.state = ckpt.rng_states[purpose]
            ts.step = int(ckpt.progress["step"])
            best = ckpt.progress.get("best_val_loss")
            ts.best_val_loss = math.inf if best is None else float(best)
            ts.elapsed_s = float(ckpt.progress.get("elapsed_s", 0.0))
            if ts.step > 0:  # at step 0 (e.g. imported weights) the schedule is not yet set
                ts.schedule_steps = int(ckpt.progress.get("schedule_steps", ckpt.config.train.max_steps))
            ts.schedule_start = int(ckpt.progress.get("schedule_start", 0))
            ts.evals_without_improvement = int(ckpt.progress.get("evals_without_improvement", 0))
            window = ckpt.progress.get("since_log")  # absent before issue 9: start a new window
            if window is not None:
                ts.since_log = LogWindow(float(window["loss_sum"]), int(window["steps"]), float(window["seconds"]))
        except (KeyError, TypeError, ValueError):
            raise CharlstmError("the checkpoint lacks the optimizer, state or generator data a resume "
                                "needs; start a new run (it can still be sampled)") from None
        return ts

    def to_checkpoint(self, config: Config, vocab: Vocab, windows_per_epoch: int) -> checkpoint.Checkpoint:
        return checkpoint.Checkpoint(
            config, vocab, self.model_params,
            progress={"step": self.step, "epoch": self.step // windows_per_epoch,
                      "window": self.step % windows_per_epoch,
                      "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
                      "elapsed_s": self.elapsed_s, "schedule_steps": self.schedule_steps,
                      "schedule_start": self.schedule_start,
                      "since_log": asdict(self.since_log),
                      "evals_without_improvement": self.evals_without_improvement,
                      "planned_steps": config.train.max_steps if config.train.max_minutes else None,
                      **({"averaged_steps": self.average.steps} if self.average is not None else {})},
            optimizer_step=self.optimizer.step_count,
            optimizer_moments=(self.optimizer.exp_avg, self.optimizer.exp_avg_sq),
            carried_state=self.carried,
            training_params=None if self.average is None else self.params.flat,
            rng_states={purpose: rng.bit_generator.state for purpose, rng in self.rngs.items()})
