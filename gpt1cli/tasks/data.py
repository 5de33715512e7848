"""Labelled task files: JSONL, CSV or Parquet, with fields per task.

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

CSV files give mcq choices as a JSON list in a ``choices`` column or as columns
``choice_0``, ``choice_1``, ... Every problem is reported with the file and line (or row).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import Gpt1Error
from ..fileio import parse_json

TASKS = ("classify", "entail", "similar", "mcq")
FIELDS = {
    "classify": ("text",),
    "entail": ("premise", "hypothesis"),
    "similar": ("a", "b"),
    "mcq": ("context", "choices"),
}


@dataclass
class Example:
    """One labelled example: its text fields, its raw label, and where it came from."""

    fields: dict[str, Any]
    label: Any
    where: str


BOM = "\ufeff"  # spreadsheets put it before the first header; it is no part of the text


def records(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (location, record) pairs from a JSONL, CSV or Parquet file (suffix in any case).

    Locations are ``file:line`` (physical lines, also in CSV with multi-line cells) or
    ``file row N`` (Parquet).
    """
    path = Path(path)
    if not path.is_file():
        raise Gpt1Error(f"task file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        yield from _jsonl_records(path)
    elif suffix == ".csv":
        yield from _csv_records(path)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise Gpt1Error(f"{path}: not a readable Parquet file ({exc})") from None
        for number, record in enumerate(table.to_pylist(), start=1):
            yield f"{path} row {number}", record
    else:
        raise Gpt1Error(f"unsupported task file {path}: use .jsonl, .csv or .parquet")


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise Gpt1Error(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Gpt1Error(f"{path}:{number}: invalid UTF-8 (byte {exc.start + 1} of the line); "
                                "save the file as UTF-8") from None
            if number == 1:
                line = line.removeprefix(BOM)
            if not line.strip():
                continue
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


def _csv_records(path: Path) -> Iterator[tuple[str, dict]]:
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise Gpt1Error(f"cannot read {path}: {exc.strerror or exc}") from None
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
                yield f"{path}:{first}", _csv_record(record, header)
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


def _csv_record(row: dict, header: list[str]) -> dict:
    record = dict(row)
    choice_columns = sorted((k for k in header if k.startswith("choice_") and k[len("choice_"):].isdigit()),
                            key=lambda k: int(k[len("choice_"):]))
    if isinstance(record.get("choices"), str):
        try:
            record["choices"] = parse_json(record["choices"], "the 'choices' cell")
        except Gpt1Error:
            pass  # not JSON: an mcq file reports it where the choices are checked
    elif choice_columns:
        record["choices"] = [row[k] for k in choice_columns if row.get(k) not in (None, "")]
    label = record.get("label")
    if label == "":
        record["label"] = None  # an empty cell is a missing label, not the class ""
    elif isinstance(label, str):
        try:
            record["label"] = int(label)
        except ValueError:
            try:
                record["label"] = float(label)
            except ValueError:
                pass
    return record


def load_examples(path: str | Path, task: str, *, regression: bool = False, require_label: bool = True) -> list[Example]:
    """Read and validate every example of a task file."""
    if task not in TASKS:
        raise Gpt1Error(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    path = Path(path)
    examples = []
    for where, record in records(path):
        fields = {}
        for name in FIELDS[task]:
            if name not in record or record[name] is None:
                raise Gpt1Error(f"{where}: missing the '{name}' field (a {task} example needs {', '.join(FIELDS[task])}, label)")
            fields[name] = record[name]
        if task == "mcq":
            choices = fields["choices"]
            if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                raise Gpt1Error(f"{where}: 'choices' must be a list of strings (in CSV: a JSON list in the "
                                "'choices' column, or columns choice_0, choice_1, ...)")
            if len(choices) < 2:
                raise Gpt1Error(f"{where}: an mcq example needs at least 2 choices, this one has {len(choices)}")
            if not isinstance(fields["context"], str):
                raise Gpt1Error(f"{where}: 'context' must be a string")
        else:
            for name, value in fields.items():
                if not isinstance(value, str):
                    raise Gpt1Error(f"{where}: '{name}' must be a string")
        label = record.get("label")
        if label is None and require_label:
            raise Gpt1Error(f"{where}: missing the 'label' field")
        if label is not None:
            label = _check_label(label, task, regression, fields, where)
        examples.append(Example(fields, label, where))
    if not examples:
        raise Gpt1Error(f"{path} holds no examples")
    if task != "mcq" and not regression:
        _one_label_kind(examples, from_csv=path.suffix.lower() == ".csv")
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
