"""Atomic writes and content hashes.

Every file the toolkit produces is written to a temporary name in the same directory,
flushed to disk and renamed into place, so a crash leaves either the old file or the new
one, never a torn one that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import Gpt1Error

HASH_NAME = "blake2b"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise Gpt1Error(f"cannot write {path}: {exc.strerror or exc}; check the directory exists and is writable") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    follow_umask(tmp_path)  # mkstemp makes 0600; outputs are ordinary files
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise Gpt1Error(f"cannot write {path}: {exc.strerror or exc}; free some disk space or choose another directory") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have: writers such as safetensors
    and ``mkstemp`` create 0600 files, but every output of the toolkit follows the umask."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~_umask())


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def file_hash(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """BLAKE2b hex digest of a file, read in chunks."""
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def bytes_hash(data: bytes) -> str:
    """BLAKE2b hex digest of ``data``, as :func:`file_hash` of a file holding them."""
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def parse_json(text: str, what: str):
    """Parse JSON text from an untrusted file; every failure is one :class:`Gpt1Error`.

    Python's parser raises ``ValueError`` for integers over 4300 digits and ``RecursionError``
    for deep nesting: both are reported like any other malformed input.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Gpt1Error(f"{what} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    except RecursionError:
        raise Gpt1Error(f"{what} is nested too deeply to be read as JSON") from None
    except ValueError as exc:  # e.g. an integer with thousands of digits
        raise Gpt1Error(f"{what} holds a value JSON cannot be read into ({exc})") from None


def read_text(path: str | os.PathLike, what: str) -> str:
    """A UTF-8 text file (a byte-order mark skipped); every failure is one clear :class:`Gpt1Error`."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise Gpt1Error(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise Gpt1Error(f"cannot read {what} {path}: {exc}") from None


def read_json(path: str | os.PathLike, what: str) -> dict:
    """Load a JSON object, turning every failure into one clear :class:`Gpt1Error`."""
    path = Path(path)
    text = read_text(path, what)
    try:
        obj = parse_json(text, f"{what} {path}")
    except Gpt1Error as exc:
        raise Gpt1Error(f"{exc}: it is corrupt, truncated or not ours") from None
    if not isinstance(obj, dict):
        raise Gpt1Error(f"{what} {path} is not a JSON object: it is corrupt or from another tool")
    return obj


def plain_name(name, what: str, source: str | os.PathLike) -> str:
    """``name`` if it is a plain file name (no directory part, not hidden); else one clear error.

    Every file name read from a manifest, checkpoint, journal or foreign config goes through
    here before it is joined to a directory, so no recorded name can reach outside it.
    """
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or name.startswith(".") or not name.isprintable()):
        raise Gpt1Error(f"{source} names {what} {name!r}, which is not a plain file name in its folder: "
                        "the file is corrupt or was edited to point elsewhere")
    return name


TRASH_PREFIX = ".trash-"


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a directory so that a crash at any moment leaves either all of it or none of it visible.

    The directory is first renamed (atomically) to a hidden trash name beside it, then removed;
    a crash during the removal leaves only a hidden ``.trash-*`` folder that readers ignore and
    :func:`clean_trash` removes later.
    """
    path = Path(path)
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{os.getpid()}")
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def clean_trash(directory: str | os.PathLike) -> None:
    """Remove what an interrupted :func:`remove_tree` left in ``directory``."""
    for stale in Path(directory).glob(f"{TRASH_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def refuse_to_replace(path: str | os.PathLike, overwrite: bool, option: str = "--overwrite") -> None:
    """The one overwrite policy: an existing output is replaced only when the user said so."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise Gpt1Error(f"{path} already exists; pass {option} to replace it or choose another path")
