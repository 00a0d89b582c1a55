"""Data-parallel training over MPI: which streams this process trains, and the few
collective operations the training loop needs.

Under `mpiexec -n N`, rank r trains streams [r*B/N, (r+1)*B/N) of the B streams.
All parameters sit in one flat buffer, so one Allreduce per step sums the gradient
and every rank clips and steps Adam identically. Without mpiexec, `SingleProcess`
does the same with no communication (and mpi4py is never imported), so the loop
reads the same either way.
"""

from __future__ import annotations

import os
import zlib
from contextlib import contextmanager

import numpy as np

from .errors import CharlstmError

# Set by the launchers in each process they start: MPICH/Intel MPI (PMI), Open MPI.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


class SingleProcess:
    """One process training every stream: the collectives are identities."""

    rank, size = 0, 1
    ranks_on_host = 1  # the processes sharing this machine's cores (runtime.configure)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def shard(self, batch_size: int) -> slice:
        """The streams this rank trains; B not divisible by N is refused."""
        if batch_size % self.size:
            raise CharlstmError(f"train.batch_size={batch_size} is not divisible by the {self.size} "
                                f"MPI ranks; use a batch size that is a multiple of {self.size} or "
                                f"another number of ranks")
        per_rank = batch_size // self.size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def sum_gradient(self, grads: np.ndarray, loss: float) -> float:
        """Turn this rank's gradient of its own mean loss into the gradient of the
        mean over every rank's characters (in place), and return that mean. Ranks
        train equal numbers of characters, so it is the mean of the ranks' means."""
        return loss

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank."""
        return flag

    def sum(self, values: np.ndarray) -> np.ndarray:
        return values

    def gather_streams(self, carried: tuple[np.ndarray, ...], streams: slice) -> None:
        """Fill every rank's full (L, B, H) carried arrays from each rank's own slice."""

    def check_same_weights(self, flat: np.ndarray, step: int) -> None:
        """Raise, on every rank, if the ranks' weights are not bitwise the same."""

    @contextmanager
    def together(self):
        """A stretch of work (reading, checking, preparing) after which every rank
        learns whether any rank failed, so that none waits in a collective for a
        rank that has already given up."""
        yield


class MPIRanks(SingleProcess):
    """N processes started by mpiexec; mpi4py is imported only here."""

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError:
            raise CharlstmError("this was started under mpiexec, but mpi4py is not installed; "
                                'pip install "charlstm[mpi]"') from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.ranks_on_host = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()

    def sum_gradient(self, grads, loss):
        # 1/N is exact for N a power of two; otherwise it is one rounding per element.
        grads *= grads.dtype.type(1.0 / self.size)
        self.comm.Allreduce(self.MPI.IN_PLACE, grads, op=self.MPI.SUM)
        return float(self.sum(np.array([loss]))[0] / self.size)

    def any(self, flag):
        return bool(self.sum(np.array([float(flag)]))[0] > 0)

    def sum(self, values):
        values = np.ascontiguousarray(values)
        self.comm.Allreduce(self.MPI.IN_PLACE, values, op=self.MPI.SUM)
        return values

    def gather_streams(self, carried, streams):
        for full in carried:
            # (L, B, H) -> (B, L, H): each rank's streams become one contiguous block.
            mine = np.ascontiguousarray(full[:, streams].transpose(1, 0, 2))
            everyone = np.empty((full.shape[1], full.shape[0], full.shape[2]), dtype=full.dtype)
            self.comm.Allgather(mine, everyone)
            full[...] = everyone.transpose(1, 0, 2)

    def check_same_weights(self, flat, step):
        checksums = self.comm.allgather(zlib.crc32(flat.view(np.uint8)))
        differing = [rank for rank, value in enumerate(checksums) if value != checksums[0]]
        if differing:
            raise on_every_rank(CharlstmError(
                f"the weights of rank{'s' if len(differing) > 1 else ''} {', '.join(map(str, differing))} "
                f"differ from rank 0's at step {step}; stopped before training on them (a faulty node or "
                f"a mixed installation?); resume from the last checkpoint"))

    @contextmanager
    def together(self):
        failure = None
        try:
            yield
        except CharlstmError as exc:
            failure = exc
        failures = self.comm.allgather(None if failure is None else (str(failure), failure.exit_code))
        if failure is not None and self.rank == 0:
            raise on_every_rank(failure)
        for rank, failed in enumerate(failures):
            if failed is not None:
                message, exit_code = failed
                error = CharlstmError(f"rank {rank}: {message}")
                error.exit_code = exit_code
                raise on_every_rank(error) from None


def on_every_rank(error: CharlstmError) -> CharlstmError:
    """Mark an error that every rank raises alike: only rank 0 reports it."""
    error.on_every_rank = True
    return error


def under_mpiexec() -> bool:
    """Started by an MPI launcher with more than one process."""
    return any(int(os.environ.get(name, "1") or 1) > 1 for name in SIZE_VARIABLES)


def launcher_rank() -> int:
    """This process's rank as the launcher numbered it (0 when not under mpiexec),
    known before MPI starts: e.g. for a command-line error that every rank makes alike."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


_communicator: SingleProcess | None = None


def started() -> SingleProcess | None:
    """The communicator if this process made one (it trained), else None."""
    return _communicator


def communicator() -> SingleProcess:
    """This process's communicator, made once: MPI ranks under mpiexec, else one process."""
    global _communicator
    if _communicator is None:
        _communicator = MPIRanks() if under_mpiexec() else SingleProcess()
    return _communicator
