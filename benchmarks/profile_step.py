"""Per-phase breakdown of charlstm's training step (train.train_step, what the loop
runs), from cProfile, and of one evaluation window.

    python benchmarks/profile_step.py [--layers 2 --hidden 512 --batch 64 --seq-len 100]
                                      [--dropout 0.2] [--kernels auto] [--threads 0] [--steps 5]

Phases, from the cumulative time of the functions that implement them:

    input projection          lstm.prepare_layer + lstm.input_projection
    forward loop              lstm.layer_forward less its input projection
    head and loss             model.head_loss
    backward loop             lstm.recurrence_backward
    weight-gradient products  lstm.weight_gradients
    head backward             model.head_backward
    dropout                   model.dropout_forward + model.dropout_backward
    clipping and Adam         optim.clip_global_norm + optim.Adam.step
    other                     the rest of train_step (state, windows, glue; the profiler)
    evaluation                evaluate.evaluate over one window of T*B characters,
                              timed without the profiler (forward only, every
                              eval_every steps in a real run)

cProfile adds a little to every Python call, so the per-step total is a few percent
above the unprofiled loop; the shares are what to compare.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np

from charlstm import runtime
from charlstm.config import load_config
from charlstm.evaluate import evaluate
from charlstm.train import TrainingState, train_step

VOCAB_SIZE = 65


def cumulative_seconds(stats: pstats.Stats, module: str, function: str) -> float:
    return sum(row[3] for (path, _, name), row in stats.stats.items()
               if name == function and path.replace("\\", "/").endswith(f"charlstm/{module}.py"))


def phase_seconds(stats: pstats.Stats) -> dict[str, float]:
    def cum(module, function):
        return cumulative_seconds(stats, module, function)

    phases = {
        "input projection": cum("lstm", "prepare_layer") + cum("lstm", "input_projection"),
        "forward loop": cum("lstm", "layer_forward") - cum("lstm", "input_projection"),
        "head and loss": cum("model", "head_loss"),
        "backward loop": cum("lstm", "recurrence_backward"),
        "weight-gradient products": cum("lstm", "weight_gradients"),
        "head backward": cum("model", "head_backward"),
        "dropout": cum("model", "dropout_forward") + cum("model", "dropout_backward"),
        "clipping and Adam": cum("optim", "clip_global_norm") + cum("optim", "step"),
    }
    phases["other"] = cum("train", "train_step") - sum(phases.values())
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description="Per-phase profile of a charlstm training step.")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--kernels", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="0: as train.threads 0 chooses")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the main thread's CPU time, not the wall clock (with --threads 1, "
                             "a profile that other processes on the machine barely disturb)")
    args = parser.parse_args()
    chosen = runtime.configure(args.kernels, args.threads)
    config = load_config(None, [f"model.num_layers={args.layers}", f"model.hidden_size={args.hidden}",
                                f"model.dropout={args.dropout}", f"train.batch_size={args.batch}",
                                f"train.seq_len={args.seq_len}"])
    rng = np.random.default_rng(0)
    streams = rng.integers(0, VOCAB_SIZE, (args.batch, args.seq_len * (args.steps + 3) + 1)).astype(np.uint8)
    ts = TrainingState.fresh(config, VOCAB_SIZE)
    grads = ts.params.zeros_like()
    decay_views = [ts.params[n] for n in ts.params.names() if ".W_" in n]
    for _ in range(2):
        train_step(ts, grads, streams, config, decay_views)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    profiler = cProfile.Profile(clock)
    started = clock()
    profiler.enable()
    for _ in range(args.steps):
        train_step(ts, grads, streams, config, decay_views)
    profiler.disable()
    total = (clock() - started) / args.steps
    phases = {name: seconds / args.steps for name, seconds in phase_seconds(pstats.Stats(profiler)).items()}
    val_ids = rng.integers(0, VOCAB_SIZE, args.batch * args.seq_len + 1)
    evaluate(ts.params, val_ids, args.batch, args.seq_len, 0)
    started = clock()
    evaluate(ts.params, val_ids, args.batch, args.seq_len, 0)
    evaluation = clock() - started

    chars = args.batch * args.seq_len
    label = f"L={args.layers} H={args.hidden} B={args.batch} T={args.seq_len} dropout {args.dropout:g}"
    print(f"{label}, {chosen.describe()}: {total * 1e3:.1f} ms/step, {chars / total:,.0f} chars/s "
          f"(under cProfile, mean of {args.steps} steps{', main-thread CPU time' if args.cpu_time else ''})")
    print("| phase                     |      ms | share |")
    print("|---------------------------|--------:|------:|")
    for name, seconds in phases.items():
        print(f"| {name:<25} | {seconds * 1e3:7.1f} | {100 * seconds / total:4.1f}% |")
    print(f"| evaluation, one window    | {evaluation * 1e3:7.1f} |       |")


if __name__ == "__main__":
    main()
