"""`gpt1 eval`: language-model metrics, task metrics, or zero-shot multiple choice."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import Gpt1Error
from ..fileio import atomic_write_json
from ..runtime import pick_device


def eval_(
    ckpt: Path = typer.Option(..., help="Checkpoint folder or run directory."),
    shards: Optional[Path] = typer.Option(None, help="LM evaluation on the validation split of this shard directory."),
    text: Optional[Path] = typer.Option(None, help="LM evaluation on a text corpus (.txt, .jsonl, .parquet)."),
    task: Optional[str] = typer.Option(None, help="Task evaluation: classify, entail, similar or mcq (with --data)."),
    data: Optional[Path] = typer.Option(None, help="Labelled examples for --task."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="mcq without a head: score choices by LM likelihood."),
    max_tokens: Optional[int] = typer.Option(None, help="Most validation tokens for --shards [default: all]."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
) -> None:
    """Evaluate a checkpoint: loss/perplexity/bits-per-byte, or accuracy/F1/MCC/correlations on a task."""
    from ..data.shards import ShardDataset
    from ..model.loading import model_from_checkpoint
    from ..tasks.evaluate import evaluate_task, lm_text_eval, zero_shot_mcq
    from ..train.evaluate import evaluate_lm

    modes = sum(x is not None for x in (shards, text, task))
    if modes != 1:
        raise Gpt1Error("give exactly one of --shards, --text or --task (with --data)")
    dev = pick_device(device)
    if shards is not None:
        data_set = ShardDataset(shards)
        model, checkpoint = model_from_checkpoint(ckpt, dev)
        if checkpoint.meta.get("tokenizer_blake2b") != data_set.tokenizer_hash:
            raise Gpt1Error(f"{shards} was made with a different tokenizer than {checkpoint.path}: re-tokenize with its tokenizer.model")
        results = evaluate_lm(model, data_set.val, device=dev, max_tokens=max_tokens)
    elif text is not None:
        results = lm_text_eval(ckpt, text, dev)
    else:
        if data is None:
            raise Gpt1Error("--task needs --data FILE")
        if zero_shot:
            if task != "mcq":
                raise Gpt1Error("--zero-shot scores multiple choice: use it with --task mcq")
            results = zero_shot_mcq(ckpt, data, dev)
        else:
            results = evaluate_task(ckpt, task, data, dev)
    _print(results)
    if json_out is not None:
        atomic_write_json(json_out, results)


def _print(results: dict) -> None:
    console = Console()
    table = Table(title="evaluation")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results.items():
        if key in ("confusion", "labels"):
            continue
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    if "confusion" in results:
        labels = [str(x) for x in results.get("labels", range(len(results["confusion"])))]
        matrix = Table(title="confusion (rows: true, columns: predicted)")
        matrix.add_column("")
        for label in labels:
            matrix.add_column(label, justify="right")
        for label, row in zip(labels, results["confusion"]):
            matrix.add_row(label, *[str(v) for v in row])
        console.print(matrix)
