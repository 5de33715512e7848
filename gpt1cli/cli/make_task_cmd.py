"""`gpt1 make-task`: build a labelled task from any corpus."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.console import Console

from ..checks import SEED, option
from ..errors import Gpt1Error
from ..tasks.cloze import make_cloze


def make_task(
    kind: str = typer.Argument(..., help="Task kind; 'cloze' is a story-cloze style multiple choice."),
    inputs: List[str] = typer.Argument(..., help="Corpus files, directories or globs (as for tokenize)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for train.jsonl, val.jsonl, test.jsonl and task.json (task.json is written last)."),
    overwrite: bool = typer.Option(False, help="Replace the task files already in --out (a run trained on them no longer matches its data)."),
    context_sentences: int = typer.Option(3, callback=option(minimum=1), help="Sentences of passage before the ending."),
    choices: int = typer.Option(2, callback=option(minimum=2), help="Endings to choose from (one true, the rest from other documents)."),
    train_fraction: float = typer.Option(0.8, callback=option(above=0, below=1), help="Share of examples for train, between 0 and 1; val and test split the rest evenly."),
    seed: int = typer.Option(0, callback=option(**SEED), help="Seed of passage order, distractors and splits."),
) -> None:
    """Make a multiple-choice task: a passage, then pick the sentence that truly came next."""
    if kind != "cloze":
        raise Gpt1Error(f"unknown task kind {kind!r}; available: cloze")
    rest = (1 - train_fraction) / 2
    info = make_cloze(inputs, out, context_sentences=context_sentences, choices=choices,
                      split=(train_fraction, rest, rest), seed=seed, overwrite=overwrite)
    counts = info["examples"]
    Console().print(f"cloze task in {out}: {counts['train']} train, {counts['val']} val, {counts['test']} test examples, "
                    f"{choices} choices each")
