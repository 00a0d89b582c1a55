"""Data-parallel scaling over MPI: training chars/s for N = 1, 2, 4, ... ranks up to
the cores, each rank with cores/N BLAS threads, against one process using every
core and against PyTorch (nn.LSTM, every core), at L=2, H=512, B=128, T=100, V=65.

    python benchmarks/scaling.py [--steps S] [--cores C]

Each measurement is a separate process (the BLAS thread count is fixed when NumPy
loads): `mpiexec -n N python benchmarks/scaling.py --worker ...`. A step is the
training loop's own `train_step` (forward, backward, the gradient Allreduce,
clipping, Adam); chars/s counts all ranks (B*T per step) over S timed steps after
one warm-up step. Run it alone on the machine: other work skews every column.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

LAYERS, HIDDEN, BATCH, SEQ_LEN, VOCAB = 2, 512, 128, 100, 65
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def worker(steps: int, use_torch: bool) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, size=(BATCH, SEQ_LEN * (steps + 1) + 1)).astype(np.uint8)
    if use_torch:
        rate = torch_chars_per_s(ids, steps)
    else:
        rate = charlstm_chars_per_s(ids, steps)
    if rate is not None:
        print(f"{rate:.0f}")


def charlstm_chars_per_s(ids, steps: int) -> float | None:
    import numpy as np

    from charlstm.config import load_config
    from charlstm.parallel import communicator
    from charlstm.state import TrainingState
    from charlstm.train import train_step

    config = load_config(None, [f"model.num_layers={LAYERS}", f"model.hidden_size={HIDDEN}",
                                f"train.batch_size={BATCH}", f"train.seq_len={SEQ_LEN}",
                                f"train.max_steps={steps + 1}"])
    comm = communicator()
    ts = TrainingState.fresh(config, VOCAB)
    grads = ts.params.zeros_like()
    decay = [ts.params[n] for n in ts.params.names() if ".W_" in n]
    train_step(ts, grads, ids, config, decay, comm)  # warm-up: buffers allocated
    comm.sum(np.zeros(1))  # start the clock together
    started = time.perf_counter()
    for _ in range(steps):
        train_step(ts, grads, ids, config, decay, comm)
    elapsed = float(comm.sum(np.array([time.perf_counter() - started]))[0]) / comm.size
    return steps * BATCH * SEQ_LEN / elapsed if comm.is_root else None


def torch_chars_per_s(ids, steps: int) -> float:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    lstm, head = torch.nn.LSTM(VOCAB, HIDDEN, LAYERS), torch.nn.Linear(HIDDEN, VOCAB)
    params = [*lstm.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=2e-3)
    data = torch.from_numpy(ids.astype("int64")).T  # (time, B)
    state = None

    def step(k: int):
        nonlocal state
        window = data[k * SEQ_LEN:(k + 1) * SEQ_LEN + 1]
        inputs = torch.nn.functional.one_hot(window[:-1], VOCAB).float()
        out, state = lstm(inputs, state)
        state = tuple(s.detach() for s in state)
        loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, VOCAB), window[1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()

    step(0)
    started = time.perf_counter()
    for k in range(1, steps + 1):
        step(k)
    return steps * BATCH * SEQ_LEN / (time.perf_counter() - started)


def measure(ranks: int, threads: int, steps: int, use_torch: bool = False) -> float | None:
    command = [sys.executable, __file__, "--worker", "--steps", str(steps)] + (["--torch"] if use_torch else [])
    if ranks > 1:
        command = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), *command]
    env = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"  N={ranks} failed: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return float(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--torch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps, args.torch)

    print(f"L={LAYERS} H={HIDDEN} B={BATCH} T={SEQ_LEN} V={VOCAB}, {args.steps} timed steps; "
          f"{platform.processor() or platform.machine()}, {args.cores} cores")
    single = measure(1, 1, args.steps)
    print(f"{'setup':<34} {'chars/s':>9} {'vs 1 rank, 1 thread':>20}")

    def row(label: str, rate: float | None) -> None:
        if rate is None or single is None:
            print(f"{label:<34} {'-':>9}")
        else:
            print(f"{label:<34} {rate:>9,.0f} {rate / single:>19.2f}x")

    row("one process, 1 BLAS thread", single)
    ranks = 2
    while ranks <= args.cores:
        if BATCH % ranks == 0:
            threads = max(1, args.cores // ranks)
            row(f"MPI N={ranks}, {threads} BLAS thread{'s' * (threads > 1)} each",
                measure(ranks, threads, args.steps))
        ranks *= 2
    row(f"one process, {args.cores} BLAS threads", measure(1, args.cores, args.steps))
    try:
        import torch  # noqa: F401
        row(f"PyTorch {torch.__version__}, {args.cores} threads", measure(1, args.cores, args.steps, use_torch=True))
    except ImportError:
        row("PyTorch (not installed)", None)


if __name__ == "__main__":
    main()
