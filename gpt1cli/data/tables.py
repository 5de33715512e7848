"""Tabular inputs, shared by corpora (``gpt1 tokenize``) and task files: Arrow IPC files and
streams, Hugging Face ``datasets`` folders, and delimited text (.tsv, .csv).

* **Arrow** (``.arrow``): the IPC *file* format (it begins with ``ARROW1``) or the IPC *stream*
  format (anything else), told apart by the first bytes. The file is memory-mapped and read one
  record batch at a time, so a large corpus is never loaded whole.
* **A ``datasets`` folder**, as ``Dataset.save_to_disk`` writes it: ``state.json`` (its
  ``_data_files`` name the ``data-0000N-of-0000M.arrow`` stream files, in order),
  ``dataset_info.json`` (the features) and the Arrow files. A ``DatasetDict`` folder holds
  ``dataset_dict.json`` (its ``splits``) and one such folder per split: name the split's folder
  (``DIR/validation``) to choose it, or let the reader choose (see :func:`dataset_folder`).
  ``ClassLabel`` features give label names (:func:`class_names`).
* **Delimited text** (``.tsv``: tabs, ``.csv``: commas): a header line naming the columns, then
  one row per line, every row with as many fields as the header. Quoting follows CSV: a field
  that *begins* with ``"`` runs to the matching ``"`` and may hold tabs, commas and line breaks
  (a ``"`` inside it is written ``""``); a ``"`` anywhere else is an ordinary character. A
  UTF-8 byte-order mark before the header is dropped; blank lines are skipped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import Gpt1Error
from ..fileio import file_hash, plain_name, read_json

DATASET_STATE = "state.json"
DATASET_DICT = "dataset_dict.json"
DATASET_INFO = "dataset_info.json"
ARROW_FILE_MAGIC = b"ARROW1"
BOM = b"\xef\xbb\xbf"
DELIMITERS = {".tsv": "\t", ".csv": ","}
_FIELD_LIMIT = 1 << 30  # a cell may be a whole article (csv's default limit is 128 KiB)
# The split a DatasetDict stands for when none is named: training data ...
TRAIN_SPLITS = ("train",)
# ... and validation data.
VALIDATION_SPLITS = ("validation", "valid", "val", "dev")


def show_names(names, limit: int = 30) -> str:
    """Field or column names for a one-line message: comma-separated, an odd name (empty, a line
    break, not printable) as its repr, at most ``limit`` of them."""
    names = list(names)
    shown = [name if isinstance(name, str) and name and name.isprintable() and name.strip() == name else repr(name)
             for name in names[:limit]]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (", ".join(shown) or "none") + more


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets folders


def datasets_kind(path: Path) -> str | None:
    """``"dataset"`` for a ``save_to_disk`` Dataset folder, ``"dict"`` for a DatasetDict folder, else None."""
    path = Path(path)
    if (path / DATASET_STATE).is_file():
        return "dataset"
    if (path / DATASET_DICT).is_file():
        return "dict"
    return None


def dataset_splits(folder: Path) -> list[str]:
    """The split names a DatasetDict folder's ``dataset_dict.json`` lists."""
    folder = Path(folder)
    info = read_json(folder / DATASET_DICT, "datasets split list")
    splits = info.get("splits")
    if not isinstance(splits, list) or not splits:
        raise Gpt1Error(f"{folder / DATASET_DICT} lists no splits: expected a JSON object like "
                        '{"splits": ["train", "validation"]}')
    return [plain_name(split, "a split", folder / DATASET_DICT) for split in splits]


def dataset_folder(folder: Path, split: str | None = None, prefer: tuple[str, ...] = ()) -> Path:
    """The Dataset folder ``folder`` stands for: itself, or one split of a DatasetDict.

    A DatasetDict gives the split named ``split``, else the first of ``prefer`` it has, else its
    only split; with several splits and none of those, one error lists them.
    """
    folder = Path(folder)
    if datasets_kind(folder) != "dict":
        return folder
    splits = dataset_splits(folder)
    if split is not None:
        if split not in splits:
            raise Gpt1Error(f"{folder} has no split {split!r} (its splits: {', '.join(splits)})")
        chosen = split
    else:
        chosen = next((name for name in prefer if name in splits), None)
        if chosen is None:
            if len(splits) != 1:
                raise Gpt1Error(f"{folder} is a datasets DatasetDict with the splits {', '.join(splits)}: name one "
                                f"split's folder, such as {folder / splits[0]}")
            chosen = splits[0]
    path = folder / chosen
    if datasets_kind(path) != "dataset":
        raise Gpt1Error(f"{folder} lists the split {chosen!r} in {DATASET_DICT}, but {path} holds no {DATASET_STATE}: "
                        "the folder is incomplete")
    return path


