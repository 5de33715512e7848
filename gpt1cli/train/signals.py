"""Graceful stops: SIGINT and SIGTERM (a cluster's preemption signal) end training at the next
step boundary with a checkpoint; a second SIGINT stops at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class StopRequest:
    """Records the first stop signal; the training loop polls :attr:`requested`."""

    def __init__(self):
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt  # the second signal: stop now
        self.signal = signum


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Install the handlers for the block (only possible in the main thread; elsewhere a no-op)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
