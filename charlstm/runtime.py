"""How this process computes: the kernel set and the thread counts, set from a
config in one call (`configure`) where training starts and where `sample` and `eval`
load a checkpoint.

Threads. A step's matrix products run on OpenBLAS threads that wait for each other
at the end of every product. When another busy process holds one of the cores, every
product waits for a thread the scheduler has parked: measured on this project's
2-core machine, a 60-step run took 33.2 s instead of 9.9 s alone, and 14.9 s with one
thread. So `train.threads: 0` (auto) leaves out the cores that other processes kept
busy during a short look at /proc/stat when the run starts; an explicit
`train.threads` (or `--threads`) is used as given. BLAS_THREAD_VARIABLES set in the
environment (as `charlstm sweep --jobs` does) are respected by auto.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from . import kernels

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
LOOK_SECONDS = 0.1  # long enough for /proc/stat's 10 ms ticks to count two cores' load


@dataclass(frozen=True)
class Runtime:
    kernels: str
    threads: int

    def describe(self) -> str:
        return f"kernels {self.kernels}, {self.threads} thread{'s' if self.threads != 1 else ''}"


def configure(kernel_set: str, threads: int) -> Runtime:
    """Select the kernel set (`auto`, `numba`, `numpy`) and the thread count (0: auto)
    for everything this process computes from now on."""
    chosen = kernels.use(kernel_set)
    count = threads or auto_threads()
    set_threads(count)
    return Runtime(chosen.name, count)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_threads(look_seconds: float = LOOK_SECONDS) -> int:
    """The BLAS thread setting of the environment if there is one, else the usable
    cores less those other processes keep busy (at least 1)."""
    for variable in BLAS_THREAD_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    cores = usable_cores()
    busy = busy_cores(look_seconds)
    return max(1, cores - round(busy)) if busy is not None else cores


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
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def set_threads(count: int) -> None:
    """Use `count` threads in BLAS (through threadpoolctl) and in numba, if loaded."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=count, user_api="blas")
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
