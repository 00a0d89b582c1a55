"""The training loop: truncated BPTT over carried streams, Adam, evaluation, samples
and checkpoints, recording what happened in a run directory (see rundir.py).

A run stopped at any instant can be resumed (`resume`) from its last checkpoint and
ends bitwise as if it had never stopped.
"""

from __future__ import annotations

import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import __version__, checkpoint, runtime
from .config import Config, check_resumable
from .data import Corpus, get_window, load_corpus, num_windows
from .errors import CharlstmError
from .evaluate import evaluate
from .files import existing_file
from .model import Params, backward, forward, reset_streams
from .optim import clip_global_norm, learning_rate
from .rundir import (MetricsLog, check_run_files, checkpoint_path, prepare_run_dir, read_config, read_run_info,
                     remove_stale_temporary_files, truncate_metrics, write_config, write_run_info)
from .runlock import RunLock
from .sample import generate
from .signals import STOP_EXIT_CODES, StopNow, StopSignals
from .state import LogWindow, TrainingState


class TrainingDiverged(CharlstmError):
    """The loss or gradient stopped being a finite number."""


class TrainingInterrupted(CharlstmError):
    """SIGINT, SIGTERM or SIGHUP: the run stopped between steps (or at once, on a second signal)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class TrainResult:
    steps: int
    best_val_loss: float
    final_val_loss: float
    wall_time_s: float
    run_dir: Path


def train_step(ts: TrainingState, grads: Params, streams: np.ndarray, config: Config,
               decay_views: list[np.ndarray]) -> tuple[float, float, float]:
    """One window of truncated BPTT: forward, backward, clip, Adam. Returns
    (loss, gradient norm before clipping, learning rate). Raises TrainingDiverged,
    before touching the weights, if the loss or gradient is not finite."""
    train_cfg = config.train
    windows_per_epoch = num_windows(streams, train_cfg.seq_len)
    window = ts.step % windows_per_epoch
    started = streams_to_reset(ts, train_cfg.state_reset, window == 0)
    reset_streams(ts.carried, ts.params, started)
    inputs, targets = get_window(streams, window, train_cfg.seq_len)
    loss, next_state, cache = forward(ts.params, inputs, targets, ts.carried,
                                      config.model.dropout, ts.rngs["dropout"], buffers=ts.buffers)
    backward(ts.params, cache, grads, buffers=ts.buffers, started=started)
    grad_norm = clip_global_norm(grads.flat, train_cfg.grad_clip)
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise TrainingDiverged(f"training diverged at step {ts.step + 1} "
                               f"(loss {loss}, gradient norm {grad_norm})")
    lr = learning_rate(ts.step, train_cfg.lr, train_cfg.lr_schedule, train_cfg.warmup_steps,
                       ts.schedule_steps, train_cfg.final_lr_fraction)
    ts.optimizer.step(ts.params.flat, grads.flat, lr, decay_views)
    ts.carried = next_state  # fresh arrays: no gradient path back into this window
    ts.step += 1
    return loss, grad_norm, lr


def streams_to_reset(ts: TrainingState, probability: float, epoch_start: bool) -> np.ndarray:
    """(B,) booleans: the streams whose carried state goes back to the initial state
    before this window. Every stream at an epoch's start (the streams start again at
    the beginning of their text); otherwise each with `probability`, so that training
    sees the state that sampling and evaluation start from (drawn every step from
    the checkpointed generator, so a resume draws the same)."""
    batch = ts.carried[0].shape[1]
    started = np.full(batch, epoch_start)
    if probability > 0:
        started |= ts.rngs["state_reset"].random(batch) < probability
    return started


def train(config: Config, corpus: Path, run_dir: Path, *, force: bool = False,
          show_progress: bool = True, echo: Callable[[str], None] = tqdm.write) -> TrainResult:
    """Train from scratch on `corpus`, writing everything to `run_dir`.

    metrics.jsonl gets a record every `log_every` steps and at every evaluation:
    step, epoch, train_loss, lr, grad_norm (before clipping), chars_per_s (training
    steps only), elapsed_s (training time, summed over resumes), and on evaluations
    val_loss (nats/char) and val_bpc.
    """
    data = load_corpus(corpus, config)
    ts = TrainingState.fresh(config, data.vocab.size)  # before the run directory: it may not fit in memory
    with RunLock(run_dir, create=True):  # one process per run directory (runlock.py)
        prepare_run_dir(run_dir, force)
        write_config(run_dir, config)
        run_info = {
            "corpus": str(Path(corpus).resolve()), "corpus_sha256": data.sha256,
            "corpus_chars": data.num_chars, "train_chars": int(len(data.train_ids)),
            "val_chars": int(len(data.val_ids)), "vocab_size": data.vocab.size,
            "num_params": int(ts.params.flat.size), "windows_per_epoch": data.windows_per_epoch,
            "charlstm_version": __version__, "numpy_version": np.__version__,
            "python_version": platform.python_version(), "command": sys.argv, "resumes": [],
        }
        echo(f"corpus {corpus}: {data.num_chars:,} chars, vocabulary {data.vocab.size}; model "
             f"{config.model.num_layers}x{config.model.hidden_size}, {ts.params.flat.size:,} parameters; "
             f"{data.windows_per_epoch} windows per epoch; run directory {run_dir}")
        return run_training(config, data, ts, run_dir, run_info, show_progress, echo)


def resume(run_dir: Path, overrides: Sequence[str] = (), corpus: Path | None = None, *,
           show_progress: bool = True, echo: Callable[[str], None] = tqdm.write) -> TrainResult:
    """`_resume` while holding the run directory's lock (runlock.py): everything it reads
    is read after the lock is held, so no other process changes it meanwhile."""
    if not Path(run_dir).is_dir():
        raise CharlstmError(f"--resume {run_dir}: no such run directory")
    with RunLock(run_dir):
        return _resume(run_dir, overrides, corpus, show_progress=show_progress, echo=echo)


def _resume(run_dir: Path, overrides: Sequence[str] = (), corpus: Path | None = None, *,
            show_progress: bool = True, echo: Callable[[str], None] = tqdm.write) -> TrainResult:
    """Continue the run in `run_dir` from its `last` checkpoint with its own config.

    Only config.RESUMABLE_KEYS may be overridden. The result is bitwise the same as an
    uninterrupted run: the checkpoint holds the weights, Adam's moments and step, the
    carried state, every random generator and the step (which fixes the data cursor
    and the learning rate). A run killed before its first checkpoint starts over.
    """
    run_dir = Path(run_dir)
    # Everything is read and checked, down to the training state, before anything in
    # the run directory changes: a resume that fails leaves the run as it was.
    run_info = read_run_info(run_dir)
    last_path = checkpoint_path(run_dir, "last")
    ckpt = checkpoint.load(last_path) if last_path.exists() else None
    saved_config = read_config(run_dir)
    config = read_config(run_dir, overrides)
    check_resumable(saved_config if ckpt is None else ckpt.config, config, run_dir)
    step = ckpt.progress.get("step", 0) if ckpt else 0
    if config.train.max_steps < step or (config.train.max_steps == step and run_info.get("status") == "finished"):
        raise CharlstmError(
            f"{run_dir} already trained {step} steps (train.max_steps={config.train.max_steps}); to train "
            f"longer: charlstm train --resume {run_dir} --set train.max_steps={max(2 * step, step + 1)}")

    corpus = Path(corpus or run_info["corpus"])
    try:
        existing_file(corpus, "the run's corpus")
    except CharlstmError as exc:
        raise CharlstmError(f"{exc}; pass the same text: charlstm train CORPUS --resume {run_dir}") from None
    data = load_corpus(corpus, config)  # one read: the sha256 is of the very bytes trained on
    recorded = run_info.get("corpus_sha256")  # absent in runs made before resume existed
    if recorded and data.sha256 != recorded:
        raise CharlstmError(f"{corpus} is not the text {run_dir} was trained on (its sha256 differs); "
                            "resume with the original file, or start a new run")
    if ckpt is not None and ckpt.vocab != data.vocab:
        raise CharlstmError(f"the vocabulary of {corpus} differs from the checkpoint's; it cannot continue")
    ts = TrainingState.fresh(config, data.vocab.size) if ckpt is None else TrainingState.from_checkpoint(ckpt, config)

    check_run_files(run_dir)
    remove_stale_temporary_files(run_dir)
    write_config(run_dir, config)
    truncate_metrics(run_dir, ts.step)
    if ckpt is None:
        echo(f"no checkpoint in {run_dir} yet; starting it again from step 0")
    else:
        echo(f"resuming {run_dir} from step {ts.step} ({last_path.name})")
    run_info["corpus"] = str(corpus.resolve())  # it may have moved: the next resume looks here
    earlier = run_info.get("resumes")
    run_info["resumes"] = [*(earlier if isinstance(earlier, list) else []), {"from_step": ts.step, "command": sys.argv}]
    return run_training(config, data, ts, run_dir, run_info, show_progress, echo)


def run_training(config: Config, data: Corpus, ts: TrainingState, run_dir: Path, run_info: dict,
                 show_progress: bool, echo: Callable[[str], None]) -> TrainResult:
    """The loop shared by a fresh run and a resumed one, from `ts.step` to max_steps."""
    train_cfg = config.train
    grads = ts.params.zeros_like()
    decay_views = [ts.params[n] for n in ts.params.names() if ".W_" in n]  # not the biases
    last_path = checkpoint_path(run_dir, "last")
    saved_step = ts.step if last_path.exists() else None
    resume_hint = f"resume with: charlstm train --resume {run_dir}"
    val_loss = math.nan
    clock = time.perf_counter() - ts.elapsed_s  # elapsed_s counts training time across resumes

    def save(name: str) -> Path:
        ts.elapsed_s = time.perf_counter() - clock
        path = checkpoint_path(run_dir, name)
        try:
            checkpoint.save(path, ts.to_checkpoint(config, data.vocab, data.windows_per_epoch))
        except CharlstmError as exc:  # e.g. disk full: say how to go on once it is fixed
            raise CharlstmError(f"{exc}; once that is fixed, {resume_hint}") from None
        return path

    def due(every: int) -> bool:
        return ts.step % every == 0 or ts.step == train_cfg.max_steps

    def finish(status: str, **fields) -> None:
        run_info.update(status=status, steps=ts.step, best_val_loss=ts.best_val_loss,
                        wall_time_s=time.perf_counter() - clock, **fields)
        try:
            write_run_info(run_dir, run_info)
        except CharlstmError:
            pass  # the error being reported matters more than this record

    for outcome in ("error", "final_val_loss"):  # of an earlier attempt at this run
        run_info.pop(outcome, None)
    run_info["pid"] = os.getpid()  # who holds the run's lock (runlock.holder)
    finish("running")
    log = MetricsLog(run_dir)
    chars_per_step = train_cfg.batch_size * train_cfg.seq_len
    smoothed_loss: float | None = None  # for the progress bar and the evaluation line
    bar = tqdm(total=train_cfg.max_steps, initial=ts.step, disable=not show_progress,
               dynamic_ncols=True, mininterval=0.5, unit="step")
    try:
        run_info["runtime"] = runtime.configure(train_cfg.kernels, train_cfg.threads).describe()
        echo(f"computing with {run_info['runtime']}")
        with StopSignals() as stop:
            while ts.step < train_cfg.max_steps:
                step_started = time.perf_counter()
                try:
                    loss, grad_norm, lr = train_step(ts, grads, data.streams, config, decay_views)
                except TrainingDiverged as exc:
                    finish("diverged")
                    raise TrainingDiverged(
                        f"{exc}; {kept_checkpoint(last_path if saved_step is not None else None)}; "
                        f"try a lower train.lr (now {train_cfg.lr:g}) or train.grad_clip") from None
                ts.since_log.add(loss, time.perf_counter() - step_started)
                smoothed_loss = loss if smoothed_loss is None else 0.95 * smoothed_loss + 0.05 * loss
                bar.set_postfix_str(f"loss {smoothed_loss:.3f} lr {lr:.2e} "
                                    f"{ts.since_log.chars_per_s(chars_per_step):,.0f} char/s", refresh=False)
                bar.update(1)

                evaluation = {}
                evaluated = stop.abandonable(evaluate, ts.params, data.val_ids, train_cfg.eval_streams,
                                             train_cfg.seq_len, train_cfg.eval_warmup) \
                    if due(train_cfg.eval_every) else None  # None: a stop signal came first
                if evaluated is not None:
                    val_loss = evaluated.loss
                    improved = val_loss < ts.best_val_loss
                    ts.best_val_loss = min(ts.best_val_loss, val_loss)
                    evaluation = {"val_loss": val_loss, "val_bpc": val_loss / math.log(2)}
                    echo(f"step {ts.step}: val {val_loss:.4f} nats/char ({val_loss / math.log(2):.4f} "
                         f"bits/char){' (best)' if improved else ''}, train {smoothed_loss:.4f}")
                    if improved:
                        save("best")
                if due(train_cfg.log_every) or evaluation:
                    log.write({"step": ts.step, "train_loss": ts.since_log.mean_loss(),
                               "chars_per_s": ts.since_log.chars_per_s(chars_per_step),
                               "elapsed_s": time.perf_counter() - clock,
                               "epoch": ts.step / data.windows_per_epoch, "lr": lr, "grad_norm": grad_norm,
                               **evaluation})
                    ts.since_log = LogWindow()
                if train_cfg.sample_length and due(train_cfg.sample_every):
                    text = "".join(generate(ts.params, data.vocab, train_cfg.sample_length,
                                            temperature=0.8, rng=ts.rngs["sample"]))
                    echo(f"---- sample at step {ts.step} ----\n{text}\n----")
                # Saved last, so the checkpoint holds everything this step did, the
                # sampling generator included.
                if due(train_cfg.checkpoint_every) or stop.received:
                    save("last")
                    saved_step = ts.step
                if stop.received and ts.step < train_cfg.max_steps:  # at the end: complete, not interrupted
                    finish("interrupted")
                    raise TrainingInterrupted(
                        f"stopped by {signal.Signals(stop.received).name} at step {ts.step}; saved "
                        f"{last_path}; {resume_hint}", STOP_EXIT_CODES[stop.received])
    except StopNow as now:
        finish("interrupted")
        raise TrainingInterrupted(
            f"stopped at once by a second {signal.Signals(now.signum).name} during step {ts.step + 1}; "
            f"{kept_checkpoint(last_path if saved_step is not None else None)}; {resume_hint}",
            STOP_EXIT_CODES[now.signum]) from None
    except CharlstmError as exc:
        if not isinstance(exc, (TrainingInterrupted, TrainingDiverged)):
            finish("failed", error=str(exc))
        raise
    finally:
        bar.close()
        log.close()

    finish("finished", final_val_loss=val_loss)
    return TrainResult(ts.step, ts.best_val_loss, val_loss, run_info["wall_time_s"], run_dir)


def kept_checkpoint(path: Path | None) -> str:
    return f"the last good checkpoint ({path}) is untouched" if path else "no checkpoint had been written yet"
