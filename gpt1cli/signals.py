"""SIGINT and SIGTERM (a cluster's preemption signal) within a block: a graceful stop that training
loops poll at step boundaries, and a save that no signal may cut in the middle."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _handled_by(handler: Callable[[int, object], None]) -> Iterator[dict]:
    """``handler`` for SIGINT and SIGTERM inside the block, the previous handlers (yielded) after.

    Python runs signal handlers in the main thread only, so elsewhere nothing is installed and
    nothing is yielded."""
    if threading.current_thread() is not threading.main_thread():
        yield {}
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield previous
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


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
    """A stop signal inside the block is recorded, not acted on (a second SIGINT stops at once)."""
    request = StopRequest()
    with _handled_by(request._handle):
        yield request


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends, then act on them as the handlers in place
    would: a save of several files is never cut in the middle. (numpy, for one, turns an interrupt
    inside ``np.save`` into an unrelated TypeError, which reached the user as a traceback.)"""
    held: list[int] = []
    with _handled_by(lambda signum, _frame: held.append(signum)) as previous:
        yield
    if held:
        handler = previous[held[0]]
        if callable(handler):
            handler(held[0], None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(held[0])
