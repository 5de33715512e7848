"""Streaming readers for text corpora: .txt, .jsonl (``text`` field), .parquet (``text`` column).

Inputs may be files, directories (searched recursively) and glob patterns. Nothing holds a
whole corpus in memory: documents come one at a time, each as a list of lines.

What a document is: in a .txt file, a run of lines up to a blank line (or the end of the
file); in .jsonl and .parquet, one record.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import Gpt1Error

SUFFIXES = (".txt", ".jsonl", ".parquet")
ERROR_MODES = ("strict", "replace")


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Resolve files, directories and globs to a sorted, de-duplicated list of corpus files."""
    if not inputs:
        raise Gpt1Error("no input given: name one or more .txt, .jsonl or .parquet files, directories or globs")
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if any(ch in item for ch in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(item, recursive=True)) if Path(m).is_file()]
            if not matches:
                raise Gpt1Error(f"the pattern {item} matches no file")
            found.extend(matches)
        elif path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            if not matches:
                raise Gpt1Error(f"directory {path} holds no .txt, .jsonl or .parquet file")
            found.extend(matches)
        elif path.is_file():
            found.append(path)
        else:
            raise Gpt1Error(f"input not found: {path}")
    for path in found:
        if path.suffix not in SUFFIXES:
            raise Gpt1Error(f"unsupported input {path}: use .txt, .jsonl (with a 'text' field) or .parquet (with a 'text' column)")
        if not os.access(path, os.R_OK):
            raise Gpt1Error(f"input {path} is not readable: check its permissions")
    # De-duplicate by real file, but read each by its own name: a link's target may have no suffix.
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path.absolute())
    return list(unique.values())


@dataclass
class Document:
    """One document's lines (without newlines) and its size in UTF-8 bytes."""

    lines: list[str]
    n_bytes: int


def _decode(raw: bytes, path: Path, offset: int, errors: str) -> str:
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise Gpt1Error(
            f"{path}: invalid UTF-8 at byte {offset + exc.start}; fix the file or pass --errors replace"
        ) from None


def _clean(text: str) -> str:
    # NUL and lone surrogates are not text; SentencePiece would choke on them.
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _txt_documents(path: Path, errors: str) -> Iterator[Document]:
    lines: list[str] = []
    size = 0
    offset = 0
    with open(path, "rb") as handle:
        for raw in handle:
            text = _clean(_decode(raw, path, offset, errors)).rstrip("\r\n")
            offset += len(raw)
            if text.strip():
                lines.append(text)
                size += len(raw)
            elif lines:
                yield Document(lines, size)
                lines, size = [], 0
    if lines:
        yield Document(lines, size)


def _text_document(text, path: Path, where: str) -> Document | None:
    if not isinstance(text, str):
        raise Gpt1Error(f"{path}: {where} has a 'text' that is not a string")
    text = _clean(text)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    return Document(lines, len(text.encode("utf-8")))


def _jsonl_documents(path: Path, errors: str) -> Iterator[Document]:
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = _decode(raw, path, offset, errors)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise Gpt1Error(f"{path}:{number}: not valid JSON; each line must be an object with a 'text' field") from None
            if not isinstance(record, dict) or "text" not in record:
                raise Gpt1Error(f"{path}:{number}: missing the 'text' field")
            doc = _text_document(record["text"], path, f"line {number}")
            if doc is not None:
                yield doc


def _parquet_documents(path: Path) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise Gpt1Error(f"{path}: not a readable Parquet file ({exc})") from None
    if "text" not in parquet.schema_arrow.names:
        raise Gpt1Error(f"{path}: no 'text' column (columns: {', '.join(parquet.schema_arrow.names)})")
    row = 0
    try:
        for batch in parquet.iter_batches(columns=["text"], batch_size=1024):
            for text in batch.column(0).to_pylist():
                row += 1
                if text is None:
                    continue
                doc = _text_document(text, path, f"row {row}")
                if doc is not None:
                    yield doc
    except pa.ArrowException as exc:
        raise Gpt1Error(f"{path}: corrupt Parquet data near row {row} ({exc})") from None


def iter_documents(paths: list[Path], errors: str = "strict") -> Iterator[Document]:
    """Yield every non-empty document of every file in order."""
    if errors not in ERROR_MODES:
        raise Gpt1Error(f"--errors must be strict or replace, not {errors!r}")
    for path in paths:
        try:
            if path.suffix == ".txt":
                yield from _txt_documents(path, errors)
            elif path.suffix == ".jsonl":
                yield from _jsonl_documents(path, errors)
            else:
                yield from _parquet_documents(path)
        except OSError as exc:
            raise Gpt1Error(f"cannot read {path}: {exc.strerror or exc}") from None


def split_long_line(line: str, max_bytes: int) -> list[str]:
    """Split a line at spaces into pieces of at most ``max_bytes`` UTF-8 bytes.

    SentencePiece's trainer skips sentences longer than its limit; splitting keeps their text.
    """
    if len(line.encode("utf-8")) <= max_bytes:
        return [line]
    pieces, current, size = [], [], 0
    for word in line.split(" "):
        word_bytes = len(word.encode("utf-8")) + 1
        if word_bytes > max_bytes:  # a single huge "word": cut it by characters
            if current:
                pieces.append(" ".join(current))
                current, size = [], 0
            chunk = max_bytes // 4
            pieces.extend(word[i : i + chunk] for i in range(0, len(word), chunk))
            continue
        if size + word_bytes > max_bytes and current:
            pieces.append(" ".join(current))
            current, size = [], 0
        current.append(word)
        size += word_bytes
    if current:
        pieces.append(" ".join(current))
    return pieces
