"""`gpt1 make-task`: build a labelled task from any corpus."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.console import Console

from ..errors import Gpt1Error
from ..tasks.cloze import make_cloze


def make_task(
    kind: str = typer.Argument(..., help="Task kind; 'cloze' is a story-cloze style multiple choice."),
    inputs: List[str] = typer.Argument(..., help="Corpus files, directories or globs (as for tokenize)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for train.jsonl, val.jsonl, test.jsonl and task.json."),
    context_sentences: int = typer.Option(3, help="Sentences of passage before the ending."),
    choices: int = typer.Option(2, help="Endings to choose from (one true, the rest from other documents)."),
    train_fraction: float = typer.Option(0.8, help="Share of examples for train; val and test split the rest evenly."),
    seed: int = typer.Option(0, help="Seed of passage order, distractors and splits."),
) -> None:
    """Make a multiple-choice task: a passage, then pick the sentence that truly came next."""
    if kind != "cloze":
        raise Gpt1Error(f"unknown task kind {kind!r}; available: cloze")
    if not 0 < train_fraction < 1:
        raise Gpt1Error(f"--train-fraction must be between 0 and 1, got {train_fraction}")
    rest = (1 - train_fraction) / 2
    info = make_cloze(inputs, out, context_sentences=context_sentences, choices=choices,
                      split=(train_fraction, rest, rest), seed=seed)
    counts = info["examples"]
    Console().print(f"cloze task in {out}: {counts['train']} train, {counts['val']} val, {counts['test']} test examples, "
                    f"{choices} choices each")
