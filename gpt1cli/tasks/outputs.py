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
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, TextIO

from .. import __version__
from ..checkpoint import META, resolve_checkpoint
from ..errors import Interrupted
from ..fileio import atomic_path, atomic_write_json, file_hash, read_json, refuse_to_replace
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


# ---------------------------------------------------------------------------------------------
# Provenance: what produced a results file

HASH_LIMIT = 1 << 30  # data files up to 1 GiB are hashed; larger ones are named by size and time


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def describe_file(path: str | os.PathLike) -> dict:
    """A data file as a results file names it: resolved path, size, modification time (UTC) and,
    up to :data:`HASH_LIMIT` bytes, its BLAKE2b (``None`` above, and for a folder)."""
    path = Path(path).resolve()
    if path.is_dir():  # a datasets folder: its files' total size and newest time, no hash
        stats = [p.stat() for p in sorted(path.rglob("*")) if p.is_file()]
        return {"path": str(path), "bytes": sum(s.st_size for s in stats), "files": len(stats),
                "modified": _utc(max((s.st_mtime for s in stats), default=path.stat().st_mtime)), "blake2b": None}
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "modified": _utc(stat.st_mtime),
            "blake2b": file_hash(path) if stat.st_size <= HASH_LIMIT else None}


def provenance(command: str, checkpoint: str | os.PathLike, data: list, settings: dict) -> dict:
    """Where results came from: the ``command``, the checkpoint folder that was evaluated (resolved as
    :func:`~gpt1cli.checkpoint.resolve_checkpoint` does at the time), its step and weights hash, the data files
    (:func:`describe_file`), the ``settings`` used, the gpt1 version and the time (UTC)."""
    folder = resolve_checkpoint(checkpoint).resolve()
    meta = read_json(folder / META, "checkpoint metadata")
    task = meta.get("task") if isinstance(meta.get("task"), dict) else None
    return {
        "command": command,
        "gpt1_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "checkpoint": {"path": str(folder), "step": meta.get("step"), "weights_blake2b": meta.get("weights_blake2b"),
                       "task": task.get("name") if task else None},
        "data": [describe_file(path) for path in data],
        "settings": settings,
    }
