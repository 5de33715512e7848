"""`gpt1 verify`: check the checksums of shards and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.table import Table

from ..errors import Gpt1Error
from ..progress import console as make_console
from ..verify import verify as run_verify


def verify(
    paths: List[Path] = typer.Argument(..., help="Shard directories, checkpoint folders or run directories."),
) -> None:
    """Check every shard's size and BLAKE2b, and every checkpoint's weights, tokenizer and state hashes."""
    checks = [check for path in paths for check in run_verify(path)]
    table = Table(title="verification")
    table.add_column("file")
    table.add_column("result")
    for check in checks:
        table.add_row(str(check.path), "[green]ok" if check.ok else f"[red]{check.detail}")
    make_console().print(table)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise Gpt1Error(f"{len(failed)} of {len(checks)} files failed verification, first {failed[0].path}: {failed[0].detail}")
