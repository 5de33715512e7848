"""`gpt1 make-task`: build a labelled task from any corpus."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from ..errors import Gpt1Error
from ..progress import console as make_console
from ..tasks.cloze import ClozeConfig, make_cloze
from .options import Options, command


@command(ClozeConfig)
def make_task(
    kind: str = typer.Argument(..., help="Task kind; 'cloze' is a story-cloze style multiple choice."),
    inputs: List[str] = typer.Argument(..., help="Corpus files, directories or globs (as for tokenize)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for train.jsonl, val.jsonl, test.jsonl and task.json (task.json is written last)."),
    *,
    options: Options,
) -> None:
    """Make a multiple-choice task: a passage, then pick the sentence that truly came next."""
    if kind != "cloze":
        raise Gpt1Error(f"unknown task kind {kind!r}; available: cloze")
    config = options.config(ClozeConfig)
    info = make_cloze(inputs, out, config)
    counts = info["examples"]
    make_console().print(f"cloze task in {out}: {counts['train']} train, {counts['val']} val, {counts['test']} test examples, "
                    f"{config.choices} choices each")
