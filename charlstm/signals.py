"""Stop signals while training: SIGINT, SIGTERM and SIGHUP ask the loop to stop and save."""

from __future__ import annotations

import signal
import threading

# 128 + signal number, as shells report. SIGHUP (the terminal closed) is a stop like
# SIGTERM: its default action would kill the run with "running" in run.json and lose
# the steps since the last checkpoint.
STOP_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP while training: the first asks the loop to stop after
    the current step and save (abandoning an evaluation under way, see `abandonable`);
    a second stops at once, leaving the checkpoints as they are.

    SIGXFSZ is ignored meanwhile so that a file-size limit makes a write fail with an
    error we report, instead of killing the process."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}
        self._abandon = False

    def _handle(self, signum, frame):
        if self.received is not None:
            raise StopNow(signum)
        self.received = signum
        if self._abandon:
            raise _Abandoned

    def abandonable(self, work, *args, **kwargs):
        """work(*args, **kwargs), or None if a stop signal comes first or meanwhile.
        For work that changes nothing (an evaluation), which may take minutes: a
        container runtime sends SIGKILL about 10 s after SIGTERM."""
        if self.received is not None:
            return None
        self._abandon = True
        try:
            return work(*args, **kwargs)
        except _Abandoned:
            return None
        finally:
            self._abandon = False

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
            if hasattr(signal, "SIGXFSZ"):
                self._previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class _Abandoned(Exception):
    """Raised by the handler inside `abandonable` work."""


class StopNow(KeyboardInterrupt):
    """A second stop signal: unwind at once (a checkpoint being written is abandoned)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
