"""How this process computes: the kernel set and the threads, set from a config in one
call (`configure`) where training starts and where `sample` and `eval` load a
checkpoint.

Threads. BLAS runs single-threaded; the parallel work is cut into a fixed number of
`parts` (the layer's time loops into blocks of the batch, large products into
blocks of rows) that `threads` threads of our own run at once (`Workers.run`). Why:
- OpenBLAS's threads meet at the end of every product. When another busy process
  holds a core, every product of the time loop waits for a thread the scheduler has
  parked: measured on this project's 2-core machine, a 60-step run took 33.2 s
  instead of 9.9 s alone, and 14.9 s with one thread. A block of the batch runs all T
  steps on its own; the blocks meet once per loop.
- The results do not depend on how many threads run, only on `parts`: OpenBLAS's
  own results change with its thread count (by float32 rounding), which would make a
  run's numbers depend on the machine's load. So `threads` may change while a run
  goes (auto) and a resumed run still equals an uninterrupted one bit for bit.

train.threads N > 0: N parts, N threads. 0 (auto): as many parts as usable cores,
and as many threads as the cores other processes leave free, looked at again about
once a second (`Workers.adapt`, from the training loop); the BLAS_THREAD_VARIABLES of
the environment (as `charlstm sweep --jobs` sets them) count as an explicit N.
"""

from __future__ import annotations

import contextvars
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import kernels

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
LOOK_SECONDS = 0.1  # long enough for /proc/stat's 10 ms ticks to count two cores' load
ADAPT_SECONDS = 1.0  # how often auto looks at the machine's load again
# Hysteresis for auto: give a thread up when other processes keep this much of a
# core busy, take it back below the lower mark.
BUSY_HIGH, BUSY_LOW = 0.6, 0.3


@dataclass(frozen=True)
class Runtime:
    kernels: str
    parts: int
    threads: int
    auto: bool

    def describe(self) -> str:
        how = "auto, " if self.auto else ""
        return f"kernels {self.kernels}, {self.threads} of {self.parts} threads ({how}BLAS single-threaded)"


class Workers:
    """Runs a step's parallel work: `parts` blocks, `threads` at a time."""

    def __init__(self, parts: int = 1, threads: int = 1, auto: bool = False):
        self.parts, self.auto = parts, auto
        self.threads = 0
        self._pool: ThreadPoolExecutor | None = None
        self._last_look = time.monotonic()
        self._ticks = _cpu_ticks()
        self._own_cpu = time.process_time()
        self.set_threads(threads)

    def set_threads(self, threads: int) -> None:
        threads = max(1, min(threads, self.parts))
        if threads != self.threads:
            if self._pool is not None:
                self._pool.shutdown()
            self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="charlstm") if threads > 1 else None
            self.threads = threads

    def blocks(self, size: int, minimum: int = 1) -> list[slice]:
        """`size` cut into at most `parts` near-equal contiguous blocks of at least
        `minimum` (fewer blocks if `size` is small): fixed by parts and size alone."""
        count = max(1, min(self.parts, size // max(minimum, 1)))
        edges = [size * k // count for k in range(count + 1)]
        return [slice(a, b) for a, b in zip(edges, edges[1:])]

    def run(self, tasks: Sequence[Callable[[], None]]) -> None:
        """Run every task (each writes its own part of the outputs), `threads` at a
        time: the calling thread takes every `threads`-th task, the pool the rest."""
        if self._pool is None or len(tasks) == 1:
            for task in tasks:
                task()
            return
        groups = [tasks[k::self.threads] for k in range(self.threads)]
        # each pool thread runs in a copy of the caller's context: NumPy's errstate
        # (e.g. the CLI's np.errstate) lives in a context variable, not in the thread
        futures = [self._pool.submit(contextvars.copy_context().run, _run_all, group) for group in groups[1:] if group]
        _run_all(groups[0])
        for future in futures:
            future.result()

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
        """np.matmul(a, b, out=out) for 2-D arrays, in blocks of out's rows."""
        self.run([lambda rows=rows: np.matmul(a[rows], b, out=out[rows]) for rows in self.blocks(len(out), 16)])
        return out

    def adapt(self) -> None:
        """In auto mode, about once a second: one thread fewer while other processes
        keep a core busy, one more once they stop. Changes speed only, never results."""
        now = time.monotonic()
        if not self.auto or now - self._last_look < ADAPT_SECONDS:
            return
        ticks, own_cpu = _cpu_ticks(), time.process_time()
        if ticks is not None and self._ticks is not None:
            busy, total = (a - b for a, b in zip(ticks, self._ticks))
            cores = os.cpu_count() or 1
            others = busy / max(total, 1) * cores - (own_cpu - self._own_cpu) / (now - self._last_look)
            spare = usable_cores() - self.threads  # cores we leave to others already
            if others >= spare + BUSY_HIGH and self.threads > 1:
                self.set_threads(self.threads - 1)
            elif others < spare - 1 + BUSY_LOW and self.threads < self.parts:
                self.set_threads(self.threads + 1)
        self._last_look, self._ticks, self._own_cpu = now, ticks, own_cpu


def _run_all(tasks) -> None:
    for task in tasks:
        task()


def workers() -> Workers:
    """The Workers every layer, product and optimizer step uses."""
    return _workers


def configure(kernel_set: str, threads: int) -> Runtime:
    """Select the kernel set (`auto`, `numba`, `numpy`) and the threads (0: auto) for
    everything this process computes from now on."""
    global _workers
    chosen = kernels.use(kernel_set)
    threads = threads or _environment_threads()
    auto = threads == 0
    parts = usable_cores() if auto else threads
    set_blas_threads(1)
    _workers.set_threads(1)  # lets its pool go
    _workers = Workers(parts, auto_threads(parts) if auto else threads, auto)
    return Runtime(chosen.name, parts, _workers.threads, auto)


def _environment_threads() -> int:
    for variable in BLAS_THREAD_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_threads(parts: int, look_seconds: float = LOOK_SECONDS) -> int:
    """The usable cores less those other processes keep busy (at least 1, at most parts)."""
    busy = busy_cores(look_seconds)
    free = usable_cores() - round(busy) if busy is not None else usable_cores()
    return max(1, min(parts, free))


def busy_cores(look_seconds: float) -> float | None:
    """How many cores the whole machine kept busy over `look_seconds` while this
    process slept (None where /proc/stat does not exist)."""
    before = _cpu_ticks()
    if before is None:
        return None
    time.sleep(look_seconds)
    after = _cpu_ticks()
    busy, total = (a - b for a, b in zip(after, before))
    return busy / total * (os.cpu_count() or 1) if total > 0 else 0.0


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat's first line:
    user nice system idle iowait irq softirq steal ..."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def set_blas_threads(count: int) -> None:
    """BLAS (through threadpoolctl) and numba, if loaded, use `count` threads."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=count, user_api="blas")
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))


_workers = Workers()  # until configure: one part, one thread, BLAS as it was
