"""Streaming readers for text corpora: .txt; .jsonl, .parquet, .arrow, .tsv and .csv (a text field or
column, ``text`` unless named); and Hugging Face ``datasets`` folders (``save_to_disk``).

Inputs may be files, directories (searched recursively) and glob patterns; suffixes are matched
without regard to case. Nothing holds a whole corpus in memory, and a .txt file is read in
bounded chunks, so not even one document (or one line) is held whole: the corpus comes as
:class:`TextBatch` runs of text pieces, a document's pieces possibly spread over several batches.
Arrow files (IPC file or stream format) are memory-mapped and read one record batch at a time
(see :mod:`gpt1cli.data.tables` for them, ``datasets`` folders and the .tsv/.csv quoting rule).

What a document is: in a .txt file, a run of lines up to a blank line (or the end of the
file); in every other format, one record (row). A line becomes one piece of text, except a line
longer than :data:`LONG_LINE_BYTES`, which is cut into pieces at spaces (the space at each cut
is dropped: a SentencePiece or GPT-1 tokenizer turns the start of the next piece into the same
word boundary, so the tokens do not change).

A ``datasets`` folder stands for its Arrow files, in the order its ``state.json`` lists them; a
``DatasetDict`` folder for its ``train`` split (or its only split): name a split's folder to read
another. In a directory that is searched, ``datasets`` folders are read the same way, and the
shards of a ``gpt1 tokenize`` output folder (``train_00000.arrow``... beside ``manifest.json``)
are skipped.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import Gpt1Error
from ..fileio import parse_json
from .shards import MANIFEST, SHARD_NAME
from .tables import (DelimitedReader, TRAIN_SPLITS, check_text_column, dataset_files, dataset_folder, datasets_kind,
                     decode_utf8, open_arrow, show_names)

SUFFIXES = (".txt", ".jsonl", ".parquet", ".arrow", ".tsv", ".csv")
FORMATS = ".txt, .jsonl, .parquet, .arrow, .tsv or .csv"
TEXT_FIELD = "text"  # the field (column) of a record's text, unless named
ERROR_MODES = ("strict", "replace")
BOM = b"\xef\xbb\xbf"
READ_BYTES = 1 << 21  # .txt files are read in chunks of this size
LONG_LINE_BYTES = 1 << 20  # longer lines are cut at spaces into pieces of at most this size
BATCH_BYTES = 1 << 21  # text gathered into one TextBatch (about; a record or a piece is never split for it)


def input_suffix(path: Path) -> str:
    """The corpus format of ``path`` by its suffix, in lower case (``.TXT`` is ``.txt``)."""
    return path.suffix.lower()


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular(path: Path, mode: int) -> Gpt1Error:
    return Gpt1Error(f"input {path} is {_file_kind(mode)}, not a regular file: "
                     f"save the text to a {FORMATS} file and name that")


def check_text_field(text_field) -> str:
    """A field name to read the text from: a non-empty string."""
    if not isinstance(text_field, str) or not text_field or not text_field.strip():
        raise Gpt1Error(f"--text-field must name a field or column, got {text_field!r}")
    return text_field


def _datasets_inputs(folder: Path) -> list[Path]:
    """The Arrow files a ``datasets`` folder stands for (a DatasetDict: its train split, or its only one)."""
    return dataset_files(dataset_folder(folder, prefer=TRAIN_SPLITS))


def _scan(directory: Path) -> list[Path]:
    """The corpus files under ``directory`` (recursively, in path order), ``datasets`` folders read
    as such, ``gpt1 tokenize`` shards skipped."""
    if datasets_kind(directory) is not None:
        return _datasets_inputs(directory)
    found: list[tuple[Path, list[Path]]] = []
    for root, dirs, files in os.walk(directory):
        root_path = Path(root)
        keep = []
        for name in dirs:
            sub = root_path / name
            if datasets_kind(sub) is not None:
                found.append((sub, _datasets_inputs(sub)))
            else:
                keep.append(name)
        dirs[:] = keep
        shard_folder = MANIFEST in files
        for name in files:
            path = root_path / name
            if input_suffix(path) in SUFFIXES and not (shard_folder and SHARD_NAME.match(name)) and path.is_file():
                found.append((path, [path]))
    return [path for _, paths in sorted(found, key=lambda item: item[0]) for path in paths]


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Resolve files, directories and globs to a sorted, de-duplicated list of corpus files."""
    if not inputs:
        raise Gpt1Error(f"no input given: name one or more {FORMATS} files, datasets folders, directories or globs")
    found: list[Path] = []
    for item in inputs:
        item = str(item)
        path = Path(item)
        if any(ch in item for ch in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(item, recursive=True)) if Path(m).is_file()]
            if not matches:
                raise Gpt1Error(f"the pattern {item} matches no file")
            found.extend(matches)
            continue
        try:
            mode = os.stat(path).st_mode  # follows links; never opens (a FIFO would block)
        except FileNotFoundError:
            raise Gpt1Error(f"input not found: {path}") from None
        except OSError as exc:
            raise Gpt1Error(f"cannot read input {path}: {exc.strerror or exc}") from None
        if stat.S_ISDIR(mode):
            matches = _scan(path)
            if not matches:
                raise Gpt1Error(f"directory {path} holds no {FORMATS.replace(' or ', ', ')} file and no datasets folder")
            found.extend(matches)
        elif stat.S_ISREG(mode):
            found.append(path)
        else:
            raise _not_regular(path, mode)
    for path in found:
        if input_suffix(path) not in SUFFIXES:
            raise Gpt1Error(f"unsupported input {path}: use {FORMATS} (a record's text in a '{TEXT_FIELD}' field or "
                            "column, or the one --text-field names), or a datasets folder")
        if not os.access(path, os.R_OK):
            raise Gpt1Error(f"input {path} is not readable: check its permissions")
    # De-duplicate by real file, but read each by its own name: a link's target may have no suffix.
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path.absolute())
    return list(unique.values())