def dataset_files(folder: Path) -> list[Path]:
    """The Arrow files of a Dataset folder, in the order its ``state.json`` lists them."""
    folder = Path(folder)
    state_path = folder / DATASET_STATE
    state = read_json(state_path, "datasets state")
    entries = state.get("_data_files")
    if not isinstance(entries, list) or not entries:
        raise Gpt1Error(f"{state_path} lists no data files: expected '_data_files': "
                        '[{"filename": "data-00000-of-00001.arrow"}, ...]')
    files = []
    for entry in entries:
        name = entry.get("filename") if isinstance(entry, dict) else None
        path = folder / plain_name(name, "a data file", state_path)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise Gpt1Error(f"{folder}: {DATASET_STATE} lists the data file {name} but it is missing: the datasets "
                            "folder is incomplete (save it again)") from None
        except OSError as exc:
            raise Gpt1Error(f"cannot read {path}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(mode):
            raise Gpt1Error(f"{folder}: its data file {name} is not a regular file")
        files.append(path)
    return files


def _features_class_names(features) -> dict[str, list[str]]:
    names = {}
    if isinstance(features, dict):
        for column, feature in features.items():
            if (isinstance(feature, dict) and feature.get("_type") == "ClassLabel"
                    and isinstance(feature.get("names"), list) and all(isinstance(n, str) for n in feature["names"])):
                names[column] = list(feature["names"])
    return names


def class_names(path: Path) -> dict[str, list[str]]:
    """Label names by column, for the ``ClassLabel`` columns of a datasets folder (its
    ``dataset_info.json``) or of an Arrow/Parquet file written by ``datasets`` (its schema
    metadata); empty for anything else."""
    path = Path(path)
    if path.is_dir():
        info_path = path / DATASET_INFO
        if not info_path.is_file():
            return {}
        return _features_class_names(read_json(info_path, "datasets info").get("features"))
    suffix = path.suffix.lower()
    try:
        import pyarrow as pa

        if suffix == ".arrow":
            with open_arrow(path) as source:
                metadata = source.schema.metadata
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            metadata = pq.read_schema(path).metadata
        else:
            return {}
        raw = (metadata or {}).get(b"huggingface")
        return _features_class_names(json.loads(raw).get("info", {}).get("features")) if raw else {}
    except (ValueError, AttributeError, OSError, pa.ArrowException):
        return {}  # no usable metadata: labels are read as written


def input_hash(path: Path) -> str:
    """The BLAKE2b of an input's content: a file's own hash (:func:`~gpt1cli.fileio.file_hash`), or
    for a folder (a datasets folder) one hash over its files' names and hashes."""
    path = Path(path)
    if not path.is_dir():
        return file_hash(path)
    digest = hashlib.blake2b(digest_size=32)
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode("utf-8") + b"\0" + file_hash(item).encode() + b"\n")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Arrow IPC files and streams


def _is_text_type(data_type) -> bool:
    import pyarrow as pa

    view = getattr(pa.types, "is_string_view", lambda t: False)
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or view(data_type)


def check_text_column(schema, column: str, path: Path, hint: str) -> int:
    """The index of text column ``column`` in ``schema``; one error naming the columns or its type otherwise."""
    import pyarrow as pa

    if column not in schema.names:
        raise Gpt1Error(f"{path}: no '{column}' column (columns: {show_names(schema.names)}){hint}")
    index = schema.get_field_index(column)
    if index < 0:
        raise Gpt1Error(f"{path}: the column name '{column}' appears twice")
    data_type = schema.field(index).type
    if not (_is_text_type(data_type) or pa.types.is_null(data_type)):
        raise Gpt1Error(f"{path}: the '{column}' column holds {data_type}, not text{hint}")
    return index


@dataclass
class ArrowInput:
    """An open, memory-mapped Arrow file or stream: its schema, read one record batch at a time."""

    path: Path
    reader: object
    kind: str  # "file" or "stream"
    size: int
    source: object

    @property
    def schema(self):
        return self.reader.schema

    def batches(self) -> Iterator[tuple[object, int]]:
        """Each record batch with the input bytes it stands for (they add up to the file's size)."""
        import pyarrow as pa

        rows, done = 0, 0
        try:
            if self.kind == "file":
                count = self.reader.num_record_batches
                for index in range(count):
                    batch = self.reader.get_batch(index)
                    rows += batch.num_rows
                    upto = self.size * (index + 1) // count
                    yield batch, upto - done
                    done = upto
            else:
                while True:
                    try:
                        batch = self.reader.read_next_batch()
                    except StopIteration:
                        break
                    rows += batch.num_rows
                    upto = min(self.source.tell(), self.size)
                    yield batch, upto - done
                    done = upto
        except (pa.ArrowException, OSError) as exc:
            raise Gpt1Error(f"{self.path}: corrupt Arrow data after row {rows} ({exc})") from None
        if done < self.size:
            yield None, self.size - done


