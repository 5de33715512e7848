"""`gpt1 tokenize`: train a SentencePiece BPE tokenizer and write Arrow token shards."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..checks import SEED, option
from ..data.pipeline import MAX_THREADS, MAX_TRAIN_SENTENCES, tokenize_corpus
from ..data.shards import MAX_TOKENS_PER_SHARD
from ..data.tokenizer import MAX_VOCAB


def tokenize(
    inputs: List[str] = typer.Argument(..., help="Corpus files (.txt, .jsonl with a 'text' field, .parquet with a 'text' column), directories or globs."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the shards, manifest.json and tokenizer.model."),
    # The lower bounds of --vocab-size, --tokens-per-shard and --val-fraction are checked first thing
    # by tokenize_corpus, with advice (the smallest vocabulary that holds the byte pieces).
    vocab_size: int = typer.Option(8000, callback=option(maximum=MAX_VOCAB),
                                   help="Vocabulary size of the BPE tokenizer to train."),
    tokenizer: Optional[str] = typer.Option(None, help="Reuse a tokenizer instead of training one: a SentencePiece .model, an openai-bpe .json, or openai:DIR (the original GPT-1 encoder + merges)."),
    tokens_per_shard: int = typer.Option(1 << 24, callback=option(maximum=MAX_TOKENS_PER_SHARD),
                                         help="Tokens per Arrow shard file (at most 2^31)."),
    val_fraction: float = typer.Option(0.005, help="Fraction of documents held out for validation."),
    seed: int = typer.Option(0, callback=option(**SEED), help="Seed of the train/validation split."),
    errors: str = typer.Option("strict", help="Invalid UTF-8: 'strict' stops with the file and byte offset, 'replace' substitutes U+FFFD."),
    threads: int = typer.Option(0, callback=option(minimum=0, maximum=MAX_THREADS), help="Encoding threads (0: all cores)."),
    max_train_sentences: int = typer.Option(1_000_000, callback=option(minimum=1, maximum=MAX_TRAIN_SENTENCES), help="Lines sampled to train the tokenizer (the trainer holds them in memory: about 1.1 GB peak at the default)."),
    overwrite: bool = typer.Option(False, help="Replace shards already in --out, or an unfinished run of other inputs or settings."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train a tokenizer (or reuse one) and encode a corpus into memory-mappable Arrow shards."""
    manifest = tokenize_corpus(
        inputs, out, vocab_size=vocab_size, tokenizer=tokenizer, tokens_per_shard=tokens_per_shard,
        val_fraction=val_fraction, seed=seed, errors=errors, num_threads=threads,
        max_train_sentences=max_train_sentences, overwrite=overwrite, show_progress=not quiet,
    )
    table = Table(title=f"shards in {out}")
    for column in ("split", "documents", "tokens", "text bytes", "shards"):
        table.add_column(column, justify="right")
    for name, split in manifest["splits"].items():
        table.add_row(name, f"{split['documents']:,}", f"{split['tokens']:,}", f"{split['text_bytes']:,}", str(len(split["shards"])))
    console = Console()
    console.print(table)
    stats = manifest["stats"]
    console.print(f"vocabulary {manifest['tokenizer']['vocab_size']:,} ({manifest['dtype']}), "
                  f"encoded at {stats['encode_mb_per_s']} MB/s on {stats['threads']} threads, {stats['seconds']} s in all")
