"""`gpt1 plot`: training curves of one or more runs, overlaid, written to an image."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import Gpt1Error
from ..plot import AXES, plot_runs
from ..progress import console as make_console


def plot(
    runs: List[Path] = typer.Argument(..., help="Run directories of gpt1 pretrain or finetune (or their "
                                                "metrics.jsonl files); several are overlaid."),
    out: Path = typer.Option(..., "--out", "-o", help="Image to write: .png, .svg or .pdf, by its extension "
                                                      "(replaced if it exists)."),
    x: str = typer.Option("step", "--x", help="Horizontal axis: step, or tokens (tokens seen; pre-training runs)."),
    title: Optional[str] = typer.Option(None, "--title", help="Title above the panels.",
                                        show_default="Training curves: the run names"),
) -> None:
    """Plot loss (training and validation), bits per byte, fine-tuning metrics, learning rate and
    throughput from runs' metrics.jsonl, one colour per run."""
    if x not in AXES:
        raise Gpt1Error(f"--x must be {' or '.join(AXES)}, not {x!r}")
    drawn = plot_runs(runs, out, x=x, title=title)
    make_console().print(f"wrote {drawn['out']}: {len(drawn['runs'])} run(s) "
                                   f"({', '.join(drawn['runs'])}); panels: {', '.join(drawn['panels'])}",
                                   soft_wrap=True)
