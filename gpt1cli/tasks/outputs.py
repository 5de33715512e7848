"""Output files of the task commands: the overwrite policy, ``-`` for standard output, atomic
writes, and what an interrupted writer leaves behind.

A file output is written under a temporary name and renamed into place when complete, so a
crash or Ctrl-C never leaves a file that looks finished. A long batch (``gpt1 generate
--input``) keeps what it had done as ``OUT.partial`` when interrupted: named so it cannot be
taken for the finished output.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator, TextIO

from ..errors import Interrupted
from ..fileio import atomic_path, atomic_write_json, refuse_to_replace
from ..locking import LOCK_NAME, exclusive_output

STDOUT = "-"
PARTIAL_SUFFIX = ".partial"


def is_stdout(path) -> bool:
    return path is not None and str(path) == STDOUT


def where(path) -> str:
    """How messages name an output."""
    return "standard output" if is_stdout(path) else str(path)


def check_output(path, overwrite: bool) -> None:
    """Refuse an existing output file unless ``overwrite`` (standard output is never refused)."""
    if path is not None and not is_stdout(path):
        refuse_to_replace(path, overwrite)


def partial_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


@contextlib.contextmanager
def output_lines(path, *, total: int | None = None, unit: str = "lines") -> Iterator["LineWriter"]:
    """A writer of JSON lines to ``path`` (atomically) or standard output (``-``).

    On Ctrl-C the lines written so far are kept in ``PATH.partial`` (a file output) and
    :class:`~gpt1cli.errors.Interrupted` says how many of ``total`` there are.
    """
    if is_stdout(path):
        writer = LineWriter(sys.stdout)
        try:
            yield writer
        except KeyboardInterrupt:
            raise Interrupted(f"{writer.count}{_of(total)} {unit} were written to standard output") from None
        sys.stdout.flush()
        return
    with atomic_path(path) as tmp:
        handle = open(tmp, "w", encoding="utf-8")
        writer = LineWriter(handle)
        try:
            yield writer
        except KeyboardInterrupt:
            handle.close()
            if writer.count == 0:
                raise Interrupted(f"{path} was not written") from None
            kept = partial_path(path)
            os.replace(tmp, kept)  # the temporary file's lines are complete: each was flushed whole
            raise Interrupted(f"{writer.count}{_of(total)} {unit} kept in {kept}; {path} was not written") from None
        finally:
            handle.close()


@contextlib.contextmanager
def locked_directory(directory, what: str, *, enabled: bool = True) -> Iterator[None]:
    """Hold the writer's lock on ``directory`` for the block (a no-op unless ``enabled``, e.g. on
    ranks other than 0). A directory the block created and left empty is removed if it fails."""
    if not enabled:
        yield
        return
    directory = Path(directory)
    existed = directory.exists()
    with exclusive_output(directory, what):
        try:
            yield
        except BaseException:
            if not existed and [p.name for p in directory.iterdir()] == [LOCK_NAME]:
                (directory / LOCK_NAME).unlink()
                directory.rmdir()
            raise


def _of(total: int | None) -> str:
    return "" if total is None else f" of {total}"


class LineWriter:
    """Writes one JSON object per line, flushed whole, and counts them."""

    def __init__(self, handle: TextIO):
        self.handle, self.count = handle, 0

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1
        self.handle.flush()


def write_json(path, obj) -> None:
    """Indented JSON to ``path`` (atomically) or to standard output (``-``)."""
    if is_stdout(path):
        sys.stdout.write(json.dumps(obj, indent=2) + "\n")
        sys.stdout.flush()
        return
    atomic_write_json(path, obj)
