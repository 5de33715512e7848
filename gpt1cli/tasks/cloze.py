"""`gpt1 make-task cloze`: a story-cloze style multiple-choice task from any corpus.

Like ROCStories: a passage of consecutive sentences, then a choice among k endings, one of
them the sentence that really came next, the others sentences drawn from other documents.
Passages are split into train/val/test with a fixed seed; nothing is copied from elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..checks import SEED, check_number, number
from ..data.corpus import expand_inputs, iter_documents
from ..errors import Gpt1Error
from ..fileio import atomic_path, atomic_write_json, refuse_to_replace
from ..settings import check_settings, setting
from .outputs import locked_directory

# A sentence ends at ., ! or ? followed by space and an upper-case letter or a quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
MIN_SENTENCE_CHARS = 20
MAX_SENTENCE_CHARS = 300


def sentences_of(text: str) -> list[str]:
    """Prose sentences of a text, dropping fragments, code-like lines and very long runs."""
    flat = " ".join(text.split())
    out = []
    for sentence in _SENTENCE_END.split(flat):
        sentence = sentence.strip()
        letters = sum(ch.isalpha() for ch in sentence)
        if MIN_SENTENCE_CHARS <= len(sentence) <= MAX_SENTENCE_CHARS and letters >= 0.6 * len(sentence):
            out.append(sentence)
    return out


SPLITS = ("train", "val", "test")
TASK_INFO = "task.json"


@dataclass(frozen=True)
class ClozeConfig:
    """The settings of `gpt1 make-task cloze` (besides its inputs and output directory)."""

    overwrite: bool = setting(False, "Replace the task files already in --out (a run trained on them no longer "
                              "matches its data).")
    context_sentences: int = setting(3, "Sentences of passage before the ending.", rule=number(minimum=1))
    choices: int = setting(2, "Endings to choose from (one true, the rest from other documents).",
                           rule=number(minimum=2))
    train_fraction: float = setting(0.8, "Share of examples for train, between 0 and 1; val and test split the "
                                    "rest evenly.", rule=number(above=0, below=1))
    seed: int = setting(0, "Seed of passage order, distractors and splits.", rule=number(**SEED))

    @property
    def split(self) -> tuple[float, float, float]:
        """Shares of train, val and test: the train fraction, then the rest evenly."""
        rest = (1 - self.train_fraction) / 2
        return (self.train_fraction, rest, rest)


def make_cloze(
    inputs: list[str],
    out_dir: str | Path,
    config: ClozeConfig = ClozeConfig(),
    *,
    split: tuple[float, float, float] | None = None,
    max_examples: int | None = None,
) -> dict:
    """Write ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` and ``task.json`` to ``out_dir``.

    ``split`` (shares of train, val and test) replaces the config's train fraction when given.
    Existing task files are replaced only with ``config.overwrite`` (a run may have been trained
    on them). ``task.json`` is written last and, when replacing, removed first: a folder holding
    it holds a complete task.
    """
    context_sentences, choices, seed, overwrite = config.context_sentences, config.choices, config.seed, config.overwrite
    split = config.split if split is None else split
    check_settings(config)
    if max_examples is not None:
        check_number(max_examples, "max_examples", minimum=1)
    for part in split:
        check_number(part, "each share of the split", minimum=0, maximum=1)
    if len(split) != 3 or sum(split) > 1 + 1e-9:
        raise Gpt1Error(f"the split {split} must be three shares in [0, 1] adding up to at most 1")
    out = Path(out_dir)
    targets = [out / f"{name}.jsonl" for name in SPLITS] + [out / TASK_INFO]
    for target in targets:
        refuse_to_replace(target, overwrite)
    with locked_directory(out, "task directory"):
        return _make_cloze(inputs, out, context_sentences, choices, split, seed, max_examples)


def _make_cloze(inputs, out: Path, context_sentences: int, choices: int, split, seed: int, max_examples) -> dict:
    paths = expand_inputs(inputs)
    documents = [s for s in (sentences_of(" ".join(d.lines)) for d in iter_documents(paths)) if s]
    rng = random.Random(seed)
    passages = []  # (document index, context sentences, true ending)
    span = context_sentences + 1
    for index, sents in enumerate(documents):
        for start in range(0, len(sents) - span + 1, span):  # non-overlapping, so no ending is reused
            passages.append((index, sents[start : start + context_sentences], sents[start + context_sentences]))
    if len(passages) < 10 or len(documents) < 2:
        raise Gpt1Error(f"the corpus yields {len(passages)} passages of {span} sentences from {len(documents)} documents: "
                        "too few for a task; use more text or fewer --context-sentences")
    rng.shuffle(passages)
    if max_examples:
        passages = passages[:max_examples]
    pool = [(i, s) for i, sents in enumerate(documents) for s in sents]
    distinct = len({s for _, s in pool})
    examples = []
    for doc_index, context, ending in passages:
        # Without enough sentences elsewhere the sampling below could never finish.
        elsewhere = distinct - len(set(documents[doc_index]) - {ending}) - 1
        if elsewhere < choices - 1:
            raise Gpt1Error(f"--choices {choices} needs {choices - 1} distractor sentences from other documents, "
                            f"the corpus has {max(elsewhere, 0)} for some passages: use more text or fewer --choices")
        distractors = []
        while len(distractors) < choices - 1:
            other_doc, sentence = pool[rng.randrange(len(pool))]
            if other_doc != doc_index and sentence != ending and sentence not in distractors:
                distractors.append(sentence)
        options = [ending, *distractors]
        rng.shuffle(options)
        examples.append({"context": " ".join(context), "choices": options, "label": options.index(ending)})
    n_train = int(len(examples) * split[0])
    n_val = int(len(examples) * split[1])
    parts = {"train": examples[:n_train], "val": examples[n_train : n_train + n_val], "test": examples[n_train + n_val :]}
    info = {"task": "mcq", "kind": "cloze", "choices": choices, "context_sentences": context_sentences, "seed": seed,
            "inputs": [str(p) for p in paths], "examples": {k: len(v) for k, v in parts.items()}}
    with contextlib.ExitStack() as stack:
        for name, rows in parts.items():
            tmp = stack.enter_context(atomic_path(out / f"{name}.jsonl"))
            with open(tmp, "w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row) + "\n")
        # Until the new task.json is written, no task.json may vouch for a mix of old and new splits.
        (out / TASK_INFO).unlink(missing_ok=True)
    atomic_write_json(out / TASK_INFO, info)
    return info
