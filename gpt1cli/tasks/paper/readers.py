"""Readers of the paper's benchmarks in their published layouts.

Each reader turns one split of one dataset into :class:`Row` records whose ``fields`` are the
fields of our task files (``text``; ``premise``/``hypothesis``; ``a``/``b``;
``context``/``choices``) and whose ``label`` is the label as our JSONL holds it. Every problem
is one :class:`~gpt1cli.errors.Gpt1Error` naming the file (and line) and what was expected.

The layouts:

* **GLUE** (``CoLA``, ``SST-2``, ``MRPC``, ``QQP``, ``STS-B``, ``MNLI``, ``QNLI``, ``RTE``):
  ``train.tsv``, ``dev.tsv`` (MNLI: ``dev_matched.tsv``, ``dev_mismatched.tsv``), ``test.tsv``.
  The files are tab-separated but not CSV-quoted: a quote is an ordinary character, so lines are
  split on tabs with no quoting. Extra tabs in a row whose last column is text belong to that
  text. CoLA's train and dev files have no header (source, label, original mark, sentence).
  Test files have no labels.
* **SNLI** / **MultiNLI**: ``snli_1.0_{train,dev,test}.jsonl``,
  ``multinli_1.0_{train,dev_matched,dev_mismatched}.jsonl``; ``sentence1``, ``sentence2``,
  ``gold_label`` (``-``, no consensus, is dropped).
* **SciTail**: ``tsv_format/scitail_1.0_{train,dev,test}.tsv``, no header: premise, hypothesis,
  ``entails`` or ``neutral``.
* **RACE**: ``{train,dev,test}/{middle,high}/*.txt``, each a JSON object with ``article``,
  ``questions``, ``options`` (four per question) and ``answers`` (letters).
* **Story cloze** (ROCStories, spring 2016): CSV files ``...val.csv`` and ``...test.csv`` with
  ``InputStoryid``, ``InputSentence1``..``4``, ``RandomFifthSentenceQuiz1``/``2`` and
  ``AnswerRightEnding`` (1 or 2).
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ...errors import Gpt1Error
from ..data import text_lines

NO_LABEL = object()  # a row of an unlabelled (test) file


@dataclass
class Row:
    """One example: our task fields, its label (``NO_LABEL`` in an unlabelled file) and its source line."""

    fields: dict
    label: object
    where: str

    def record(self) -> dict:
        """The example as a line of our task files (``source`` names the published file and line)."""
        out = dict(self.fields)
        if self.label is not NO_LABEL:
            out["label"] = self.label
        out["source"] = self.where
        return out


@dataclass
class Split:
    """The rows of one split and what reading it found: files read, rows dropped (and why)."""

    rows: list[Row]
    files: list[Path]
    dropped: dict = field(default_factory=dict)  # reason -> count

    @property
    def labelled(self) -> bool:
        return bool(self.rows) and self.rows[0].label is not NO_LABEL


def need_file(path: Path, layout: str) -> Path:
    if not path.is_file():
        raise Gpt1Error(f"missing {path} (the {layout})")
    return path


def need_dir(path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise Gpt1Error(f"missing the folder {path} (the {layout})")
    return path


# ---------------------------------------------------------------------------------------------
# Labels


def class_label(value: str, labels: tuple, where: str, task: str):
    """``value`` as one of ``labels`` (integers are read from their digits)."""
    text = value.strip()
    for label in labels:
        if text == str(label):
            return label
    shown = ", ".join(str(x) for x in labels)
    raise Gpt1Error(f"{where}: label {value!r} is not one of {shown} (the {task} label set)")


def score_label(value: str, where: str, task: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not low <= number <= high:
        raise Gpt1Error(f"{where}: score {value!r} is not a number from {low:g} to {high:g} (the {task} label)")
    return number


# ---------------------------------------------------------------------------------------------
# GLUE TSV (lines read as bytes by tasks/data.py's text_lines: only "\n" ends a line)


@dataclass(frozen=True)
class TsvLayout:
    """One GLUE file layout.

    ``header``: the columns; ``has_header``: whether the file's first line holds them (else they
    are positional); ``exact``: the first line must equal ``header`` (else it must hold the columns
    used). ``fields``: our field -> column; ``label``: the label column; ``text_last``: the last
    column is text, so extra tabs in a row belong to it; ``skip_bad_rows``: rows of the wrong
    width are skipped and counted instead of refused (QQP's train file holds a few).
    """

    name: str
    header: tuple[str, ...]
    fields: dict
    label: str | None
    has_header: bool = True
    exact: bool = False
    skip_bad_rows: bool = False

    def describe(self) -> str:
        cols = "\\t".join(self.header)
        return f"{self.name} layout: {'no header, columns ' if not self.has_header else 'header '}{cols}"


def read_tsv(path: Path, layout: TsvLayout, parse_label, *, labelled: bool) -> Split:
    """Rows of a GLUE TSV file. ``labelled``: the split must have labels (test files may not)."""
    lines = text_lines(path)
    split = Split([], [path])
    if layout.has_header:
        first = next(lines, None)
        if first is None:
            raise Gpt1Error(f"{path} is empty (expected the {layout.describe()})")
        number, line = first
        header = tuple(line.split("\t"))
        if layout.exact:
            ok = header == layout.header
        else:
            ok = all(col in header for col in layout.fields.values())
        if not ok:
            raise Gpt1Error(f"{path}:{number}: header {line!r} does not match the {layout.describe()}")
    else:
        header = layout.header
    has_label = layout.label is not None and layout.label in header
    if labelled and not has_label:
        raise Gpt1Error(f"{path} has no {layout.label!r} column: this split is unlabelled (the {layout.describe()}; "
                        "GLUE test labels are not published, score the dev split)")
    index = {col: i for i, col in enumerate(header)}
    text_last = header[-1] in layout.fields.values()
    width = len(header)
    for number, line in lines:
        cells = line.split("\t")
        if len(cells) > width and text_last:
            cells = cells[: width - 1] + ["\t".join(cells[width - 1:])]
        if len(cells) != width:
            if layout.skip_bad_rows:
                split.dropped["rows of the wrong width"] = split.dropped.get("rows of the wrong width", 0) + 1
                continue
            raise Gpt1Error(f"{path}:{number}: {len(cells)} tab-separated fields, expected {width} (the "
                            f"{layout.describe()})")
        where = f"{path}:{number}"
        fields = {ours: cells[index[col]] for ours, col in layout.fields.items()}
        try:
            label = parse_label(cells[index[layout.label]], where) if has_label else NO_LABEL
        except Gpt1Error as exc:
            if layout.has_header or split.rows:
                raise
            raise Gpt1Error(f"{exc}; the first line is data, not a header, in the {layout.describe()}") from None
        split.rows.append(Row(fields, label, where))
    return split


# ---------------------------------------------------------------------------------------------
# SNLI and MultiNLI JSONL


NLI_LABELS = ("entailment", "neutral", "contradiction")


def read_nli_jsonl(path: Path, task: str) -> Split:
    """``sentence1``/``sentence2``/``gold_label`` lines; ``-`` (annotators did not agree) is dropped."""
    split = Split([], [path])
    for number, line in text_lines(path):
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError):
            raise Gpt1Error(f"{where}: not a JSON object (the {task} layout: one object per line with sentence1, "
                            "sentence2, gold_label)") from None
        if not isinstance(record, dict):
            raise Gpt1Error(f"{where}: not a JSON object (the {task} layout: one object per line)")
        for name in ("sentence1", "sentence2", "gold_label"):
            if not isinstance(record.get(name), str):
                raise Gpt1Error(f"{where}: missing the string field {name!r} (the {task} layout: sentence1, "
                                "sentence2, gold_label)")
        if record["gold_label"] == "-":
            split.dropped["gold_label '-'"] = split.dropped.get("gold_label '-'", 0) + 1
            continue
        label = class_label(record["gold_label"], NLI_LABELS, where, task)
        split.rows.append(Row({"premise": record["sentence1"], "hypothesis": record["sentence2"]}, label, where))
    return split


# ---------------------------------------------------------------------------------------------
# RACE


RACE_LEVELS = ("middle", "high")
RACE_LAYOUT = "RACE layout: RACE/{train,dev,test}/{middle,high}/*.txt, each a JSON object with article, questions, options, answers"


def _file_order(path: Path):
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.name)


def read_race(folder: Path, split: str, levels: tuple[str, ...]) -> Split:
    """The questions of ``folder/split/{level}/*.txt``: context = article + question, four options."""
    out = Split([], [])
    for level in levels:
        directory = need_dir(folder / split / level, RACE_LAYOUT)
        files = sorted((p for p in directory.iterdir() if p.suffix.lower() == ".txt" and p.is_file()), key=_file_order)
        if not files:
            raise Gpt1Error(f"{directory} holds no .txt question files (the {RACE_LAYOUT})")
        for path in files:
            out.files.append(path)
            out.rows.extend(_race_file(path))
    return out


def _race_file(path: Path) -> list[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise Gpt1Error(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise Gpt1Error(f"{path}: invalid UTF-8 (the {RACE_LAYOUT})") from None
    except (json.JSONDecodeError, RecursionError, ValueError):
        raise Gpt1Error(f"{path}: not a JSON object (the {RACE_LAYOUT})") from None
    if not isinstance(data, dict) or not all(k in data for k in ("article", "questions", "options", "answers")):
        raise Gpt1Error(f"{path}: not a RACE question file (the {RACE_LAYOUT})")
    article, questions, options, answers = data["article"], data["questions"], data["options"], data["answers"]
    if not isinstance(article, str) or not all(isinstance(x, list) for x in (questions, options, answers)) or not (
            len(questions) == len(options) == len(answers)):
        raise Gpt1Error(f"{path}: article must be text and questions, options and answers lists of one length "
                        f"(the {RACE_LAYOUT})")
    rows = []
    for i, (question, choices, answer) in enumerate(zip(questions, options, answers), start=1):
        where = f"{path} question {i}"
        if not isinstance(question, str):
            raise Gpt1Error(f"{where}: the question is not text")
        if not isinstance(choices, list) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
            raise Gpt1Error(f"{where}: expected four options (text), got {choices!r}")
        if answer not in ("A", "B", "C", "D"):
            raise Gpt1Error(f"{where}: answer {answer!r} is not one of A, B, C, D")
        rows.append(Row({"context": f"{article} {question}", "choices": list(choices)}, "ABCD".index(answer), where))
    return rows


# ---------------------------------------------------------------------------------------------
# Story cloze (ROCStories 2016)


CLOZE_COLUMNS = ("InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
                 "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding")
CLOZE_LAYOUT = ("story cloze layout: a CSV with header " + ",".join(CLOZE_COLUMNS) + "; files ending in val.csv "
                "(training data) and test.csv (scored)")


def story_cloze_file(folder: Path, which: str) -> Path:
    """The ROCStories CSV of ``which`` (``val`` or ``test``): the one ``*val.csv`` / ``*test.csv`` in
    ``folder`` (among several, the spring 2016 release's)."""
    need_dir(folder, CLOZE_LAYOUT)
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(f"{which}.csv"))
    if len(found) > 1:
        preferred = [p for p in found if "2016" in p.name]
        found = preferred if len(preferred) == 1 else found
    if not found:
        raise Gpt1Error(f"missing the {which} file in {folder} (a CSV whose name ends in {which}.csv, e.g. "
                        f"'cloze_test_{which}__spring2016 - cloze_test_ALL_{which}.csv'; the {CLOZE_LAYOUT})")
    if len(found) > 1:
        raise Gpt1Error(f"{folder} holds several {which} files ({', '.join(p.name for p in found)}): keep one")
    return found[0]


def read_story_cloze(path: Path, *, labelled: bool) -> Split:
    split = Split([], [path])
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise Gpt1Error(f"cannot read {path}: {exc.strerror or exc}") from None
    reader = csv.reader(handle)
    try:
        with handle:
            header = next(reader, None)
            if header is None:
                raise Gpt1Error(f"{path} is empty (the {CLOZE_LAYOUT})")
            needed = CLOZE_COLUMNS if labelled else CLOZE_COLUMNS[:-1]
            missing = [c for c in needed if c not in header]
            if missing:
                raise Gpt1Error(f"{path}:1: header lacks {', '.join(missing)} (the {CLOZE_LAYOUT})")
            has_label = "AnswerRightEnding" in header
            index = {c: header.index(c) for c in CLOZE_COLUMNS if c in header}
            done = reader.line_num
            for cells in reader:
                first, done = done + 1, reader.line_num
                if not cells or not any(c.strip() for c in cells):
                    continue
                where = f"{path}:{first}"
                if len(cells) != len(header):
                    raise Gpt1Error(f"{where}: {len(cells)} fields, expected {len(header)} (the {CLOZE_LAYOUT})")
                context = " ".join(cells[index[f"InputSentence{k}"]].strip() for k in range(1, 5))
                choices = [cells[index["RandomFifthSentenceQuiz1"]], cells[index["RandomFifthSentenceQuiz2"]]]
                label = NO_LABEL
                if has_label:
                    label = class_label(cells[index["AnswerRightEnding"]], (1, 2), where, "story cloze AnswerRightEnding") - 1
                split.rows.append(Row({"context": context, "choices": choices}, label, where))
    except UnicodeDecodeError:
        raise Gpt1Error(f"{path}: invalid UTF-8 (the {CLOZE_LAYOUT})") from None
    except csv.Error as exc:
        raise Gpt1Error(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    return split


_SAFE = re.compile(r"[^A-Za-z0-9]+")


def key(name: str) -> str:
    """A name compared loosely: case, dashes and underscores do not matter (``SST-2`` = ``sst2``)."""
    return _SAFE.sub("", name).lower()
