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


def records(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (location, record) pairs from a JSONL, CSV or Parquet file."""
    if not path.is_file():
        raise Gpt1Error(f"task file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise Gpt1Error(f"{path}:{number}: invalid UTF-8") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise Gpt1Error(f"{path}:{number}: not valid JSON (one object per line expected)") from None
                if not isinstance(record, dict):
                    raise Gpt1Error(f"{path}:{number}: expected a JSON object")
                yield f"{path}:{number}", record
    elif suffix == ".csv":
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                for number, row in enumerate(csv.DictReader(handle), start=2):
                    yield f"{path}:{number}", _csv_record(row)
        except UnicodeDecodeError:
            raise Gpt1Error(f"{path}: invalid UTF-8") from None
        except csv.Error as exc:
            raise Gpt1Error(f"{path}: malformed CSV ({exc})") from None
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


def _csv_record(row: dict) -> dict:
    record = dict(row)
    choice_columns = sorted((k for k in row if k and k.startswith("choice_")), key=lambda k: int(k.split("_")[1]) if k.split("_")[1].isdigit() else 0)
    if "choices" in record and isinstance(record["choices"], str):
        try:
            record["choices"] = json.loads(record["choices"])
        except json.JSONDecodeError:
            pass
    elif choice_columns:
        record["choices"] = [row[k] for k in choice_columns if row[k] not in (None, "")]
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
                raise Gpt1Error(f"{where}: 'choices' must be a list of strings")
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


def label_set(examples: list[Example]) -> list:
    """The sorted set of class labels in ``examples`` (strings after numbers)."""
    return sorted({e.label for e in examples}, key=lambda v: (isinstance(v, str), v))
