"""Training and sampling throughput of charlstm against PyTorch's CPU nn.LSTM.

    python benchmarks/throughput.py [--threads N] [--pairs K] [--quick]

For each config (one-hot input, V=65) it times one full training step: forward,
backward, global-norm clipping and Adam, state carried and detached. With torch
installed it times the same step in PyTorch (nn.LSTM on one-hot float input,
nn.Linear, cross-entropy, clip_grad_norm_, torch.optim.Adam) with the same thread
count. After warm-up the two run interleaved A B A B, because the machine is noisy:
the ratio of each pair is taken, and the table reports the median ratio.

FLOPs per character follow docs/design.md: training costs 3x the forward, which per layer
is 2*4H*(D+H) (one-hot input counted as the dense product PyTorch computes) plus
2*H*V for the head. The float32 matrix-product peak is measured at the start of the
same run (best of a few 2048^3 products), and achieved GFLOP/s are shown as a percent
of it.

Sampling: generated characters per second for L=2, H=512 at N=1 and N=32 samples
in one batch, against a PyTorch loop over the same model (one LSTM step, the head,
softmax, torch.multinomial).

The thread count must be fixed before NumPy loads OpenBLAS, so this script sets
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS from --threads before importing numpy.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="BLAS / torch threads [default: all cores]")
    parser.add_argument("--pairs", type=int, default=7, help="interleaved A B pairs per config")
    parser.add_argument("--quick", action="store_true", help="fewer pairs, shorter sampling runs")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
    return parser.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(ARGS.threads)

import numpy as np  # noqa: E402  (after the thread settings on purpose)

from charlstm.data import Vocab  # noqa: E402
from charlstm.model import ModelBuffers, backward, forward, init_params, zero_state  # noqa: E402
from charlstm.optim import Adam, clip_global_norm  # noqa: E402
from charlstm.sample import generate  # noqa: E402

VOCAB_SIZE = 65
CONFIGS = [  # (layers, hidden, batch, seq_len)
    (1, 256, 32, 64),
    (2, 256, 64, 64),
    (2, 512, 64, 100),
]
SAMPLE_CONFIG = (2, 512)  # (layers, hidden)
SAMPLE_BATCHES = (1, 32)


@dataclass
class Config:
    layers: int
    hidden: int
    batch: int
    seq_len: int

    @property
    def label(self) -> str:
        return f"L={self.layers} H={self.hidden} B={self.batch} T={self.seq_len}"

    @property
    def chars_per_step(self) -> int:
        return self.batch * self.seq_len

    def train_flops_per_char(self) -> float:
        forward_flops = 2 * self.hidden * VOCAB_SIZE
        for layer in range(self.layers):
            input_size = VOCAB_SIZE if layer == 0 else self.hidden
            forward_flops += 2 * 4 * self.hidden * (input_size + self.hidden)
        return 3.0 * forward_flops


def measure_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best float32 matrix-product rate, GFLOP/s, with the current thread count."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - started)
    return 2.0 * size ** 3 / best / 1e9


# ---- charlstm training step ------------------------------------------------

def charlstm_step_fn(cfg: Config, seed: int = 0):
    """A closure running one training step on random ids, state carried."""
    rng = np.random.default_rng(seed)
    params = init_params(VOCAB_SIZE, cfg.hidden, cfg.layers, 1.0, rng)
    grads = params.zeros_like()
    optimizer = Adam(params.flat.size)
    windows = rng.integers(0, VOCAB_SIZE, (8, cfg.seq_len + 1, cfg.batch))
    state = {"carried": zero_state(cfg.layers, cfg.batch, cfg.hidden), "k": 0}
    buffers = ModelBuffers()  # as train.train_step does

    def step() -> float:
        window = windows[state["k"] % len(windows)]
        state["k"] += 1
        loss, state["carried"], cache = forward(params, window[:-1], window[1:], state["carried"],
                                                buffers=buffers)
        backward(params, cache, grads, buffers=buffers)
        clip_global_norm(grads.flat, 5.0)
        optimizer.step(params.flat, grads.flat, 2e-3)
        return loss

    return step


# ---- PyTorch training step -------------------------------------------------

def torch_step_fn(cfg: Config, torch, seed: int = 0):
    nn, F = torch.nn, torch.nn.functional
    torch.manual_seed(seed)
    lstm = nn.LSTM(VOCAB_SIZE, cfg.hidden, cfg.layers)
    head = nn.Linear(cfg.hidden, VOCAB_SIZE)
    parameters = list(lstm.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(parameters, lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    windows = torch.randint(0, VOCAB_SIZE, (8, cfg.seq_len + 1, cfg.batch), generator=generator)
    onehots = F.one_hot(windows[:, :-1], VOCAB_SIZE).float()  # (8, T, B, V), built once
    zeros = torch.zeros(cfg.layers, cfg.batch, cfg.hidden)
    state = {"carried": (zeros, zeros.clone()), "k": 0}

    def step() -> float:
        k = state["k"] % len(windows)
        state["k"] += 1
        outputs, (h, c) = lstm(onehots[k], state["carried"])
        logits = head(outputs)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), windows[k, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 5.0)
        optimizer.step()
        state["carried"] = (h.detach(), c.detach())
        return loss.item()

    return step


# ---- sampling --------------------------------------------------------------

def charlstm_sample_fn(layers: int, hidden: int, num_samples: int, length: int):
    rng = np.random.default_rng(0)
    params = init_params(VOCAB_SIZE, hidden, layers, 1.0, rng)
    params.flat *= 3.0  # a sharper model than the init, so samples are not uniform noise
    vocab = Vocab("".join(chr(32 + i) for i in range(VOCAB_SIZE - 1)) + "\n")

    def run() -> int:
        steps = generate(params, vocab, length, temperature=0.8, rng=np.random.default_rng(1),
                         num_samples=num_samples)
        for _ in steps:
            pass
        return length * num_samples

    return run


def torch_sample_fn(layers: int, hidden: int, num_samples: int, length: int, torch):
    nn, F = torch.nn, torch.nn.functional
    torch.manual_seed(0)
    lstm = nn.LSTM(VOCAB_SIZE, hidden, layers)
    head = nn.Linear(hidden, VOCAB_SIZE)

    @torch.inference_mode()
    def run() -> int:
        generator = torch.Generator().manual_seed(1)
        state = None
        current = torch.zeros(num_samples, dtype=torch.long)
        for _ in range(length):
            onehot = F.one_hot(current, VOCAB_SIZE).float()[None]  # (1, N, V)
            outputs, state = lstm(onehot, state)
            probs = F.softmax(head(outputs[0]) / 0.8, dim=1)
            current = torch.multinomial(probs, 1, generator=generator)[:, 0]
        return length * num_samples

    return run


# ---- interleaved timing ----------------------------------------------------

# Both libraries keep their idle worker threads spinning for a while after a call
# (OpenBLAS's threads, PyTorch's OpenMP pool). Run back to back in one process, each
# one's spinning workers take the cores from the other's: measured 1.2-2x slower steps
# for both. A pause before each timed call lets them go idle, so each library is timed
# with its default thread settings on a quiet machine.
SETTLE_SECONDS = 0.3


def timed(fn) -> float:
    time.sleep(SETTLE_SECONDS)
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def interleave(a, b, pairs: int, warmup: int = 2):
    """Seconds per call of a and of b, run A B A B after warm-up; b may be None."""
    for _ in range(warmup):
        a()
        if b is not None:
            b()
    a_times, b_times = [], []
    for _ in range(pairs):
        a_times.append(timed(a))
        if b is not None:
            b_times.append(timed(b))
    return a_times, b_times


def median_ratio(ours: list[float], theirs: list[float]) -> float:
    """Median over pairs of (our speed / their speed) = their time / our time."""
    return statistics.median(t / o for o, t in zip(ours, theirs))


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def load_torch(threads: int, skip: bool):
    if skip:
        return None
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def main() -> int:
    args = ARGS
    pairs = 3 if args.quick else args.pairs
    torch = load_torch(args.threads, args.no_torch)
    peak = measure_peak_gflops()
    print(f"float32 matrix-product peak: {peak:.1f} GFLOP/s ({args.threads} threads)", flush=True)

    train_rows = []
    for layers, hidden, batch, seq_len in CONFIGS:
        cfg = Config(layers, hidden, batch, seq_len)
        ours_fn = charlstm_step_fn(cfg)
        theirs_fn = torch_step_fn(cfg, torch) if torch is not None else None
        ours, theirs = interleave(ours_fn, theirs_fn, pairs)
        ours_cps = cfg.chars_per_step / statistics.median(ours)
        theirs_cps = cfg.chars_per_step / statistics.median(theirs) if theirs else None
        gflops = ours_cps * cfg.train_flops_per_char() / 1e9
        ratio = median_ratio(ours, theirs) if theirs else None
        train_rows.append((cfg.label, ours_cps, theirs_cps, ratio, gflops, 100 * gflops / peak))
        print(f"  train {cfg.label}: charlstm {ours_cps:,.0f} chars/s, "
              f"pytorch {fmt(theirs_cps, ',.0f')} chars/s", flush=True)

    sample_rows = []
    for num_samples in SAMPLE_BATCHES:
        length = (100 if args.quick else 300) if num_samples == 1 else (50 if args.quick else 150)
        ours_fn = charlstm_sample_fn(*SAMPLE_CONFIG, num_samples, length)
        theirs_fn = torch_sample_fn(*SAMPLE_CONFIG, num_samples, length, torch) if torch else None
        ours, theirs = interleave(ours_fn, theirs_fn, pairs, warmup=1)
        chars = length * num_samples
        ours_cps = chars / statistics.median(ours)
        theirs_cps = chars / statistics.median(theirs) if theirs else None
        ratio = median_ratio(ours, theirs) if theirs else None
        sample_rows.append((f"L={SAMPLE_CONFIG[0]} H={SAMPLE_CONFIG[1]} N={num_samples}",
                            ours_cps, theirs_cps, ratio))
        print(f"  sample N={num_samples}: charlstm {ours_cps:,.0f} chars/s, "
              f"pytorch {fmt(theirs_cps, ',.0f')} chars/s", flush=True)

    print_tables(args, peak, torch, pairs, train_rows, sample_rows)
    return 0


def print_tables(args, peak, torch, pairs, train_rows, sample_rows) -> None:
    torch_version = torch.__version__ if torch is not None else "not installed"
    print()
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {args.threads} threads, numpy {np.__version__}, "
          f"torch {torch_version}; median of {pairs} interleaved pairs; peak {peak:.1f} GFLOP/s")
    print()
    print("| training step (V=65)     | charlstm chars/s | PyTorch chars/s | ratio | GFLOP/s | % of peak |")
    print("|--------------------------|-----------------:|----------------:|------:|--------:|----------:|")
    for label, ours, theirs, ratio, gflops, percent in train_rows:
        print(f"| {label:<24} | {ours:>16,.0f} | {fmt(theirs, ',.0f'):>15} | {fmt(ratio, '.2f'):>5} "
              f"| {gflops:>7.1f} | {percent:>8.0f}% |")
    print()
    print("| sampling                 | charlstm chars/s | PyTorch chars/s | ratio |")
    print("|--------------------------|-----------------:|----------------:|------:|")
    for label, ours, theirs, ratio in sample_rows:
        print(f"| {label:<24} | {ours:>16,.0f} | {fmt(theirs, ',.0f'):>15} | {fmt(ratio, '.2f'):>5} |")


if __name__ == "__main__":
    sys.exit(main())
