"""Training and sampling speed as users get it: charlstm's own training loop against the
loop a PyTorch user would write, each in its own process, interleaved A B A B.

    python benchmarks/throughput.py [--pairs K] [--only REGEX] [--quick] [--no-torch]

charlstm: `charlstm.train.train`, the function `charlstm train` calls, on a synthetic
corpus (uniform random characters; speed does not depend on the text): dropout when set,
logging, clipping, Adam, the state carried, the kernel set `auto` chooses and the
thread count asked for. Its metrics.jsonl gives the seconds between the record after
the warm-up steps and the record N steps later: N steps run back to back, with the
loop's own logging, no pause.

PyTorch: one-hot input to `nn.LSTM(dropout=p)`, `nn.Dropout(p)` before `nn.Linear`,
`F.cross_entropy`, `clip_grad_norm_`, `torch.optim.Adam` with a LambdaLR warm-up and
cosine schedule, the state detached, `loss.item()` every step; the same corpus, streams
and windows; timed over the same N steps after the same warm-up.

Each measurement is a fresh process (`--worker`), so neither library's idle threads
run while the other is timed. A row runs K pairs (charlstm, then PyTorch); the ratio is
the median over pairs of charlstm's chars/s over PyTorch's (each pair's ratio is
printed as the row finishes). GFLOP/s count 3x the
forward FLOPs per character (per layer 2*4H*(D+H), layer 0 as the dense one-hot product
PyTorch computes, plus 2*H*V for the head; docs/design.md), against the float32
matrix-product peak measured in a fresh process (best 2048^3 product) at the row's
thread count.

"busy neighbour" rows run one other process spinning on a core while both are timed,
each library at its default thread count (charlstm: train.threads 0; PyTorch: its own),
or both at 1 thread (the "1T busy neighbour" row: `--threads 1`, as the README advises).

Sampling: chars/s of `charlstm.sample.generate` (what `charlstm sample` runs) against a
PyTorch loop (one `nn.LSTM` step, the head, softmax, `torch.multinomial`) at
L=2, H=512, for N=1 and N=32 samples at once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
SPIN = "while True: pass"
QUIET_CORES = 0.15  # other processes' load below which a measurement may start
QUIET_WAIT_S = 120.0


@dataclass(frozen=True)
class Row:
    layers: int
    hidden: int
    batch: int
    seq_len: int
    vocab: int = 65
    dropout: float = 0.0
    threads: int = 2          # 0: each library's default (the busy-neighbour rows)
    neighbour: bool = False
    steps: int = 50           # timed steps, after WARMUP_STEPS

    @property
    def label(self) -> str:
        text = f"L={self.layers} H={self.hidden} B={self.batch} T={self.seq_len}"
        if self.vocab != 65:
            text += f" V={self.vocab:,}"
        text += f" p={self.dropout:g}"
        threads = f" {self.threads}T" if self.threads else ""
        return text + (f"{threads} busy neighbour" if self.neighbour else threads)

    @property
    def chars_per_step(self) -> int:
        return self.batch * self.seq_len

    def train_flops_per_char(self) -> float:
        forward = 2 * self.hidden * self.vocab
        for layer in range(self.layers):
            forward += 2 * 4 * self.hidden * ((self.vocab if layer == 0 else self.hidden) + self.hidden)
        return 3.0 * forward


WARMUP_STEPS = 5
MODELS = [  # (layers, hidden, batch, seq_len, timed steps: about 5 s each)
    (1, 256, 32, 64, 250),
    (2, 256, 64, 64, 80),
    (2, 512, 64, 100, 10),
]
ROWS = [Row(L, H, B, T, dropout=p, threads=threads, steps=steps)
        for threads in (2, 1) for L, H, B, T, steps in MODELS for p in (0.0, 0.2)]
ROWS += [Row(2, 256, 64, 64, threads=0, neighbour=True, steps=40),
         Row(2, 256, 64, 64, threads=1, neighbour=True, steps=40),  # what the README advises there
         Row(1, 128, 32, 64, vocab=6000, steps=60)]
SAMPLE_ROWS = [(2, 512, 1, 1500), (2, 512, 32, 300)]  # (layers, hidden, samples, length)


# ---- workers: one measurement each, in a fresh process ----------------------

def corpus_text(vocab: int, chars: int, seed: int = 0) -> str:
    """Uniform random characters: every one of `vocab` appears (CJK above 65, as in
    a Chinese corpus)."""
    import numpy as np
    first = 0x4E00 if vocab > 65 else 0x21
    ids = np.random.default_rng(seed).integers(0, vocab, chars)
    ids[:vocab] = np.arange(vocab)
    return "".join(chr(first + i) for i in ids)


def corpus_chars(row: Row) -> int:
    # every window once, plus a tenth held out for validation (evaluated once, untimed)
    return int((WARMUP_STEPS + row.steps + 2) * row.chars_per_step / 0.9) + 1000


def corpus_file(folder: Path, row: Row) -> Path:
    """The row's synthetic corpus in `folder`, written once for every row of its size."""
    path = folder / f"corpus-{row.vocab}-{corpus_chars(row)}.txt"
    if not path.exists():
        path.write_text(corpus_text(row.vocab, corpus_chars(row)), encoding="utf-8")
    return path


