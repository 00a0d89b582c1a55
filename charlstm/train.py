"""The training loop: truncated BPTT over carried streams, Adam, evaluation,
samples, checkpoints and a run directory that records what happened.

Run directory:
    config.yaml        the resolved config
    run.json           corpus (path, sha256), sizes, versions, every resume, and the
                       status: running, finished, interrupted, diverged or failed
    metrics.jsonl      one JSON object per log event (see `train`)
    last.safetensors   written every `checkpoint_every` steps, at the end and on a stop signal
    best.safetensors   the lowest validation loss so far

Every file is replaced atomically, so a run killed at any instant can be resumed
(`resume`) from its last checkpoint and ends bitwise as if it had never stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import __version__, checkpoint
from .config import Config, config_to_dict, config_yaml, load_run_config
from .data import (Vocab, eval_windows, get_window, make_streams, min_corpus_chars, num_windows,
                   read_corpus, split_train_val)
from .errors import CharlstmError
from .evaluate import evaluate
from .model import ModelBuffers, Params, backward, forward, init_params, initial_state, reset_streams
from .optim import Adam, clip_global_norm, learning_rate
from .sample import generate

RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl",
             "last" + checkpoint.EXTENSION, "best" + checkpoint.EXTENSION)
RNG_NAMES = ("init", "dropout", "sample", "state_reset")


class TrainingDiverged(CharlstmError):
    """The loss or gradient stopped being a finite number."""


class TrainingInterrupted(CharlstmError):
    """SIGINT or SIGTERM: the run stopped between steps (or at once, on a second signal)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def make_rngs(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per purpose, all derived from the one config seed."""
    children = np.random.SeedSequence(seed).spawn(len(RNG_NAMES))
    return {name: np.random.default_rng(child) for name, child in zip(RNG_NAMES, children)}


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
    elapsed_s: float = 0.0  # training time so far, across resumes
    # The learning-rate schedule's length: max_steps when training began. A resume that
    # raises max_steps trains on at the schedule's final rate instead of stretching it,
    # so the steps already planned stay exactly as they were.
    schedule_steps: int = 0
    # The large per-window arrays of train_step, reused from one step to the next (a
    # step no longer needs the previous step's caches); not checkpointed. See lstm.LayerBuffers.
    buffers: ModelBuffers = field(default_factory=ModelBuffers, repr=False)

    @classmethod
    def fresh(cls, config: Config, vocab_size: int) -> TrainingState:
        model_cfg, train_cfg = config.model, config.train
        dtype = np.dtype(train_cfg.dtype)
        rngs = make_rngs(train_cfg.seed)
        params = init_params(vocab_size, model_cfg.hidden_size, model_cfg.num_layers,
                             model_cfg.forget_bias, rngs["init"], dtype, model_cfg.initial_state == "learned")
        optimizer = Adam(params.flat.size, train_cfg.betas, train_cfg.eps, train_cfg.weight_decay, dtype)
        carried = initial_state(params, train_cfg.batch_size)
        return cls(params, optimizer, carried, rngs, schedule_steps=train_cfg.max_steps)

    @classmethod
    def from_checkpoint(cls, ckpt: checkpoint.Checkpoint, config: Config) -> TrainingState:
        """The state a checkpoint was written from, ready to take the next step."""
        ts = cls.fresh(config, ckpt.vocab.size)
        try:
            ts.params.flat[...] = ckpt.params.flat
            ts.optimizer.step_count = int(ckpt.optimizer_step)
            ts.optimizer.exp_avg[...], ts.optimizer.exp_avg_sq[...] = ckpt.optimizer_moments
            for carried, saved in zip(ts.carried, ckpt.carried_state):
                carried[...] = saved
            for purpose, rng in ts.rngs.items():
                rng.bit_generator.state = ckpt.rng_states[purpose]
            ts.step = int(ckpt.progress["step"])
            best = ckpt.progress.get("best_val_loss")
            ts.best_val_loss = math.inf if best is None else float(best)
            ts.elapsed_s = float(ckpt.progress.get("elapsed_s", 0.0))
            if ts.step > 0:  # at step 0 (e.g. imported weights) the schedule is not yet set
                ts.schedule_steps = int(ckpt.progress.get("schedule_steps", ckpt.config.train.max_steps))
        except (KeyError, TypeError, ValueError):
            raise CharlstmError("the checkpoint lacks the optimizer, state or generator data a resume "
                                "needs; start a new run (it can still be sampled)") from None
        return ts

    def to_checkpoint(self, config: Config, vocab: Vocab, windows_per_epoch: int) -> checkpoint.Checkpoint:
        return checkpoint.Checkpoint(
            config, vocab, self.params,
            progress={"step": self.step, "epoch": self.step // windows_per_epoch,
                      "window": self.step % windows_per_epoch,
                      "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
                      "elapsed_s": self.elapsed_s, "schedule_steps": self.schedule_steps},
            optimizer_step=self.optimizer.step_count,
            optimizer_moments=(self.optimizer.exp_avg, self.optimizer.exp_avg_sq),
            carried_state=self.carried,
            rng_states={purpose: rng.bit_generator.state for purpose, rng in self.rngs.items()})


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


@dataclass
class Corpus:
    """The corpus as the loop sees it: vocabulary, split ids and training streams."""

    path: Path
    vocab: Vocab
    num_chars: int
    train_ids: np.ndarray
    val_ids: np.ndarray
    streams: np.ndarray  # (B, chars per stream)
    windows_per_epoch: int


def load_corpus(path: Path, config: Config) -> Corpus:
    vocab, ids = read_corpus(path, config.data.encoding)
    check_corpus_size(path, len(ids), config)
    train_ids, val_ids = split_train_val(ids, config.data.val_fraction)
    streams = make_streams(train_ids, config.train.batch_size)
    return Corpus(path, vocab, len(ids), train_ids, val_ids, streams,
                  num_windows(streams, config.train.seq_len))


def file_sha256(path: Path) -> str:
    """Fingerprint of the corpus, so a resume can tell it is training on the same text."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


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
    prepare_run_dir(run_dir, force)
    write_text(run_dir / "config.yaml", config_yaml(config))
    run_info = {
        "corpus": str(Path(corpus).resolve()), "corpus_sha256": file_sha256(corpus),
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


# Keys a resume may change: they decide how long to train and what to report, not
# what the model, the data or any step already planned computes (the learning-rate
# schedule keeps the length it started with; see TrainingState.schedule_steps).
RESUMABLE_KEYS = ("train.max_steps", "train.eval_every", "train.checkpoint_every",
                  "train.sample_every", "train.sample_length", "train.log_every",
                  "train.eval_streams", "train.eval_warmup")


def resume(run_dir: Path, overrides: Sequence[str] = (), corpus: Path | None = None, *,
           show_progress: bool = True, echo: Callable[[str], None] = tqdm.write) -> TrainResult:
    """Continue the run in `run_dir` from its `last` checkpoint with its own config.

    Only RESUMABLE_KEYS may be overridden. The result is bitwise the same as an
    uninterrupted run: the checkpoint holds the weights, Adam's moments and step, the
    carried state, every random generator and the step (which fixes the data cursor
    and the learning rate). A run killed before its first checkpoint starts over.
    """
    run_dir = Path(run_dir)
    run_info = read_run_info(run_dir)
    last_path = run_dir / ("last" + checkpoint.EXTENSION)
    ckpt = checkpoint.load(last_path) if last_path.exists() else None
    saved_config = load_run_config(run_dir / "config.yaml")
    config = load_run_config(run_dir / "config.yaml", list(overrides))
    check_resumable(saved_config if ckpt is None else ckpt.config, config, run_dir)
    step = ckpt.progress.get("step", 0) if ckpt else 0
    if config.train.max_steps < step or (config.train.max_steps == step and run_info.get("status") == "finished"):
        raise CharlstmError(
            f"{run_dir} already trained {step} steps (train.max_steps={config.train.max_steps}); to train "
            f"longer: charlstm train --resume {run_dir} --set train.max_steps={max(2 * step, step + 1)}")

    corpus = Path(corpus or run_info["corpus"])
    if not corpus.exists():
        raise CharlstmError(f"the run's corpus {corpus} no longer exists; pass the same text: "
                            f"charlstm train CORPUS --resume {run_dir}")
    recorded = run_info.get("corpus_sha256")  # absent in runs made before resume existed
    if recorded and file_sha256(corpus) != recorded:
        raise CharlstmError(f"{corpus} is not the text {run_dir} was trained on (its sha256 differs); "
                            "resume with the original file, or start a new run")
    data = load_corpus(corpus, config)
    if ckpt is not None and ckpt.vocab != data.vocab:
        raise CharlstmError(f"the vocabulary of {corpus} differs from the checkpoint's; it cannot continue")

    remove_stale_temporary_files(run_dir)
    write_text(run_dir / "config.yaml", config_yaml(config))
    if ckpt is None:
        ts = TrainingState.fresh(config, data.vocab.size)
        echo(f"no checkpoint in {run_dir} yet; starting it again from step 0")
    else:
        ts = TrainingState.from_checkpoint(ckpt, config)
        echo(f"resuming {run_dir} from step {ts.step} ({last_path.name})")
    truncate_metrics(run_dir / "metrics.jsonl", ts.step)
    earlier = run_info.get("resumes")
    run_info["resumes"] = [*(earlier if isinstance(earlier, list) else []), {"from_step": ts.step, "command": sys.argv}]
    return run_training(config, data, ts, run_dir, run_info, show_progress, echo)


def read_run_info(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    if not run_dir.is_dir():
        raise CharlstmError(f"--resume {run_dir}: no such run directory")
    if not path.is_file() or not (run_dir / "config.yaml").is_file():
        raise CharlstmError(f"--resume {run_dir}: not a charlstm run directory (no run.json or config.yaml)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or not isinstance(info.get("corpus"), str):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise CharlstmError(f"{path} is damaged; the run cannot be resumed from it") from None
    return info


def check_resumable(before: Config, after: Config, run_dir: Path) -> None:
    """Refuse a resume whose config would change the model, the data or the steps."""
    old, new = flatten(config_to_dict(before)), flatten(config_to_dict(after))
    changed = [key for key in old if old[key] != new[key] and key not in RESUMABLE_KEYS]
    if changed:
        raise CharlstmError(
            f"--resume {run_dir} cannot change {', '.join(changed)} (it would change the model, "
            f"the data or the training); only {', '.join(RESUMABLE_KEYS)} may change")


def flatten(nested: dict) -> dict:
    return {f"{section}.{key}": value for section, values in nested.items() for key, value in values.items()}


def remove_stale_temporary_files(run_dir: Path) -> None:
    """Half-written checkpoints left by a killed process (see checkpoint.atomic_write)."""
    for path in run_dir.glob(".*.tmp-*"):
        path.unlink(missing_ok=True)


METRIC_FIELDS = ("epoch", "train_loss", "lr", "grad_norm", "chars_per_s", "elapsed_s", "val_loss", "val_bpc")


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl in order. A line that is not a well-formed record
    (a line torn by a kill, a hand edit, bytes that are not UTF-8) is skipped."""
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
            well_formed = (isinstance(record, dict) and type(record.get("step")) is int
                           and all(isinstance(record.get(k, 0.0), (int, float)) for k in METRIC_FIELDS))
        except ValueError:
            well_formed = False
        if well_formed:
            records.append(record)
    return records


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to `step`: later ones belong to steps the resumed run will
    compute again."""
    if path.exists():
        kept = [json.dumps(r) + "\n" for r in read_metrics(path) if r["step"] <= step]
        write_text(path, "".join(kept))


STOP_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report


class StopSignals:
    """SIGINT and SIGTERM while training: the first asks the loop to stop after the
    current step and save; a second stops at once, leaving the checkpoints as they are.

    SIGXFSZ is ignored meanwhile so that a file-size limit makes a write fail with an
    error we report, instead of killing the process."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise StopNow(signum)
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
            if hasattr(signal, "SIGXFSZ"):
                self._previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class StopNow(KeyboardInterrupt):
    """A second stop signal: unwind at once (a checkpoint being written is abandoned)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def run_training(config: Config, data: Corpus, ts: TrainingState, run_dir: Path, run_info: dict,
                 show_progress: bool, echo: Callable[[str], None]) -> TrainResult:
    """The loop shared by a fresh run and a resumed one, from `ts.step` to max_steps."""
    train_cfg = config.train
    grads = ts.params.zeros_like()
    decay_views = [ts.params[n] for n in ts.params.names() if ".W_" in n]  # not the biases
    last_path = run_dir / ("last" + checkpoint.EXTENSION)
    saved_step = ts.step if last_path.exists() else None
    resume_hint = f"resume with: charlstm train --resume {run_dir}"
    val_loss = math.nan
    clock = time.perf_counter() - ts.elapsed_s  # elapsed_s counts training time across resumes

    def save(name: str) -> Path:
        ts.elapsed_s = time.perf_counter() - clock
        path = run_dir / (name + checkpoint.EXTENSION)
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
            write_json(run_dir / "run.json", run_info)
        except CharlstmError:
            pass  # the error being reported matters more than this record

    for outcome in ("error", "final_val_loss"):  # of an earlier attempt at this run
        run_info.pop(outcome, None)
    finish("running")
    log = MetricsLog(run_dir / "metrics.jsonl", train_cfg.batch_size * train_cfg.seq_len, clock)
    bar = tqdm(total=train_cfg.max_steps, initial=ts.step, disable=not show_progress,
               dynamic_ncols=True, mininterval=0.5, unit="step")
    try:
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
                log.add_step(loss, time.perf_counter() - step_started)
                bar.set_postfix_str(f"loss {log.smoothed_loss:.3f} lr {lr:.2e} {log.chars_per_s:,.0f} char/s",
                                    refresh=False)
                bar.update(1)

                evaluation = {}
                if due(train_cfg.eval_every):
                    val_loss = evaluate(ts.params, data.val_ids, train_cfg.eval_streams, train_cfg.seq_len,
                                        train_cfg.eval_warmup).loss
                    improved = val_loss < ts.best_val_loss
                    ts.best_val_loss = min(ts.best_val_loss, val_loss)
                    evaluation = {"val_loss": val_loss, "val_bpc": val_loss / math.log(2)}
                    echo(f"step {ts.step}: val {val_loss:.4f} nats/char ({val_loss / math.log(2):.4f} "
                         f"bits/char){' (best)' if improved else ''}, train {log.smoothed_loss:.4f}")
                    if improved:
                        save("best")
                if due(train_cfg.log_every) or evaluation:
                    log.write(step=ts.step, epoch=ts.step / data.windows_per_epoch, lr=lr,
                              grad_norm=grad_norm, **evaluation)
                if train_cfg.sample_length and due(train_cfg.sample_every):
                    text = "".join(generate(ts.params, data.vocab, train_cfg.sample_length,
                                            temperature=0.8, rng=ts.rngs["sample"]))
                    echo(f"---- sample at step {ts.step} ----\n{text}\n----")
                # Saved last, so the checkpoint holds everything this step did, the
                # sampling generator included.
                if due(train_cfg.checkpoint_every) or stop.received:
                    save("last")
                    saved_step = ts.step
                if stop.received:
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


def write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    checkpoint.atomic_write(path, text.encode("utf-8"))