@contextmanager
def open_arrow(path: Path) -> Iterator[ArrowInput]:
    """``with open_arrow(path) as source``: an :class:`ArrowInput`, the file memory-mapped (not read)."""
    import pyarrow as pa

    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise Gpt1Error(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise Gpt1Error(f"{path} is not a regular file: expected an Arrow IPC file or stream")
    if info.st_size == 0:
        raise Gpt1Error(f"{path} is empty: expected an Arrow IPC file or stream (a schema, then record batches)")
    try:
        source = pa.memory_map(str(path), "r")
    except (pa.ArrowException, OSError) as exc:
        raise Gpt1Error(f"cannot read {path}: {exc}") from None
    try:
        try:
            head = source.read(len(ARROW_FILE_MAGIC))
            source.seek(0)
            if head == ARROW_FILE_MAGIC:
                reader, kind = pa.ipc.open_file(source), "file"
            else:
                reader, kind = pa.ipc.open_stream(source), "stream"
        except (pa.ArrowException, OSError) as exc:
            raise Gpt1Error(f"{path}: not a readable Arrow IPC file or stream ({exc})") from None
        yield ArrowInput(path, reader, kind, info.st_size, source)
    finally:
        source.close()


# ---------------------------------------------------------------------------------------------
# Delimited text


def decode_utf8(raw: bytes, path: Path, offset: int, errors: str = "strict",
                hint: str = "fix the file or pass --errors replace") -> str:
    """``raw`` (found at byte ``offset`` of ``path``) as text; invalid UTF-8 is one error naming the byte."""
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise Gpt1Error(f"{path}: invalid UTF-8 at byte {offset + exc.start}; {hint}") from None


def quoting_rule(delimiter: str) -> str:
    """The quoting rule of delimited files, in one clause for error messages."""
    name = "a tab" if delimiter == "\t" else "a comma"
    return (f'quote a field that holds {name} or a line break: it begins with " and ends with " right before the '
            f'next {name[2:]} or the line end, a " inside it doubled')


class DelimitedReader:
    """A .tsv or .csv file read row by row (see the module's docstring for the rules).

    ``header`` is read on opening; :meth:`rows` yields ``(line, cells)``: the physical line a
    row starts on and its fields. ``consumed`` counts the bytes of the file read so far.
    """

    def __init__(self, path: Path, delimiter: str | None = None, *, errors: str = "strict", hint: str | None = None):
        self.path = Path(path)
        self.delimiter = delimiter or DELIMITERS.get(self.path.suffix.lower(), "\t")
        self.errors = errors
        self.hint = hint or ("fix the file or pass --errors replace" if errors == "strict" else "")
        self.consumed = 0
        self.handle = None
        self.header: list[str] = []

    def __enter__(self) -> "DelimitedReader":
        if csv.field_size_limit() < _FIELD_LIMIT:
            csv.field_size_limit(_FIELD_LIMIT)
        try:
            # O_NONBLOCK: a FIFO put in place of the file must not block the open; fstat then refuses it.
            self.handle = open(self.path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK))
        except OSError as exc:
            raise Gpt1Error(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(os.fstat(self.handle.fileno()).st_mode):
            self.__exit__(None, None, None)
            raise Gpt1Error(f"{self.path} is not a regular file: expected a {self._kind} file")
        self.reader = csv.reader(self._lines(), delimiter=self.delimiter, quotechar='"', doublequote=True, strict=True)
        header = self._next()
        while header == []:  # blank lines before the header
            header = self._next()
        if header is None:
            self.__exit__(None, None, None)
            raise Gpt1Error(f"{self.path} is empty: expected a header line naming the columns, "
                            f"{'tab' if self.delimiter == chr(9) else 'comma'}-separated")
        seen = set()
        for name in header:
            if name in seen:
                self.__exit__(None, None, None)
                raise Gpt1Error(f"{self.path}:{self.reader.line_num}: the header names the column "
                                f"{show_names([name])} twice")
            seen.add(name)
        self.header = header
        self.header_line = self.reader.line_num
        return self

    def __exit__(self, *exc_info) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def _lines(self) -> Iterator[str]:
        offset = 0
        for number, raw in enumerate(self.handle, start=1):
            self.consumed += len(raw)
            start = len(BOM) if number == 1 and raw.startswith(BOM) else 0
            yield decode_utf8(raw[start:], self.path, offset + start, self.errors, self.hint)
            offset += len(raw)

    def _next(self) -> list[str] | None:
        try:
            return next(self.reader, None)
        except csv.Error as exc:
            reason = str(exc).replace("\t", "\\t")
            raise Gpt1Error(f"{self.path}:{self.reader.line_num}: malformed {self._kind} ({reason}); "
                            f"{quoting_rule(self.delimiter)}") from None

    @property
    def _kind(self) -> str:
        return "TSV" if self.delimiter == "\t" else "CSV"

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        done = self.reader.line_num
        while True:
            row = self._next()
            if row is None:
                break
            first, done = done + 1, self.reader.line_num
            if not row:
                continue  # a blank line
            if len(row) != len(self.header):
                raise Gpt1Error(
                    f"{self.path}:{first}: {len(row)} field(s), but the header has {len(self.header)} "
                    f"({show_names(self.header)}); every row needs one field per column, and "
                    f"{quoting_rule(self.delimiter)}")
            yield first, row
