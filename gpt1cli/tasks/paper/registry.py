"""The paper's benchmarks as named tasks: how each is read, transformed, trained and scored.

Each :class:`PaperTask` names its published layout (where its files live under a data root),
the task kind of its input transformation, its label set, the metrics the paper reports, the
splits used to fit, to select the checkpoint and to score, the fine-tuning settings, and the
paper's figure for each reported row and the table it appears in.

Splits: the scored split is the paper's test set where its labels are published (SNLI,
SciTail, RACE, story cloze); the GLUE tasks' test labels are not, so their dev sets are scored
(the paper's GLUE figures are from the test server). The checkpoint is then selected on a
hold-out carved from the training data (``HOLD_OUT``), never on the scored split; SNLI, SciTail
and RACE select on their dev sets, story cloze on a fifth of its validation stories (its
training data, as in the paper).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ...errors import Gpt1Error
from . import readers
from .readers import NLI_LABELS, RACE_LEVELS, Split, TsvLayout, key

# The paper's fine-tuning settings (section 4.1): lr 6.25e-5, batch 32, 3 epochs, linear warm-up
# over 0.2% of training, lambda 0.5, dropout 0.1 before the head. It gives no per-task values
# beyond "3 epochs was sufficient for most cases", so no task overrides them.
PAPER_DEFAULTS = {"lr": 6.25e-5, "batch_size": 32, "epochs": 3, "warmup_fraction": 0.002, "lm_coef": 0.5,
                  "head_dropout": 0.1}

HOLD_OUT = (0.1, 2000)  # a tenth of the training rows, at most 2,000, with seed HOLD_OUT_SEED
HOLD_OUT_SEED = 0
CLOZE_HOLD_OUT = 0.2  # story cloze: 374 of the 1,871 validation stories (the original code's split)

TABLES = {
    2: "Table 2: natural language inference",
    3: "Table 3: question answering and commonsense reasoning",
    4: "Table 4: semantic similarity and classification",
}
GLUE_FIGURE = 72.8  # the paper's GLUE score (with WNLI, which is not run here)

METRIC_NAMES = {"accuracy": "acc", "mcc": "mc", "f1": "F1", "pearson": "pc", "spearman": "sc"}


@dataclass(frozen=True)
class Score:
    """One reported row: its title, the splits pooled for it and the paper's figure (percent)."""

    row: str
    parts: tuple[str, ...]
    paper: float


@dataclass(frozen=True)
class PaperTask:
    name: str
    title: str
    table: int
    kind: str  # classify, entail, similar, mcq
    labels: tuple | None  # the class labels (None: mcq or regression)
    metrics: tuple[str, ...]  # the paper's first, then the others shown
    select: str  # the validation metric that picks the checkpoint (FinetuneConfig.metric)
    folders: tuple[str, ...]  # where the dataset's folder is looked for under a data root
    layout: str  # its files, for `gpt1 paper tasks` and error messages
    source: str  # where it is published
    splits: tuple[str, ...]  # the split names :func:`read_split` takes
    fit: str  # split (or split:rest) fine-tuned on
    val: str  # split (or split:held) the checkpoint is selected on
    scores: tuple[Score, ...]
    reader: Callable[[Path, str, bool], Split] = field(repr=False, compare=False)
    regression: bool = False
    positive: object = None  # the class whose F1 is reported
    glue: bool = False
    overrides: dict = field(default_factory=dict)

    def settings(self) -> dict:
        return {**PAPER_DEFAULTS, **self.overrides}


# ---------------------------------------------------------------------------------------------
# GLUE


def _glue_files(splits: dict) -> Callable:
    """A reader of a GLUE folder: split name -> (file name, layout, label parser)."""

    def read(folder: Path, split: str, labelled: bool) -> Split:
        name, layout, parse = splits[split]
        path = readers.need_file(folder / name, layout.describe())
        return readers.read_tsv(path, layout, parse, labelled=labelled)

    return read


