"""Per-phase breakdown of one charlstm training step, from cProfile.

    python benchmarks/profile_step.py [--layers 2 --hidden 512 --batch 64 --seq-len 100] [--steps 5]

Phases, taken from the cumulative time of the functions that implement them:
input projections (lstm.scaled_weights + lstm.input_projection), recurrent loop
forward (lstm.recurrence_forward), head and loss (model.forward minus the layers),
backward loop (lstm.recurrence_backward), weight-gradient products
(lstm.weight_gradients), head backward (model.backward minus the layers), clipping
and Adam (optim.clip_global_norm, optim.Adam.step). Whatever is left is the step's
own glue.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from throughput import Config, charlstm_step_fn


def cumulative_seconds(stats: pstats.Stats, module: str, function: str) -> float:
    return sum(row[3] for (path, _, name), row in stats.stats.items()
               if name == function and path.replace("\\", "/").endswith(f"charlstm/{module}.py"))


def phase_seconds(stats: pstats.Stats) -> dict[str, float]:
    def cum(module, function):
        return cumulative_seconds(stats, module, function)

    return {
        "input projections": cum("lstm", "prepare_layer") + cum("lstm", "input_projection"),
        "recurrent loop forward": cum("lstm", "layer_forward") - cum("lstm", "input_projection"),
        "head and loss (forward)": cum("model", "forward") - cum("model", "run_layers") - cum("model", "prepare_layers"),
        "backward loop": cum("lstm", "recurrence_backward"),
        "weight-gradient products": cum("lstm", "weight_gradients"),
        "head backward": cum("model", "backward") - cum("lstm", "layer_backward"),
        "clipping and Adam": cum("optim", "clip_global_norm") + cum("optim", "step"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Per-phase profile of a charlstm training step.")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    cfg = Config(args.layers, args.hidden, args.batch, args.seq_len)
    step = charlstm_step_fn(cfg)
    for _ in range(2):
        step()
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for _ in range(args.steps):
        step()
    profiler.disable()
    total = (time.perf_counter() - started) / args.steps
    phases = {name: seconds / args.steps for name, seconds in phase_seconds(pstats.Stats(profiler)).items()}
    phases["other (step glue, profiler)"] = total - sum(phases.values())
    print(f"{cfg.label}: {total * 1e3:.1f} ms/step, {cfg.chars_per_step / total:,.0f} chars/s "
          f"(under cProfile, mean of {args.steps} steps)")
    print("| phase                       |      ms | share |")
    print("|-----------------------------|--------:|------:|")
    for name, seconds in phases.items():
        print(f"| {name:<27} | {seconds * 1e3:7.1f} | {100 * seconds / total:4.1f}% |")


if __name__ == "__main__":
    main()
