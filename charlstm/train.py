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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from . import __version__, checkpoint
from .config import Config, save_config
from .data import (eval_windows, get_window, make_streams, min_corpus_chars, num_windows,
                   read_corpus, split_train_val)
from .errors import CharlstmError
from .model import Params, backward, forward, init_params, zero_state
from .optim import Adam, clip_global_norm, learning_rate
from .sample import generate

RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl",
             "last" + checkpoint.EXTENSION, "best" + checkpoint.EXTENSION)
RNG_NAMES = ("init", "dropout", "sample")


class TrainingDiverged(CharlstmError):
    """The loss or gradient stopped being a finite number."""


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


def train(config: Config, corpus: Path, run_dir: Path, *, force: bool = False,
          show_progress: bool = True, echo: Callable[[str], None] = tqdm.write) -> TrainResult:
    """Train from scratch on `corpus`, writing everything to `run_dir`.

    metrics.jsonl gets one object every `log_every` steps and at every evaluation:
    step, epoch, train_loss (mean over the steps since the last record), lr,
    grad_norm (before clipping), chars_per_s (training steps only), elapsed_s, and on
    evaluations val_loss (nats/char) and val_bpc (bits/char).
    """
    started = time.perf_counter()
    model_cfg, train_cfg = config.model, config.train
    dtype = np.dtype(train_cfg.dtype)
    vocab, ids = read_corpus(corpus, config.data.encoding)
    check_corpus_size(corpus, len(ids), config)
    train_ids, val_ids = split_train_val(ids, config.data.val_fraction)
    streams = make_streams(train_ids, train_cfg.batch_size)
    windows_per_epoch = num_windows(streams, train_cfg.seq_len)

    prepare_run_dir(run_dir, force)
    save_config(config, run_dir / "config.yaml")
    rngs = make_rngs(train_cfg.seed)
    params = init_params(vocab.size, model_cfg.hidden_size, model_cfg.num_layers,
                         model_cfg.forget_bias, rngs["init"], dtype)
    grads = params.zeros_like()
    decay_views = [params[n] for n in params.names() if ".W_" in n]
    optimizer = Adam(params.flat.size, train_cfg.betas, train_cfg.eps, train_cfg.weight_decay, dtype)
    state = zero_state(model_cfg.num_layers, train_cfg.batch_size, model_cfg.hidden_size, dtype)
    run_info = {
        "corpus": str(corpus), "corpus_chars": int(len(ids)), "train_chars": int(len(train_ids)),
        "val_chars": int(len(val_ids)), "vocab_size": vocab.size, "num_params": int(params.flat.size),
        "windows_per_epoch": windows_per_epoch, "charlstm_version": __version__,
        "numpy_version": np.__version__, "python_version": platform.python_version(),
        "command": sys.argv, "status": "running",
    }
    write_json(run_dir / "run.json", run_info)
    echo(f"corpus {corpus}: {len(ids):,} chars, vocabulary {vocab.size}; "
         f"model {model_cfg.num_layers}x{model_cfg.hidden_size}, {params.flat.size:,} parameters; "
         f"{windows_per_epoch} windows per epoch; run directory {run_dir}")

    def save(name: str, step: int, best: float) -> None:
        checkpoint.save(run_dir / (name + checkpoint.EXTENSION), checkpoint.Checkpoint(
            config, vocab, params,
            progress={"step": step, "epoch": step // windows_per_epoch,
                      "window": step % windows_per_epoch,
                      "best_val_loss": None if math.isinf(best) else best},
            optimizer_step=optimizer.step_count,
            optimizer_moments=(optimizer.exp_avg, optimizer.exp_avg_sq),
            carried_state=state,
            rng_states={name: rng.bit_generator.state for name, rng in rngs.items()}))

    best_val, val_loss, last_saved = math.inf, math.nan, None
    loss_sum = interval_steps = interval_time = 0.0
    smoothed = None
    metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
    bar = tqdm(total=train_cfg.max_steps, disable=not show_progress, dynamic_ncols=True,
               mininterval=0.5, unit="step")
    try:
        for step in range(train_cfg.max_steps):
            t0 = time.perf_counter()
            window = step % windows_per_epoch
            if window == 0:  # a new epoch starts the streams again from zero state
                state = zero_state(model_cfg.num_layers, train_cfg.batch_size, model_cfg.hidden_size, dtype)
            inputs, targets = get_window(streams, window, train_cfg.seq_len)
            loss, next_state, cache = forward(params, inputs, targets, state,
                                              model_cfg.dropout, rngs["dropout"])
            backward(params, cache, grads)
            grad_norm = clip_global_norm(grads.flat, train_cfg.grad_clip)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                kept = f"the last good checkpoint ({last_saved}) is untouched" if last_saved else \
                    "no checkpoint had been written yet"
                raise TrainingDiverged(
                    f"training diverged at step {step + 1} (loss {loss}, gradient norm {grad_norm}); "
                    f"{kept}; try a lower train.lr (now {train_cfg.lr:g}) or train.grad_clip")
            lr = learning_rate(step, train_cfg.lr, train_cfg.lr_schedule, train_cfg.warmup_steps,
                               train_cfg.max_steps, train_cfg.final_lr_fraction)
            optimizer.step(params.flat, grads.flat, lr, decay_views)
            state = next_state
            done = step + 1
            interval_time += time.perf_counter() - t0
            loss_sum += loss
            interval_steps += 1
            smoothed = loss if smoothed is None else 0.95 * smoothed + 0.05 * loss
            chars_per_s = interval_steps * train_cfg.batch_size * train_cfg.seq_len / max(interval_time, 1e-9)
            bar.set_postfix_str(f"loss {smoothed:.3f} lr {lr:.2e} {chars_per_s:,.0f} char/s", refresh=False)
            bar.update(1)

            is_last = done == train_cfg.max_steps
            record = {}
            if done % train_cfg.eval_every == 0 or is_last:
                val_loss = evaluate(params, val_ids, train_cfg.batch_size, train_cfg.seq_len)
                improved = val_loss < best_val
                best_val = min(best_val, val_loss)
                record.update(val_loss=val_loss, val_bpc=val_loss / math.log(2))
                echo(f"step {done}: val {val_loss:.4f} nats/char ({val_loss / math.log(2):.4f} bits/char)"
                     f"{' (best)' if improved else ''}, train {smoothed:.4f}")
                if improved:
                    save("best", done, best_val)
            if done % train_cfg.log_every == 0 or record or is_last:
                record = {"step": done, "epoch": done / windows_per_epoch,
                          "train_loss": loss_sum / interval_steps, "lr": lr, "grad_norm": grad_norm,
                          "chars_per_s": chars_per_s,
                          "elapsed_s": time.perf_counter() - started, **record}
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                loss_sum = interval_steps = interval_time = 0.0
            if done % train_cfg.checkpoint_every == 0 or is_last:
                save("last", done, best_val)
                last_saved = run_dir / ("last" + checkpoint.EXTENSION)
            if train_cfg.sample_length and (done % train_cfg.sample_every == 0 or is_last):
                text = "".join(generate(params, vocab, train_cfg.sample_length,
                                        temperature=0.8, rng=rngs["sample"]))
                echo(f"---- sample at step {done} ----\n{text}\n----")
    finally:
        bar.close()
        metrics.close()

    wall = time.perf_counter() - started
    run_info.update(status="finished", steps=train_cfg.max_steps, best_val_loss=best_val,
                    final_val_loss=val_loss, wall_time_s=wall)
    write_json(run_dir / "run.json", run_info)
    return TrainResult(train_cfg.max_steps, best_val, val_loss, wall, run_dir)


def write_json(path: Path, obj: dict) -> None:
    checkpoint.atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))
