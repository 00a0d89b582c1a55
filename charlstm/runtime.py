"""How this process computes: the kernel set and the threads, set from a config in one
call (`configure`) where training starts and where `sample` and `eval` load a
checkpoint.

Threads. The large products (the input projection, the weight-gradient products,
the head) and the time loops' per-step recurrent products run in OpenBLAS on
`threads` threads (set through threadpoolctl); the cell's pointwise work runs in the
kernel set, one call per step. Profiled on this project's 2-core machine, OpenBLAS's
own threads beat cutting the work into blocks for threads of our own
(docs/design.md, Kernel sets).

The thread count is fixed for a run: OpenBLAS's results change with it by float32
rounding, so a count that followed the machine's load would make a run's numbers,
and a resumed run's, depend on what else ran. `train.threads: 0` (the default) takes
the BLAS_THREAD_VARIABLES of the environment where set (as `charlstm sweep --jobs`
sets them), else the usable cores shared out among the MPI ranks on this host (two
ranks on two cores: one thread each, not two threads fighting over each core); N > 0
takes N.

A busy neighbour. OpenBLAS's threads meet at the end of every product and spin while
they wait, so when another busy process holds a core every product waits for a
thread the scheduler has parked: a 60-step run took 33.2 s instead of 9.9 s alone,
and 14.9 s with one thread. On a shared machine, `--threads 1` is the safe choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import kernels
from .errors import CharlstmError

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Runtime:
    kernels: str
    threads: int
    blas: str = ""  # which BLAS and for which core its kernels were chosen (blas_kernels)

    def describe(self) -> str:
        return f"kernels {self.kernels}, {self.threads} BLAS threads" + (f", {self.blas}" if self.blas else "")


def configure(kernel_set: str, threads: int, ranks_on_host: int = 1) -> Runtime:
    """Select the kernel set (`auto`, `numba`, `numpy`) and the threads (0: this
    process's share of the usable cores) for everything this process computes from now on."""
    chosen = kernels.use(kernel_set)
    asked = threads
    threads = threads or _environment_threads() or max(1, usable_cores() // ranks_on_host)
    try:
        set_blas_threads(threads)
    except ImportError:  # threadpoolctl comes with the fast extra
        if asked:
            raise CharlstmError(f"train.threads={asked} needs threadpoolctl to set BLAS's threads: "
                                'pip install "charlstm[fast]", or set OPENBLAS_NUM_THREADS before starting') from None
        threads = _environment_threads() or usable_cores()  # what OpenBLAS takes by itself
    return Runtime(chosen.name, threads, blas_kernels())


def blas_kernels() -> str:
    """numpy's BLAS and the core its kernels were chosen for, e.g. 'openblas 0.3.31,
    SkylakeX kernels' ('' without threadpoolctl). OpenBLAS picks them from the CPU
    unless OPENBLAS_CORETYPE names one: Haswell pinned on an AVX-512 machine measured a
    product peak of 256 GFLOP/s against 450 (README, Performance), so a run records it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ""
    blas = next((lib for lib in threadpool_info() if lib.get("user_api") == "blas"), None)
    if blas is None:
        return ""
    pinned = os.environ.get("OPENBLAS_CORETYPE")
    return (f"{blas['internal_api']} {blas.get('version')}, {blas.get('architecture')} kernels"
            + (f" (OPENBLAS_CORETYPE={pinned})" if pinned else ""))


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


def set_blas_threads(count: int) -> None:
    """BLAS uses `count` threads (through threadpoolctl). The compiled cell runs on the
    calling thread, so numba's thread pool is never started."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=count, user_api="blas")