def _classes(labels, task):
    return lambda value, where: readers.class_label(value, labels, where, task)


def _score(task):
    return lambda value, where: readers.score_label(value, where, task, 0.0, 5.0)


_COLA = TsvLayout("CoLA train/dev", ("source", "label", "original mark", "sentence"), {"text": "sentence"}, "label",
                  has_header=False)
_COLA_TEST = TsvLayout("CoLA test", ("index", "sentence"), {"text": "sentence"}, None, exact=True)
_SST = TsvLayout("SST-2", ("sentence", "label"), {"text": "sentence"}, "label")
_SST_TEST = TsvLayout("SST-2 test", ("index", "sentence"), {"text": "sentence"}, None)
_MRPC = TsvLayout("MRPC", ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), {"a": "#1 String", "b": "#2 String"},
                  "Quality", exact=True)
_MRPC_TEST = TsvLayout("MRPC test", ("index", "#1 ID", "#2 ID", "#1 String", "#2 String"),
                       {"a": "#1 String", "b": "#2 String"}, None, exact=True)
_QQP = TsvLayout("QQP", ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
                 {"a": "question1", "b": "question2"}, "is_duplicate", skip_bad_rows=True)
_QQP_TEST = TsvLayout("QQP test", ("id", "question1", "question2"), {"a": "question1", "b": "question2"}, None)
_STSB = TsvLayout("STS-B", ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                            "sentence2", "score"), {"a": "sentence1", "b": "sentence2"}, "score")
_QNLI = TsvLayout("QNLI", ("index", "question", "sentence", "label"), {"premise": "question", "hypothesis": "sentence"},
                  "label")
_RTE = TsvLayout("RTE", ("index", "sentence1", "sentence2", "label"), {"premise": "sentence1", "hypothesis": "sentence2"},
                 "label")
_MNLI_TSV = TsvLayout("GLUE MNLI", ("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                                    "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                                    "sentence2", "...", "gold_label"),
                      {"premise": "sentence1", "hypothesis": "sentence2"}, "gold_label")
_SCITAIL = TsvLayout("SciTail", ("premise", "hypothesis", "label"), {"premise": "premise", "hypothesis": "hypothesis"},
                     "label", has_header=False)

BINARY = (0, 1)
TWO_WAY = ("entailment", "not_entailment")


def _three_glue(train, test, parse):
    return {"train": ("train.tsv", train, parse), "dev": ("dev.tsv", train, parse), "test": ("test.tsv", test, parse)}


# ---------------------------------------------------------------------------------------------
# MNLI: MultiNLI's JSONL release or GLUE's TSV folder

_MNLI_SPLITS = ("train", "dev_matched", "dev_mismatched")
_MNLI_LAYOUT = ("MultiNLI layout: multinli_1.0_{train,dev_matched,dev_mismatched}.jsonl, or GLUE's MNLI/"
                "{train,dev_matched,dev_mismatched}.tsv")


def _read_mnli(folder: Path, split: str, labelled: bool) -> Split:
    jsonl = folder / f"multinli_1.0_{split}.jsonl"
    if jsonl.is_file() or any(folder.glob("multinli_1.0_*.jsonl")):
        return readers.read_nli_jsonl(readers.need_file(jsonl, _MNLI_LAYOUT), "MultiNLI")
    tsv = folder / f"{split}.tsv"
    if tsv.is_file() or (folder / "train.tsv").is_file() or (folder / "dev_matched.tsv").is_file():
        path = readers.need_file(tsv, _MNLI_LAYOUT)
        return readers.read_tsv(path, _MNLI_TSV, _classes(NLI_LABELS, "MNLI"), labelled=labelled)
    raise Gpt1Error(f"{folder} holds neither multinli_1.0_{split}.jsonl nor {split}.tsv (the {_MNLI_LAYOUT})")


