"""Labelled task files: JSONL, CSV, TSV, Parquet, Arrow or a Hugging Face ``datasets`` folder,
with fields per task.

========  =====================================================  =========================
task      fields                                                 label
========  =====================================================  =========================
classify  ``text``                                               a class (string or int)
entail    ``premise``, ``hypothesis``                            a class
similar   ``a``, ``b``                                           a class, or a number with
                                                                 ``--regression``
mcq       ``context``, ``choices`` (list of 2+ strings)          index of the right choice,
                                                                 or its text
========  =====================================================  =========================

A file whose columns have other names is read through a field mapping (``--field NAME=COLUMN``,
:func:`parse_fields`): ``--field premise=sentence1 --field label=gold_label``. The mcq choices
may come from one list column or from several text columns (``--field
choices=ending0,ending1,ending2``).

CSV and TSV cells are text: a label that reads as a number is that number, and mcq choices are a
JSON list in a ``choices`` column or the columns ``choice_0``, ``choice_1``, ... (see
:mod:`gpt1cli.data.tables` for the quoting rule; a TSV row must have one field per column).
Arrow files (IPC file or stream) and ``datasets`` folders keep their types; a ``ClassLabel``
label column gives the class names (the label ``-1``, which ``datasets`` uses for "no label", is
a missing label; mcq keeps the indices). A ``DatasetDict`` folder is read at the split the caller
prefers (fine-tuning: ``train`` for --train, ``validation`` for --val), or at its only split;
naming a split's folder (``DIR/test``) chooses any. Every problem is reported with the file and
line (or row).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..data.tables import (DelimitedReader, class_names, dataset_files, dataset_folder, datasets_kind, open_arrow,
                           show_names)
from ..errors import Gpt1Error
from ..fileio import parse_json

TASKS = ("classify", "entail", "similar", "mcq")
GENERATE = "generate"  # the task without a head (tasks/generative.py)
ALL_TASKS = (*TASKS, GENERATE)
FIELDS = {
    "classify": ("text",),
    "entail": ("premise", "hypothesis"),
    "similar": ("a", "b"),
    "mcq": ("context", "choices"),
}
LABEL = "label"
FORMATS = ".jsonl, .csv, .tsv, .parquet or .arrow, or a datasets folder"


@dataclass
class Example:
    """One labelled example: its text fields, its raw label, and where it came from."""

    fields: dict[str, Any]
    label: Any
    where: str


BOM = "\ufeff"  # spreadsheets put it before the first header; it is no part of the text


# ---------------------------------------------------------------------------------------------
# Field mappings


def task_fields(task: str) -> tuple[str, ...]:
    """The fields a task reads, its label last (the names ``--field`` maps)."""
    return (*FIELDS[task], LABEL)


def parse_fields(fields, task: str | None = None, option: str = "--field") -> dict[str, str]:
    """A field mapping, task field -> column: from ``NAME=COLUMN`` strings (as ``--field`` gives
    them) or a mapping; None or empty is no mapping. With ``task``, every NAME must be one of its
    fields. One clear error names a malformed or repeated entry."""
    if fields is None:
        return {}
    if isinstance(fields, Mapping):
        items = list(fields.items())
    elif isinstance(fields, (list, tuple)):
        items = []
        for item in fields:
            if not isinstance(item, str) or "=" not in item:
                raise Gpt1Error(f"{option} takes NAME=COLUMN (such as premise=sentence1), got {item!r}")
            items.append(tuple(part.strip() for part in item.split("=", 1)))
    else:
        raise Gpt1Error(f"{option} takes NAME=COLUMN entries (such as premise=sentence1), got {fields!r}")
    mapping: dict[str, str] = {}
    for name, column in items:
        if not isinstance(name, str) or not isinstance(column, str) or not name or not column:
            raise Gpt1Error(f"{option} takes NAME=COLUMN with both parts given (such as premise=sentence1), "
                            f"got {name}={column}")
        if name in mapping:
            raise Gpt1Error(f"{option} maps the field '{name}' twice ({name}={mapping[name]} and {name}={column})")
        if "," in column and (name != "choices" or any(not part.strip() for part in column.split(","))):
            raise Gpt1Error(f"{option} {name}={column}: only choices may name several columns "
                            "(choices=COLUMN,COLUMN,...), each with a name")
        mapping[name] = column
    if task is not None and task in FIELDS:
        for name in mapping:
            if name not in task_fields(task):
                raise Gpt1Error(f"{option} {name}={mapping[name]}: the {task} task has no field '{name}' "
                                f"(its fields: {', '.join(task_fields(task))})")
    return mapping


def fields_setting(value, name):
    """Rule of the ``--field`` setting: NAME=COLUMN entries, returned in one canonical form (sorted
    ``NAME=COLUMN`` strings, None for none) so a saved run compares equal to the same mapping given anew."""
    mapping = parse_fields(value, option=name)
    return sorted(f"{key}={column}" for key, column in mapping.items()) or None


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class _Source:
    """A task file opened for reading: its records as written, and what is known of them up front."""

    path: Path  # the file or datasets folder read (a DatasetDict: the split's folder)
    rows: Iterator[tuple[str, dict]]
    columns: list[str] | None = None  # known up front for every format but JSONL
    text_cells: bool = False  # CSV and TSV: every cell is text
    class_names: dict | None = None


def _open(path, splits: Sequence[str] = ()) -> _Source:
    path = Path(path)
    if path.is_dir():
        if datasets_kind(path) is None:
            raise Gpt1Error(f"{path} is a directory, not a task file: give a {FORMATS} (a datasets folder holds "
                            "state.json, or dataset_dict.json for a DatasetDict)")
        folder = dataset_folder(path, prefer=tuple(splits))
        files = dataset_files(folder)
        with open_arrow(files[0]) as source:
            columns = list(source.schema.names)
        return _Source(folder, _arrow_records(files, folder), columns, class_names=class_names(folder))
    if not path.is_file():
        raise Gpt1Error(f"task file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _Source(path, _jsonl_records(path))
    if suffix == ".csv":
        header = _csv_header(path) or None  # an empty file: no examples
        return _Source(path, _csv_rows(path), header, text_cells=True)
    if suffix == ".tsv":
        with DelimitedReader(path, "\t", hint="save the file as UTF-8") as reader:
            header = list(reader.header)
        return _Source(path, _tsv_rows(path), header, text_cells=True)
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise Gpt1Error(f"{path}: not a readable Parquet file ({exc})") from None
        rows = ((f"{path} row {number}", record) for number, record in enumerate(table.to_pylist(), start=1))
        return _Source(path, rows, list(table.schema.names), class_names=class_names(path))
    if suffix == ".arrow":
        with open_arrow(path) as source:
            columns = list(source.schema.names)
        return _Source(path, _arrow_records([path], path), columns, class_names=class_names(path))
    raise Gpt1Error(f"unsupported task file {path}: use {FORMATS}")


def records(path: str | Path, splits: Sequence[str] = ()) -> Iterator[tuple[str, dict]]:
    """Yield (location, record) pairs from a task file (see the module's docstring for the formats).

    Locations are ``file:line`` (physical lines, also in CSV and TSV with multi-line cells) or
    ``file row N`` (Parquet, Arrow, datasets folders). CSV and TSV labels that read as numbers
    are numbers, their mcq choices lists. ``splits``: the splits a DatasetDict folder is read at,
    the first it has (else its only one).
    """
    source = _open(path, splits)
    if source.text_cells:
        for where, record in source.rows:
            yield where, _csv_record(record, source.columns)
    else:
        yield from source.rows


def _arrow_records(files: list[Path], where: Path) -> Iterator[tuple[str, dict]]:
    number = 0
    for file in files:
        with open_arrow(file) as source:
            for batch, _ in source.batches():
                if batch is None:
                    continue
                for record in batch.to_pylist():
                    number += 1
                    yield f"{where} row {number}", record


def _tsv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with DelimitedReader(path, "\t", hint="save the file as UTF-8") as reader:
        for line, row in reader.rows():
            yield f"{path}:{line}", dict(zip(reader.header, row))


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each non-blank line of a UTF-8 file, without its line end (``\\n``
    or ``\\r\\n``; only ``\\n`` ends a line) and without a byte-order mark; read as bytes, so a bad
    byte is one error naming its line."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise Gpt1Error(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            raw = raw.rstrip(b"\n")
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Gpt1Error(f"{path}:{number}: invalid UTF-8 (byte {exc.start + 1} of the line); "
                                "save the file as UTF-8") from None
            if number == 1:
                line = line.removeprefix(BOM)
            if line.strip():
                yield number, line


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
    for number, line in text_lines(path):
        record = json_line(line, f"{path}:{number}")
        if not isinstance(record, dict):
            raise Gpt1Error(f"{path}:{number}: expected a JSON object, one per line")
        yield f"{path}:{number}", record


def json_line(line: str, where: str):
    """One line of JSONL; any failure (syntax, huge numbers, deep nesting) is one error naming ``where``."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise Gpt1Error(f"{where}: not valid JSON at column {exc.colno} ({exc.msg}); "
                        "write one JSON object per line") from None
    except (RecursionError, ValueError):
        return parse_json(line, where)  # raises its one-line error