def _nonblocking(path, flags):
    # A FIFO put in place of a listed file must not block the open; fstat then refuses it.
    return os.open(path, flags | os.O_NONBLOCK)


def _open_regular(path: Path):
    handle = open(path, "rb", opener=_nonblocking)
    try:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
    except BaseException:
        handle.close()
        raise
    return handle


@dataclass
class TextBatch:
    """A run of a corpus as pieces of text to encode, and where its documents end.

    A document's tokens are the concatenated encodings of its pieces; it may begin in an earlier
    batch (``open_start``) and continue into the next one (``open_end``).
    """

    texts: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # UTF-8 input bytes each piece stands for
    ends: list[int] = field(default_factory=list)  # a document ends after texts[end - 1] (0: before texts[0])
    doc_bytes: list[int] = field(default_factory=list)  # UTF-8 bytes of each document that ends here
    open_start: bool = False
    open_end: bool = False
    input_bytes: int = 0  # bytes of the input files consumed (for progress)

    @property
    def text_bytes(self) -> int:
        return sum(self.sizes)

    def extend(self, other: "TextBatch") -> None:
        offset = len(self.texts)
        self.texts.extend(other.texts)
        self.sizes.extend(other.sizes)
        self.ends.extend(end + offset for end in other.ends)
        self.doc_bytes.extend(other.doc_bytes)
        self.open_end = other.open_end
        self.input_bytes += other.input_bytes


@dataclass
class Document:
    """One document's lines (without newlines) and its size in UTF-8 bytes."""

    lines: list[str]
    n_bytes: int


def _decode(raw: bytes, path: Path, offset: int, errors: str) -> str:
    return decode_utf8(raw, path, offset, errors)