def _read_snli(folder: Path, split: str, labelled: bool) -> Split:
    layout = "SNLI layout: snli_1.0_{train,dev,test}.jsonl"
    return readers.read_nli_jsonl(readers.need_file(folder / f"snli_1.0_{split}.jsonl", layout), "SNLI")


def _read_scitail(folder: Path, split: str, labelled: bool) -> Split:
    tsv = folder / "tsv_format" if (folder / "tsv_format").is_dir() else folder
    path = readers.need_file(tsv / f"scitail_1.0_{split}.tsv",
                             "SciTail layout: SciTailV1.1/tsv_format/scitail_1.0_{train,dev,test}.tsv")
    return readers.read_tsv(path, _SCITAIL, _classes(("entails", "neutral"), "SciTail"), labelled=labelled)


def _read_race(folder: Path, split: str, labelled: bool) -> Split:
    name, _, level = split.partition("-")
    return readers.read_race(folder, name, (level,) if level else RACE_LEVELS)


def _read_story_cloze(folder: Path, split: str, labelled: bool) -> Split:
    return readers.read_story_cloze(readers.story_cloze_file(folder, split), labelled=labelled)


def _glue_folders(name: str) -> tuple[str, ...]:
    return (f"glue/{name}", f"glue_data/{name}", name)


_GLUE_SOURCE = "GLUE (gluebenchmark.com/tasks, or the download_glue_data.py script)"
_GLUE_SPLITS = ("train", "dev", "test")
_GLUE_FIT, _GLUE_VAL = "train:rest", "train:held"

