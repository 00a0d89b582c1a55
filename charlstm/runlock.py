"""One process per run directory: an OS lock held while a process trains in it.

Two processes in one run directory mix two configs, two metrics streams and each
other's checkpoints. The lock is `flock` on the run directory itself, which the
kernel releases when the process ends however it ends, so a crash never leaves a
stale lock. Locking the directory (not a lock file created first) means a command
refused for any other reason leaves the directory exactly as it was; the holder's pid
is in run.json (see train.run_training), so that a refused second process can name it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from datetime import datetime
from pathlib import Path

from .errors import CharlstmError
from .rundir import make_run_dir, read_run_info


class RunLock:
    """`with RunLock(run_dir):` holds the run directory's lock or raises CharlstmError
    naming the process that holds it; `create` makes the directory first."""

    def __init__(self, run_dir: Path, create: bool = False):
        self.run_dir = Path(run_dir)
        self.create = create
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        if self.create:
            make_run_dir(self.run_dir)
        try:
            self.fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise CharlstmError(f"cannot open run directory {self.run_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = None
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise CharlstmError(f"cannot lock run directory {self.run_dir}: {exc.strerror}") from None
            raise CharlstmError(f"{self.run_dir} is in use by another charlstm process ({holder(self.run_dir)}); "
                                "wait for it to finish or stop it, or choose another --out") from None
        return self

    def __exit__(self, *exc_info) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None


def holder(run_dir: Path) -> str:
    pid = read_run_info(Path(run_dir), tolerant=True).get("pid")
    return f"pid {pid}" if type(pid) is int else "pid not yet recorded"


def default_run_dir(corpus: Path, root: Path = Path("runs")) -> Path:
    """runs/<corpus stem>-<time>-<pid>: two runs started in the same second are two
    processes, and no two live processes share a pid."""
    return root / f"{Path(corpus).stem}-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
