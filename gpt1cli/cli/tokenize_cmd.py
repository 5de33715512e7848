"""`gpt1 tokenize`: train a SentencePiece BPE tokenizer and write Arrow token shards."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.table import Table

from ..data.pipeline import TokenizeConfig, tokenize_corpus
from ..progress import console as make_console
from .options import Options, command


@command(TokenizeConfig)
def tokenize(
    inputs: List[str] = typer.Argument(..., help="Corpus files (.txt; .jsonl, .parquet, .arrow, .tsv or .csv with a 'text' "
                                       "field or column, or the one --text-field names), Hugging Face datasets folders "
                                       "(save_to_disk; a DatasetDict: its train split, or name a split's folder), "
                                       "directories or globs."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the shards, manifest.json and tokenizer.model."),
    *,
    options: Options,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train a tokenizer (or reuse one) and encode a corpus into memory-mappable Arrow shards."""
    manifest = tokenize_corpus(inputs, out, **options.values, show_progress=not quiet)
    table = Table(title=f"shards in {out}")
    for column in ("split", "documents", "tokens", "text bytes", "shards"):
        table.add_column(column, justify="right")
    for name, split in manifest["splits"].items():
        table.add_row(name, f"{split['documents']:,}", f"{split['tokens']:,}", f"{split['text_bytes']:,}", str(len(split["shards"])))
    console = make_console()
    console.print(table)
    stats = manifest["stats"]
    console.print(f"vocabulary {manifest['tokenizer']['vocab_size']:,} ({manifest['dtype']}), "
                  f"encoded at {stats['encode_mb_per_s']} MB/s on {stats['threads']} threads, {stats['seconds']} s in all")
