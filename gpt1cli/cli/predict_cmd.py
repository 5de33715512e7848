"""`gpt1 predict`: labels and probabilities of a fine-tuned checkpoint, one JSON line per example."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..errors import interrupt_leaves
from ..runtime import pick_device
from ..tasks.head_eval import predict as run_predict
from ..tasks.outputs import is_stdout, where


def predict(
    ckpt: Path = typer.Option(..., help="Fine-tuned checkpoint or run directory."),
    data: Path = typer.Option(..., help="Examples (.jsonl, .csv, .parquet); labels are not needed."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL: one prediction per example, in order; - is standard output."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
) -> None:
    """Predict labels (or values, with regression) for every example of --data."""
    with interrupt_leaves(f"{where(out)}: no predictions were written"):
        count = run_predict(ckpt, data, out, pick_device(device), overwrite=overwrite)
    Console(stderr=is_stdout(out)).print(f"{count} predictions written to {where(out)}")
