"""The training loop: truncated BPTT over carried streams, Adam, evaluation,
samples, checkpoints and a run directory that records what happened.

Run directory:
    config.yaml        the resolved config
    run.json           corpus, sizes, versions and, at the end, the outcome
    metrics.jsonl      one JSON object per log event (see `train`)
    last.safetensors   written every `checkpoint_every` steps and at the end
    best.safetensors   the lowest validation loss so far
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import __version__, checkpoint
from .config import Config, save_config
from .data import (Vocab, eval_windows, get_window, make_streams, min_corpus_chars, num_windows,
                   read_corpus, split_train_val)
from .errors import CharlstmError
from .lstm import Workspace
from .model import Params, backward, forward, init_params, zero_state
from .optim import Adam, clip_global_norm, learning_rate
from .sample import generate

RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl",
             "last" + checkpoint.EXTENSION, "best" + checkpoint.EXTENSION)
RNG_NAMES = ("init", "dropout", "sample")


class TrainingDiverged(CharlstmError):
    """The loss or gradient stopped being a finite number."""


class TrainingInterrupted(CharlstmError):
    """Ctrl-C: the run stops between steps; written checkpoints stay as they are."""

    exit_code = 130


def make_rngs(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per purpose, all derived from the one config seed."""
    children = np.random.SeedSequence(seed).spawn(len(RNG_NAMES))
    return {name: np.random.default_rng(child) for name, child in zip(RNG_NAMES, children)}


def evaluate(params: Params, ids: np.ndarray, batch_size: int, seq_len: int) -> float:
    """Mean loss in nats/char over every next-character prediction in `ids`,
    streamed as `batch_size` contiguous streams with state carried."""
    batch_size = min(batch_size, len(ids) - 1)  # never more streams than predictions
    state = zero_state(params.num_layers, batch_size, params.hidden_size, params.flat.dtype)
    total, count = 0.0, 0.0
    for inputs, targets, mask in eval_windows(ids, batch_size, seq_len):
        loss, state, cache = forward(params, inputs, targets, state, mask=mask)
        total += loss * cache.count
        count += cache.count
    return total / count


