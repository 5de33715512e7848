"""One writer per output directory.

Two runs writing one ``--out`` would interleave checkpoints or shards of different models or
corpora. A writer holds an exclusive ``fcntl.flock`` on ``DIR/.gpt1.lock`` for as long as it
writes; the kernel releases it when the process exits or dies, so a killed run never leaves a
stale lock behind. The holder's PID is written into the file for the second writer's message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .errors import Gpt1Error

LOCK_NAME = ".gpt1.lock"


@contextlib.contextmanager
def exclusive_output(directory: str | os.PathLike, what: str = "output directory") -> Iterator[Path]:
    """Hold the writer's lock on ``directory`` (created if missing) for the block."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise Gpt1Error(f"{what} {directory} exists and is not a directory; choose another path")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise Gpt1Error(f"cannot write to {what} {directory}: {exc.strerror or exc}; "
                        "check it is a writable directory") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise Gpt1Error(f"cannot lock {what} {directory}: {exc.strerror or exc}") from None
            holder = _read_holder(fd)
            raise Gpt1Error(f"{what} {directory} is in use by another gpt1 process{holder}; "
                            "wait for it to finish, stop it, or choose another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield directory
    finally:
        os.close(fd)  # closing releases the lock


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (PID {pid})" if pid.isdigit() else ""