def _clean(text: str) -> str:
    # NUL and lone surrogates are not text; SentencePiece would choke on them.
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _cut(raw: bytes, start: int, limit: int) -> tuple[int, int]:
    """End of the piece of ``raw`` that begins at ``start`` (at most ``limit`` bytes), and where the next begins.

    Cuts at a space (dropped) in the second half of the window, else at a UTF-8 character boundary.
    ``raw`` must hold more than ``limit`` bytes from ``start``.
    """
    end = start + limit
    space = raw.rfind(b" ", start + limit // 2, end)
    if space >= 0:
        return space, space + 1
    while end > start + 1 and (raw[end] & 0xC0) == 0x80:  # never inside a multi-byte character
        end -= 1
    return end, end


def cut_long_line(line: str, max_bytes: int | None = None) -> list[tuple[str, int]]:
    """``line`` as pieces of at most ``max_bytes`` (default :data:`LONG_LINE_BYTES`) UTF-8 bytes, each
    with the bytes it stands for.

    Short lines come back whole. Cuts fall at spaces (each dropped, its byte counted with the piece
    before it) where there is one in the second half of a window, else between characters.
    """
    max_bytes = max_bytes or LONG_LINE_BYTES
    if line.isascii() and len(line) <= max_bytes:
        return [(line, len(line))]
    raw = line.encode("utf-8")
    if len(raw) <= max_bytes:
        return [(line, len(raw))]
    pieces, start = [], 0
    while len(raw) - start > max_bytes:
        end, following = _cut(raw, start, max_bytes)
        pieces.append((raw[start:end].decode("utf-8"), following - start))
        start = following
    pieces.append((raw[start:].decode("utf-8"), len(raw) - start))
    return pieces


class _TxtReader:
    """A .txt file as TextBatches, read in chunks of :data:`READ_BYTES`.

    Complete lines of a chunk are decoded and split in one go; a line longer than
    :data:`LONG_LINE_BYTES` is cut into pieces as it streams in, so memory stays bounded.
    """

    def __init__(self, path: Path, errors: str):
        self.path, self.errors = path, errors
        self.open_bytes = 0  # bytes of the current document so far (0: no document open)
        self.in_long_line = False  # a long line is being read piece by piece
        self.line_content = False  # ...and it has shown text that is not whitespace
        self.held = 0  # bytes of that line's leading whitespace pieces, not yet given to a piece
        self.batch = TextBatch()

    def batches(self) -> Iterator[TextBatch]:
        with _open_regular(self.path) as handle:
            pending = handle.read(len(BOM))
            self.batch.input_bytes += len(pending)
            offset = 0  # the file offset of pending[0]
            if pending == BOM:
                pending, offset = b"", len(BOM)
            while True:
                data = handle.read(READ_BYTES)
                self.batch.input_bytes += len(data)
                pending += data
                cut = pending.rfind(b"\n") if data else len(pending) - 1
                if cut >= 0:
                    self._lines(pending[: cut + 1], offset, final=not data)
                    offset += cut + 1
                    pending = pending[cut + 1 :]
                while len(pending) > LONG_LINE_BYTES:  # a line with no end in sight yet
                    end, following = _cut(pending, 0, LONG_LINE_BYTES)
                    self._long_piece(pending[:end], following, offset, last=False)
                    offset += following
                    pending = pending[following:]
                if not data:
                    break
                if self.batch.text_bytes >= BATCH_BYTES:
                    yield self._take()
        if self.open_bytes:
            self._end_document()
        yield self._take()

    def _take(self) -> TextBatch:
        batch = self.batch
        batch.open_end = self.open_bytes > 0
        self.batch = TextBatch(open_start=batch.open_end)
        return batch

    def _end_document(self) -> None:
        self.batch.ends.append(len(self.batch.texts))
        self.batch.doc_bytes.append(self.open_bytes)
        self.open_bytes = 0

    def _lines(self, block: bytes, offset: int, final: bool) -> None:
        """Complete lines (each ending in a newline, except the file's last when ``final``)."""
        text = _decode(block, self.path, offset, self.errors)
        lines = text.split("\n")
        if text.isascii():
            lengths = [len(line) for line in lines]
        else:
            lengths = [len(raw) for raw in block.split(b"\n")]
        last = lines.pop()  # after the final newline: empty, or the file's unterminated last line
        last_length = lengths.pop()
        if "\x00" in text or "\r" in text:
            lines = [line.replace("\x00", "").rstrip("\r") for line in lines]
        start = 0
        if self.in_long_line and lines:  # the first line ends the long line streamed so far
            self._long_line(block[: lengths[0] + 1], offset, newline=True)
            start = 1
        if lengths and max(lengths) > LONG_LINE_BYTES:
            self._lines_slowly(block, offset, lines, lengths, start)
        else:
            self._short_lines(lines, lengths, start)
        if final and (last or self.in_long_line):
            position = len(block) - last_length
            if self.in_long_line or last_length > LONG_LINE_BYTES:
                self._long_line(block[position:], offset + position, newline=False)
            else:
                self._short_lines([last.replace("\x00", "").rstrip("\r")], [last_length - 1], 0)

    def _short_lines(self, lines: list[str], lengths: list[int], start: int) -> None:
        # The hot loop of tokenizing: keep it lean.
        texts, sizes = self.batch.texts, self.batch.sizes
        open_bytes = self.open_bytes
        for index in range(start, len(lines)):
            line = lines[index]
            if line and not line.isspace():
                size = lengths[index] + 1
                texts.append(line)
                sizes.append(size)
                open_bytes += size
            elif open_bytes:
                self.batch.ends.append(len(texts))
                self.batch.doc_bytes.append(open_bytes)
                open_bytes = 0
        self.open_bytes = open_bytes

    def _lines_slowly(self, block: bytes, offset: int, lines: list[str], lengths: list[int], start: int) -> None:
        position = sum(lengths[:start]) + start
        for index in range(start, len(lines)):
            length = lengths[index]
            if length > LONG_LINE_BYTES:
                self._long_line(block[position : position + length + 1], offset + position, newline=True)
            else:
                self._short_lines(lines[index : index + 1], lengths[index : index + 1], 0)
            position += length + 1

    def _long_line(self, raw: bytes, offset: int, newline: bool) -> None:
        """A whole line (with its newline when ``newline``) longer than a piece, or the rest of one."""
        start = 0
        while len(raw) - start - newline > LONG_LINE_BYTES:
            end, following = _cut(raw, start, LONG_LINE_BYTES)
            self._long_piece(raw[start:end], following - start, offset + start, last=False)
            start = following
        body = raw[start : len(raw) - 1] if newline else raw[start:]
        self._long_piece(body, len(raw) - start, offset + start, last=True)

    def _long_piece(self, raw: bytes, size: int, offset: int, last: bool) -> None:
        """One piece of a long line; ``size`` counts the bytes it stands for (a dropped space, the newline)."""
        self.in_long_line = not last
        text = _decode(raw, self.path, offset, self.errors).replace("\x00", "")
        if last:
            text = text.rstrip("\r")
        if self.line_content or (text and not text.isspace()):
            # Leading whitespace of over a piece's length is dropped; its bytes still count.
            self.batch.texts.append(text)
            self.batch.sizes.append(size + self.held)
            self.open_bytes += size + self.held
            self.held = 0
            self.line_content = True
        else:
            self.held += size
        if last:
            if not self.line_content and self.open_bytes:  # an all-blank line ends the document
                self._end_document()
            self.line_content, self.held = False, 0


def _record_batch(batch: TextBatch, text: str) -> int:
    """Add one .jsonl/.parquet record's text to ``batch`` as a document (nothing if it is blank); its bytes."""
    text = _clean(text)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return 0
    n_bytes = len(text) if text.isascii() else len(text.encode("utf-8"))
    texts, sizes = [], []
    for line in lines:
        for piece, size in cut_long_line(line):
            texts.append(piece)
            sizes.append(size)
    # Newlines and blank lines have no piece of their own: the last piece carries their bytes.
    sizes[-1] = n_bytes - sum(sizes[:-1])
    batch.texts.extend(texts)
    batch.sizes.extend(sizes)
    batch.ends.append(len(batch.texts))
    batch.doc_bytes.append(n_bytes)
    return n_bytes


def _field_hint(text_field: str) -> str:
    return "; name the text's field with --text-field" if text_field == TEXT_FIELD else ""


def _jsonl_batches(path: Path, errors: str, text_field: str) -> Iterator[TextBatch]:
    batch, gathered = TextBatch(), 0
    offset = 0
    with _open_regular(path) as handle:
        for number, raw in enumerate(handle, start=1):
            batch.input_bytes += len(raw)
            start = len(BOM) if number == 1 and raw.startswith(BOM) else 0
            line = _decode(raw[start:], path, offset + start, errors)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = parse_json(line, "it")
            except Gpt1Error as exc:  # also a 5000-digit number or nesting deep enough to exhaust the stack
                reason = str(exc).removeprefix("it ").removeprefix("is ").replace("(line 1, column", "(column")
                raise Gpt1Error(f"{path}:{number}: {reason}; each line must be a JSON object with a "
                                f"'{text_field}' field") from None
            if not isinstance(record, dict):
                raise Gpt1Error(f"{path}:{number}: expected a JSON object with a '{text_field}' field")
            if text_field not in record:
                raise Gpt1Error(f"{path}:{number}: missing the '{text_field}' field (its fields: {show_names(record)})"
                                f"{_field_hint(text_field)}")
            text = record[text_field]
            if not isinstance(text, str):
                raise Gpt1Error(f"{path}: line {number} has a '{text_field}' that is not a string")
            gathered += _record_batch(batch, text)
            if gathered >= BATCH_BYTES:
                yield batch
                batch, gathered = TextBatch(), 0
    yield batch


def _parquet_batches(path: Path, text_field: str) -> Iterator[TextBatch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _open_regular(path) as handle:
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowException, OSError) as exc:
            raise Gpt1Error(f"{path}: not a readable Parquet file ({exc})") from None
        names = parquet.schema_arrow.names
        if text_field not in names:
            raise Gpt1Error(f"{path}: no '{text_field}' column (columns: {show_names(names)}){_field_hint(text_field)}")
        row, gathered = 0, 0
        batch = TextBatch(input_bytes=os.fstat(handle.fileno()).st_size)
        try:
            for record_batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
                for text in record_batch.column(0).to_pylist():
                    row += 1
                    if text is None:
                        continue
                    if not isinstance(text, str):
                        raise Gpt1Error(f"{path}: row {row} has a '{text_field}' that is not a string")
                    gathered += _record_batch(batch, text)
                if gathered >= BATCH_BYTES:
                    yield batch
                    batch, gathered = TextBatch(), 0
        except pa.ArrowException as exc:
            raise Gpt1Error(f"{path}: corrupt Parquet data near row {row} ({exc})") from None
        yield batch


def _arrow_batches(path: Path, text_field: str) -> Iterator[TextBatch]:
    """An Arrow IPC file or stream, memory-mapped, one record batch at a time."""
    with open_arrow(path) as source:
        index = check_text_column(source.schema, text_field, path, _field_hint(text_field))
        batch, gathered = TextBatch(), 0
        for record_batch, size in source.batches():
            batch.input_bytes += size
            if record_batch is not None:
                for text in record_batch.column(index).to_pylist():
                    if text:
                        gathered += _record_batch(batch, text)
            if gathered >= BATCH_BYTES:
                yield batch
                batch, gathered = TextBatch(), 0
        yield batch


def _delimited_batches(path: Path, errors: str, text_field: str) -> Iterator[TextBatch]:
    """A .tsv or .csv file with a header: one document per row, from the ``text_field`` column."""
    with DelimitedReader(path, errors=errors) as reader:
        if text_field not in reader.header:
            raise Gpt1Error(f"{path}: no '{text_field}' column (columns: {show_names(reader.header)})"
                            f"{_field_hint(text_field)}")
        column = reader.header.index(text_field)
        batch, gathered, reported = TextBatch(), 0, 0
        for _, row in reader.rows():
            gathered += _record_batch(batch, row[column])
            if gathered >= BATCH_BYTES:
                batch.input_bytes, reported = reader.consumed - reported, reader.consumed
                yield batch
                batch, gathered = TextBatch(), 0
        batch.input_bytes = reader.consumed - reported
        yield batch


def check_errors_mode(errors: str) -> None:
    if errors not in ERROR_MODES:
        raise Gpt1Error(f"--errors must be strict or replace, not {errors!r}")


def check_columns(paths: list[Path], text_field: str = TEXT_FIELD, errors: str = "strict") -> None:
    """Every columnar input (.parquet, .arrow, .tsv, .csv) has the text column, checked from its
    schema or header alone; a .jsonl record is checked as it is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in paths:
        suffix = input_suffix(path)
        try:
            if suffix == ".arrow":
                with open_arrow(path) as source:
                    check_text_column(source.schema, text_field, path, _field_hint(text_field))
            elif suffix in (".tsv", ".csv"):
                with DelimitedReader(path, errors=errors) as reader:
                    if text_field not in reader.header:
                        raise Gpt1Error(f"{path}: no '{text_field}' column (columns: {show_names(reader.header)})"
                                        f"{_field_hint(text_field)}")
            elif suffix == ".parquet":
                with _open_regular(path) as handle:
                    names = pq.read_schema(handle).names
                if text_field not in names:
                    raise Gpt1Error(f"{path}: no '{text_field}' column (columns: {show_names(names)})"
                                    f"{_field_hint(text_field)}")
        except pa.ArrowException as exc:
            raise Gpt1Error(f"{path}: not a readable Parquet file ({exc})") from None
        except OSError as exc:
            raise Gpt1Error(f"cannot read {path}: {exc.strerror or exc}") from None


def _file_batches(path: Path, errors: str, text_field: str) -> Iterator[TextBatch]:
    try:
        suffix = input_suffix(path)
        if suffix == ".txt":
            yield from _TxtReader(path, errors).batches()
        elif suffix == ".jsonl":
            yield from _jsonl_batches(path, errors, text_field)
        elif suffix == ".arrow":
            yield from _arrow_batches(path, text_field)
        elif suffix in (".tsv", ".csv"):
            yield from _delimited_batches(path, errors, text_field)
        else:
            yield from _parquet_batches(path, text_field)
    except OSError as exc:
        raise Gpt1Error(f"cannot read {path}: {exc.strerror or exc}") from None


def iter_text_batches(paths: list[Path], errors: str = "strict", batch_bytes: int | None = None,
                      text_field: str = TEXT_FIELD) -> Iterator[TextBatch]:
    """The corpus as :class:`TextBatch` runs of about ``batch_bytes`` (default :data:`BATCH_BYTES`) of text.

    Small files share a batch; a document never spans two files, and the last batch closes the
    last document. ``text_field`` is the field (column) holding a record's text (not used for .txt).
    """
    check_errors_mode(errors)
    check_text_field(text_field)
    batch_bytes = batch_bytes or BATCH_BYTES
    gathered: TextBatch | None = None
    size = 0
    for path in paths:
        for batch in _file_batches(path, errors, text_field):
            if gathered is None:
                gathered = batch
            else:
                gathered.extend(batch)
            size += batch.text_bytes
            if size >= batch_bytes:
                yield gathered
                gathered, size = None, 0
    if gathered is not None and (gathered.texts or gathered.ends or gathered.input_bytes):
        yield gathered


def iter_documents(paths: list[Path], errors: str = "strict", text_field: str = TEXT_FIELD) -> Iterator[Document]:
    """Yield every non-empty document of every file in order (each held whole: for small corpora)."""
    lines: list[str] = []
    for batch in iter_text_batches(paths, errors, text_field=text_field):
        start = 0
        for end, n_bytes in zip(batch.ends, batch.doc_bytes):
            lines.extend(text for text in batch.texts[start:end] if text.strip())
            yield Document(lines, n_bytes)
            lines, start = [], end
        lines.extend(text for text in batch.texts[start:] if text.strip())


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
