"""The one exception type users see: a single line saying what is wrong, where, and what to do."""


class Gpt1Error(Exception):
    """Bad input or a failed operation the user can fix. The CLI prints it as one line and exits 2."""


class ExitCode:
    """Process exit codes of the ``gpt1`` command."""

    OK = 0
    BAD_INPUT = 2
    INTERRUPTED = 130
