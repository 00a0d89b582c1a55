"""The training loop: truncated BPTT over carried streams, Adam, evaluation, samples
and checkpoints, recording what happened in a run directory (see rundir.py).

A run stopped at any instant can be resumed (`resume`) from its last checkpoint and
ends bitwise as if it had never stopped.
"""

from __future__ import annotations

import contextlib
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
from .budget import plan_budget
from .config import Config, check_resumable
from .corpus_files import load_training_corpus
from .data import Corpus, get_window, num_windows
from .errors import CharlstmError
from .evaluate import evaluate
from .files import existing_file
from .model import Params, backward, forward, reset_streams
from .optim import clip_global_norm, learning_rate
from .parallel import SingleProcess, communicator
from .rundir import (MetricsLog, check_run_files, checkpoint_path, prepare_run_dir, read_config, read_run_info,
                     remove_stale_temporary_files, truncate_metrics, write_config, write_run_info)
from .runlock import RunLock
from .sample import generate
from .signals import STOP_EXIT_CODES, StopNow, StopSignals
from .state import LogWindow, TrainingState


class TrainingDiverged(CharlstmError):
    """The loss or gradient stopped being a finite number."""

    on_every_rank = True  # the reduced loss and gradient are the same on every MPI rank


class TrainingInterrupted(CharlstmError):
    """SIGINT, SIGTERM or SIGHUP: the run stopped between steps (or at once, on a second signal)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code

    on_every_rank = True  # the ranks agree on when to stop (see parallel.sum_gradient)


@dataclass
class TrainResult:
    steps: int
    best_val_loss: float
    final_val_loss: float
    wall_time_s: float
    run_dir: Path
    stop_reason: str = ""  # why it ended before max_steps (early stopping), else empty


def train_step(ts: TrainingState, grads: Params, streams: np.ndarray, config: Config,
               decay_views: list[np.ndarray], comm: SingleProcess = SingleProcess()) -> tuple[float, float, float]:
    """One window of truncated BPTT: forward, backward, clip, Adam. Returns
    (loss, gradient norm before clipping, learning rate). Raises TrainingDiverged, before touching the weights, if the loss or
    gradient is not finite. A weight average, when kept, takes in the new weights.

    Under MPI this rank computes only its own streams (`comm.shard`); the random
    draws (resets, dropout masks) are made for all B streams on every rank, so a
    stream's draws do not depend on the number of ranks; the recurrent weight masks,
    shared by all streams, are the same on every rank."""
    train_cfg = config.train
    windows_per_epoch = num_windows(streams, train_cfg.seq_len)
    window = ts.step % windows_per_epoch
    mine = comm.shard(streams.shape[0])
    started = streams_to_reset(ts, train_cfg.state_reset, window == 0)
    reset_streams(ts.carried, ts.params, started)
    inputs, targets = get_window(streams[mine], window, train_cfg.seq_len)
    state = tuple(full[:, mine] for full in ts.carried)
    loss, next_state, cache = forward(ts.params, inputs, targets, state, config.model.dropout,
                                      ts.rngs["dropout"], buffers=ts.buffers,
                                      shard=(mine.start, streams.shape[0]),
                                      recurrent_weight_dropout=config.model.recurrent_weight_dropout)
    backward(ts.params, cache, grads, buffers=ts.buffers, started=started[mine])
    loss = comm.sum_gradient(grads.flat, loss)
    grad_norm = clip_global_norm(grads.flat, train_cfg.grad_clip)
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise TrainingDiverged(f"training diverged at step {ts.step + 1} "
                               f"(loss {loss}, gradient norm {grad_norm})")
    lr = learning_rate(ts.step - ts.schedule_start, train_cfg.lr, train_cfg.lr_schedule, train_cfg.warmup_steps,
                       ts.schedule_steps - ts.schedule_start, train_cfg.final_lr_fraction)
    ts.optimizer.step(ts.params.flat, grads.flat, lr, decay_views)
    if ts.average is not None:
        ts.average.update(ts.params.flat)
    for full, new in zip(ts.carried, next_state):  # no gradient path back into this window
        full[:, mine] = new
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


def train(config: Config, corpus: Path | Sequence[Path], run_dir: Path, *, force: bool = False,
          show_progress: bool = True, echo: Callable[[str], None] = tqdm.write,
          status_every_s: float = 0.0, comm: SingleProcess | None = None) -> TrainResult:
    """Train from scratch on `corpus` (a file, a folder or several files), writing
    everything to `run_dir` (under MPI, every rank reads the corpus and rank 0 writes).

    metrics.jsonl gets a record every `log_every` steps and at every evaluation:
    step, epoch, train_loss, lr, grad_norm (before clipping), chars_per_s (training
    steps only), elapsed_s (training time, summed over resumes), and on evaluations
    val_loss (nats/char) and val_bpc.
    """
    comm = comm or communicator()
    if not comm.is_root:
        echo = lambda line: None  # noqa: E731
    with contextlib.ExitStack() as held:
        with comm.together():  # a corpus missing on one host stops every rank
            comm.shard(config.train.batch_size)
            data, corpus_info = load_training_corpus(corpus, config, echo)
            ts = TrainingState.fresh(config, data.vocab.size)  # before the run directory: it may not fit in memory
            planned = {}
            # Set here: a thread count it cannot set is refused before the run directory,
            # and a time budget is measured as the run will compute.
            computing = runtime.configure(config.train.kernels, config.train.threads, comm.ranks_on_host)
            if config.train.max_minutes:
                config, ts, planned = plan_budget(config, data, ts, train_step, echo, comm)
        with comm.together():
            if comm.is_root:  # rank 0 alone writes, so it alone holds the lock (runlock.py)
                held.enter_context(RunLock(run_dir, create=True))
                prepare_run_dir(run_dir, force)
                write_config(run_dir, config)
        run_info = {
            **corpus_info, **planned, "runtime": computing.describe(),
            "corpus_chars": data.num_chars, "train_chars": int(len(data.train_ids)),
            "val_chars": int(len(data.val_ids)), "vocab_size": data.vocab.size,
            "num_params": int(ts.params.flat.size), "windows_per_epoch": data.windows_per_epoch,
            "charlstm_version": __version__, "numpy_version": np.__version__,
            "python_version": platform.python_version(), "command": sys.argv, "resumes": [],
        }
        echo(f"corpus {data.path}: {data.num_chars:,} chars, vocabulary {data.vocab.size}; model "
             f"{config.model.num_layers}x{config.model.hidden_size}, {ts.params.flat.size:,} parameters; "
             f"{data.windows_per_epoch} windows per epoch; run directory {run_dir}")
        return run_training(config, data, ts, run_dir, run_info, show_progress, echo, status_every_s, comm)


def resume(run_dir: Path, overrides: Sequence[str] = (), corpus: Path | Sequence[Path] | None = None, *,
           show_progress: bool = True, echo: Callable[[str], None] = tqdm.write, status_every_s: float = 0.0,
           from_checkpoint: str = "last", new_schedule: bool = False,
           comm: SingleProcess | None = None) -> TrainResult:
    """Continue the run in `run_dir` from its `last` checkpoint with its own config.

    from_checkpoint="best" goes back to the best checkpoint instead (the later steps
    are dropped). new_schedule starts the learning-rate schedule again (warmup, then
    decay until train.max_steps) at the step resumed from: fine-tuning, or training
    longer than planned at more than the final rate. Either makes the run differ from
    an uninterrupted one, by request.

    Only config.RESUMABLE_KEYS may be overridden. The result is bitwise the same as an
    uninterrupted run: the checkpoint holds the weights, Adam's moments and step, the
    carried state, every random generator and the step (which fixes the data cursor
    and the learning rate). A run killed before its first checkpoint starts over.
    The checkpoint does not depend on the number of MPI ranks: any number resumes it.
    """
    run_dir = Path(run_dir)
    comm = comm or communicator()
    if not comm.is_root:
        echo = lambda line: None  # noqa: E731
    with contextlib.ExitStack() as held:
        with comm.together():
            if not run_dir.is_dir():
                raise CharlstmError(f"--resume {run_dir}: no such run directory")
            if comm.is_root:  # rank 0 alone writes; everything is read after the lock is held
                held.enter_context(RunLock(run_dir))
            data, corpus_info, ts, run_info, ckpt, last_path, config = _read_resumable(
                run_dir, overrides, corpus, comm, echo, from_checkpoint, new_schedule)
            run_info["runtime"] = runtime.configure(config.train.kernels, config.train.threads,
                                                      comm.ranks_on_host).describe()
        with comm.together():
            if comm.is_root:
                check_run_files(run_dir)
                remove_stale_temporary_files(run_dir)
                write_config(run_dir, config)
                truncate_metrics(run_dir, ts.step)
        if ckpt is None:
            echo(f"no checkpoint in {run_dir} yet; starting it again from step 0")
        else:
            echo(f"resuming {run_dir} from step {ts.step} ({last_path.name})")
        run_info.update(corpus_info)  # it may have moved: the next resume looks here
        earlier = run_info.get("resumes")
        run_info["resumes"] = [*(earlier if isinstance(earlier, list) else []),
                               {"from_step": ts.step, "from": from_checkpoint, "new_schedule": new_schedule,
                                "command": sys.argv}]
        return run_training(config, data, ts, run_dir, run_info, show_progress, echo, status_every_s, comm)


def _read_resumable(run_dir: Path, overrides: Sequence[str], corpus: Path | Sequence[Path] | None,
                    comm: SingleProcess, echo: Callable[[str], None], from_checkpoint: str, new_schedule: bool):
    """Everything a resume needs, read and checked down to the training state before
    anything in the run directory changes: a resume that fails leaves the run as it was."""
    run_info = read_run_info(run_dir)
    last_path = checkpoint_path(run_dir, from_checkpoint)
    if from_checkpoint != "last" and not last_path.exists():
        raise CharlstmError(f"{run_dir} has no {from_checkpoint} checkpoint yet")
    ckpt = checkpoint.load(last_path) if last_path.exists() else None
    saved_config = read_config(run_dir)
    config = read_config(run_dir, overrides)
    check_resumable(saved_config if ckpt is None else ckpt.config, config, run_dir)
    comm.shard(config.train.batch_size)
    step = ckpt.progress.get("step", 0) if ckpt else 0
    if new_schedule and config.train.max_steps <= step:
        raise CharlstmError(f"--new-schedule needs steps to schedule: raise train.max_steps above {step}")
    if config.train.max_steps < step or (config.train.max_steps == step and run_info.get("status") == "finished"):
        raise CharlstmError(
            f"{run_dir} already trained {step} steps (train.max_steps={config.train.max_steps}); to train "
            f"longer: charlstm train --resume {run_dir} --set train.max_steps={max(2 * step, step + 1)} "
            "(add --new-schedule to decay the learning rate again over the new steps)")

    if isinstance(corpus, (list, tuple)):
        corpus = corpus if len(corpus) != 1 else corpus[0]
    if corpus is None or (isinstance(corpus, (list, tuple)) and not corpus):
        recorded_inputs = run_info.get("corpus_inputs")
        corpus = [Path(i) for i in recorded_inputs] if isinstance(recorded_inputs, list) else run_info["corpus"]
    for item in ([corpus] if isinstance(corpus, (str, Path)) else corpus):
        if not Path(item).exists():
            raise CharlstmError(f"the run's corpus {item} does not exist; pass the same text: "
                                f"charlstm train CORPUS --resume {run_dir}")
    if isinstance(corpus, (str, Path)) and not Path(corpus).is_dir():
        corpus = Path(corpus)
        try:
            existing_file(corpus, "the run's corpus")
        except CharlstmError as exc:
            raise CharlstmError(f"{exc}; pass the same text: charlstm train CORPUS --resume {run_dir}") from None
    data, corpus_info = load_training_corpus(corpus, config, echo)
    recorded = run_info.get("corpus_sha256")  # absent in runs made before resume existed
    if recorded and corpus_info["corpus_sha256"] != recorded:
        raise CharlstmError(f"{data.path} is not the text {run_dir} was trained on (its sha256 differs); "
                            "resume with the original file(s), or start a new run")
    if ckpt is not None and ckpt.vocab != data.vocab:
        raise CharlstmError(f"the vocabulary of {data.path} differs from the checkpoint's; it cannot continue")
    ts = TrainingState.fresh(config, data.vocab.size) if ckpt is None else TrainingState.from_checkpoint(ckpt, config)
    if new_schedule:
        ts.schedule_start, ts.schedule_steps = ts.step, config.train.max_steps
    return data, corpus_info, ts, run_info, ckpt, last_path, config


def run_training(config: Config, data: Corpus, ts: TrainingState, run_dir: Path, run_info: dict,
                 show_progress: bool, echo: Callable[[str], None], status_every_s: float = 0.0,
                 comm: SingleProcess = SingleProcess()) -> TrainResult:
    """The loop shared by a fresh run and a resumed one, from `ts.step` to max_steps.
    Under MPI every rank runs it; rank 0 alone writes files and prints."""
    train_cfg = config.train
    mine = comm.shard(train_cfg.batch_size)
    if not comm.is_root:
        show_progress, echo = False, lambda line: None
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
        comm.gather_streams(ts.carried, mine)  # a checkpoint holds every stream, whatever N
        if not comm.is_root:
            return path
        try:
            checkpoint.save(path, ts.to_checkpoint(config, data.vocab, data.windows_per_epoch))
        except CharlstmError as exc:  # e.g. disk full: say how to go on once it is fixed
            raise CharlstmError(f"{exc}; once that is fixed, {resume_hint}") from None
        return path

    def due(every: int) -> bool:
        return ts.step % every == 0 or ts.step == train_cfg.max_steps

    def finish(status: str, **fields) -> None:
        if not comm.is_root:
            return
        run_info.update(status=status, steps=ts.step, best_val_loss=ts.best_val_loss,
                        wall_time_s=time.perf_counter() - clock, **fields)
        try:
            write_run_info(run_dir, run_info)
        except CharlstmError:
            pass  # the error being reported matters more than this record

    stop_reason = ""
    last_status = time.perf_counter()
    for outcome in ("error", "final_val_loss", "stop_reason"):  # of an earlier attempt at this run
        run_info.pop(outcome, None)
    run_info["pid"] = os.getpid()  # who holds the run's lock (runlock.holder)
    finish("running")
    log = MetricsLog(run_dir) if comm.is_root else None
    chars_per_step = train_cfg.batch_size * train_cfg.seq_len
    smoothed_loss: float | None = None  # for the progress bar and the evaluation line
    bar = tqdm(total=train_cfg.max_steps, initial=ts.step, disable=not show_progress,
               dynamic_ncols=True, mininterval=0.5, unit="step")
    try:
        echo(f"computing with {run_info['runtime']}")  # set by train or resume
        with StopSignals() as stop:
            while ts.step < train_cfg.max_steps:
                step_started = time.perf_counter()
                try:
                    loss, grad_norm, lr = train_step(ts, grads, data.streams, config, decay_views, comm)
                except TrainingDiverged as exc:
                    finish("diverged")
                    raise TrainingDiverged(
                        f"{exc}; {kept_checkpoint(last_path if saved_step is not None else None)}; "
                        f"try a lower train.lr (now {train_cfg.lr:g}) or train.grad_clip") from None
                ts.since_log.add(loss, time.perf_counter() - step_started)
                smoothed_loss = loss if smoothed_loss is None else 0.95 * smoothed_loss + 0.05 * loss
                speed = ts.since_log.chars_per_s(chars_per_step)  # before a log record starts a new window
                bar.set_postfix_str(f"loss {smoothed_loss:.3f} lr {lr:.2e} {speed:,.0f} char/s", refresh=False)
                bar.update(1)

                evaluation = {}
                evaluated = None
                if due(train_cfg.eval_every):
                    comm.check_same_weights(ts.params.flat, ts.step)
                    evaluation_args = (ts.model_params, data.val_ids, train_cfg.eval_streams, train_cfg.seq_len,
                                       train_cfg.eval_warmup, comm)
                    # Alone, a stop signal abandons an evaluation (it changes nothing). Under
                    # MPI the ranks finish it together: one that left would leave the
                    # others waiting in a collective.
                    evaluated = stop.abandonable(evaluate, *evaluation_args) if comm.size == 1 \
                        else evaluate(*evaluation_args)
                if evaluated is not None:  # None: a stop signal came first
                    val_loss = evaluated.loss
                    improved = val_loss < ts.best_val_loss
                    # early stopping counts only improvements larger than min_delta
                    if val_loss < ts.best_val_loss - train_cfg.min_delta:
                        ts.evals_without_improvement = 0
                    else:
                        ts.evals_without_improvement += 1
                    ts.best_val_loss = min(ts.best_val_loss, val_loss)
                    evaluation = {"val_loss": val_loss, "val_bpc": val_loss / math.log(2)}
                    if train_cfg.patience and ts.evals_without_improvement >= train_cfg.patience:
                        stop_reason = (f"early stopping: {train_cfg.patience} evaluations without an improvement "
                                       f"of more than {train_cfg.min_delta:g} nats/char")
                        evaluation["stop_reason"] = stop_reason
                    echo(f"step {ts.step}: val {val_loss:.4f} nats/char ({val_loss / math.log(2):.4f} "
                         f"bits/char){' (best)' if improved else ''}, train {smoothed_loss:.4f}")
                    if improved:
                        save("best")
                if (due(train_cfg.log_every) or evaluation) and log is not None:
                    log.write({"step": ts.step, "train_loss": ts.since_log.mean_loss(),
                               "chars_per_s": ts.since_log.chars_per_s(chars_per_step),
                               "elapsed_s": time.perf_counter() - clock,
                               "epoch": ts.step / data.windows_per_epoch, "lr": lr, "grad_norm": grad_norm,
                               **evaluation})
                    ts.since_log = LogWindow()
                if train_cfg.sample_length and due(train_cfg.sample_every) and comm.is_root:
                    text = "".join(generate(ts.model_params, data.vocab, train_cfg.sample_length,
                                            temperature=0.8, rng=ts.rngs["sample"]))
                    echo(f"---- sample at step {ts.step} ----\n{text}\n----")
                # The ranks stop after the same step: mpiexec forwards a signal to
                # each, and they need not get it during the same step.
                stopping = comm.any(stop.received is not None)
                # Saved last, so the checkpoint holds everything this step did, the
                # sampling generator included.
                if due(train_cfg.checkpoint_every) or stopping or stop_reason:
                    save("last")
                    saved_step = ts.step
                if stop_reason:  # the same on every rank: the validation loss is reduced
                    echo(f"step {ts.step}: {stop_reason}; the best checkpoint is {checkpoint_path(run_dir, 'best')}")
                    break
                if status_every_s and time.perf_counter() - last_status >= status_every_s:
                    # piped output has no progress bar: a plain line now and then instead
                    last_status = time.perf_counter()
                    echo(f"step {ts.step}/{train_cfg.max_steps}: train loss {smoothed_loss:.4f}, lr {lr:.2e}, "
                         f"{speed:,.0f} char/s, "
                         f"{last_status - clock:.0f} s elapsed")
                if stopping and ts.step < train_cfg.max_steps:  # at the end: complete, not interrupted
                    finish("interrupted")
                    # Another rank may have been signalled first (mpiexec forwards the signal).
                    signum = stop.received or signal.SIGTERM
                    raise TrainingInterrupted(
                        f"stopped by {signal.Signals(signum).name} at step {ts.step}; saved "
                        f"{last_path}; {resume_hint}", STOP_EXIT_CODES[signum])
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
        if log is not None:
            log.close()

    finish("finished", final_val_loss=val_loss, **({"stop_reason": stop_reason} if stop_reason else {}))
    wall_time_s = run_info.get("wall_time_s", time.perf_counter() - clock)  # recorded by rank 0 only
    return TrainResult(ts.step, ts.best_val_loss, val_loss, wall_time_s, run_dir, stop_reason)


def kept_checkpoint(path: Path | None) -> str:
    return f"the last good checkpoint ({path}) is untouched" if path else "no checkpoint had been written yet"