def worker_charlstm_train(row: Row, corpus: Path) -> dict:
    from charlstm.config import load_config
    from charlstm.rundir import read_metrics
    from charlstm.train import train

    never = 10 ** 9
    sets = {"model.num_layers": row.layers, "model.hidden_size": row.hidden, "model.dropout": row.dropout,
            "train.batch_size": row.batch, "train.seq_len": row.seq_len, "train.log_every": 1,
            "train.max_steps": WARMUP_STEPS + row.steps + 1, "train.eval_every": never,
            "train.checkpoint_every": never, "train.sample_every": never, "train.sample_length": 0,
            "train.warmup_steps": 2, "train.threads": row.threads}
    config = load_config(None, [f"{k}={v}" for k, v in sets.items()])
    with tempfile.TemporaryDirectory() as run_dir:
        messages = []
        train(config, corpus, Path(run_dir) / "run", show_progress=False, echo=messages.append)
        records = {r["step"]: r for r in read_metrics(Path(run_dir) / "run")}
    seconds = records[WARMUP_STEPS + row.steps]["elapsed_s"] - records[WARMUP_STEPS]["elapsed_s"]
    runtime = next(m for m in messages if m.startswith("computing with")).removeprefix("computing with ")
    return {"chars_per_s": row.steps * row.chars_per_step / seconds, "runtime": runtime}


def worker_torch_train(row: Row, corpus: Path) -> dict:
    import math

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    if row.threads:
        torch.set_num_threads(row.threads)
    text = corpus.read_text(encoding="utf-8")
    chars = sorted(set(text))
    lookup = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([lookup[ch] for ch in text], dtype=np.int64)
    train_ids = torch.from_numpy(ids[:int(len(ids) * 0.9)])
    per_stream = len(train_ids) // row.batch
    streams = train_ids[:per_stream * row.batch].view(row.batch, per_stream).t()  # (chars, B)
    vocab = len(chars)

    class CharLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(vocab, row.hidden, row.layers, dropout=row.dropout if row.layers > 1 else 0.0)
            self.drop = nn.Dropout(row.dropout)
            self.head = nn.Linear(row.hidden, vocab)

        def forward(self, x, state):
            out, state = self.lstm(F.one_hot(x, vocab).float(), state)
            return self.head(self.drop(out)), state

    torch.manual_seed(0)
    model = CharLSTM()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    total = WARMUP_STEPS + row.steps + 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 2) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / total))))
    state = None
    windows = (len(streams) - 1) // row.seq_len
    started = None
    for step in range(WARMUP_STEPS + row.steps):
        if step == WARMUP_STEPS:
            started = time.perf_counter()
        k = step % windows
        if k == 0:
            state = None
        x = streams[k * row.seq_len:(k + 1) * row.seq_len]
        y = streams[k * row.seq_len + 1:(k + 1) * row.seq_len + 1]
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
        state = tuple(s.detach() for s in state)
        loss.item()
    seconds = time.perf_counter() - started
    return {"chars_per_s": row.steps * row.chars_per_step / seconds, "runtime": f"{torch.get_num_threads()} threads"}


def worker_charlstm_sample(layers: int, hidden: int, samples: int, length: int) -> dict:
    import numpy as np

    from charlstm import runtime
    from charlstm.data import Vocab
    from charlstm.model import init_params
    from charlstm.sample import generate

    chosen = runtime.configure("auto", 0)
    params = init_params(65, hidden, layers, 1.0, np.random.default_rng(0))
    params.flat *= 3.0  # a sharper model than the init, so samples are not uniform noise
    vocab = Vocab("".join(chr(32 + i) for i in range(64)) + "\n")
    for _ in generate(params, vocab, 50, temperature=0.8, rng=np.random.default_rng(1), num_samples=samples):
        pass  # warm-up
    started = time.perf_counter()
    for _ in generate(params, vocab, length, temperature=0.8, rng=np.random.default_rng(1), num_samples=samples):
        pass
    return {"chars_per_s": length * samples / (time.perf_counter() - started), "runtime": chosen.describe()}