TASKS: tuple[PaperTask, ...] = (
    # Table 2: natural language inference
    PaperTask("mnli", "MNLI", 2, "entail", NLI_LABELS, ("accuracy",), "accuracy",
              ("multinli_1.0", "glue/MNLI", "glue_data/MNLI", "MNLI"), _MNLI_LAYOUT,
              "MultiNLI 1.0 (cims.nyu.edu/~sbowman/multinli) or GLUE's MNLI", _MNLI_SPLITS, _GLUE_FIT, _GLUE_VAL,
              (Score("MNLI-m", ("dev_matched",), 82.1), Score("MNLI-mm", ("dev_mismatched",), 81.4)), _read_mnli,
              glue=True),
    PaperTask("snli", "SNLI", 2, "entail", NLI_LABELS, ("accuracy",), "accuracy", ("snli_1.0", "SNLI"),
              "snli_1.0/snli_1.0_{train,dev,test}.jsonl (sentence1, sentence2, gold_label; '-' dropped)",
              "SNLI 1.0 (nlp.stanford.edu/projects/snli)", ("train", "dev", "test"), "train", "dev",
              (Score("SNLI", ("test",), 89.9),), _read_snli),
    PaperTask("scitail", "SciTail", 2, "entail", ("entails", "neutral"), ("accuracy",), "accuracy",
              ("SciTailV1.1", "SciTailV1", "SciTail"),
              "SciTailV1.1/tsv_format/scitail_1.0_{train,dev,test}.tsv (premise, hypothesis, entails|neutral; no header)",
              "SciTail 1.1 (allenai.org/data/scitail)", ("train", "dev", "test"), "train", "dev",
              (Score("SciTail", ("test",), 88.3),), _read_scitail),
    PaperTask("qnli", "QNLI", 2, "entail", TWO_WAY, ("accuracy",), "accuracy", _glue_folders("QNLI"),
              "glue/QNLI/{train,dev,test}.tsv (index, question, sentence, label: entailment|not_entailment)",
              _GLUE_SOURCE, _GLUE_SPLITS, _GLUE_FIT, _GLUE_VAL, (Score("QNLI", ("dev",), 88.1),),
              _glue_files(_three_glue(_QNLI, _QNLI, _classes(TWO_WAY, "QNLI"))), glue=True),
    PaperTask("rte", "RTE", 2, "entail", TWO_WAY, ("accuracy",), "accuracy", _glue_folders("RTE"),
              "glue/RTE/{train,dev,test}.tsv (index, sentence1, sentence2, label: entailment|not_entailment)",
              _GLUE_SOURCE, _GLUE_SPLITS, _GLUE_FIT, _GLUE_VAL, (Score("RTE", ("dev",), 56.0),),
              _glue_files(_three_glue(_RTE, _RTE, _classes(TWO_WAY, "RTE"))), glue=True),
    # Table 3: question answering and commonsense reasoning
    PaperTask("story-cloze", "Story Cloze", 3, "mcq", None, ("accuracy",), "accuracy",
              ("ROCStories", "rocstories", "story_cloze", "StoryCloze"), readers.CLOZE_LAYOUT,
              "Story Cloze Test, spring 2016 (cs.rochester.edu/nlp/rocstories)", ("val", "test"), "val:rest",
              "val:held", (Score("Story Cloze", ("test",), 86.5),), _read_story_cloze),
    PaperTask("race", "RACE", 3, "mcq", None, ("accuracy",), "accuracy", ("RACE",), readers.RACE_LAYOUT,
              "RACE (cs.cmu.edu/~glai1/data/race)",
              ("train", "dev", "test", "train-middle", "train-high", "dev-middle", "dev-high", "test-middle", "test-high"),
              "train", "dev", (Score("RACE-m", ("test-middle",), 62.9), Score("RACE-h", ("test-high",), 57.4),
                               Score("RACE", ("test-middle", "test-high"), 59.0)), _read_race),
    # Table 4: semantic similarity and classification
    PaperTask("cola", "CoLA", 4, "classify", BINARY, ("mcc", "accuracy"), "mcc", _glue_folders("CoLA"),
              "glue/CoLA/{train,dev}.tsv without header (source, label, original mark, sentence); test.tsv (index, sentence)",
              _GLUE_SOURCE, _GLUE_SPLITS, _GLUE_FIT, _GLUE_VAL, (Score("CoLA", ("dev",), 45.4),),
              _glue_files({"train": ("train.tsv", _COLA, _classes(BINARY, "CoLA")),
                           "dev": ("dev.tsv", _COLA, _classes(BINARY, "CoLA")),
                           "test": ("test.tsv", _COLA_TEST, None)}), glue=True),
    PaperTask("sst-2", "SST-2", 4, "classify", BINARY, ("accuracy",), "accuracy", _glue_folders("SST-2"),
              "glue/SST-2/{train,dev}.tsv (sentence, label); test.tsv (index, sentence)", _GLUE_SOURCE, _GLUE_SPLITS,
              _GLUE_FIT, _GLUE_VAL, (Score("SST-2", ("dev",), 91.3),),
              _glue_files(_three_glue(_SST, _SST_TEST, _classes(BINARY, "SST-2"))), glue=True),
    PaperTask("mrpc", "MRPC", 4, "similar", BINARY, ("f1", "accuracy"), "f1", _glue_folders("MRPC"),
              "glue/MRPC/{train,dev}.tsv (Quality, #1 ID, #2 ID, #1 String, #2 String); test.tsv (index, ...)",
              _GLUE_SOURCE, _GLUE_SPLITS, _GLUE_FIT, _GLUE_VAL, (Score("MRPC", ("dev",), 82.3),),
              _glue_files(_three_glue(_MRPC, _MRPC_TEST, _classes(BINARY, "MRPC"))), positive=1, glue=True),
    PaperTask("sts-b", "STS-B", 4, "similar", None, ("pearson", "spearman"), "pearson", _glue_folders("STS-B"),
              "glue/STS-B/{train,dev,test}.tsv (index, genre, ..., sentence1, sentence2, score 0-5; test without score)",
              _GLUE_SOURCE, _GLUE_SPLITS, _GLUE_FIT, _GLUE_VAL, (Score("STS-B", ("dev",), 82.0),),
              _glue_files(_three_glue(_STSB, _STSB, _score("STS-B"))), regression=True, glue=True),
    PaperTask("qqp", "QQP", 4, "similar", BINARY, ("f1", "accuracy"), "f1", _glue_folders("QQP"),
              "glue/QQP/{train,dev}.tsv (id, qid1, qid2, question1, question2, is_duplicate); test.tsv (id, question1, "
              "question2)", _GLUE_SOURCE, _GLUE_SPLITS, _GLUE_FIT, _GLUE_VAL, (Score("QQP", ("dev",), 70.3),),
              _glue_files(_three_glue(_QQP, _QQP_TEST, _classes(BINARY, "QQP"))), positive=1, glue=True),
)

