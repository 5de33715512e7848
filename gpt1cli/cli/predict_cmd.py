"""`gpt1 predict`: labels and probabilities of a fine-tuned checkpoint, one JSON line per example."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table
from rich.text import Text

from ..checks import option
from ..errors import interrupt_leaves
from ..progress import console as make_console
from ..runtime import pick_device
from ..tasks.data import fields_setting
from ..tasks.head_eval import BATCH_SIZE
from ..tasks.head_eval import predict as run_predict
from ..tasks.outputs import is_stdout, where
from .options import device_option

PREVIEW = 10  # predictions shown in the table when they go to a file
CELL = 60  # characters of an input shown in the table


def predict(
    ckpt: Path = typer.Option(..., help="Fine-tuned checkpoint or run directory."),
    data: Path = typer.Option(..., help="Examples (.jsonl, .csv, .tsv, .parquet, .arrow or a datasets folder); labels are not needed."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL: one prediction per example, in order, with its id and input fields; - is standard output."),
    field: Optional[List[str]] = typer.Option(None, "--field", callback=option(fields_setting), help="Task field NAME=COLUMN of --data, repeatable, e.g. --field text=sentence.", show_default="the mapping the checkpoint was fine-tuned with, else the fields' own names"),
    batch_size: Optional[int] = typer.Option(None, callback=option(minimum=1, maximum=1 << 16), help="Examples per forward pass; the predictions do not depend on it.", show_default=str(BATCH_SIZE)),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
    device: str = device_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Predict labels (or values, with regression) for every example of --data. Each line holds the
    example's id (its id field, else its row number from 1), its input fields and the prediction."""
    with interrupt_leaves(f"{where(out)}: no predictions were written"):
        written = run_predict(ckpt, data, out, pick_device(device), overwrite=overwrite,
                              batch_size=batch_size or BATCH_SIZE, show_progress=not quiet, fields=field)
    console = make_console(stderr=is_stdout(out))
    if not is_stdout(out):  # standard output holds the predictions themselves
        console.print(_preview(written))
    console.print(f"{len(written)} predictions written to {where(out)}")


def _preview(records: list[dict]) -> Table:
    """The first predictions: id, input, prediction (and its probability)."""
    shown = records[:PREVIEW]
    title = "predictions" if len(records) <= PREVIEW else f"predictions (the first {PREVIEW} of {len(records)})"
    table = Table(title=title)
    table.add_column("id", justify="right")
    table.add_column("input")
    table.add_column("prediction")
    regression = bool(shown) and "value" in shown[0]
    if not regression:
        table.add_column("probability", justify="right")
    for record in shown:
        fields = {k: v for k, v in record.items() if k not in ("id", "label", "probs", "value")}
        text = " | ".join(" / ".join(map(str, v)) if isinstance(v, list) else str(v) for v in fields.values())
        text = text if len(text) <= CELL else text[: CELL - 1] + "…"
        ident = record["id"] if isinstance(record["id"], (str, int)) else json.dumps(record["id"])
        if regression:
            table.add_row(Text(str(ident)), Text(text), f"{record['value']:.4f}")
        else:
            probs = record["probs"]
            p = probs[record["label"]] if isinstance(probs, list) else probs[str(record["label"])]
            table.add_row(Text(str(ident)), Text(text), Text(str(record["label"])), f"{p:.4f}")
    return table
