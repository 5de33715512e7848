"""The one exception type users see: a single line saying what is wrong, where, and what to do."""


class Gpt1Error(Exception):
    """Bad input or a failed operation the user can fix. The CLI prints it as one line and exits 2."""


class TrainingStopped(Exception):
    """Training stopped on a signal after writing a checkpoint; ``--resume`` continues it."""

    def __init__(self, step: int, checkpoint: str):
        super().__init__(f"stopped at step {step} on request; checkpoint {checkpoint} written: continue with --resume")
        self.step, self.checkpoint = step, checkpoint


class ExitCode:
    """Process exit codes of the ``gpt1`` command."""

    OK = 0
    BAD_INPUT = 2
    STOPPED = 75  # EX_TEMPFAIL: stopped on SIGINT/SIGTERM with a checkpoint, resumable
    INTERRUPTED = 130
