"""The exceptions users see: a single line saying what is wrong, where, and what to do."""

import contextlib
from typing import Iterator


class Gpt1Error(Exception):
    """Bad input or a failed operation the user can fix. The CLI prints it as one line and exits 2."""


class TrainingStopped(Exception):
    """Training stopped on a signal after writing a checkpoint; ``--resume`` continues it."""

    def __init__(self, step: int, checkpoint: str):
        super().__init__(f"stopped at step {step} on request; checkpoint {checkpoint} written: continue with --resume")
        self.step, self.checkpoint = step, checkpoint


class Interrupted(Exception):
    """Ctrl-C (or a second stop signal) ended a command; ``state`` says what it left behind."""

    def __init__(self, state: str):
        super().__init__(f"interrupted: {state}")
        self.state = state


@contextlib.contextmanager
def interrupt_leaves(state: str) -> Iterator[None]:
    """Turn a KeyboardInterrupt inside the block into :class:`Interrupted` naming what is left.

    The CLI prints it as one line and exits 130. (Typer would turn a bare KeyboardInterrupt into
    a return value that is easy to lose; this exception is never swallowed.)
    """
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(state) from None


class ExitCode:
    """Process exit codes of the ``gpt1`` command."""

    OK = 0
    BAD_INPUT = 2
    STOPPED = 75  # EX_TEMPFAIL: stopped on SIGINT/SIGTERM with a checkpoint, resumable
    INTERRUPTED = 130