BY_KEY = {key(t.name): t for t in TASKS}
BY_KEY.update({key(t.title): t for t in TASKS})
BY_KEY.update({"rocstories": BY_KEY["storycloze"], "multinli": BY_KEY["mnli"], "stsb": BY_KEY["stsb"]})

SUITES = {
    "glue": ("cola", "sst-2", "mrpc", "sts-b", "qqp", "mnli", "qnli", "rte"),
    "nli": ("mnli", "snli", "scitail", "qnli", "rte"),
    "qa": ("story-cloze", "race"),
    "all": tuple(t.name for t in sorted(TASKS, key=lambda t: t.table)),
}


def get_task(name: str) -> PaperTask:
    task = BY_KEY.get(key(name))
    if task is None:
        raise Gpt1Error(f"unknown paper task {name!r}; choose one of {', '.join(t.name for t in TASKS)}")
    return task


def find_folder(task: PaperTask, root: str | Path) -> Path | None:
    """The task's dataset folder under ``root`` (the first of ``task.folders`` that exists), or None."""
    for name in task.folders:
        candidate = Path(root) / name
        if candidate.is_dir():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------
# Reading a task's splits


def read_split(task: PaperTask, data_dir: str | Path, split: str, *, labelled: bool = True) -> Split:
    """The rows of ``split`` (one of ``task.splits``, or ``NAME:rest`` / ``NAME:held`` for the part
    of it trained on / held out for checkpoint selection). An empty result is an error."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise Gpt1Error(f"{folder} is not a folder (the {task.title} data: {task.layout})")
    name, _, part = split.partition(":")
    if name not in task.splits or part not in ("", "rest", "held"):
        raise Gpt1Error(f"{task.name} has no split {split!r}; choose one of {', '.join(task.splits)}")
    result = task.reader(folder, name, labelled)
    if not result.rows:
        dropped = "".join(f", {n} dropped ({why})" for why, n in result.dropped.items())
        raise Gpt1Error(f"{', '.join(map(str, result.files))}: the {task.title} {name} split holds no examples{dropped}")
    if labelled and not result.labelled:
        raise Gpt1Error(f"{result.files[0]}: the {task.title} {name} split has no labels")
    if part:
        held = hold_out(len(result.rows), CLOZE_HOLD_OUT if task.name == "story-cloze" else None)
        if not held or len(held) >= len(result.rows):
            raise Gpt1Error(f"{result.files[0]}: {len(result.rows)} {task.title} {name} examples are too few to hold "
                            "some out for checkpoint selection (at least 2 are needed)")
        rows = [row for i, row in enumerate(result.rows) if (i in held) == (part == "held")]
        result = Split(rows, result.files, result.dropped)
    return result


def hold_out(n: int, fraction: float | None = None) -> set[int]:
    """The indices of ``n`` rows held out for checkpoint selection: a seeded draw of
    ``fraction`` of them (default a tenth, at most 2,000), at least one when ``n >= 2``."""
    if fraction is None:
        count = min(math.ceil(n * HOLD_OUT[0]), HOLD_OUT[1])
    else:
        count = round(n * fraction)
    count = max(1, min(count, n - 1)) if n >= 2 else 0
    order = list(range(n))
    random.Random(HOLD_OUT_SEED).shuffle(order)
    return set(order[:count])