# A summarisation article easily exceeds csv's default 128 KiB per cell.
_CSV_FIELD_LIMIT = 1 << 30


def _open_csv(path: Path):
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise Gpt1Error(f"cannot read {path}: {exc.strerror or exc}") from None


def _csv_header(path: Path) -> list[str]:
    """The header of a CSV file (empty for an empty file)."""
    with _open_csv(path) as handle:
        reader = csv.reader(handle)
        try:
            return next(reader, None) or []
        except UnicodeDecodeError:
            raise Gpt1Error(f"{path}:{_bad_utf8_line(path)}: invalid UTF-8; save the file as UTF-8") from None
        except csv.Error as exc:
            raise Gpt1Error(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None


def _csv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """A CSV file's rows as written (cells as text); a short row's missing cells are None."""
    handle = _open_csv(path)
    reader = csv.reader(handle)
    try:
        with handle:
            header = next(reader, None)
            if header is None:
                return
            done = reader.line_num  # physical lines read so far (a quoted cell may span several)
            for row in reader:
                first, done = done + 1, reader.line_num
                if not row:
                    continue  # a blank line
                record = dict(zip(header, row))
                for name in header[len(row):]:
                    record.setdefault(name, None)  # a short row: the cells it lacks are missing
                yield f"{path}:{first}", record
    except UnicodeDecodeError:
        raise Gpt1Error(f"{path}:{_bad_utf8_line(path)}: invalid UTF-8; save the file as UTF-8") from None
    except csv.Error as exc:
        raise Gpt1Error(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None


def _bad_utf8_line(path: Path) -> int:
    """The line of the first invalid UTF-8 byte (the text reader decodes ahead of the CSV reader)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return data.count(b"\n", 0, exc.start) + 1
    return 1


def _choice_columns(header: list[str]) -> list[str]:
    return sorted((k for k in header if k.startswith("choice_") and k[len("choice_"):].isdigit()),
                  key=lambda k: int(k[len("choice_"):]))


def _cell_choices(value):
    """mcq choices from a text cell: a JSON list (anything else is reported where choices are checked)."""
    if isinstance(value, str):
        try:
            return parse_json(value, "the 'choices' cell")
        except Gpt1Error:
            pass
    return value


def _cell_label(label):
    """A label from a text cell: empty is missing (not the class ""), a number is that number."""
    if label == "":
        return None
    if isinstance(label, str):
        try:
            return int(label)
        except ValueError:
            try:
                return float(label)
            except ValueError:
                pass
    return label


def _csv_record(row: dict, header: list[str]) -> dict:
    record = dict(row)
    choice_columns = _choice_columns(header)
    if isinstance(record.get("choices"), str):
        record["choices"] = _cell_choices(record["choices"])
    elif choice_columns:
        record["choices"] = [row[k] for k in choice_columns if row.get(k) not in (None, "")]
    if "label" in record:
        record["label"] = _cell_label(record["label"])
    return record


def _columns_note(source: _Source, record: dict) -> str:
    columns = source.columns if source.columns is not None else list(record)
    what = "its fields" if source.columns is None else "the file's columns"
    return f"{what}: {show_names(columns)}"


def _missing(source: _Source, where: str, record: dict, task: str, name: str, mapping: dict,
             column: str) -> Gpt1Error:
    """The error for a field absent from a record (or a column absent from the file)."""
    note = _columns_note(source, record)
    if name in mapping:
        return Gpt1Error(f"{where}: missing the '{column}' column that --field {name}={mapping[name]} names "
                         f"({note})")
    return Gpt1Error(f"{where}: missing the '{name}' field ({_an(task)} {task} example needs "
                     f"{', '.join(task_fields(task))}; {note}): name its column with --field {name}=COLUMN")


def _an(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _mapped(source: _Source, where: str, record: dict, task: str, mapping: dict, require_label: bool) -> dict:
    """``record`` as the task's fields (and label), read through ``mapping``; cells of text files parsed."""
    out: dict[str, Any] = {}
    for name in task_fields(task):
        column = mapping.get(name, name)
        if name == "choices" and "," in column:
            columns = [part.strip() for part in column.split(",")]
            absent = next((c for c in columns if c not in record), None)
            if absent is not None:
                raise _missing(source, where, record, task, name, mapping, absent)
            values = [record[c] for c in columns]
            out[name] = [v for v in values if v not in (None, "")] if source.text_cells else values
            continue
        if column not in record:
            if name == "choices" and source.text_cells and name not in mapping and _choice_columns(list(record)):
                out[name] = [record[k] for k in _choice_columns(list(record)) if record.get(k) not in (None, "")]
                continue
            if name == LABEL and not require_label:
                out[name] = None
                continue
            raise _missing(source, where, record, task, name, mapping, column)
        value = record[column]
        if source.text_cells:
            value = _cell_label(value) if name == LABEL else _cell_choices(value) if name == "choices" else value
        out[name] = value
    return out


def _check_columns(source: _Source, task: str, mapping: dict, require_label: bool) -> None:
    """A file whose columns are known up front lacks none that the task reads: one error, before any row."""
    if source.columns is None:
        return
    present = set(source.columns)
    for name in task_fields(task):
        column = mapping.get(name, name)
        wanted = [part.strip() for part in column.split(",")] if name == "choices" else [column]
        if name == "choices" and source.text_cells and name not in mapping and _choice_columns(source.columns):
            continue
        if name == LABEL and not require_label:
            continue
        absent = next((c for c in wanted if c not in present), None)
        if absent is not None:
            raise _missing(source, str(source.path), {}, task, name, mapping, absent)


def _class_label(label, names: list[str] | None, task: str, regression: bool):
    """A ``ClassLabel`` index as its class name (-1: no label); mcq and regression keep the index."""
    if names is None or isinstance(label, bool) or not isinstance(label, int):
        return label
    if label == -1:
        return None
    if task != "mcq" and not regression and 0 <= label < len(names):
        return names[label]
    return label


def load_examples(path: str | Path, task: str, *, regression: bool = False, require_label: bool = True,
                  fields=None, splits: Sequence[str] = ()) -> list[Example]:
    """Read and validate every example of a task file.

    ``fields`` maps the task's fields (and ``label``) onto the file's columns: ``NAME=COLUMN``
    strings as ``--field`` gives them, or a dict (see :func:`parse_fields`); unmapped fields are
    read from the column of their own name. ``splits``: the splits of a DatasetDict folder to read,
    the first it has (else its only split).
    """
    if task not in TASKS:
        raise Gpt1Error(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    mapping = parse_fields(fields, task)
    path = Path(path)
    source = _open(path, splits)
    _check_columns(source, task, mapping, require_label)
    label_names = (source.class_names or {}).get(mapping.get(LABEL, LABEL))
    examples = []
    for where, record in source.rows:
        values = _mapped(source, where, record, task, mapping, require_label)
        fields_ = {}
        for name in FIELDS[task]:
            if values[name] is None:
                raise Gpt1Error(f"{where}: missing the '{name}' field ({_an(task)} {task} example needs "
                                f"{', '.join(FIELDS[task])}, label)")
            fields_[name] = values[name]
        if task == "mcq":
            choices = fields_["choices"]
            if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                raise Gpt1Error(f"{where}: 'choices' must be a list of strings (in CSV or TSV: a JSON list in the "
                                "'choices' column, or columns choice_0, choice_1, ...; or name the columns with "
                                "--field choices=COLUMN,COLUMN,...)")
            if len(choices) < 2:
                raise Gpt1Error(f"{where}: an mcq example needs at least 2 choices, this one has {len(choices)}")
            if not isinstance(fields_["context"], str):
                raise Gpt1Error(f"{where}: 'context' must be a string")
        else:
            for name, value in fields_.items():
                if not isinstance(value, str):
                    raise Gpt1Error(f"{where}: '{name}' must be a string")
        label = _class_label(values[LABEL], label_names, task, regression)
        if label is None and require_label:
            if values[LABEL] is not None:
                raise Gpt1Error(f"{where}: missing the 'label' field: it is -1, which a datasets ClassLabel column "
                                "holds for an unlabelled example (as in a test split)")
            raise Gpt1Error(f"{where}: missing the 'label' field")
        if label is not None:
            label = _check_label(label, task, regression, fields_, where)
        examples.append(Example(fields_, label, where))
    if not examples:
        raise Gpt1Error(f"{source.path} holds no examples")
    if task != "mcq" and not regression:
        _one_label_kind(examples, from_csv=source.text_cells)
    if task == "mcq":
        counts = {len(e.fields["choices"]) for e in examples}
        if len(counts) > 1:
            first = next(e for e in examples if len(e.fields["choices"]) != len(examples[0].fields["choices"]))
            raise Gpt1Error(f"{first.where}: has {len(first.fields['choices'])} choices but earlier examples have "
                            f"{len(examples[0].fields['choices'])}: every example of a file must have the same number")
    return examples


def _check_label(label, task: str, regression: bool, fields: dict, where: str):
    if task == "mcq":
        choices = fields["choices"]
        if isinstance(label, str) and label in choices:
            return choices.index(label)
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise Gpt1Error(f"{where}: label {label!r} is neither a choice index (0..{len(choices) - 1}) nor one of the choices")
        return label
    if regression:
        if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label):
            raise Gpt1Error(f"{where}: --regression needs a finite number as label, got {label!r}")
        return float(label)
    if not isinstance(label, (str, int, bool)):
        raise Gpt1Error(f"{where}: label {label!r} must be a string or an integer")
    return label


LABEL_KINDS = {bool: "true/false", int: "integer", str: "string"}


def _one_label_kind(examples: list[Example], *, from_csv: bool) -> None:
    """Class labels of one file are all strings, all integers or all true/false.

    ``true`` and ``1`` are equal in Python; mixed in one file they would merge into one class.
    A CSV cell has no type: when its labels read as a mix, every label is taken as its text.
    """
    labelled = [e for e in examples if e.label is not None]
    if not labelled or all(type(e.label) is type(labelled[0].label) for e in labelled):
        return
    if from_csv:
        for example in labelled:
            example.label = label_text(example.label)
        return
    first = labelled[0]
    other = next(e for e in labelled if type(e.label) is not type(first.label))
    raise Gpt1Error(f"{other.where}: label {other.label!r} is {_kind(other.label)}, but {first.where} has "
                    f"{_kind(first.label)} label {first.label!r}: write every label of a file the same way "
                    '(all strings such as "1", or all integers)')


def _kind(label) -> str:
    return {"true/false": "a true/false", "integer": "an integer", "string": "a string"}[LABEL_KINDS[type(label)]]


def label_key(label) -> tuple:
    """A label's identity: its kind and value (``True`` and ``1`` are different labels)."""
    return (LABEL_KINDS.get(type(label), type(label).__name__), label)


def label_text(label) -> str:
    """A label as written in a CSV cell: ``true``/``false`` for booleans, else its text."""
    if isinstance(label, bool):
        return "true" if label else "false"
    return str(label)


def label_set(examples: list[Example]) -> list:
    """The class labels in ``examples``, each once: numbers, then true/false, then strings."""
    unique = {label_key(e.label): e.label for e in examples}
    return sorted(unique.values(), key=lambda v: (isinstance(v, str), isinstance(v, bool), v))