def prepare_run_dir(run_dir: Path, force: bool) -> None:
    """Create the run directory; refuse to overwrite an earlier run unless forced."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CharlstmError(f"--out {run_dir} is a file, not a directory")
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not force:
        raise CharlstmError(f"{run_dir} already holds a run ({existing[0]}); "
                            "choose another --out or pass --force to overwrite it")
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in existing:
        (run_dir / name).unlink()


def check_corpus_size(corpus: Path, num_chars: int, config: Config) -> None:
    train_cfg = config.train
    needed = min_corpus_chars(train_cfg.batch_size, train_cfg.seq_len, config.data.val_fraction)
    if num_chars < needed:
        raise CharlstmError(
            f"corpus {corpus} has {num_chars} characters; batch_size={train_cfg.batch_size} and "
            f"seq_len={train_cfg.seq_len} need at least {needed} (lower train.batch_size or train.seq_len)")


@dataclass
class TrainResult:
    steps: int
    best_val_loss: float
    final_val_loss: float
    wall_time_s: float
    run_dir: Path


@dataclass
class TrainingState:
    """Everything that changes as training goes; a checkpoint stores all of it."""

    params: Params
    optimizer: Adam
    carried: tuple[np.ndarray, np.ndarray]  # (h, c), each (L, B, H)
    rngs: dict[str, np.random.Generator]
    step: int = 0
    best_val_loss: float = math.inf

    @classmethod
    def fresh(cls, config: Config, vocab_size: int) -> TrainingState:
        model_cfg, train_cfg = config.model, config.train
        dtype = np.dtype(train_cfg.dtype)
        rngs = make_rngs(train_cfg.seed)
        params = init_params(vocab_size, model_cfg.hidden_size, model_cfg.num_layers,
                             model_cfg.forget_bias, rngs["init"], dtype)
        optimizer = Adam(params.flat.size, train_cfg.betas, train_cfg.eps, train_cfg.weight_decay, dtype)
        carried = zero_state(model_cfg.num_layers, train_cfg.batch_size, model_cfg.hidden_size, dtype)
        return cls(params, optimizer, carried, rngs)

    def to_checkpoint(self, config: Config, vocab: Vocab, windows_per_epoch: int) -> checkpoint.Checkpoint:
        return checkpoint.Checkpoint(
            config, vocab, self.params,
            progress={"step": self.step, "epoch": self.step // windows_per_epoch,
                      "window": self.step % windows_per_epoch,
                      "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss},
            optimizer_step=self.optimizer.step_count,
            optimizer_moments=(self.optimizer.exp_avg, self.optimizer.exp_avg_sq),
            carried_state=self.carried,
            rng_states={purpose: rng.bit_generator.state for purpose, rng in self.rngs.items()})


# The large per-window arrays of train_step, reused from one step to the next (a step
# needs the previous step's caches no more); see lstm.Workspace.
_STEP_WORKSPACE = Workspace()


def train_step(ts: TrainingState, grads: Params, streams: np.ndarray, config: Config,
               decay_views: list[np.ndarray]) -> tuple[float, float, float]:
    """One window of truncated BPTT: forward, backward, clip, Adam. Returns
    (loss, gradient norm before clipping, learning rate). Raises TrainingDiverged,
    before touching the weights, if the loss or gradient is not finite."""
    train_cfg = config.train
    windows_per_epoch = num_windows(streams, train_cfg.seq_len)
    window = ts.step % windows_per_epoch
    if window == 0:  # a new epoch starts the streams again from zero state
        ts.carried = tuple(np.zeros_like(a) for a in ts.carried)
    inputs, targets = get_window(streams, window, train_cfg.seq_len)
    loss, next_state, cache = forward(ts.params, inputs, targets, ts.carried,
                                      config.model.dropout, ts.rngs["dropout"], workspace=_STEP_WORKSPACE)
    backward(ts.params, cache, grads, workspace=_STEP_WORKSPACE)
    grad_norm = clip_global_norm(grads.flat, train_cfg.grad_clip)
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise TrainingDiverged(f"training diverged at step {ts.step + 1} "
                               f"(loss {loss}, gradient norm {grad_norm})")
    lr = learning_rate(ts.step, train_cfg.lr, train_cfg.lr_schedule, train_cfg.warmup_steps,
                       train_cfg.max_steps, train_cfg.final_lr_fraction)
    ts.optimizer.step(ts.params.flat, grads.flat, lr, decay_views)
    ts.carried = next_state  # fresh arrays: no gradient path back into this window
    ts.step += 1
    return loss, grad_norm, lr


class MetricsLog:
    """Appends one JSON object per log event to metrics.jsonl; train_loss and
    chars_per_s cover the training steps since the previous record."""

    def __init__(self, path: Path, chars_per_step: int, started: float):
        self.file = open(path, "a", encoding="utf-8")
        self.chars_per_step = chars_per_step
        self.started = started
        self.loss_sum = self.steps = self.seconds = 0.0
        self.smoothed_loss: float | None = None  # for the progress bar

    def add_step(self, loss: float, seconds: float) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.seconds += seconds
        self.smoothed_loss = loss if self.smoothed_loss is None else 0.95 * self.smoothed_loss + 0.05 * loss

    @property
    def chars_per_s(self) -> float:
        return self.steps * self.chars_per_step / max(self.seconds, 1e-9)

    def write(self, **fields) -> None:
        record = {"step": fields.pop("step"), "train_loss": self.loss_sum / max(self.steps, 1),
                  "chars_per_s": self.chars_per_s, "elapsed_s": time.perf_counter() - self.started,
                  **fields}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.loss_sum = self.steps = self.seconds = 0.0

    def close(self) -> None:
        self.file.close()


def train(config: Config, corpus: Path, run_dir: Path, *, force: bool = False,
          show_progress: bool = True, echo: Callable[[str], None] = tqdm.write) -> TrainResult:
    """Train from scratch on `corpus`, writing everything to `run_dir`.

    metrics.jsonl gets a record every `log_every` steps and at every evaluation:
    step, epoch, train_loss, lr, grad_norm (before clipping), chars_per_s (training
    steps only), elapsed_s, and on evaluations val_loss (nats/char) and val_bpc.
    """
    started = time.perf_counter()
    train_cfg = config.train
    vocab, ids = read_corpus(corpus, config.data.encoding)
    check_corpus_size(corpus, len(ids), config)
    train_ids, val_ids = split_train_val(ids, config.data.val_fraction)
    streams = make_streams(train_ids, train_cfg.batch_size)
    windows_per_epoch = num_windows(streams, train_cfg.seq_len)

    prepare_run_dir(run_dir, force)
    save_config(config, run_dir / "config.yaml")
    ts = TrainingState.fresh(config, vocab.size)
    grads = ts.params.zeros_like()
    decay_views = [ts.params[n] for n in ts.params.names() if ".W_" in n]  # not the biases
    run_info = {
        "corpus": str(corpus), "corpus_chars": int(len(ids)), "train_chars": int(len(train_ids)),
        "val_chars": int(len(val_ids)), "vocab_size": vocab.size, "num_params": int(ts.params.flat.size),
        "windows_per_epoch": windows_per_epoch, "charlstm_version": __version__,
        "numpy_version": np.__version__, "python_version": platform.python_version(),
        "command": sys.argv, "status": "running",
    }
    write_json(run_dir / "run.json", run_info)
    echo(f"corpus {corpus}: {len(ids):,} chars, vocabulary {vocab.size}; model "
         f"{config.model.num_layers}x{config.model.hidden_size}, {ts.params.flat.size:,} parameters; "
         f"{windows_per_epoch} windows per epoch; run directory {run_dir}")

    def save(name: str) -> Path:
        path = run_dir / (name + checkpoint.EXTENSION)
        checkpoint.save(path, ts.to_checkpoint(config, vocab, windows_per_epoch))
        return path

    def due(every: int) -> bool:
        return ts.step % every == 0 or ts.step == train_cfg.max_steps

    val_loss, last_saved = math.nan, None
    log = MetricsLog(run_dir / "metrics.jsonl", train_cfg.batch_size * train_cfg.seq_len, started)
    bar = tqdm(total=train_cfg.max_steps, initial=ts.step, disable=not show_progress,
               dynamic_ncols=True, mininterval=0.5, unit="step")
    try:
        while ts.step < train_cfg.max_steps:
            step_started = time.perf_counter()
            try:
                loss, grad_norm, lr = train_step(ts, grads, streams, config, decay_views)
            except TrainingDiverged as exc:
                raise TrainingDiverged(f"{exc}; {kept_checkpoint(last_saved)}; try a lower train.lr "
                                       f"(now {train_cfg.lr:g}) or train.grad_clip") from None
            log.add_step(loss, time.perf_counter() - step_started)
            bar.set_postfix_str(f"loss {log.smoothed_loss:.3f} lr {lr:.2e} {log.chars_per_s:,.0f} char/s",
                                refresh=False)
            bar.update(1)

            evaluation = {}
            if due(train_cfg.eval_every):
                val_loss = evaluate(ts.params, val_ids, train_cfg.batch_size, train_cfg.seq_len)
                improved = val_loss < ts.best_val_loss
                ts.best_val_loss = min(ts.best_val_loss, val_loss)
                evaluation = {"val_loss": val_loss, "val_bpc": val_loss / math.log(2)}
                echo(f"step {ts.step}: val {val_loss:.4f} nats/char ({val_loss / math.log(2):.4f} bits/char)"
                     f"{' (best)' if improved else ''}, train {log.smoothed_loss:.4f}")
                if improved:
                    save("best")
            if due(train_cfg.log_every) or evaluation:
                log.write(step=ts.step, epoch=ts.step / windows_per_epoch, lr=lr, grad_norm=grad_norm,
                          **evaluation)
            if due(train_cfg.checkpoint_every):
                last_saved = save("last")
            if train_cfg.sample_length and due(train_cfg.sample_every):
                text = "".join(generate(ts.params, vocab, train_cfg.sample_length,
                                        temperature=0.8, rng=ts.rngs["sample"]))
                echo(f"---- sample at step {ts.step} ----\n{text}\n----")
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"interrupted at step {ts.step}; {kept_checkpoint(last_saved)}") from None
    finally:
        bar.close()
        log.close()

    wall = time.perf_counter() - started
    run_info.update(status="finished", steps=ts.step, best_val_loss=ts.best_val_loss,
                    final_val_loss=val_loss, wall_time_s=wall)
    write_json(run_dir / "run.json", run_info)
    return TrainResult(ts.step, ts.best_val_loss, val_loss, wall, run_dir)


def kept_checkpoint(path: Path | None) -> str:
    return f"the last good checkpoint ({path}) is untouched" if path else "no checkpoint had been written yet"


def write_json(path: Path, obj: dict) -> None:
    checkpoint.atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))
