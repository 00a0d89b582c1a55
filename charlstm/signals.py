"""Stop signals while training: SIGINT and SIGTERM ask the loop to stop and save."""

from __future__ import annotations

import signal
import threading

STOP_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report


class StopSignals:
    """SIGINT and SIGTERM while training: the first asks the loop to stop after the
    current step and save; a second stops at once, leaving the checkpoints as they are.

    SIGXFSZ is ignored meanwhile so that a file-size limit makes a write fail with an
    error we report, instead of killing the process."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise StopNow(signum)
        self.received = signum

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


class StopNow(KeyboardInterrupt):
    """A second stop signal: unwind at once (a checkpoint being written is abandoned)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