def worker_torch_sample(layers: int, hidden: int, samples: int, length: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    lstm, head = nn.LSTM(65, hidden, layers), nn.Linear(hidden, 65)

    @torch.inference_mode()
    def run(steps: int) -> None:
        generator = torch.Generator().manual_seed(1)
        state = None
        current = torch.zeros(samples, dtype=torch.long)
        for _ in range(steps):
            outputs, state = lstm(F.one_hot(current, 65).float()[None], state)
            probs = F.softmax(head(outputs[0]) / 0.8, dim=1)
            current = torch.multinomial(probs, 1, generator=generator)[:, 0]

    run(50)
    started = time.perf_counter()
    run(length)
    return {"chars_per_s": length * samples / (time.perf_counter() - started),
            "runtime": f"{torch.get_num_threads()} threads"}


def worker_peak(threads: int, size: int = 2048, repeats: int = 5) -> dict:
    import numpy as np
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    out = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats + 1):
        started = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - started)
    return {"gflops": 2.0 * size ** 3 / best / 1e9}


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot (Linux /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def others_busy(seconds: float) -> float:
    """Cores kept busy by other processes over `seconds` while this one sleeps."""
    busy0, total0 = cpu_ticks()
    time.sleep(seconds)
    busy1, total1 = cpu_ticks()
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


def wait_for_quiet(limit_s: float = QUIET_WAIT_S) -> None:
    """This machine is shared: start a measurement only once other processes have kept
    less than QUIET_CORES busy for a second (or after `limit_s`, whatever the load)."""
    deadline = time.monotonic() + limit_s
    while others_busy(1.0) >= QUIET_CORES and time.monotonic() < deadline:
        pass


def run_worker(task: dict, neighbour: bool = False, script: str = __file__) -> dict:
    """Run one measurement in a fresh Python process (`script --worker TASK`), once the
    machine is quiet; with `neighbour`, beside a process spinning on one core. The result carries `others`:
    the cores other processes (the spinning neighbour included) kept busy meanwhile."""
    # no thread variables from this shell: each library chooses as it would for a user
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                            "MKL_NUM_THREADS")}
    wait_for_quiet()
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if neighbour else None
    busy0, total0 = cpu_ticks()
    child0 = os.times()
    try:
        done = subprocess.run([sys.executable, script, "--worker", json.dumps(task)], env=env,
                              capture_output=True, text=True, cwd=PROJECT)
    finally:
        busy1, total1 = cpu_ticks()
        child1 = os.times()
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if done.returncode != 0:
        raise RuntimeError(f"worker {task} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cores = os.cpu_count() or 1
    ours = (child1.children_user + child1.children_system - child0.children_user - child0.children_system)
    wall = (total1 - total0) / cores / os.sysconf("SC_CLK_TCK")
    result["others"] = max(0.0, (busy1 - busy0) / max(total1 - total0, 1) * cores - ours / max(wall, 1e-9))
    return result


def worker_main(task: dict) -> dict:
    kind = task.pop("kind")
    if kind == "peak":
        return worker_peak(task["threads"])
    if kind.endswith("train"):
        row = Row(**task["row"])
        function = worker_charlstm_train if kind == "charlstm-train" else worker_torch_train
        return function(row, Path(task["corpus"]))
    function = worker_charlstm_sample if kind == "charlstm-sample" else worker_torch_sample
    return function(*task["sample"])


# ---- the parent: interleaved pairs and the tables ---------------------------

def median_ratio(ours: list[float], theirs: list[float]) -> float:
    """Median over pairs of (our chars/s / their chars/s)."""
    return statistics.median(o / t for o, t in zip(ours, theirs))


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="interleaved A B pairs per row [3]")
    parser.add_argument("--only", default="", help="run the rows whose label matches this regular "
                        "expression (a sampling row's label reads 'sampling L=2 H=512 N=1')")
    parser.add_argument("--quick", action="store_true", help="one pair, a fifth of the steps")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
    parser.add_argument("--no-sampling", action="store_true", help="skip the sampling table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker_main(json.loads(args.worker))))
        return 0
    pairs = 1 if args.quick else args.pairs
    torch_version = None
    if not args.no_torch:
        try:
            import torch
            torch_version = f"{torch.__version__} ({torch.backends.cpu.get_cpu_capability()})"
        except ImportError:
            pass
    import numpy as np

    from charlstm import runtime

    rows = [r for r in ROWS if re.search(args.only, r.label)]
    if args.quick:
        rows = [Row(**{**asdict(r), "steps": max(3, r.steps // 5)}) for r in rows]
    peaks = {t: run_worker({"kind": "peak", "threads": t})["gflops"] for t in sorted({r.threads or 2 for r in rows})}
    blas = runtime.blas_kernels() or "BLAS not inspected: threadpoolctl is absent"
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__} "
          f"({blas}), torch {torch_version or 'not run'}; median of {pairs} interleaved pairs; "
          "float32 matrix-product peak "
          + ", ".join(f"{g:.1f} GFLOP/s at {t} thread{'s' if t > 1 else ''}" for t, g in peaks.items()), flush=True)
    train_rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for row in rows:
            task = {"row": asdict(row), "corpus": str(corpus_file(Path(scratch), row)), "threads": row.threads}
            ours, theirs = [], []
            for _ in range(pairs):
                ours.append(run_worker({"kind": "charlstm-train", **task}, row.neighbour))
                if torch_version:
                    theirs.append(run_worker({"kind": "torch-train", **task}, row.neighbour))
            train_rows.append((row, ours, theirs, peaks[row.threads or 2]))
            each = "".join(f" {o['chars_per_s'] / t['chars_per_s']:.3f}" for o, t in zip(ours, theirs))
            print("  " + train_line(*train_rows[-1]) + (f" pairs:{each}" if each else ""), flush=True)
    sample_rows = []
    if not args.no_sampling:
        for layers, hidden, samples, length in SAMPLE_ROWS:
            label = f"L={layers} H={hidden} N={samples}"
            if args.only and not re.search(args.only, f"sampling {label}"):
                continue  # e.g. --only sampling: the sampling rows alone
            task = {"sample": [layers, hidden, samples, length // 5 if args.quick else length], "threads": 2}
            ours, theirs = [], []
            for _ in range(pairs):
                ours.append(run_worker({"kind": "charlstm-sample", **task}))
                if torch_version:
                    theirs.append(run_worker({"kind": "torch-sample", **task}))
            sample_rows.append((label, ours, theirs))
    print_tables(train_rows, sample_rows)
    return 0


def train_line(row, ours, theirs, peak) -> str:
    cps = statistics.median(r["chars_per_s"] for r in ours)
    theirs_cps = statistics.median(r["chars_per_s"] for r in theirs) if theirs else None
    ratio = median_ratio([r["chars_per_s"] for r in ours], [r["chars_per_s"] for r in theirs]) if theirs else None
    gflops = cps * row.train_flops_per_char() / 1e9
    others = max(r["others"] for r in ours + theirs)
    ran_with = ", ".join(ours[0]["runtime"].split(", ")[:2])  # kernels and threads; the header names the BLAS
    return (f"| {row.label:<41} | {cps:>10,.0f} | {fmt(theirs_cps, ',.0f'):>10} | {fmt(ratio, '.3f'):>5} "
            f"| {gflops:>7.1f} | {100 * gflops / peak:>5.0f}% | {others:>6.2f} | {ran_with:<21} |")


def print_tables(train_rows, sample_rows) -> None:
    if train_rows:
        print()
        print(f"| {'training loop, chars/s':<41} | {'charlstm':>10} | {'PyTorch':>10} | ratio | GFLOP/s "
              f"| % peak | others | {'charlstm ran with':<21} |")
        print(f"|{'-' * 43}|{'-' * 11}:|{'-' * 11}:|------:|--------:|-------:|-------:|{'-' * 23}|")
        for row in train_rows:
            print(train_line(*row))
    if sample_rows:
        print()
        print("| sampling            | charlstm chars/s | PyTorch chars/s | ratio | others |")
        print("|---------------------|-----------------:|----------------:|------:|-------:|")
        for label, ours, theirs in sample_rows:
            cps = statistics.median(r["chars_per_s"] for r in ours)
            theirs_cps = statistics.median(r["chars_per_s"] for r in theirs) if theirs else None
            ratio = median_ratio([r["chars_per_s"] for r in ours], [r["chars_per_s"] for r in theirs]) if theirs else None
            others = max(r["others"] for r in ours + theirs)
            print(f"| {label:<19} | {cps:>16,.0f} | {fmt(theirs_cps, ',.0f'):>15} | {fmt(ratio, '.2f'):>5} "
                  f"| {others:>6.2f} |")


if __name__ == "__main__":
    sys.exit(main())
